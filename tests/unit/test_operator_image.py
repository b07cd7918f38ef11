"""The operator image, built from the real Dockerfile, runs the operator.

No image registry is reachable here, so the base is made locally: hack/base-image.sh makes a
Debian bookworm root with python3 and python3-venv by debootstrap (cached outside the clone;
about a minute the first time on a machine) and imports it into a private buildah storage.
buildah builds Dockerfile on it (pip installs requirements-operator.lock from PyPI, hashes
checked), the image is pushed to a local registry and its config read back from there, and
its entrypoint runs (buildah run, chroot isolation) as the image's non-root user against an
API server that is not there: it logs JSON and answers its liveness probe.
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

from pgherd_dev import processes
from pgherd_dev.errors import DevError
from pgherd_dev.images import Buildah, LocalRegistry, host_ca_bundle, require_command

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
        "import getpass, os, sys, kopf, kubernetes, pgherd.handlers\n"
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
