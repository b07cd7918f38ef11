"""The test kubelet's container setup in image mode: runs as PID 1 of a new PID, mount, IPC
and UTS namespace (`unshare`, started by pgherd_dev.kubelet), makes the container's root
filesystem from an unpacked image and the pod's volumes, then becomes the container's process.

In order, as a container runtime would:
1. the image's root filesystem (the unpacked, shared, never written rootfs) under an overlay
   whose upper layer is the container's own (mount points are made there, and with a
   writable root so are the process's writes);
2. /proc (this PID namespace's), /sys read-only, a minimal /dev (null, zero, full, random,
   urandom, tty bound from the host's; fd/stdin/stdout/stderr links; a 64 MiB /dev/shm
   unless the pod mounts one);
3. every volume bound at its mountPath, read-only where the mount says so, parents first;
4. the root made read-only (readOnlyRootFilesystem), the hostname set to the pod's name;
5. chroot into it, chdir to the working directory, and exec the image's own `setpriv`: the
   pod's uid, gid and supplementary groups (fsGroup), no_new_privs, no capabilities at all
   (bounding, inheritable and ambient sets emptied), then the container's command.

Only the standard library: this runs from the kubelet's interpreter, and nothing may be
loaded after the chroot. Everything mounted here lives in the container's mount namespace
and goes with its last process.
"""

from __future__ import annotations

import ctypes
import json
import os
import socket
import sys
from pathlib import PurePosixPath
from typing import Any

MS_RDONLY = 0x1
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_NOEXEC = 0x8
MS_REMOUNT = 0x20
MS_BIND = 0x1000
MS_REC = 0x4000

_libc = ctypes.CDLL("libc.so.6", use_errno=True)
SHM = "/dev/shm"  # noqa: S108 - the container's own, a tmpfs of its mount namespace
DEVICES = ("null", "zero", "full", "random", "urandom", "tty")


def mount(source: str, target: str, fstype: str | None, flags: int, data: str = "") -> None:
    if (
        _libc.mount(
            source.encode(),
            target.encode(),
            fstype.encode() if fstype else None,
            ctypes.c_ulong(flags),
            data.encode() if data else None,
        )
        != 0
    ):
        errno = ctypes.get_errno()
        raise OSError(
            errno, f"mount {source} on {target} ({fstype or 'bind'}): {os.strerror(errno)}"
        )


def in_root(root: str, path: str) -> str:
    """path resolved inside root as the chrooted process would see it: symlinks (Debian's
    /var/run -> /run) are followed within root, never out of it."""
    resolved = PurePosixPath("/")
    parts = list(PurePosixPath(path).parts[1:])
    hops = 0
    while parts:
        part = parts.pop(0)
        if part in ("", "."):
            continue
        if part == "..":
            resolved = resolved.parent
            continue
        host = os.path.join(root, str(resolved.relative_to("/")), part)
        if os.path.islink(host):
            hops += 1
            if hops > 40:
                raise OSError(f"too many symbolic links under {path}")
            link = PurePosixPath(os.readlink(host))
            parts = [*link.parts[1:], *parts] if link.is_absolute() else [*link.parts, *parts]
            if link.is_absolute():
                resolved = PurePosixPath("/")
            continue
        resolved = resolved / part
    return os.path.join(root, str(resolved.relative_to("/")))


def mount_point(root: str, path: str, *, is_file: bool) -> str:
    """The mount point for path inside root, made if missing (in the overlay's upper layer)."""
    target = in_root(root, path)
    if is_file:
        os.makedirs(os.path.dirname(target), exist_ok=True)
        if not os.path.exists(target):
            with open(target, "a"):
                pass
    else:
        os.makedirs(target, exist_ok=True)
    return target


def bind(source: str, target: str, *, read_only: bool) -> None:
    mount(source, target, None, MS_BIND | MS_REC)
    if read_only:
        mount("", target, None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV)


def setup(spec: dict[str, Any]) -> str:
    """Make the container's root filesystem; returns its path (not yet the root)."""
    root = spec["merged"]
    mount(
        "overlay",
        root,
        "overlay",
        0,
        f"lowerdir={spec['image']},upperdir={spec['upper']},workdir={spec['work']}",
    )
    # A bind of the root onto itself: its own mount, so it can be made read-only alone.
    mount(root, root, None, MS_BIND)
    mount(
        "proc", mount_point(root, "/proc", is_file=False), "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC
    )
    mount("sysfs", mount_point(root, "/sys", is_file=False), "sysfs",
          MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC)  # fmt: skip
    dev = mount_point(root, "/dev", is_file=False)
    mount("tmpfs", dev, "tmpfs", MS_NOSUID | MS_NOEXEC, "mode=755,size=64k")
    for name in DEVICES:
        if os.path.exists(f"/dev/{name}"):
            bind(f"/dev/{name}", mount_point(root, f"/dev/{name}", is_file=True), read_only=False)
    for name, target in (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"),
                         ("stdout", "/proc/self/fd/1"), ("stderr", "/proc/self/fd/2")):  # fmt: skip
        os.symlink(target, os.path.join(dev, name))
    mounts = sorted(spec["mounts"], key=lambda m: len(PurePosixPath(m["target"]).parts))
    if not any(m["target"].rstrip("/") == SHM for m in mounts):
        mount("shm", mount_point(root, SHM, is_file=False), "tmpfs",
              MS_NOSUID | MS_NODEV | MS_NOEXEC, "mode=1777,size=64m")  # fmt: skip
    for m in mounts:
        is_file = os.path.isfile(m["source"])
        bind(m["source"], mount_point(root, m["target"], is_file=is_file), read_only=m["readOnly"])
    if spec["readOnlyRoot"]:
        mount("", root, None, MS_REMOUNT | MS_BIND | MS_RDONLY)
    return str(root)


def main() -> None:
    with open(sys.argv[1]) as f:
        spec = json.load(f)
    os.unlink(sys.argv[1])  # the environment it holds (Secret values) is read: gone
    root = setup(spec)
    socket.sethostname(spec["hostname"])
    os.chroot(root)
    os.chdir(spec["cwd"])
    setpriv = [
        "/usr/bin/setpriv",
        f"--reuid={spec['uid']}",
        f"--regid={spec['gid']}",
        f"--groups={','.join(str(g) for g in spec['groups'])}"
        if spec["groups"]
        else "--clear-groups",
        "--inh-caps=-all",
        "--ambient-caps=-all",
        "--bounding-set=-all",
        *(["--no-new-privs"] if spec["noNewPrivs"] else []),
        "--",
        *spec["argv"],
    ]
    os.execve(setpriv[0], setpriv, spec["env"])  # noqa: S606 - the container's own command


if __name__ == "__main__":
    main()
