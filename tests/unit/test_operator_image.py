"""The operator image, built from the real Dockerfile, runs the operator; the operand image
builds from images/postgres/Dockerfile; the bundle pins both by digest.

No image registry is reachable here, so the base is made locally: hack/base-image.sh makes a
Debian bookworm root with python3 and python3-venv by debootstrap (cached outside the clone;
about a minute the first time on a machine) and imports it into a private buildah storage.
buildah builds Dockerfile on it (pip installs requirements-operator.lock from PyPI, hashes
checked), the image is pushed to a local registry and its config read back from there, and
its entrypoint runs (buildah run, chroot isolation) as the image's non-root user against an
API server that is not there: it logs JSON and answers its liveness probe. The operand image
(PostgreSQL 15 from Debian, Patroni, barman-cloud, pgherd; about 4 minutes) is built on the
same base and pushed beside it, so that `make bundle USE_IMAGE_DIGESTS=true` resolves both
from the registry.
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
    LOCAL_BASE_IMAGE,
    Buildah,
    LocalRegistry,
    host_ca_bundle,
    require_command,
)
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


@pytest.fixture(scope="module")
def operand(image: Built) -> str:
    """images/postgres/Dockerfile built on the same base and pushed; returns its tag.

    Its build has no CA-bundle secret like Dockerfile's: where TLS to PyPI is intercepted, the
    host's CA bundle and a pip.conf naming it are mounted for the RUN steps only (buildah
    volumes are never part of an image)."""
    tag = f"{image.registry.host}/pgherd/postgres:15-test"
    volumes = []
    if ca := host_ca_bundle():
        conf = image.workdir / "pip.conf"
        conf.write_text("[global]\ncert = /etc/pgherd-build-ca.pem\n")
        volumes = ["-v", f"{ca}:/etc/pgherd-build-ca.pem:ro", "-v", f"{conf}:/etc/pip.conf:ro"]
    begin = time.monotonic()
    try:
        image.buildah.run(
            "build",
            "--isolation",
            "chroot",
            "-f",
            "images/postgres/Dockerfile",
            "--build-arg",
            f"BASE_IMAGE={LOCAL_BASE_IMAGE}",
            *volumes,
            "-t",
            tag,
            ".",
            cwd=REPO,
            timeout=1500,
        )
        image.buildah.push(tag)
    except DevError as e:
        pytest.fail(str(e), pytrace=False)
    print(f"operand image built and pushed in {time.monotonic() - begin:.0f}s")
    return tag


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


def test_platforms_are_the_ones_the_csv_declares(image: Built, operand: str) -> None:
    """docs/images.md: both images are built for linux/amd64 only; the CSV's arch/os labels
    and the operator's node affinity (pgherd_packaging.manifests.ARCHITECTURES,
    OPERATING_SYSTEMS) say the same."""
    for ref in (image.tag, operand):
        config = skopeo_inspect(ref, "--config")
        assert [config["os"]] == list(manifests.OPERATING_SYSTEMS), ref
        assert [config["architecture"]] == list(manifests.ARCHITECTURES), ref
    operand_config = skopeo_inspect(operand, "--config")["config"]
    assert operand_config["User"] == "999:999"
    assert operand_config["Entrypoint"] == ["pgherd", "instance"]


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
    image: Built, operand: str, tmp_path: Path
) -> None:
    """operator-sdk's convention: USE_IMAGE_DIGESTS=true resolves every image of the bundle in
    its registry (here the local one the images were pushed to) and pins containerImage, the
    Deployment, RELATED_IMAGE_POSTGRES and relatedImages to those digests."""
    digest = skopeo_inspect(image.tag)["Digest"]
    operand_digest = skopeo_inspect(operand)["Digest"]
    root = tmp_path / "root"
    done = make_bundle(image, root, f"IMG={image.tag}", f"OPERAND_IMAGE={operand}")
    assert done.returncode == 0, done.stdout + done.stderr
    csv = yaml.safe_load((root / "bundle" / "manifests" / bundle.CSV_FILE).read_text())
    pinned = f"{image.tag.rsplit(':', 1)[0]}@{digest}"
    pinned_operand = f"{operand.rsplit(':', 1)[0]}@{operand_digest}"
    (deployment,) = csv["spec"]["install"]["spec"]["deployments"]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert csv["metadata"]["annotations"]["containerImage"] == pinned
    assert container["image"] == pinned
    assert env["RELATED_IMAGE_POSTGRES"] == pinned_operand
    assert {r["image"] for r in csv["spec"]["relatedImages"]} == {pinned, pinned_operand}
    # Every image by digest, and the operator takes the operand from RELATED_IMAGE_POSTGRES.
    assert csv["metadata"]["annotations"]["features.operators.openshift.io/disconnected"] == "true"
    # The pinned references pull: the registry serves exactly those manifests.
    assert skopeo_inspect(pinned)["Digest"] == digest

    # A reference the registry does not serve stops the build, naming it.
    missing = f"{image.registry.host}/pgherd/postgres:not-pushed"
    done = make_bundle(image, tmp_path / "again", f"IMG={image.tag}", f"OPERAND_IMAGE={missing}")
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
