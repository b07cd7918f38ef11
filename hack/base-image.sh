#!/usr/bin/env bash
# Makes the operator image's base without an image registry: a minimal Debian bookworm root
# with python3 (3.11) and python3-venv, made by debootstrap from the Debian mirror this
# machine's apt already uses, kept as a tarball in a cache outside the clone (keyed by the
# recipe below, so a second run only imports it), and imported into buildah as a local image.
#
# Usage: hack/base-image.sh [TAG]    (TAG defaults to localhost/pgherd-base:bookworm)
#        hack/base-image.sh --rootfs (only make or find the tarball; print its path)
# Then:  make docker-build CONTAINER_TOOL=buildah BASE_IMAGE=localhost/pgherd-base:bookworm
#
# Environment:
#   BUILDAH               the buildah command, split on spaces (default `buildah`), e.g.
#                         `buildah --storage-driver vfs --root DIR --runroot DIR`
#   PGHERD_DEBIAN_MIRROR  the mirror to use instead of the one read from apt's sources
#   PGHERD_BASE_CACHE     the cache (default ~/.cache/pgherd/base-image)
# Needs root (debootstrap) and the Debian packages debootstrap and buildah (`make deps`).
set -euo pipefail

SUITE=bookworm
VARIANT=minbase
INCLUDE=python3,python3-venv,ca-certificates
# Bump when the trimming or the image configuration below changes: it is part of the key.
REVISION=1
ARCH="$(dpkg --print-architecture)"
RECIPE="suite=$SUITE variant=$VARIANT include=$INCLUDE arch=$ARCH revision=$REVISION"
KEY="$SUITE-$(printf '%s' "$RECIPE" | sha256sum | cut -c1-12)"

CACHE="${PGHERD_BASE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/pgherd/base-image}"
DIR="$CACHE/$KEY"
TARBALL="$DIR/rootfs.tar"
read -r -a BUILDAH <<<"${BUILDAH:-buildah}"

