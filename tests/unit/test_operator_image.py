"""The operator image, built from the real Dockerfile, runs the operator; the operand image
builds from images/postgres/Dockerfile; the bundle pins both by digest.

No image registry is reachable here, so the base is made locally: hack/base-image.sh makes a
Debian bookworm root with python3 and python3-venv by debootstrap (cached outside the clone;
about a minute the first time on a machine) and imports it into a private buildah storage.
buildah builds Dockerfile on it (pip installs requirements-operator.lock from PyPI, hashes
checked), the image is pushed to a local registry and its config read back from there, and
its entrypoint runs (buildah run, chroot isolation) as the image's non-root user against an
API server that is not there: it logs JSON and answers its liveness probe. The operand images
(PostgreSQL 15 or 18, Patroni, barman-cloud, pgherd; about 2 minutes each) come from
pgherd_dev.operand_image, built on the same base once per set of inputs and cached outside
the clone (the image-mode cluster tests run the same build), and are copied beside it, so
that `make bundle USE_IMAGE_DIGESTS=true` resolves all three from the registry.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from pgherd_dev import processes
from pgherd_dev.errors import DevError
from pgherd_dev.images import (
    Buildah,
    LocalRegistry,
    host_ca_bundle,
    require_command,
)
from pgherd_dev.operand_image import operand_image
from pgherd_packaging import bundle, manifests

REPO = Path(__file__).resolve().parents[2]

# A cold run (debootstrap, then the build's pip downloads) takes a few minutes on 2 cores.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1500)]


@dataclass
class Built:
    buildah: Buildah
    tag: str
    registry: LocalRegistry
    workdir: Path
    container: str  # a working container of the image, for `buildah run`


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Built]:
    if os.geteuid() != 0:
        pytest.fail("debootstrap and buildah with chroot isolation need root here", pytrace=False)
    workdir = tmp_path_factory.mktemp("operator-image")
    try:
        buildah = Buildah(workdir / "buildah")
        with LocalRegistry(workdir / "registry") as registry:
            base = buildah.import_base_image()
            tag = f"{registry.host}/pgherd-operator:v-test"
            ca = host_ca_bundle()
            buildah.build(
                REPO,
                "Dockerfile",
                tag,
                f"BASE_IMAGE={base}",
                secrets={"ca-bundle": ca} if ca else None,
                timeout=1200,
            )
            buildah.push(tag)
            container = buildah.run("from", "--quiet", tag).strip()
            yield Built(buildah, tag, registry, workdir, container)
    except DevError as e:
        pytest.fail(str(e), pytrace=False)
    finally:
        # vfs keeps a full copy of the root per layer: hundreds of MB not worth keeping.
        shutil.rmtree(workdir / "buildah" / "storage", ignore_errors=True)


def push_operand(image: Built, major: int) -> str:
    """The operand image of major (pgherd_dev.operand_image: built once per set of inputs and
    cached outside the clone, the build the image-mode cluster tests run too), copied from its
    OCI layout to the local registry; returns its tag there."""
    tag = f"{image.registry.host}/pgherd/postgres:{major}-test"
    begin = time.monotonic()
    try:
        built = operand_image(major)
    except DevError as e:
        pytest.fail(str(e), pytrace=False)
    skopeo = require_command("skopeo")
    done = subprocess.run(
        [skopeo, "copy", "--dest-tls-verify=false", built.oci_ref, f"docker://{tag}"],
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    how = "cached" if built.build_seconds is None else f"built in {built.build_seconds:.0f}s"
    print(f"operand image {major} ({how}) pushed in {time.monotonic() - begin:.0f}s")
    return tag


@pytest.fixture(scope="module")
def operand(image: Built) -> str:
    return push_operand(image, 15)


@pytest.fixture(scope="module")
def operand18(image: Built) -> str:
    return push_operand(image, 18)


def skopeo_inspect(ref: str, *extra: str) -> dict[str, Any]:
    skopeo = require_command("skopeo")
    done = subprocess.run(
        [skopeo, "inspect", "--tls-verify=false", *extra, f"docker://{ref}"],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    found: dict[str, Any] = json.loads(done.stdout)
    return found


def test_config_read_back_from_the_registry(image: Built) -> None:
    config = skopeo_inspect(image.tag, "--config")["config"]
    assert config["User"] == "65532:65532"
    assert config["Entrypoint"] == ["pgherd", "operator"]
    assert config["Cmd"] == ["--health-port=8081"]
    assert set(config["ExposedPorts"]) == {"8081/tcp"}
    env = dict(e.split("=", 1) for e in config["Env"])
    assert env["PGHERD_LOG_FORMAT"] == "json"
    assert env["PATH"].startswith("/opt/pgherd/bin:/usr/local/sbin:")
    # The registry serves what buildah built: same layers.
    manifest = skopeo_inspect(image.tag, "--raw")
    local = image.buildah.inspect_image(image.tag)
    assert len(manifest["layers"]) == len(local["OCIv1"]["rootfs"]["diff_ids"])
    compressed = sum(layer["size"] for layer in manifest["layers"])
    print(f"operator image: {compressed / 2**20:.0f} MiB of compressed layers in the registry")


def test_platforms_are_the_ones_the_csv_declares(
    image: Built, operand: str, operand18: str
) -> None:
    """docs/images.md: both images are built for linux/amd64 only; the CSV's arch/os labels
    and the operator's node affinity (pgherd_packaging.manifests.ARCHITECTURES,
    OPERATING_SYSTEMS) say the same."""
    for ref in (image.tag, operand, operand18):
        config = skopeo_inspect(ref, "--config")
        assert [config["os"]] == list(manifests.OPERATING_SYSTEMS), ref
        assert [config["architecture"]] == list(manifests.ARCHITECTURES), ref
    for ref in (operand, operand18):
        operand_config = skopeo_inspect(ref, "--config")["config"]
        assert operand_config["User"] == "999:999"
        assert operand_config["Entrypoint"] == ["pgherd", "instance"]


@pytest.mark.parametrize("major", [15, 18])
def test_each_operand_image_has_its_majors_server(
    image: Built, operand: str, operand18: str, major: int
) -> None:
    """The binaries at /usr/lib/postgresql/<major>/bin run in the image (its unpacked root
    filesystem), as its user, and are the major's, built with OpenSSL (every instance serves
    TLS)."""
    assert {15: operand, 18: operand18}[major]
    root = operand_image(major).rootfs  # the build the fixture pushed, from the cache
    bindir = f"/usr/lib/postgresql/{major}/bin"

    def in_root(*argv: str) -> str:
        done = subprocess.run(
            ["chroot", "--userspec=999:999", str(root), *argv],
            capture_output=True,
            text=True,
            check=False,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
        return done.stdout

    version = in_root(f"{bindir}/postgres", "--version")
    configure = in_root(f"{bindir}/pg_config", "--configure")
    assert version.startswith(f"postgres (PostgreSQL) {major}."), version
    assert "--with-openssl" in configure or "--with-ssl=openssl" in configure, configure


def make_bundle(image: Built, root: Path, *variables: str) -> subprocess.CompletedProcess[str]:
    """`make bundle USE_IMAGE_DIGESTS=true` into root, the registry reached over plain HTTP as
    containers-registries.conf allows it (what a real registry needs no such entry for)."""
    conf = root.parent / "registries.conf"
    conf.write_text(f'[[registry]]\nlocation = "{image.registry.host}"\ninsecure = true\n')
    argv = ["make", "-s", "--no-print-directory", "bundle", "USE_IMAGE_DIGESTS=true"]
    return subprocess.run(
        [*argv, f"GENERATE_ROOT={root}", *variables],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
        env={**os.environ, "CONTAINERS_REGISTRIES_CONF": str(conf)},
    )


def test_bundle_pins_the_pushed_images_by_digest(
    image: Built, operand: str, operand18: str, tmp_path: Path
) -> None:
    """operator-sdk's convention: USE_IMAGE_DIGESTS=true resolves every image of the bundle in
    its registry (here the local one the images were pushed to) and pins containerImage, the
    Deployment, RELATED_IMAGE_POSTGRES and relatedImages to those digests."""
    digest = skopeo_inspect(image.tag)["Digest"]
    operand_digest = skopeo_inspect(operand)["Digest"]
    operand18_digest = skopeo_inspect(operand18)["Digest"]
    root = tmp_path / "root"
    done = make_bundle(image, root, f"IMG={image.tag}", f"OPERAND_IMAGE={operand}",
                       f"OPERAND_IMAGE_18={operand18}")  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    csv = yaml.safe_load((root / "bundle" / "manifests" / bundle.CSV_FILE).read_text())
    pinned = f"{image.tag.rsplit(':', 1)[0]}@{digest}"
    pinned_operand = f"{operand.rsplit(':', 1)[0]}@{operand_digest}"
    pinned_operand18 = f"{operand18.rsplit(':', 1)[0]}@{operand18_digest}"
    (deployment,) = csv["spec"]["install"]["spec"]["deployments"]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert csv["metadata"]["annotations"]["containerImage"] == pinned
    assert container["image"] == pinned
    assert env["RELATED_IMAGE_POSTGRES"] == pinned_operand
    assert env["RELATED_IMAGE_POSTGRES_18"] == pinned_operand18
    assert {r["image"] for r in csv["spec"]["relatedImages"]} == {
        pinned, pinned_operand, pinned_operand18}  # fmt: skip
    # Every image by digest, and the operator takes the operand from RELATED_IMAGE_POSTGRES.
    assert csv["metadata"]["annotations"]["features.operators.openshift.io/disconnected"] == "true"
    # The pinned references pull: the registry serves exactly those manifests.
    assert skopeo_inspect(pinned)["Digest"] == digest

    # A reference the registry does not serve stops the build, naming it.
    missing = f"{image.registry.host}/pgherd/postgres:not-pushed"
    done = make_bundle(image, tmp_path / "again", f"IMG={image.tag}", f"OPERAND_IMAGE={missing}",
                       f"OPERAND_IMAGE_18={operand18}")  # fmt: skip
    assert done.returncode != 0
    assert f"cannot resolve {missing} to a digest" in done.stderr


def in_image(image: Built, *argv: str, options: tuple[str, ...] = ()) -> list[str]:
    """`buildah run` argv in a working container of the image, as the image's user."""
    return [
        *image.buildah.argv,
        "run",
        "--isolation",
        "chroot",
        *options,
        image.container,
        "--",
        *argv,
    ]


