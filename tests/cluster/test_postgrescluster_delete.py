"""Deleting a PostgresCluster: children go by garbage collection (no finalizer, so deletion
never waits for the operator); data volumes and credentials stay or go as
spec.storage.reclaimPolicy says, and a retained cluster can be brought back."""

from __future__ import annotations

import signal

import pytest

from pgherd.controller.client import Client as Kube
from tests.operator_harness import Cluster, Operator, wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.slow]


def _children_gone(kube: Kube, ns: str, name: str) -> bool:
    return all(
        kube.get(kind, ns, child) is None
        for kind, child in [
            ("StatefulSet", name),
            ("Service", f"{name}-rw"),
            ("Service", f"{name}-ro"),
            ("ConfigMap", f"{name}-patroni"),
            ("Role", f"{name}-instance"),
            ("ServiceAccount", f"{name}-instance"),
            ("PodDisruptionBudget", name),
        ]
    ) and not kube.list("Pod", ns, f"pgherd.io/cluster={name}")


def test_retain_keeps_data_and_credentials_for_a_new_cluster(
    operator: Operator, kube: Kube, namespace: str
) -> None:
    cluster = Cluster(kube, namespace, "keep")
    cluster.create({"instances": 1, "storage": {"reclaimPolicy": "Retain"}})
    cluster.wait_healthy(1)
    with cluster.connect("keep-0", autocommit=True) as conn:
        conn.execute("CREATE TABLE survivors AS SELECT 42 AS answer")
    credentials = cluster.app_credentials()

    kube.delete("PostgresCluster", namespace, "keep")
    wait_for(
        "children to be garbage-collected",
        lambda: _children_gone(kube, namespace, "keep"),
        timeout=60,
    )
    assert [c["metadata"]["name"] for c in kube.list("PersistentVolumeClaim", namespace)] == [
        "pgdata-keep-0"
    ]
    assert kube.get("Secret", namespace, "keep-app") is not None

    cluster.create({"instances": 1, "storage": {"reclaimPolicy": "Retain"}})
    cluster.wait_healthy(1)
    assert cluster.app_credentials() == credentials
    with cluster.connect("keep-0") as conn:
        assert conn.execute("SELECT answer FROM survivors").fetchone() == (42,)


def test_delete_policy_removes_volumes_and_credentials(
    operator: Operator, kube: Kube, namespace: str
) -> None:
    cluster = Cluster(kube, namespace, "gone")
    cluster.create({"instances": 2, "storage": {"reclaimPolicy": "Delete"}})
    cluster.wait_healthy(2)
    kube.delete("PostgresCluster", namespace, "gone")
    wait_for(
        "children, claims and Secrets to go",
        lambda: (
            _children_gone(kube, namespace, "gone")
            and not kube.list("PersistentVolumeClaim", namespace)
            and kube.get("Secret", namespace, "gone-app") is None
        ),
        timeout=60,
    )


def test_delete_while_the_operator_is_down_completes_without_it(
    operator: Operator, kube: Kube, namespace: str
) -> None:
    cluster = Cluster(kube, namespace, "orphan")
    cluster.create({"instances": 1, "storage": {"reclaimPolicy": "Delete"}})
    cluster.wait_healthy(1)
    operator.stop(signal.SIGKILL)
    try:
        kube.delete("PostgresCluster", namespace, "orphan")
        wait_for(
            "the cluster object to disappear at once (no finalizer)",
            lambda: kube.get("PostgresCluster", namespace, "orphan") is None,
            timeout=15,
        )
        wait_for(
            "children to be garbage-collected without the operator",
            lambda: _children_gone(kube, namespace, "orphan"),
            timeout=60,
        )
    finally:
        operator.start()
    assert kube.get("StatefulSet", namespace, "orphan") is None