log() { printf '[base-image] %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 2; }

# The Debian archive apt is configured with: a source for $SUITE itself, else the Debian
# archive (not -security) of whatever release this machine runs, which serves $SUITE too.
mirror() {
  if [ -n "${PGHERD_DEBIAN_MIRROR:-}" ]; then echo "$PGHERD_DEBIAN_MIRROR"; return; fi
  local uri
  uri="$(apt-get indextargets --format '$(REPO_URI)' "Release: $SUITE" \
    'Identifier: Packages' 'Target-Of: deb' 'Component: main' | head -1)"
  [ -n "$uri" ] || uri="$(apt-get indextargets --format '$(REPO_URI)' 'Label: Debian' \
    'Identifier: Packages' 'Target-Of: deb' 'Component: main' | head -1)"
  [ -n "$uri" ] || die "no Debian archive in apt's sources (set PGHERD_DEBIAN_MIRROR)"
  echo "${uri%/}"
}

# Unmount whatever debootstrap left mounted under $1 (it mounts /proc and /sys while it works).
unmount_under() {
  local m
  awk -v root="$1/" 'index($2, root) == 1 {print $2}' /proc/self/mounts | sort -r |
    while read -r m; do umount -l "$m" || true; done
}

make_rootfs() {
  command -v debootstrap >/dev/null || die "debootstrap is missing: run \`make deps\` as root"
  [ "$(id -u)" = 0 ] || die "debootstrap needs root"
  local url work start=$SECONDS
  url="$(mirror)"
  # apt's proxy, if it has one, is the way out for debootstrap's downloads too.
  eval "$(apt-config shell http_proxy Acquire::http::Proxy https_proxy Acquire::https::Proxy)"
  export http_proxy https_proxy
  mkdir -p "$CACHE"
  work="$(mktemp -d "$CACHE/.work.XXXXXX")"
  # shellcheck disable=SC2064 # $work is meant to be expanded now
  trap "unmount_under '$work'; rm -rf --one-file-system '$work'" EXIT
  log "debootstrap $SUITE ($VARIANT + $INCLUDE) from apt's Debian mirror; cached in $DIR"
  if ! debootstrap --variant="$VARIANT" --include="$INCLUDE" --arch="$ARCH" \
      "$SUITE" "$work/root" "$url" >"$work/debootstrap.log" 2>&1; then
    tail -n 30 "$work/debootstrap.log" >&2
    unmount_under "$work"
    die "debootstrap failed (the lines above are the end of its log)"
  fi
  unmount_under "$work"
  local root="$work/root"
  # What Debian's slim images leave out, and what later package installs should leave out too.
  cat >"$root/etc/dpkg/dpkg.cfg.d/pgherd-slim" <<'EOF'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
path-include /usr/share/locale/locale.alias
EOF
  find "$root/usr/share/doc" -mindepth 1 -not -name copyright -not -type d -delete
  find "$root/usr/share/doc" -mindepth 1 -type d -empty -delete
  rm -rf "$root"/usr/share/{man,info}/* "$root"/var/cache/apt/*.bin \
    "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/* "$root"/var/log/* \
    "$root"/tmp/* "$root"/etc/hostname "$root"/etc/resolv.conf "$root"/etc/machine-id
  find "$root/usr/share/locale" -mindepth 1 -maxdepth 1 -not -name locale.alias \
    -exec rm -rf {} +
  # No device nodes and no host state: engines and kubelets provide /dev, /proc, /sys, /run.
  tar --numeric-owner --xattrs --sort=name -C "$root" -cf "$work/rootfs.tar" \
    --exclude='./dev/*' --exclude='./proc/*' --exclude='./sys/*' --exclude='./run/*' .
  chroot "$root" dpkg-query -W -f '${Package} ${Version}\n' >"$work/packages.txt"
  mkdir -p "$DIR"
  mv "$work/packages.txt" "$DIR/packages.txt"
  mv "$work/rootfs.tar" "$TARBALL"
  printf '%s\n' "$RECIPE" >"$DIR/recipe"
  log "made $TARBALL ($(du -m "$TARBALL" | cut -f1) MiB, $(wc -l <"$DIR/packages.txt") packages) in $((SECONDS - start))s"
}

import_image() {
  local tag="$1" have ctr start=$SECONDS
  command -v "${BUILDAH[0]}" >/dev/null || die "buildah is missing: run \`make deps\` as root"
  have="$("${BUILDAH[@]}" inspect --type image \
    --format '{{index .OCIv1.Config.Labels "io.pgherd.base-recipe"}}' "$tag" 2>/dev/null || true)"
  if [ "$have" = "$KEY" ]; then log "$tag is up to date ($KEY)"; return; fi
  ctr="$("${BUILDAH[@]}" from scratch)"
  # The image's PATH matters: a Dockerfile's `ENV PATH=...:$PATH` extends it.
  if ! { "${BUILDAH[@]}" add "$ctr" "$TARBALL" / >/dev/null &&
    "${BUILDAH[@]}" config --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
      --env LANG=C.UTF-8 --cmd /bin/bash --label "io.pgherd.base-recipe=$KEY" "$ctr" &&
    "${BUILDAH[@]}" commit --rm --quiet "$ctr" "$tag" >/dev/null; }; then
    "${BUILDAH[@]}" rm "$ctr" >/dev/null 2>&1 || true
    die "importing $TARBALL into buildah as $tag failed"
  fi
  log "imported $tag ($KEY) in $((SECONDS - start))s"
}

made() { [ -s "$TARBALL" ] && [ -s "$DIR/recipe" ]; }
if made; then
  log "cached: $TARBALL"
else
  # One debootstrap at a time: concurrent runs (two test sessions) wait for the first.
  mkdir -p "$CACHE"
  exec 9>"$CACHE/.lock"
  flock 9
  # Left by a run that was killed outright (the lock says none is running now).
  for stale in "$CACHE"/.work.*; do
    [ -d "$stale" ] || continue
    unmount_under "$stale"; rm -rf --one-file-system "$stale"
  done
  made || make_rootfs
  exec 9>&-
fi
if [ "${1:-}" = --rootfs ]; then echo "$TARBALL"; exit 0; fi
import_image "${1:-localhost/pgherd-base:bookworm}"
