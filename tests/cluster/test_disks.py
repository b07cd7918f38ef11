"""Disks that do not fill, on real PostgreSQL with a real volume size: a 1-instance cluster
on a 96 MiB tmpfs volume (the test provisioner's `pgherd.dev/tmpfs` class), WAL archiving
broken (an object store nobody listens on), so pg_wal keeps every segment as WAL is written.
The StorageNearlyFull condition warns, spec.storage.autoGrow grows the claim (its request,
the PV's capacity and the filesystem's size), and PostgreSQL never restarts: the same
postmaster serves as primary throughout. A volume already full (writes fail with DiskFull)
is grown from the API side once autoGrow is switched on."""

from __future__ import annotations

import base64
import os
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from kubernetes import client

from pgherd.controller.client import Client as Kube
from pgherd_dev import provisioner
from tests import s3_server
from tests.operator_harness import Cluster, Operator, wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

MIB = 2**20
PATRONI = {"ttl": 20, "loopWait": 2, "retryTimeout": 5}


@pytest.fixture
def tmpfs_class(api: client.ApiClient) -> Iterator[str]:
    name = f"tmpfs-{uuid.uuid4().hex[:6]}"
    storage = client.StorageV1Api(api)
    storage.create_storage_class(
        {
            "apiVersion": "storage.k8s.io/v1",
            "kind": "StorageClass",
            "metadata": {"name": name},
            "provisioner": provisioner.PROVISIONER,
            "parameters": {provisioner.TMPFS_PARAMETER: "true"},
            "reclaimPolicy": "Delete",
            "volumeBindingMode": "WaitForFirstConsumer",
            "allowVolumeExpansion": True,
        }
    )
    yield name
    # The control plane may stop before the namespace's claims are released (when the
    # provisioner unmounts them): the test's tmpfs mounts are undone here, not left behind.
    for pv in client.CoreV1Api(api).list_persistent_volume().items:
        path = pv.spec.host_path.path if pv.spec.host_path else None
        if pv.spec.storage_class_name == name and path and os.path.ismount(path):
            subprocess.run(["umount", "--lazy", path], check=False)
    storage.delete_storage_class(name)


def _claim_and_volume(api: client.ApiClient, namespace: str) -> tuple[Any, Any]:
    core = client.CoreV1Api(api)
    pvc = core.read_namespaced_persistent_volume_claim("pgdata-disks-0", namespace)
    pv = core.read_persistent_volume(pvc.spec.volume_name)
    return pvc, pv


def _fs_size(pv: Any) -> int:
    st = os.statvfs(Path(pv.spec.host_path.path))
    return st.f_blocks * st.f_frsize


def _server(cluster: Cluster) -> tuple[Any, ...]:
    with cluster.connect_superuser(cluster.primary(), autocommit=True) as conn:
        row = conn.execute("SELECT pg_postmaster_start_time(), pg_is_in_recovery()").fetchone()
        assert row is not None
        return tuple(row)


@pytest.mark.skipif(os.geteuid() != 0, reason="tmpfs volumes need a provisioner running as root")
def test_wal_piling_up_warns_and_autogrow_grows_the_volume_without_a_restart(
    operator: Operator, kube: Kube, api: client.ApiClient, namespace: str, tmpfs_class: str
) -> None:
    kube.create(
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "creds", "namespace": namespace,
                         "labels": {"pgherd.io/use": "true"}},
            "data": {"id": base64.b64encode(b"AKIAEXAMPLE").decode(),
                     "secret": base64.b64encode(b"not-a-secret").decode()},
        }
    )  # fmt: skip
    cluster = Cluster(kube, namespace, "disks")
    started = time.monotonic()
    cluster.create(
        {
            "instances": 1,
            "patroni": PATRONI,
            "storage": {"size": "96Mi", "storageClassName": tmpfs_class,
                        "autoGrow": {"threshold": 50, "step": "50%", "limit": "200Mi"}},
            "postgresql": {"parameters": {"max_wal_size": "32MB", "min_wal_size": "32MB"}},
            "backup": {"objectStore": {
                "endpointURL": s3_server.unused_endpoint(), "bucket": "nowhere", "path": "pg",
                "region": s3_server.REGION,
                "credentials": {"accessKeyId": {"name": "creds", "key": "id"},
                                "secretAccessKey": {"name": "creds", "key": "secret"}}}},
        }
    )  # fmt: skip
    cluster.wait_healthy(1, timeout=240)
    _, pv = _claim_and_volume(api, namespace)
    assert _fs_size(pv) == 96 * MIB, "the volume is not a 96 MiB tmpfs"
    volume = wait_for(
        "the volume reported in status",
        lambda: ((cluster.status().get("instancesStatus") or [{}])[0]).get("volume"),
        timeout=60,
    )
    ready_in = time.monotonic() - started
    print(f"empty cluster: {volume['usedBytes'] / MIB:.1f} MiB used, "
          f"pg_wal {volume['walBytes'] / MIB:.1f} MiB, ready in {ready_in:.0f}s")  # fmt: skip
    wait_for("archiving failing",
             lambda: cluster.condition("ContinuousArchiving").get("reason") == "ArchiveFailing",
             timeout=120)  # fmt: skip
    before = _server(cluster)
    assert before[1] is False
    # One more WAL segment (16 MiB, zero-filled, and PostgreSQL may preallocate the next)
    # that cannot be archived, so cannot be recycled: an empty cluster uses ~40 MiB of 96,
    # with it 56-78 MiB (past autoGrow's 50 %), pg_wal 32-48 MiB (past 25 %: WalNotArchived).
    with cluster.connect_superuser(cluster.primary(), autocommit=True) as conn:
        conn.execute("CREATE TABLE w (pad text)")
        conn.execute("INSERT INTO w SELECT repeat('x', 100) FROM generate_series(1, 100)")
        conn.execute("SELECT pg_switch_wal()")
        conn.execute("INSERT INTO w SELECT repeat('x', 100) FROM generate_series(1, 100)")
    warned = time.monotonic()
    cond = wait_for(
        "StorageNearlyFull True",
        lambda: (c := cluster.condition("StorageNearlyFull")).get("status") == "True" and c,
        timeout=120,
    )
    print(f"warned in {time.monotonic() - warned:.0f}s: {cond['reason']}: {cond['message']}")
    # pg_wal past 25 % while archiving fails; the volume may be past 80 % too (reason first).
    assert cond["reason"] in ("VolumeNearlyFull", "WalNotArchived")
    assert "pg_wal holds" in cond["message"]
    grown = wait_for(
        "the claim grown",
        lambda: (g := (cluster.status().get("storage") or {}).get("grownSize")) and g,
        timeout=120,
    )
    print(f"autoGrow: {grown} after {time.monotonic() - warned:.0f}s")

    def resized() -> bool:
        pvc, pv = _claim_and_volume(api, namespace)
        return (
            pvc.spec.resources.requests["storage"] == grown
            and (pvc.status.capacity or {}).get("storage") == grown
            and pv.spec.capacity["storage"] == grown
            and _fs_size(pv) > 96 * MIB
        )

    wait_for("claim, PV and filesystem grown", resized, timeout=120)
    _, pv = _claim_and_volume(api, namespace)
    print(f"filesystem now {_fs_size(pv) / MIB:.0f} MiB, in {time.monotonic() - warned:.0f}s")
    events = [e for e in kube.list("Event", namespace)
              if e.get("reason") in ("VolumeAutoGrown", cond["reason"])]  # fmt: skip
    assert {e["reason"] for e in events} >= {"VolumeAutoGrown", cond["reason"]}
    # The same postmaster, still the primary: PostgreSQL never crashed nor restarted.
    assert _server(cluster) == before
    with cluster.connect_superuser(cluster.primary(), autocommit=True) as conn:
        conn.execute("INSERT INTO w VALUES ('still serving')")


