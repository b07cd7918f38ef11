"""Failover on real Patroni: the primary's pod dies and stays down (a lost node); a replica
is promoted, status and the -rw Service follow, and in synchronous mode no acknowledged
write is lost."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from pgherd.controller.client import Client as Kube
from pgherd_dev.controlplane import ControlPlane
from tests.acked_writes import AckedWriter, primary_of, stored_ids
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


def test_failover_loses_no_acknowledged_write_in_synchronous_mode(
    sync_cluster: Cluster, control_plane: ControlPlane, kube: Kube
) -> None:
    old = sync_cluster.primary()
    writer = AckedWriter(primary_of(sync_cluster))
    writer.create_table()
    writer.start()
    writer.flowing(50, timeout=30)

    killed_at = time.monotonic()
    sync_cluster.kill(old, control_plane, hold=True)
    new = wait_for(
        "a replica to be promoted", lambda: (p := sync_cluster.primary()) != old and p, timeout=90
    )
    writer.flowing(20, timeout=60)
    writer.finish()
    recovered = writer.failures[-1][0] if writer.failures else killed_at
    print(f"failover: primary killed -> writes accepted again in {recovered - killed_at:.1f}s")

    with sync_cluster.connect(new) as conn:
        lost = writer.lost(stored_ids(conn))
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
