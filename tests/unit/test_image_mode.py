"""The test kubelet's image mode, its pure parts: the container's process from the pod spec and
the image config, volume ownership under fsGroup, paths resolved inside a root filesystem.
(The mounts themselves run in tests/cluster/test_image_rootfs.py.)"""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path
from typing import Any

import pytest

from pgherd_dev.container import in_root
from pgherd_dev.image_mode import (
    CannotRun,
    Image,
    ImageIndex,
    add_image,
    apply_fs_group,
    container_spec,  # fmt: skip
)

CONFIG = {
    "User": "999:999",
    "Env": ["PATH=/opt/pgherd/bin:/usr/bin:/bin", "LANG=C.UTF-8"],
    "Entrypoint": ["pgherd", "instance"],
    "Cmd": ["--verbose"],
    "WorkingDir": "/var/lib/postgresql",
}


def _pod(
    container: dict[str, Any] | None = None, pod_sc: dict[str, Any] | None = None
) -> dict[str, Any]:
    return {
        "metadata": {"name": "db-0", "namespace": "ns"},
        "spec": {
            "securityContext": pod_sc if pod_sc is not None else {"fsGroup": 999},
            "containers": [{"name": "postgres", "image": "img", **(container or {})}],
        },
    }


def _image(tmp_path: Path, config: dict[str, Any] | None = None) -> Image:
    (tmp_path / "etc").mkdir(exist_ok=True)
    (tmp_path / "etc" / "passwd").write_text(
        "root:x:0:0:root:/root:/bin/sh\npostgres:x:999:999::/var/lib/postgresql:/bin/sh\n"
    )
    return Image("img", tmp_path, CONFIG if config is None else config)


RESTRICTED = {
    "allowPrivilegeEscalation": False,
    "capabilities": {"drop": ["ALL"]},
    "readOnlyRootFilesystem": True,
    "runAsNonRoot": True,
}


@pytest.mark.parametrize(
    ("container", "pod_sc", "argv", "expect"),
    [
        # The image's user, entrypoint and cmd; HOME from its /etc/passwd.
        ({}, {}, [], {"uid": 999, "gid": 999, "groups": [], "noNewPrivs": False,
                      "readOnlyRoot": False, "argv": ["pgherd", "instance", "--verbose"]}),
        # pgherd's pods: the pod's ids, fsGroup as a supplementary group, restricted.
        ({"securityContext": RESTRICTED}, {"runAsUser": 26, "runAsGroup": 27, "fsGroup": 28},
         ["pgherd", "instance"], {"uid": 26, "gid": 27, "groups": [28], "noNewPrivs": True,
                                  "readOnlyRoot": True, "argv": ["pgherd", "instance"]}),
        # The container's securityContext wins over the pod's.
        ({"securityContext": {"runAsUser": 1000}}, {"runAsUser": 26, "supplementalGroups": [5]},
         [], {"uid": 1000, "gid": 999, "groups": [5]}),
    ],
)  # fmt: skip
def test_container_process(
    tmp_path: Path,
    container: dict[str, Any],
    pod_sc: dict[str, Any],
    argv: list[str],
    expect: dict[str, Any],
) -> None:
    spec = container_spec(_pod(container, pod_sc), _image(tmp_path), {"A": "1"}, argv)
    assert {k: spec[k] for k in expect} == expect
    assert spec["cwd"] == "/var/lib/postgresql"
    assert spec["hostname"] == "db-0"


def test_environment_the_pods_over_the_images(tmp_path: Path) -> None:
    env = container_spec(_pod(), _image(tmp_path), {"LANG": "C", "X": "y"}, [])["env"]
    assert env == {
        "HOME": "/var/lib/postgresql",
        "PATH": "/opt/pgherd/bin:/usr/bin:/bin",
        "LANG": "C",
        "X": "y",
    }