@pytest.mark.skipif(os.geteuid() != 0, reason="tmpfs volumes need a provisioner running as root")
def test_a_full_volume_is_grown_from_the_api_side(
    operator: Operator, kube: Kube, api: client.ApiClient, namespace: str, tmpfs_class: str
) -> None:
    """Full already (writes fail with DiskFull): switching autoGrow on grows the claim from
    the API side, and PostgreSQL accepts writes again (restarted by Patroni if the full disk
    stopped it: a WAL write that fails is a PANIC; the issue allows that restart)."""
    cluster = Cluster(kube, namespace, "disks")
    cluster.create(
        {
            "instances": 1,
            "patroni": PATRONI,
            "storage": {"size": "64Mi", "storageClassName": tmpfs_class,
                        "autoGrow": {"enabled": False, "limit": "200Mi"}},
        }
    )  # fmt: skip
    cluster.wait_healthy(1, timeout=240)
    with cluster.connect_superuser(cluster.primary(), autocommit=True) as conn:
        conn.execute("CREATE TABLE f (pad text)")
        with pytest.raises(psycopg.errors.DiskFull):
            for _ in range(200):
                conn.execute("INSERT INTO f SELECT repeat(md5(g::text), 16) "
                             "FROM generate_series(1, 2000) g")  # fmt: skip
    before = _server(cluster)
    full = wait_for(
        "the full volume reported",
        lambda: (
            (v := ((cluster.status().get("instancesStatus") or [{}])[0]).get("volume"))
            and v["usedPercent"] >= 95
            and v
        ),
        timeout=90,
    )
    print(f"full: {full['usedPercent']}% of {full['sizeBytes'] / MIB:.0f} MiB")
    started = time.monotonic()
    cluster.patch_spec({"storage": {"autoGrow": {"enabled": True}}})
    grown = wait_for(
        "the claim grown",
        lambda: (g := (cluster.status().get("storage") or {}).get("grownSize")) and g,
        timeout=120,
    )

    # The claim is grown first, the filesystem a moment later (the provisioner's resize):
    # wait for the room itself, not only for the claim.
    _, pv = _claim_and_volume(api, namespace)
    wait_for("the filesystem grown", lambda: _fs_size(pv) > 64 * MIB, timeout=120)

    def writable() -> bool:
        # About 1 MiB: it needs new pages, which a full volume could not give.
        try:
            with cluster.connect_superuser(cluster.primary(), autocommit=True) as conn:
                conn.execute("INSERT INTO f SELECT repeat(md5(g::text), 16) "
                             "FROM generate_series(1, 2000) g")  # fmt: skip
        except psycopg.Error:
            return False
        return True

    wait_for("writes accepted again", writable, timeout=120)
    print(f"grown to {grown} (filesystem {_fs_size(pv) / MIB:.0f} MiB), writable again "
          f"{time.monotonic() - started:.0f}s after autoGrow was switched on")  # fmt: skip
    assert _fs_size(pv) > 64 * MIB
    print(f"PostgreSQL restarted meanwhile: {_server(cluster) != before}")
