"""The operand image of one PostgreSQL major, built once per set of inputs and kept unpacked.

images/postgres/Dockerfile is built with buildah on the local Debian base (hack/base-image.sh),
pushed to an OCI layout and unpacked with umoci into a root filesystem, all in a cache outside
the clone (beside the tools: ~/.cache/pgherd/operand-images/<major>-<key>/). The key is a hash
of everything the build reads: the Dockerfile, .dockerignore, the lock files, pyproject.toml,
README.md, hack/base-image.sh (the base's recipe) and operator/pgherd, the only package the
image installs (pyproject.toml), as git lists it (file contents, so uncommitted edits count;
the dev tools beside it are not in the key). A second call with unchanged inputs builds
nothing.

Users: tests/unit/test_operator_image.py (copies the OCI layout to its local registry instead
of building again) and the test kubelet's image mode (pgherd_dev.kubelet runs a pod whose image
is in its index inside the unpacked root filesystem; tests/cluster/test_image_rootfs.py).
`python -m pgherd_dev.operand_image 15` builds (or finds) one and prints its paths.
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import json
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pgherd_dev.errors import DevError
from pgherd_dev.images import (
    LOCAL_BASE_IMAGE,
    REPO_ROOT,
    Buildah,
    host_ca_bundle,
    require_command,
)
from pgherd_dev.tools import cache_dir

DOCKERFILE = "images/postgres/Dockerfile"
# Files at the root of the build context the Dockerfile reads (see .dockerignore).
_ROOT_INPUTS = (
    DOCKERFILE,
    ".dockerignore",
    "pyproject.toml",
    "README.md",
    "requirements-operand.lock",
    "requirements-postgres18.lock",
    "hack/base-image.sh",
)
# The name the OCI layout gives the image (`oci:<layout>:<tag>`).
LAYOUT_TAG = "operand"
# Bump when this module's build or unpack steps change: part of the key.
_REVISION = "1"


def cache_root() -> Path:
    """Where the built images live: beside the tool cache, shared by every clone."""
    return cache_dir().parent / "operand-images"


@dataclass(frozen=True)
class OperandImage:
    """One built operand image: its OCI layout and the unpacked root filesystem."""

    major: int
    key: str
    directory: Path
    build_seconds: float | None  # None: found in the cache, nothing built
    unpack_seconds: float | None

    @property
    def layout(self) -> Path:
        return self.directory / "oci"

    @property
    def oci_ref(self) -> str:
        """The image as skopeo and buildah name it in the layout."""
        return f"oci:{self.layout}:{LAYOUT_TAG}"

    @property
    def rootfs(self) -> Path:
        return self.directory / "bundle" / "rootfs"

    @property
    def reference(self) -> str:
        """The tag clusters name in spec.image and the test kubelet's image index knows."""
        return f"localhost/pgherd/postgres:{self.major}-{self.key}"

    def config(self) -> dict[str, Any]:
        """The image's OCI config section (User, Entrypoint, Cmd, Env, WorkingDir)."""
        found: dict[str, Any] = json.loads((self.directory / "config.json").read_text())
        return found


def _source_files() -> list[str]:
    """The files of the package the image installs: tracked and untracked-but-not-ignored."""
    done = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z", "operator/pgherd"],
        cwd=REPO_ROOT,
        capture_output=True,
        check=False,
        timeout=60,
    )
    if done.returncode != 0:
        raise DevError(f"git ls-files failed: {done.stderr.decode().strip()}")
    names = {n for n in done.stdout.decode().split("\0") if n}
    return sorted(n for n in names if "__pycache__" not in n and (REPO_ROOT / n).is_file())


