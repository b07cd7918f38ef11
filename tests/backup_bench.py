"""Backup and restore timing for `make bench`: one call measures a database of a given size.

    from tests.backup_bench import measure_backup_restore
    result = measure_backup_restore(kube, namespace, s3, size_mib=1024)

needs the control plane, a running operator (the `operator` fixture) and an S3 server
(tests.s3_server.start); it creates two clusters in `namespace` and returns seconds.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from pgherd.kube import Kube
from tests import s3_server
from tests.cluster.test_backup import (
    CREDS,
    PATRONI,
    _secret,
    backup_spec,
    create_backup,
    switch_wal,
    wait_archived,
    wait_backup,
)
from tests.operator_harness import Cluster


@dataclass(frozen=True)
class BackupTimings:
    size_mib: int
    load_seconds: float
    backup_seconds: float
    restore_seconds: float


def measure_backup_restore(
    kube: Kube, namespace: str, s3: s3_server.S3Server, size_mib: int = 1024
) -> BackupTimings:
    """Fill a one-instance cluster with about size_mib of table data, take a base backup
    (PostgresBackup created -> Completed), then restore it into a new cluster (created ->
    Healthy, all WAL replayed)."""
    if kube.get("Secret", namespace, CREDS) is None:
        _secret(kube, namespace, CREDS, s3_server.ACCESS_KEY, s3_server.SECRET_KEY)
    source = Cluster(kube, namespace, "bench-src")
    source.create({"instances": 1, "patroni": PATRONI, "backup": backup_spec(s3.url)})
    source.wait_healthy(1, timeout=300)
    t0 = time.monotonic()
    with source.connect(source.primary(), autocommit=True) as conn:
        conn.execute("CREATE TABLE filler (id bigint, pad text)")
        # About 1 KiB per row (a 1000-character pad plus the tuple header).
        conn.execute(
            "INSERT INTO filler SELECT g, repeat(md5(g::text), 32) FROM generate_series(1, %s) g",
            (size_mib * 1024,),
        )
    wait_archived(source, switch_wal(source), timeout=1800)
    t1 = time.monotonic()
    create_backup(kube, namespace, "bench-backup", "bench-src")
    status = wait_backup(kube, namespace, "bench-backup", timeout=3600)
    if status.get("phase") != "Completed":
        raise RuntimeError(f"bench backup failed: {status.get('error')}")
    t2 = time.monotonic()
    restored = Cluster(kube, namespace, "bench-restore")
    restored.create(
        {
            "instances": 1,
            "patroni": PATRONI,
            "bootstrap": {"recovery": {"source": {"backup": "bench-backup"}}},
        }
    )
    restored.wait_healthy(1, timeout=3600)
    t3 = time.monotonic()
    return BackupTimings(size_mib, t1 - t0, t2 - t1, t3 - t2)