def test_the_package_runs_as_the_non_root_user(image: Built) -> None:
    script = (
        "import getpass, os, sys, kopf, kubernetes, pgherd.controller.handlers\n"
        "print(os.getuid(), os.getgid(), getpass.getuser(), sys.executable, "
        "os.path.realpath(sys.executable), '%d.%d' % sys.version_info[:2])\n"
    )
    done = subprocess.run(
        in_image(image, "python", "-c", script),
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    uid, gid, user, exe, real, version = done.stdout.split()
    assert (uid, gid, user) == ("65532", "65532", "pgherd")
    # The virtualenv's interpreter is the base's python3 (Debian's, in /usr/bin here).
    assert exe == "/opt/pgherd/bin/python"
    assert real.startswith("/usr/") and version == "3.11"
    done = subprocess.run(
        in_image(image, "pgherd", "operator", "--help"),
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert "--health-port" in done.stdout


def test_entrypoint_logs_json_and_serves_its_liveness_probe(image: Built) -> None:
    # An API server that is not there: a port nothing listens on. The operator starts, logs
    # its retries, and its liveness endpoint (host network under chroot isolation) answers.
    kubeconfig = image.workdir / "kubeconfig"
    kubeconfig.write_text(
        "apiVersion: v1\nkind: Config\n"
        f"clusters: [{{name: c, cluster: {{server: 'https://127.0.0.1:{processes.free_port()}'}}}}]\n"
        "users: [{name: u, user: {token: not-a-token}}]\n"
        "contexts: [{name: c, context: {cluster: c, user: u}}]\ncurrent-context: c\n"
    )
    config = image.buildah.inspect_image(image.tag)["OCIv1"]["config"]
    port = processes.free_port()
    # The entrypoint as a kubelet runs it: ENTRYPOINT, with args replacing CMD.
    argv = in_image(
        image,
        *config["Entrypoint"],
        f"--health-port={port}",
        options=(
            f"--volume={kubeconfig}:/etc/pgherd/kubeconfig:ro",
            "--env=KUBECONFIG=/etc/pgherd/kubeconfig",
        ),
    )
    log = image.workdir / "operator.log"
    proc = processes.start("operator-image", argv, log, die_with_parent=True)
    health = f"http://127.0.0.1:{port}/healthz"
    try:
        deadline = time.monotonic() + 60
        status = None
        while time.monotonic() < deadline and status is None and proc.alive():
            try:
                with urllib.request.urlopen(health, timeout=2) as response:
                    status = response.status
            except OSError:
                time.sleep(0.5)
        assert status == 200, processes.tail(log)
        while "failed; will retry" not in log.read_text() and time.monotonic() < deadline:
            time.sleep(0.5)
    finally:
        processes.stop([proc])
    lines = [line for line in log.read_text().splitlines() if line.startswith("{")]
    assert lines, processes.tail(log)
    records = [json.loads(line) for line in lines]
    assert {"message", "timestamp", "severity"} <= set(records[0]), lines[0]
    # pgherd's own start-up handler ran (the handlers module loaded in the image).
    assert any(r["message"] == "Activity '_configure' succeeded." for r in records), lines
    assert any(r["severity"] == "error" and "will retry" in r["message"] for r in records), (
        processes.tail(log)
    )
    # Stopping buildah run stopped the operator in the image too.
    with pytest.raises(OSError):
        urllib.request.urlopen(health, timeout=2)