@pytest.mark.parametrize(
    ("container", "pod_sc", "config", "message"),
    [
        ({"securityContext": {"runAsNonRoot": True}}, {}, {**CONFIG, "User": "0"},
         "runAsNonRoot is set and the container would run as uid 0"),
        ({"securityContext": {"capabilities": {"add": ["NET_ADMIN"]}}}, {}, CONFIG,
         "capabilities.add ['NET_ADMIN'] is not supported"),
        ({}, {}, {**CONFIG, "User": "postgres"}, "names its user by name (postgres): use a uid"),
        ({}, {}, {**CONFIG, "Entrypoint": None, "Cmd": None}, "has no entrypoint"),
    ],
)  # fmt: skip
def test_refused(
    tmp_path: Path,
    container: dict[str, Any],
    pod_sc: dict[str, Any],
    config: dict[str, Any],
    message: str,
) -> None:
    with pytest.raises(CannotRun, match=re.escape(message)):
        container_spec(_pod(container, pod_sc), _image(tmp_path, config), {}, [])


def test_index_is_reread_when_it_changes(tmp_path: Path) -> None:
    index = tmp_path / "index.json"
    images = ImageIndex(index)
    assert images.get("a") is None  # no file yet: no image
    add_image(index, "a", tmp_path / "a", {"User": "1"})
    assert images.get("a") == Image("a", tmp_path / "a", {"User": "1"})
    add_image(index, "b", tmp_path / "b", {})
    os.utime(index, (1, 1))  # a change within the same mtime tick is still seen as one
    found = images.get("b")
    assert found is not None and found.rootfs == tmp_path / "b"
    assert ImageIndex(None).get("a") is None  # no index: every pod in host mode


def test_fs_group_ownership(tmp_path: Path) -> None:
    gid = 4242
    empty = tmp_path / "tmp"
    empty.mkdir()
    apply_fs_group(empty, {"emptyDir": {}}, gid)
    assert (empty.stat().st_gid, stat.S_IMODE(empty.stat().st_mode)) == (gid, 0o2777)

    secret = tmp_path / "tls"
    secret.mkdir()
    (secret / "tls.key").write_text("k")
    apply_fs_group(secret, {"secret": {"secretName": "s", "defaultMode": 0o440}}, gid)
    key = (secret / "tls.key").stat()
    assert (key.st_gid, stat.S_IMODE(key.st_mode)) == (gid, 0o440)

    config = tmp_path / "config"
    config.mkdir()
    (config / "patroni.yaml").write_text("x")
    apply_fs_group(config, {"configMap": {"name": "c"}}, gid)
    assert stat.S_IMODE((config / "patroni.yaml").stat().st_mode) == 0o644

    # A claim's directory (the pod's mount is a link to it): the whole tree on first use...
    data = tmp_path / "pv"
    (data / "pgdata").mkdir(parents=True)
    (data / "pgdata" / "PG_VERSION").write_text("15")
    data.chmod(0o700)
    link = tmp_path / "mount"
    link.symlink_to(data)
    claim = {"persistentVolumeClaim": {"claimName": "data-db-0"}}
    apply_fs_group(link, claim, gid)
    assert (data.stat().st_gid, stat.S_IMODE(data.stat().st_mode)) == (gid, 0o2770)
    assert (data / "pgdata" / "PG_VERSION").stat().st_gid == gid
    # ...and never again once its root matches (OnRootMismatch): the server's 0700 stays.
    (data / "pgdata").chmod(0o700)
    apply_fs_group(link, claim, gid)
    assert stat.S_IMODE((data / "pgdata").stat().st_mode) == 0o700
    # A generic ephemeral volume is a claim too.
    scratch = tmp_path / "scratch"
    scratch.mkdir(mode=0o700)
    apply_fs_group(scratch, {"ephemeral": {"volumeClaimTemplate": {}}}, gid)
    assert (scratch.stat().st_gid, stat.S_IMODE(scratch.stat().st_mode)) == (gid, 0o2770)


@pytest.mark.parametrize(
    ("links", "path", "expect"),
    [
        ({"var/run": "/run"}, "/var/run/secrets/x", "run/secrets/x"),  # absolute: in root
        ({"var/run": "../run"}, "/var/run/secrets", "run/secrets"),
        ({"etc/escape": "/../../.."}, "/etc/escape/passwd", "passwd"),  # never above root
        ({}, "/usr/../etc/./hosts", "etc/hosts"),
    ],
)
def test_paths_resolve_inside_the_root(
    tmp_path: Path, links: dict[str, str], path: str, expect: str
) -> None:
    for name, target in links.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).symlink_to(target)
    assert in_root(str(tmp_path), path) == os.path.join(tmp_path, expect)
