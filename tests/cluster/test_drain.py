"""Drain-aware switchover on real Patroni: `kubectl drain` of the primary's (kwok) node with a
writer running. The operator sees the cordon, switches over while the primary's
PodDisruptionBudget holds its eviction, and the drain then evicts the old primary and
completes. The write outage is measured against a planned switchover's (spec.switchover) on
the same cluster. A single-instance cluster's node drains without waiting."""

from __future__ import annotations

import subprocess
import threading
import time
from typing import Any

import pytest

from pgherd.controller.client import Client as Kube
from pgherd_dev.controlplane import ControlPlane
from tests.acked_writes import AckedWriter, primary_of, stored_ids
from tests.conftest import require_tool
from tests.operator_harness import Cluster, Operator, wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.slow]


class PodWatch(threading.Thread):
    """Polls one pod: when it stopped being labelled primary, and when it was evicted
    (deleted, or replaced by a pod of the same name)."""

    def __init__(self, kube: Kube, namespace: str, name: str) -> None:
        super().__init__(daemon=True)
        self.kube, self.namespace, self.name = kube, namespace, name
        self.demoted: float | None = None
        self.evicted: float | None = None
        self.stop = threading.Event()

    def run(self) -> None:
        first = self.kube.get("Pod", self.namespace, self.name)
        assert first is not None
        uid = first["metadata"]["uid"]
        while not self.stop.is_set() and self.evicted is None:
            pod = self.kube.get("Pod", self.namespace, self.name)
            now = time.monotonic()
            gone = pod is None or pod["metadata"]["uid"] != uid
            if gone or pod["metadata"].get("deletionTimestamp"):
                self.evicted = now
            elif (pod["metadata"].get("labels") or {}).get("pgherd.io/role") != "primary":
                self.demoted = self.demoted or now
            time.sleep(0.1)


def _node_of(kube: Kube, namespace: str, pod: str) -> str:
    got = kube.get("Pod", namespace, pod)
    assert got is not None
    return str(got["spec"]["nodeName"])


def _kubectl(
    cp: ControlPlane, *args: str, timeout: float = 300
) -> subprocess.CompletedProcess[Any]:
    return subprocess.run(
        [str(require_tool("kubectl")), f"--kubeconfig={cp.kubeconfig}", *args],
        capture_output=True, text=True, timeout=timeout, check=False,
    )  # fmt: skip


def test_a_drain_of_the_primarys_node_switches_over_first(
    operator: Operator, kube: Kube, namespace: str, control_plane: ControlPlane
) -> None:
    cluster = Cluster(kube, namespace, "drain")
    cluster.create({"instances": 2, "patroni": {"ttl": 20, "loopWait": 2, "retryTimeout": 5}})
    solo = Cluster(kube, namespace, "solo")  # made meanwhile, drained at the end
    solo.create({"instances": 1})
    cluster.wait_healthy(2)
    pdbs = {p["metadata"]["name"]: p for p in kube.list("PodDisruptionBudget", namespace)}
    assert pdbs["drain-primary"]["spec"]["minAvailable"] == 1
    writer = AckedWriter(primary_of(cluster))
    writer.create_table()
    writer.start()
    writer.flowing(50)

    # A planned switchover, the yardstick.
    before = cluster.primary()
    other = next(p["metadata"]["name"] for p in cluster.pods() if p["metadata"]["name"] != before)
    asked = time.monotonic()
    cluster.patch_spec({"switchover": {"targetInstance": other}})
    wait_for("the planned switchover", lambda: cluster.primary() == other, timeout=90)
    writer.flowing()
    planned = writer.outage(asked, time.monotonic())
    cluster.wait_healthy(2)

    # The drain of the primary's node.
    node = _node_of(kube, namespace, other)
    watch = PodWatch(kube, namespace, other)
    watch.start()
    started = time.monotonic()
    try:
        drained = _kubectl(control_plane, "drain", node, "--ignore-daemonsets",
                           "--delete-emptydir-data", "--timeout=240s")  # fmt: skip
        finished = time.monotonic()
        assert drained.returncode == 0, drained.stdout + drained.stderr
        writer.flowing()
        outage = writer.outage(started, time.monotonic())
        watch.join(timeout=30)
        print(
            f"drain: planned switchover outage {planned:.1f}s; drain of {node} (primary "
            f"{other}) outage {outage:.1f}s, drain took {finished - started:.1f}s"
        )
        assert cluster.primary() == before, "the primary moved off the drained node"
        # The switchover came first: the pod lost its primary label before its eviction.
        assert watch.demoted is not None and watch.evicted is not None
        assert watch.demoted < watch.evicted, (watch.demoted, watch.evicted)
        # No worse than a planned switchover (with room for the drain's 5 s eviction retry,
        # which runs beside the writes and does not add to the outage).
        assert outage <= planned + 3.0, (outage, planned)
        events = kube.list("Event", namespace)
        assert any(
            "draining" in (e.get("message") or "") and e.get("reason") == "Switchover"
            for e in events
        ), [e.get("message") for e in events]
    finally:
        watch.stop.set()
        writer.stop.set()
        _kubectl(control_plane, "uncordon", node)
    writer.join(timeout=10)
    # Back on its node once it is schedulable again (its volume is local to it).
    cluster.wait_healthy(2, timeout=240)
    with cluster.connect(cluster.primary()) as conn:
        lost = writer.lost(stored_ids(conn))
    assert lost == [], f"{len(lost)} acknowledged rows lost"

    # A single instance never holds a drain: its budget lets the eviction through (an
    # outage until its pod runs again, here once the node is uncordoned: its volume is there).
    solo.wait_healthy(1)
    pdbs = {p["metadata"]["name"]: p for p in kube.list("PodDisruptionBudget", namespace)}
    assert pdbs["solo-primary"]["spec"]["minAvailable"] == 0
    node = _node_of(kube, namespace, "solo-0")
    try:
        drained = _kubectl(control_plane, "drain", node, "--ignore-daemonsets",
                           "--delete-emptydir-data", "--timeout=120s")  # fmt: skip
        assert drained.returncode == 0, drained.stdout + drained.stderr
    finally:
        _kubectl(control_plane, "uncordon", node)
    solo.wait_healthy(1, timeout=240)
    cluster.wait_healthy(2, timeout=240)
