"""Container images without a container engine: buildah builds, a local registry serves.

`LocalRegistry` runs Debian's docker-registry on a free 127.0.0.1 port with its storage in a
directory of its own; `Buildah` runs buildah as root with the vfs storage driver and chroot
isolation (what works without an engine or user namespaces) against a private storage root,
so nothing touches the machine's own image store. Tests use both to prove that the bundle
image built from bundle.Dockerfile reads back, through a registry, as the bundle directory.
"""

from __future__ import annotations

import shutil
import subprocess
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path

from pgherd_dev import processes
from pgherd_dev.errors import DevError

# Debian package providing each command; `make deps` installs them.
DEBIAN_PACKAGES = {"buildah": "buildah", "docker-registry": "docker-registry", "skopeo": "skopeo"}


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

    def run(self, *args: str, cwd: Path | None = None, timeout: float = 300) -> str:
        argv: Sequence[str] = [
            self.binary,
            "--storage-driver",
            "vfs",
            "--root",
            str(self.workdir / "storage"),
            "--runroot",
            str(self.workdir / "run"),
            *args,
        ]
        done = subprocess.run(
            argv, cwd=cwd, capture_output=True, text=True, check=False, timeout=timeout
        )
        if done.returncode != 0:
            raise DevError(f"`{' '.join(argv)}` failed:\n{done.stderr.strip()[-3000:]}")
        return done.stdout

    def build(self, context: Path, dockerfile: str, tag: str, *build_args: str) -> None:
        extra = [a for arg in build_args for a in ("--build-arg", arg)]
        self.run(
            "build", "--isolation", "chroot", "-f", dockerfile, "-t", tag, *extra, ".", cwd=context
        )

    def push(self, tag: str) -> None:
        self.run("push", "--tls-verify=false", tag, f"docker://{tag}")
