"""The TEST provisioner's real volume sizes (pgherd_dev.provisioner): which classes get a
tmpfs, of what size, and the mount commands; a real mount and remount where this machine
allows one (root)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest

from pgherd_dev import provisioner

MIB = 2**20


@pytest.mark.parametrize(
    ("parameters", "request_", "size"),
    [
        (None, "64Mi", None),
        ({}, "64Mi", None),
        ({"pgherd.dev/tmpfs": "false"}, "64Mi", None),
        ({"pgherd.dev/tmpfs": "true"}, "64Mi", 64 * MIB),
        ({"pgherd.dev/tmpfs": "True"}, "1Gi", 2**30),
        ({"pgherd.dev/tmpfs": "true"}, "100m", None),
    ],
)
def test_tmpfs_bytes(parameters: dict[str, str] | None, request_: str, size: int | None) -> None:
    assert provisioner.tmpfs_bytes(SimpleNamespace(parameters=parameters), request_) == size


def test_mount_commands() -> None:
    path = Path("vol")
    assert provisioner.mount_command(path, MIB, remount=False) == [
        "mount", "-t", "tmpfs", "-o", f"size={MIB},mode=0777", "tmpfs", "vol"
    ]  # fmt: skip
    assert provisioner.mount_command(path, 2 * MIB, remount=True) == [
        "mount", "-o", f"remount,size={2 * MIB}", "vol"
    ]  # fmt: skip


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root")
def test_a_tmpfs_volume_is_mounted_and_grown_in_place(tmp_path: Path) -> None:
    path = tmp_path / "pvc-x"
    try:
        provisioner.mount_tmpfs(path, 4 * MIB)
    except subprocess.CalledProcessError:
        pytest.skip("this machine does not allow tmpfs mounts")
    try:
        assert os.statvfs(path).f_blocks * os.statvfs(path).f_frsize == 4 * MIB
        (path / "kept").write_text("x")
        provisioner.mount_tmpfs(path, 8 * MIB)
        assert os.statvfs(path).f_blocks * os.statvfs(path).f_frsize == 8 * MIB
        assert (path / "kept").read_text() == "x"
    finally:
        subprocess.run(["umount", str(path)], check=False)
