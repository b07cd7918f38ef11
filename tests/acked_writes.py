"""A writer that records every commit PostgreSQL acknowledged, for tests and benchmarks
that disrupt a cluster and then check that nothing acknowledged was lost.

One row per transaction, through whatever `connect` returns (the primary found by asking each
instance, or a pooler); COMMIT returning is what counts as acknowledged. Failures are kept
with their time and first line, so an outage can be measured and its errors shown.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

import psycopg
from psycopg import sql

from tests.operator_harness import Cluster, wait_for

Connect = Callable[[], "psycopg.Connection[Any]"]


def first_primary(candidates: Iterable[Connect], refused: tuple[type[Exception], ...]) -> Any:
    """A Connect that tries each candidate in turn (an error in `refused` skips it) and keeps
    the first connection that is not in recovery."""

    def connect() -> psycopg.Connection[Any]:
        for candidate in candidates:
            try:
                conn = candidate()
            except refused:
                continue
            if conn.execute("SELECT pg_is_in_recovery()").fetchone() == (False,):
                return conn
            conn.close()
        raise psycopg.OperationalError("no primary accepts connections")

    return connect


def primary_of(cluster: Cluster) -> Connect:
    """Connects to each instance (as listed now) in turn; keeps the first not in recovery."""

    def connect() -> psycopg.Connection[Any]:
        names = [pod["metadata"]["name"] for pod in cluster.pods()]
        candidates = [lambda n=n: cluster.connect(n, autocommit=True) for n in names]
        found: psycopg.Connection[Any] = first_primary(
            candidates, (psycopg.OperationalError, KeyError, AssertionError)
        )()
        return found

    return connect


class AckedWriter(threading.Thread):
    """Inserts ids 1, 2, 3... into `table`, one transaction each, reconnecting after an
    error; `acked` holds (monotonic time, id) of every acknowledged commit."""

    def __init__(self, connect: Connect, table: str = "acked", pause: float = 0.0) -> None:
        super().__init__(daemon=True)
        self.connect, self.table, self.pause = connect, table, pause
        self.acked: list[tuple[float, int]] = []
        self.failures: list[tuple[float, str]] = []
        self.stop = threading.Event()

    def create_table(self) -> None:
        with self.connect() as conn:
            conn.execute(
                sql.SQL("CREATE TABLE IF NOT EXISTS {} (id int PRIMARY KEY)").format(
                    sql.Identifier(self.table)
                )
            )

    def run(self) -> None:
        n = 0
        insert = sql.SQL("INSERT INTO {} (id) VALUES (%s)").format(sql.Identifier(self.table))
        conn: psycopg.Connection[Any] | None = None
        while not self.stop.is_set():
            try:
                if conn is None:
                    conn = self.connect()
                n += 1
                conn.execute(insert, (n,))
                self.acked.append((time.monotonic(), n))
                if self.pause:
                    time.sleep(self.pause)
            except (psycopg.Error, KeyError, AssertionError) as e:
                first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                self.failures.append((time.monotonic(), first))
                if conn is not None:
                    conn.close()
                conn = None
                time.sleep(0.1)
        if conn is not None:
            conn.close()

    def finish(self) -> None:
        self.stop.set()
        self.join(timeout=15)

    @property
    def ids(self) -> list[int]:
        return [n for _, n in self.acked]

    @property
    def committed(self) -> list[float]:
        return [t for t, _ in self.acked]

    def flowing(self, more: int = 20, timeout: float = 90) -> None:
        """Waits until `more` commits beyond the ones so far were acknowledged."""
        count = len(self.acked)
        wait_for("writes accepted", lambda: len(self.acked) > count + more, timeout=timeout)

    def outage(self, since: float, until: float) -> float:
        """The longest time without an acknowledged commit between since and until."""
        times = [since] + [t for t, _ in self.acked if since < t < until] + [until]
        return max(b - a for a, b in itertools.pairwise(times))

    def resumed(self, since: float) -> tuple[float, float]:
        """(longest gap between commits from the last one before `since` on, when that
        gap ended): the outage a fault at `since` caused, and when writes came back."""
        before = [t for t in self.committed if t < since]
        after = [t for t in self.committed if t >= since]
        gaps = [(b - a, b) for a, b in itertools.pairwise([before[-1] if before else since,
                                                           *after])]  # fmt: skip
        return max(gaps) if gaps else (0.0, since)

    def lost(self, stored: Iterable[int]) -> list[int]:
        """The acknowledged ids missing from `stored` (the ids read back afterwards)."""
        have = set(stored)
        return [n for n in self.ids if n not in have]

    def errors(self) -> list[str]:
        return sorted({e for _, e in self.failures})


def stored_ids(conn: psycopg.Connection[Any], table: str = "acked") -> set[int]:
    select = sql.SQL("SELECT id FROM {}").format(sql.Identifier(table))
    return {row[0] for row in conn.execute(select)}


def wait_synchronous(cluster: Cluster, instances: int, timeout: float = 300) -> None:
    """Waits for every instance to be ready and a ready synchronous standby to be named: the
    steady state a fault starts from when no acknowledged write may be lost (appended for
    the failover-profile test and bench)."""
    cluster.wait_healthy(instances, timeout=timeout)
    wait_for(
        "a ready synchronous standby",
        lambda: any(
            i["role"] == "sync_standby" and i["ready"]
            for i in cluster.status().get("instancesStatus", [])
        ),
        timeout=timeout,
    )
