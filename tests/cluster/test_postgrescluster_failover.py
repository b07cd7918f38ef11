"""Failover on real Patroni: the primary's pod dies and stays down (a lost node); a replica
is promoted, status and the -rw Service follow, and in synchronous mode no acknowledged
write is lost."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import psycopg
import pytest

from pgherd.controller.client import Client as Kube
from pgherd_dev.controlplane import ControlPlane
from tests.operator_harness import Cluster, Operator, wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.slow]


@pytest.fixture
def sync_cluster(operator: Operator, kube: Kube, namespace: str) -> Iterator[Cluster]:
    cluster = Cluster(kube, namespace, "sync")
    # Short Patroni timings keep the test quick; the defaults are measured in `make bench`.
    cluster.create(
        {
            "instances": 3,
            "synchronousMode": "on",
            "patroni": {"ttl": 20, "loopWait": 2, "retryTimeout": 5},
        }
    )
    cluster.wait_healthy(3)
    wait_for(
        "a synchronous standby",
        lambda: any(i["role"] == "sync_standby" for i in cluster.status()["instancesStatus"]),
        timeout=60,
    )
    yield cluster


class Writer(threading.Thread):
    """Inserts rows one by one through whichever instance is primary; records the ids
    PostgreSQL acknowledged (COMMIT returned) and when writes were refused."""

    def __init__(self, cluster: Cluster) -> None:
        super().__init__(daemon=True)
        self.cluster = cluster
        self.acked: list[int] = []
        self.failures: list[float] = []
        self.stop = threading.Event()

    def _primary_conn(self) -> psycopg.Connection[object]:
        for pod in self.cluster.pods():
            name = pod["metadata"]["name"]
            try:
                conn = self.cluster.connect(name, autocommit=True)
            except psycopg.OperationalError:
                continue
            if conn.execute("SELECT pg_is_in_recovery()").fetchone() == (False,):
                return conn
            conn.close()
        raise psycopg.OperationalError("no primary accepts connections")

    def run(self) -> None:
        n = 0
        conn: psycopg.Connection[object] | None = None
        while not self.stop.is_set():
            try:
                if conn is None:
                    conn = self._primary_conn()
                n += 1
                conn.execute("INSERT INTO acked (id) VALUES (%s)", (n,))
                self.acked.append(n)
            except psycopg.Error:
                self.failures.append(time.monotonic())
                if conn is not None:
                    conn.close()
                conn = None
                time.sleep(0.2)
        if conn is not None:
            conn.close()


def test_failover_loses_no_acknowledged_write_in_synchronous_mode(
    sync_cluster: Cluster, control_plane: ControlPlane, kube: Kube
) -> None:
    old = sync_cluster.primary()
    with sync_cluster.connect(old, autocommit=True) as conn:
        conn.execute("CREATE TABLE acked (id int PRIMARY KEY)")
    writer = Writer(sync_cluster)
    writer.start()
    wait_for("writes flowing", lambda: len(writer.acked) > 50, timeout=30)

    killed_at = time.monotonic()
    sync_cluster.kill(old, control_plane, hold=True)
    new = wait_for(
        "a replica to be promoted", lambda: (p := sync_cluster.primary()) != old and p, timeout=90
    )
    count = len(writer.acked)
    wait_for("writes accepted again", lambda: len(writer.acked) > count + 20, timeout=60)
    writer.stop.set()
    writer.join(timeout=10)
    recovered = writer.failures[-1] if writer.failures else killed_at
    print(f"failover: primary killed -> writes accepted again in {recovered - killed_at:.1f}s")

    with sync_cluster.connect(new) as conn:
        stored = {row[0] for row in conn.execute("SELECT id FROM acked")}
    lost = [i for i in writer.acked if i not in stored]
    assert lost == [], f"{len(lost)} acknowledged rows lost"

    rw = kube.get("Service", sync_cluster.namespace, "sync-rw")
    assert rw is not None
    new_pod = kube.get("Pod", sync_cluster.namespace, new)
    assert new_pod is not None and new_pod["metadata"]["labels"]["pgherd.io/role"] == "primary"

    # The old primary comes back (its node recovered) and rejoins as a replica.
    sync_cluster.release(old)
    wait_for(
        f"{old} to rejoin as a replica",
        lambda: any(
            i["name"] == old and i["role"] == "replica" and i["ready"]
            for i in sync_cluster.status().get("instancesStatus", [])
        ),
        timeout=120,
    )
    events = kube.list("Event", sync_cluster.namespace)
    assert any(e.get("reason") == "PrimaryChanged" for e in events)
