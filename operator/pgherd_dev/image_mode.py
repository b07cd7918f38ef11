"""The test kubelet's image mode: what it takes from the image and the pod spec to run a
container inside the image's root filesystem (the mounts themselves: pgherd_dev.container).

- `ImageIndex`: the images this node has "pulled": a JSON file mapping an image reference
  to its unpacked root filesystem and its OCI config (Env, Entrypoint, Cmd, User,
  WorkingDir), re-read when it changes. A pod whose container image is in it runs in image
  mode; any other pod runs as before (host mode).
- `apply_fs_group`: volumes as the pod's fsGroup makes them (the group owns them, setgid
  directories, group-readable files), since the process runs as the pod's own uid.
- `container_spec`: the container's process as a runtime derives it: command/args over the
  image's Entrypoint/Cmd, the image's Env under the pod's, uid/gid/groups from the pod's
  securityContext over the image's USER, readOnlyRootFilesystem, no_new_privs, and the
  refusals a restricted runtime would make (runAsNonRoot with uid 0, added capabilities).
"""

from __future__ import annotations

import json
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Where a pod's ServiceAccount credentials are mounted (the API server's admission adds this
# projected volume to every pod with automountServiceAccountToken).
SERVICE_ACCOUNT_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"


class CannotRun(Exception):
    """The pod spec asks for something this runtime refuses (CreateContainerConfigError)."""


@dataclass(frozen=True)
class Image:
    """An image this node has, unpacked."""

    reference: str
    rootfs: Path
    config: dict[str, Any]  # the OCI image config's `config` section


class ImageIndex:
    """image reference -> Image, from a JSON file {"images": {ref: {"rootfs", "config"}}}."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._mtime: float | None = None
        self._images: dict[str, Image] = {}

    def get(self, reference: str) -> Image | None:
        if self.path is None:
            return None
        try:
            mtime = self.path.stat().st_mtime
        except FileNotFoundError:
            self._images, self._mtime = {}, None
            return None
        if mtime != self._mtime:
            raw = json.loads(self.path.read_text())
            self._images = {
                ref: Image(ref, Path(entry["rootfs"]), dict(entry.get("config") or {}))
                for ref, entry in raw.get("images", {}).items()
            }
            self._mtime = mtime
        return self._images.get(reference)


def add_image(index: Path, reference: str, rootfs: Path, config: dict[str, Any]) -> None:
    """Record an unpacked image in an index file (atomically: the kubelet may be reading)."""
    raw = json.loads(index.read_text()) if index.exists() else {}
    raw.setdefault("images", {})[reference] = {"rootfs": str(rootfs), "config": config}
    tmp = index.with_suffix(".tmp")
    tmp.write_text(json.dumps(raw, indent=2))
    tmp.replace(index)


def file_mode(vol: dict[str, Any]) -> int:
    """A Secret or ConfigMap volume's files' mode: defaultMode (0644 by default), group-readable
    as fsGroup makes them."""
    source = vol.get("secret") or vol.get("configMap") or vol.get("projected") or {}
    return int(source.get("defaultMode", 0o644)) | 0o040


def apply_fs_group(target: Path, vol: dict[str, Any], fs_group: int) -> None:
    """Ownership as a kubelet's SetVolumeOwnership makes it: group fsGroup, setgid directories,
    group read (and write, for writable volumes) on everything. A persistent volume is changed
    only when its root does not match yet (fsGroupChangePolicy OnRootMismatch); emptyDirs are
    world-writable directories, as a kubelet makes them."""
    root = target.resolve()
    if not root.exists():
        return
    if "emptyDir" in vol:
        _own(root, fs_group, 0o2777)
        return
    if "persistentVolumeClaim" in vol or "ephemeral" in vol:
        st = root.stat()
        if st.st_gid == fs_group and st.st_mode & stat.S_ISGID:
            return
        for path in [root, *root.rglob("*")]:
            if path.is_symlink():
                continue
            mode = path.stat().st_mode
            extra = 0o2070 if path.is_dir() else (0o060 | (0o010 if mode & 0o100 else 0))
            _own(path, fs_group, stat.S_IMODE(mode) | extra)
        return
    mode = file_mode(vol)
    for path in [root, *root.rglob("*")]:
        if path.is_dir():
            _own(path, fs_group, 0o2755)
        elif not path.name.endswith(".tmp"):
            _own(path, fs_group, mode)


def _own(path: Path, gid: int, mode: int) -> None:
    st = path.stat()
    if st.st_gid != gid:
        os.chown(path, -1, gid)
    if stat.S_IMODE(st.st_mode) != mode or st.st_gid != gid:
        path.chmod(mode)


def _passwd_home(rootfs: Path, uid: int) -> str:
    """The user's home in the image's /etc/passwd (what a runtime sets HOME to), else /."""
    try:
        for line in (rootfs / "etc" / "passwd").read_text().splitlines():
            fields = line.split(":")
            if len(fields) >= 6 and fields[2] == str(uid):
                return fields[5]
    except OSError:
        pass
    return "/"


def container_spec(
    pod: dict[str, Any],
    image: Image,
    env: dict[str, str],
    argv: list[str],
    container: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """What pgherd_dev.container needs, less the host paths (the kubelet adds them).

    env: the container's resolved environment; argv: its command and args, expanded (empty
    when the container gives neither: then the image's Entrypoint and Cmd); container: the
    one to run (an init container), by default the pod's main container."""
    if container is None:
        container = pod["spec"]["containers"][0]
    pod_sc = pod["spec"].get("securityContext") or {}
    sc = container.get("securityContext") or {}
    user, _, group = str(image.config.get("User") or "0").partition(":")
    if not user.isdigit() or (group and not group.isdigit()):
        raise CannotRun(f"image {image.reference} names its user by name ({user}): use a uid")
    uid = int(sc.get("runAsUser", pod_sc.get("runAsUser", user)))
    gid = int(sc.get("runAsGroup", pod_sc.get("runAsGroup", group or 0)))
    if sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot")) and uid == 0:
        raise CannotRun("runAsNonRoot is set and the container would run as uid 0")
    caps = sc.get("capabilities") or {}
    if caps.get("add"):
        raise CannotRun(f"capabilities.add {caps['add']} is not supported by the test kubelet")
    groups = [int(g) for g in pod_sc.get("supplementalGroups", [])]
    if "fsGroup" in pod_sc:
        groups.append(int(pod_sc["fsGroup"]))
    if not argv:
        argv = [*(image.config.get("Entrypoint") or []), *(image.config.get("Cmd") or [])]
    if not argv:
        raise CannotRun(f"image {image.reference} has no entrypoint and the pod gives no command")
    image_env = dict(e.split("=", 1) for e in image.config.get("Env") or [] if "=" in e)
    return {
        "image": str(image.rootfs),
        "uid": uid,
        "gid": gid,
        "groups": sorted(set(groups)),
        # allowPrivilegeEscalation defaults to true, as in Kubernetes.
        "noNewPrivs": sc.get("allowPrivilegeEscalation") is False,
        "readOnlyRoot": bool(sc.get("readOnlyRootFilesystem")),
        "cwd": container.get("workingDir") or image.config.get("WorkingDir") or "/",
        "hostname": pod["metadata"]["name"],
        "argv": argv,
        "env": {"HOME": _passwd_home(image.rootfs, uid), **image_env, **env},
    }