def inputs_key(major: int) -> str:
    """A hash of everything the build of major reads (12 hex digits)."""
    digest = hashlib.sha256(f"revision={_REVISION} major={major}\n".encode())
    for name in [*_ROOT_INPUTS, *_source_files()]:
        digest.update(name.encode() + b"\0")
        digest.update((REPO_ROOT / name).read_bytes())
        digest.update(b"\0")
    return digest.hexdigest()[:12]


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    """One build of a key at a time (two test sessions, or two tests in one)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _complete(directory: Path) -> bool:
    return (directory / "done").is_file()


def operand_image(major: int, *, timeout: float = 1500) -> OperandImage:
    """The operand image of major: built and unpacked unless the cache has it."""
    key = inputs_key(major)
    directory = cache_root() / f"{major}-{key}"
    with _locked(cache_root() / f".{major}-{key}.lock"):
        if _complete(directory):
            (directory / "done").touch()  # in use: _prune keeps it
            return OperandImage(major, key, directory, None, None)
        shutil.rmtree(directory, ignore_errors=True)
        work = Path(tempfile.mkdtemp(prefix=f".{major}-{key}.", dir=cache_root()))
        work.chmod(0o755)
        try:
            build_seconds = _build(major, work, timeout)
            unpack_seconds = _unpack(work)
            (work / "done").write_text(
                json.dumps({"build_seconds": build_seconds, "unpack_seconds": unpack_seconds})
            )
            work.rename(directory)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        _prune(major, keep=directory)
    return OperandImage(major, key, directory, build_seconds, unpack_seconds)


def build(buildah: Buildah, major: int, tag: str, *, scratch: Path, timeout: float = 1500) -> None:
    """buildah build of images/postgres/Dockerfile for major, as tag, on the local base
    (which must be imported into buildah's storage first: Buildah.import_base_image).

    Its build has no CA-bundle secret like Dockerfile's: where TLS to PyPI is intercepted, the
    host's CA bundle and a pip.conf naming it are mounted for the RUN steps only (buildah
    volumes are never part of an image)."""
    volumes = []
    if ca := host_ca_bundle():
        conf = scratch / "pip.conf"
        conf.write_text("[global]\ncert = /etc/pgherd-build-ca.pem\n")
        volumes = ["-v", f"{ca}:/etc/pgherd-build-ca.pem:ro", "-v", f"{conf}:/etc/pip.conf:ro"]
    buildah.run(
        "build",
        "--isolation",
        "chroot",
        "-f",
        DOCKERFILE,
        "--build-arg",
        f"BASE_IMAGE={LOCAL_BASE_IMAGE}",
        "--build-arg",
        f"PG_MAJOR={major}",
        *volumes,
        "-t",
        tag,
        ".",
        cwd=REPO_ROOT,
        timeout=timeout,
    )


def _build(major: int, work: Path, timeout: float) -> float:
    """Build into a private buildah storage, push to work/oci, drop the storage (vfs keeps a
    full copy of the root per layer: hundreds of MB not worth keeping)."""
    begin = time.monotonic()
    buildah = Buildah(work / "buildah")
    tag = f"localhost/pgherd/postgres:{major}-build"
    try:
        buildah.import_base_image()
        build(buildah, major, tag, scratch=work, timeout=timeout)
        buildah.run("push", tag, f"oci:{work / 'oci'}:{LAYOUT_TAG}")
    finally:
        shutil.rmtree(work / "buildah", ignore_errors=True)
    return time.monotonic() - begin


def _unpack(work: Path) -> float:
    seconds = unpack(work / "oci", work / "bundle")
    (work / "config.json").write_text(json.dumps(image_config(work / "oci")))
    return seconds


def unpack(layout: Path, bundle: Path) -> float:
    """umoci unpack of the layout's image into bundle/rootfs, as root: the files keep the
    image's owners (postgres is 999). Returns the seconds it took."""
    begin = time.monotonic()
    umoci = require_command("umoci")
    done = subprocess.run(
        [umoci, "unpack", "--image", f"{layout}:{LAYOUT_TAG}", str(bundle)],
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
    )
    if done.returncode != 0:
        raise DevError(f"umoci unpack failed:\n{done.stderr.strip()[-3000:]}")
    return time.monotonic() - begin


def image_config(layout: Path) -> dict[str, Any]:
    """The `config` section (User, Entrypoint, Cmd, Env, WorkingDir) of the image's OCI config
    in a layout: index.json -> manifest -> config blob."""

    def blob(digest: str) -> dict[str, Any]:
        algorithm, _, value = digest.partition(":")
        found: dict[str, Any] = json.loads((layout / "blobs" / algorithm / value).read_text())
        return found

    (entry,) = json.loads((layout / "index.json").read_text())["manifests"]
    manifest = blob(entry["digest"])
    config: dict[str, Any] = blob(manifest["config"]["digest"])["config"]
    return config


def _prune(major: int, keep: Path) -> None:
    """Builds of the major unused for two days go (each is a root filesystem of a few hundred
    MB); younger ones stay, as another clone on the machine may be using them."""
    for old in cache_root().glob(f"{major}-*"):
        done = old / "done"
        stale = not done.exists() or time.time() - done.stat().st_mtime > 2 * 86400
        if old != keep and old.is_dir() and stale:
            shutil.rmtree(old, ignore_errors=True)
            old.with_name(f".{old.name}.lock").unlink(missing_ok=True)


def sizes(image: OperandImage) -> dict[str, float]:
    """MiB of the unpacked root filesystem and of the OCI layout (compressed layers)."""

    def mib(path: Path) -> float:
        done = subprocess.run(
            ["du", "-sk", str(path)], capture_output=True, text=True, check=True, timeout=120
        )
        return int(done.stdout.split()[0]) / 1024

    return {"rootfs_mib": round(mib(image.rootfs), 1), "oci_mib": round(mib(image.layout), 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("major", type=int, choices=(15, 18))
    args = parser.parse_args()
    try:
        image = operand_image(args.major)
    except DevError as e:
        sys.exit(str(e))
    print(
        json.dumps(
            {
                "reference": image.reference,
                "rootfs": str(image.rootfs),
                "oci": image.oci_ref,
                "build_seconds": image.build_seconds,
                "unpack_seconds": image.unpack_seconds,
                **sizes(image),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
