"""Container images without a container engine: buildah builds, a local registry serves.

`LocalRegistry` runs Debian's docker-registry on a free 127.0.0.1 port with its storage in a
directory of its own; `Buildah` runs buildah as root with the vfs storage driver and chroot
isolation (what works without an engine or user namespaces) against a private storage root,
so nothing touches the machine's own image store. Tests use both to prove that the bundle
image built from bundle.Dockerfile reads back, through a registry, as the bundle directory,
and that the operator image built from Dockerfile, on the Debian base hack/base-image.sh
makes with debootstrap (no image registry is needed for it), runs its entrypoint.
"""

from __future__ import annotations

import json
import os
import shutil
import ssl
import subprocess
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pgherd_dev import processes
from pgherd_dev.errors import DevError

REPO_ROOT = Path(__file__).resolve().parents[2]
BASE_IMAGE_SCRIPT = REPO_ROOT / "hack" / "base-image.sh"
# The tag hack/base-image.sh gives the Debian bookworm base it imports (`make base-image`).
LOCAL_BASE_IMAGE = "localhost/pgherd-base:bookworm"

# Debian package providing each command; `make deps` installs them.
DEBIAN_PACKAGES = {
    "buildah": "buildah",
    "docker-registry": "docker-registry",
    "skopeo": "skopeo",
    "debootstrap": "debootstrap",
}


def require_command(name: str) -> str:
    """Path of a Debian-packaged command, or a DevError saying how to install it."""
    path = shutil.which(name)
    if path is None:
        raise DevError(
            f"{name} is not installed. Run `make deps` as root (or `apt-get install "
            f"{DEBIAN_PACKAGES.get(name, name)}`)."
        )
    return path


class LocalRegistry(processes.Server):
    """An OCI registry on 127.0.0.1:<free port>, plain HTTP, stopped on exit."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.port = processes.free_port()

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def log(self) -> Path:
        return self.workdir / "registry.log"

    def __enter__(self) -> LocalRegistry:
        binary = require_command("docker-registry")
        self.workdir.mkdir(parents=True, exist_ok=True)
        config = self.workdir / "config.yml"
        config.write_text(
            "version: 0.1\n"
            "log:\n  level: warn\n"
            f"storage:\n  filesystem:\n    rootdirectory: {self.workdir / 'data'}\n"
            f"http:\n  addr: {self.host}\n"
        )
        proc = processes.start(
            "docker-registry", [binary, "serve", str(config)], self.log, die_with_parent=True
        )

        def answers() -> bool:
            with urllib.request.urlopen(f"http://{self.host}/v2/", timeout=2):
                return True

        self._await_ready(
            proc, answers, 15, f"docker-registry did not answer on {self.host}; see {self.log}"
        )
        return self


class Buildah:
    """buildah with a private vfs storage root under workdir."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.binary = require_command("buildah")

    @property
    def argv(self) -> list[str]:
        """The buildah command with this instance's storage options."""
        return [
            self.binary,
            "--storage-driver",
            "vfs",
            "--root",
            str(self.workdir / "storage"),
            "--runroot",
            str(self.workdir / "run"),
        ]

    def run(self, *args: str, cwd: Path | None = None, timeout: float = 300) -> str:
        argv: Sequence[str] = [*self.argv, *args]
        done = subprocess.run(
            argv, cwd=cwd, capture_output=True, text=True, check=False, timeout=timeout
        )
        if done.returncode != 0:
            raise DevError(f"`{' '.join(argv)}` failed:\n{done.stderr.strip()[-3000:]}")
        return done.stdout

    def build(
        self,
        context: Path,
        dockerfile: str,
        tag: str,
        *build_args: str,
        secrets: Mapping[str, Path] | None = None,
        timeout: float = 300,
    ) -> None:
        extra = [a for arg in build_args for a in ("--build-arg", arg)]
        extra += [
            a for key, src in (secrets or {}).items() for a in ("--secret", f"id={key},src={src}")
        ]
        self.run(
            "build",
            "--isolation",
            "chroot",
            "-f",
            dockerfile,
            "-t",
            tag,
            *extra,
            ".",
            cwd=context,
            timeout=timeout,
        )

    def push(self, tag: str) -> None:
        self.run("push", "--tls-verify=false", tag, f"docker://{tag}")

    def inspect_image(self, tag: str) -> dict[str, Any]:
        """buildah's view of an image: OCIv1 (config, rootfs), Docker, manifests."""
        found: dict[str, Any] = json.loads(self.run("inspect", "--type", "image", tag))
        return found

    def import_base_image(self, tag: str = LOCAL_BASE_IMAGE, timeout: float = 900) -> str:
        """Import the Debian base of hack/base-image.sh (debootstrap, cached outside the
        clone) into this storage as tag; the first run on a machine makes the root first."""
        if any(" " in a for a in self.argv):
            raise DevError(f"hack/base-image.sh splits BUILDAH on spaces: {self.argv}")
        require_command("debootstrap")
        done = subprocess.run(
            [str(BASE_IMAGE_SCRIPT), tag],
            capture_output=True,
            text=True,
            check=False,
            timeout=timeout,
            env={**os.environ, "BUILDAH": " ".join(self.argv)},
        )
        if done.returncode != 0:
            raise DevError(f"hack/base-image.sh failed:\n{done.stderr.strip()[-3000:]}")
        return tag


def host_ca_bundle() -> Path | None:
    """The CA bundle this machine's pip trusts, for an image build's pip to trust as well
    (the `ca-bundle` build secret of Dockerfile): needed where TLS to PyPI is intercepted."""
    paths = ssl.get_default_verify_paths()
    for candidate in (
        os.environ.get("PIP_CERT"),
        os.environ.get("SSL_CERT_FILE"),
        paths.cafile,
        paths.openssl_cafile,
    ):
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    return None
