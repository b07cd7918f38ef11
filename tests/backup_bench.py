"""Backup timings for `make bench`, each call measuring one thing on real clusters.

    from tests.backup_bench import measure_backup_restore, measure_wal_archive_lag
    result = measure_backup_restore(kube, namespace, s3, size_mib=1024)
    lag = measure_wal_archive_lag(kube, namespace, s3, seconds=60, rows_per_second=5000)

Both need the control plane, a running operator (the `operator` fixture) and an S3 server
(tests.s3_server.start). measure_backup_restore creates two clusters and returns seconds;
measure_wal_archive_lag creates one and returns how far WAL archiving trails a steady write
load (see its docstring).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any

from pgherd.controller.client import Client as Kube
from tests import s3_server
from tests.cluster.test_backup import (
    BUCKET,
    CREDS,
    PATRONI,
    _secret,
    backup_spec,
    create_backup,
    superuser,
    switch_wal,
    wait_archived,
    wait_backup,
)
from tests.operator_harness import Cluster


def _prepare(kube: Kube, namespace: str, s3: s3_server.S3Server) -> None:
    """The bucket (pgherd creates none) and the credentials Secret, once."""
    if BUCKET not in s3.buckets():
        s3.create_bucket(BUCKET)
    if kube.get("Secret", namespace, CREDS) is None:
        _secret(kube, namespace, CREDS, s3.access_key, s3.secret_key)


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
    _prepare(kube, namespace, s3)
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


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values) or [0.0]
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 2)


def _spread(values: list[float]) -> dict[str, float]:
    return {"p50": _pct(values, 0.5), "p95": _pct(values, 0.95), "max": _pct(values, 1.0)}


class SteadyInserts(threading.Thread):
    """Inserts rows_per_second rows a second, in ten commits a second, until stopped.

    Rows are ~0.5 KiB of md5 text with a bigserial primary key, so the WAL is what an
    insert-heavy application writes (heap and btree records, full-page images after each
    checkpoint) and compresses like real data, not like zeros."""

    TICK = 0.1

    def __init__(self, cluster: Cluster, rows_per_second: int) -> None:
        super().__init__(daemon=True)
        self.cluster, self.batch = cluster, max(1, int(rows_per_second * self.TICK))
        self.stop = threading.Event()
        self.rows = 0
        self.error: str | None = None

    def run(self) -> None:
        try:
            with self.cluster.connect(self.cluster.primary(), autocommit=True) as conn:
                next_tick = time.monotonic()
                while not self.stop.is_set():
                    conn.execute(
                        "INSERT INTO steady (pad) SELECT repeat(md5(random()::text), 16)"
                        " FROM generate_series(1, %s)",
                        (self.batch,),
                    )
                    self.rows += self.batch
                    next_tick += self.TICK
                    self.stop.wait(max(0.0, next_tick - time.monotonic()))
        except Exception as e:  # reported in the result, not raised from a thread
            self.error = str(e)


def _lsn(text: str) -> int:
    high, low = text.split("/")
    return (int(high, 16) << 32) + int(low, 16)


class _Segments:
    """Segment numbers (from LSNs and WAL file names) and when each segment was completed,
    on the server's clock: interpolated between two samples from where the LSN crossed the
    segment's end, so the times are finer than the sampling interval."""

    def __init__(self, segment_bytes: int) -> None:
        self.size = segment_bytes
        self.completed: dict[int, float] = {}
        self.last: tuple[float, int] | None = None

    def of_wal(self, wal: str | None) -> int | None:
        # Segment names only (24 hex digits, maybe + .partial/.backup); not .history files.
        if not wal or len(wal) < 24 or wal.endswith(".history"):
            return None
        return int(wal[8:16], 16) * (0x100000000 // self.size) + int(wal[16:24], 16)

    def advance(self, at: float, lsn: int) -> int:
        """Record a sample (server time, current LSN); returns the current segment."""
        current = lsn // self.size
        if self.last is not None:
            t0, lsn0 = self.last
            for n in range(lsn0 // self.size, current):
                crossed = ((n + 1) * self.size - lsn0) / max(1, lsn - lsn0)
                self.completed.setdefault(n, t0 + (at - t0) * crossed)
        self.last = (at, lsn)
        return current


def measure_wal_archive_lag(
    kube: Kube,
    namespace: str,
    s3: s3_server.S3Server,
    seconds: float = 60.0,
    rows_per_second: int = 5000,
) -> dict[str, Any]:
    """A one-instance cluster archiving to s3 under a steady insert load for `seconds`.

    Every second it samples the primary's current WAL position and pg_stat_archiver. A
    segment can only be archived once complete, so the lag is counted in complete segments
    not yet archived (current - last archived - 1) and in seconds since the oldest of them
    was completed (0 when none waits); archive_delay_seconds is, per archived segment seen,
    from its completion to pg_stat_archiver's last_archived_time. After the load: how long
    the archive takes to catch up (drain_seconds). Returns JSON-ready numbers."""
    _prepare(kube, namespace, s3)
    cluster = Cluster(kube, namespace, "bench-wal")
    cluster.create({"instances": 1, "patroni": PATRONI, "backup": backup_spec(s3.url)})
    cluster.wait_healthy(1, timeout=300)
    wait_archived(cluster, switch_wal(cluster), timeout=300)
    with cluster.connect(cluster.primary(), autocommit=True) as conn:
        conn.execute("CREATE TABLE steady (id bigserial PRIMARY KEY, pad text)")
    sample_sql = (
        "SELECT extract(epoch FROM clock_timestamp())::float8, pg_current_wal_lsn()::text,"
        " last_archived_wal, extract(epoch FROM last_archived_time)::float8, archived_count,"
        " failed_count FROM pg_stat_archiver"
    )
    with superuser(cluster) as conn:

        def sample() -> tuple[Any, ...]:
            row = conn.execute(sample_sql).fetchone()
            assert row is not None
            return tuple(row)

        size = conn.execute("SELECT setting FROM pg_settings WHERE name = 'wal_segment_size'")
        segs = _Segments(int((size.fetchone() or ("16777216",))[0]))
        _, start_lsn, _, _, start_archived, start_failed = sample()
        writer = SteadyInserts(cluster, rows_per_second)
        t0 = time.monotonic()
        writer.start()
        lag_segments: list[float] = []
        lag_seconds: list[float] = []
        delays: dict[int, float] = {}
        while time.monotonic() - t0 < seconds and writer.is_alive():
            time.sleep(max(0.0, 1.0 - (time.monotonic() - t0) % 1.0))
            at, lsn, archived_wal, archived_at, _, _ = sample()
            current, archived = segs.advance(at, _lsn(lsn)), segs.of_wal(archived_wal)
            if archived is None:
                continue
            if archived in segs.completed and archived_at:
                delays.setdefault(archived, round(archived_at - segs.completed[archived], 2))
            waiting = max(0, current - archived - 1)
            lag_segments.append(waiting)
            oldest = segs.completed.get(archived + 1)
            lag_seconds.append(round(at - oldest, 2) if waiting and oldest else 0.0)
        writer.stop.set()
        writer.join(10)
        elapsed = time.monotonic() - t0
        _, end_lsn, _, _, _, _ = sample()
        written = _lsn(end_lsn) - _lsn(start_lsn)
        # Drained: every segment complete at the end of the load is archived.
        last_complete = _lsn(end_lsn) // segs.size - 1
        drained = time.monotonic()
        while time.monotonic() - drained < 600:
            _, _, archived_wal, _, archived_count, failed_count = sample()
            if (segs.of_wal(archived_wal) or -1) >= last_complete:
                break
            time.sleep(0.5)
        drain = time.monotonic() - drained
    kube.delete("PostgresCluster", namespace, "bench-wal")
    return {
        "seconds": round(elapsed, 1),
        "rows_per_second_target": rows_per_second,
        "rows_per_second_done": round(writer.rows / elapsed),
        "wal_mib_per_second": round(written / elapsed / (1 << 20), 2),
        "wal_segments_written": round(written / segs.size, 1),
        "segments_archived": archived_count - start_archived,
        "archive_failures": failed_count - start_failed,
        "lag_segments": _spread(lag_segments),
        "lag_seconds": _spread(lag_seconds),
        "archive_delay_seconds": _spread(list(delays.values())),
        "drain_seconds": round(drain, 1),
        "samples": len(lag_segments),
        "writer_error": writer.error,
    }
