"""A highly available operator against the real API server: two (then three) operator
processes elect a leader on a Lease; only the leader writes (the audit log tells the replicas
apart by their user agent, which carries the holder identity); kill -9 the leader and the
standby takes over within the lease's duration and reconciles a cluster created meanwhile;
SIGTERM the leader and it exits within 5 s, releasing the lease, so the standby takes over at
once. Clusters are parked (no node matches), so no PostgreSQL runs.
"""

from __future__ import annotations

import signal
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import pytest
from kubernetes import client as k8s
from prometheus_client.parser import text_string_to_metric_families

from pgherd.controller.client import Client as Kube
from pgherd_dev.controlplane import ControlPlane
from tests.operator_harness import (
    OPERATOR_ACCOUNT,
    OPERATOR_NAMESPACE,
    Cluster,
    Operator,
    _epoch,
    audit_writes,
    operator_kubeconfig,
    wait_for,
)

R = TypeVar("R", bound="Replicas")
pytestmark = [pytest.mark.cluster]

USER = f"system:serviceaccount:{OPERATOR_NAMESPACE}:{OPERATOR_ACCOUNT}"
PARKED = {"scheduling": {"nodeSelector": {"pgherd.io/test": "parked"}}}
LEASE_DURATION = 12
RETRY_PERIOD = 2


def _election(op: Operator) -> dict[str, Any] | None:
    """The replica's election state (its /healthz), or None before it answers."""
    report = op.health()
    return report.get("controller") if report else None


def _leading(op: Operator) -> bool:
    return bool((_election(op) or {}).get("leading"))


def _holder(kube: Kube, lease: str) -> str:
    """Who holds the Lease (what the replicas wrote; /healthz answers are cached by kopf)."""
    got = kube.get("Lease", OPERATOR_NAMESPACE, lease) or {}
    return str((got.get("spec") or {}).get("holderIdentity") or "")


def _leader_gauge(op: Operator) -> float:
    """The replica's pgherd_operator_leader (its /metrics, read live)."""
    for family in text_string_to_metric_families(op.metrics()):
        if family.name == "pgherd_operator_leader":
            return float(family.samples[0].value)
    raise AssertionError("no pgherd_operator_leader")


def _reconciled(cluster: Cluster) -> bool:
    return bool(cluster.status().get("phase"))


class Replicas:
    """Operator processes of one Lease, serving one namespace."""

    def __init__(self, kubeconfig: Path, log_dir: Path, namespace: str, lease: str) -> None:
        self.kubeconfig, self.log_dir, self.namespace, self.lease = (
            kubeconfig, log_dir, namespace, lease,
        )  # fmt: skip
        self.started: list[Operator] = []

    def start(self, name: str) -> tuple[Operator, str]:
        op = Operator(
            self.kubeconfig,
            self.log_dir / f"operator-ha-{name}.log",
            extra_env={
                "PGHERD_LEADER_ELECTION": "1",
                "POD_NAMESPACE": OPERATOR_NAMESPACE,
                "POD_NAME": name,
                "PGHERD_LEASE_NAME": self.lease,
            },
            args=[f"--namespace={self.namespace}"],
        )
        op.start()
        election = wait_for(f"operator {name} to answer", lambda: _election(op), 60)
        self.started.append(op)
        return op, str(election["identity"])

    def stop(self) -> None:
        for op in self.started:
            op.stop()


@contextmanager
def replica_group(
    make: Callable[[Path, Path, str, str], R],
    prefix: str,
    control_plane: ControlPlane,
    api: k8s.ApiClient,
    kube: Kube,
    tmp_path: Path,
) -> Iterator[R]:
    """Leader-elected replicas (made by `make`) serving a namespace of their own, outside
    the session operator's patterns, on a Lease of their own; both removed afterwards."""
    ns = f"{prefix}-{uuid.uuid4().hex[:6]}"
    kube.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
    lease = f"pgherd-{prefix}-{uuid.uuid4().hex[:6]}"
    kubeconfig = operator_kubeconfig(control_plane, api, tmp_path / "kubeconfig")
    group = make(kubeconfig, control_plane.log_dir, ns, lease)
    try:
        yield group
    finally:
        group.stop()
        kube.delete("Lease", OPERATOR_NAMESPACE, lease)
        kube.delete("Namespace", None, ns)


@pytest.fixture
def replicas(
    operator: Operator,  # installs the CRDs and the RBAC (the leader election's Role too)
    control_plane: ControlPlane,
    api: k8s.ApiClient,
    kube: Kube,
    tmp_path: Path,
) -> Iterator[Replicas]:
    with replica_group(Replicas, "ha", control_plane, api, kube, tmp_path) as group:
        yield group


def _writers(cp: ControlPlane, since: float, namespace: str) -> list[tuple[float, str]]:
    """(time, user agent) of the operators' writes in namespace, in order."""
    writes = audit_writes(cp, USER, since, namespace)
    return sorted((_epoch(w), str(w.get("userAgent", ""))) for w in writes)


def test_one_leader_acts_and_a_standby_takes_over(
    replicas: Replicas, control_plane: ControlPlane, kube: Kube
) -> None:
    began = time.time()
    a, a_id = replicas.start("op-a")
    wait_for("op-a to lead", lambda: _holder(kube, replicas.lease) == a_id, 30)
    b, b_id = replicas.start("op-b")
    # The standby says so, and stays one.
    wait_for("op-b to stand by", lambda: "standby:" in b.log.read_text(), 30)
    first = Cluster(kube, replicas.namespace, "first")
    first.create({"instances": 1, **PARKED})
    wait_for("the leader to reconcile first", lambda: _reconciled(first), 60)
    assert _holder(kube, replicas.lease) == a_id
    assert not _leading(b)
    assert (_leader_gauge(a), _leader_gauge(b)) == (1, 0)

    # kill -9 the leader: nothing releases the lease; the standby waits it out.
    a.stop(signal.SIGKILL)
    killed = time.monotonic()
    killed_at = time.time()
    second = Cluster(kube, replicas.namespace, "second")
    second.create({"instances": 1, **PARKED})
    wait_for(
        "op-b to take over",
        lambda: _holder(kube, replicas.lease) == b_id,
        LEASE_DURATION + 3 * RETRY_PERIOD,
        interval=0.1,
    )
    takeover = time.monotonic() - killed
    wait_for("the new leader to reconcile second", lambda: _reconciled(second), 60)
    reconciled = time.monotonic() - killed
    print(f"kill -9: lease taken after {takeover:.1f}s, second reconciled after {reconciled:.1f}s")
    # Expiry counts from when op-b saw op-a's last renewal (up to one retry period after it).
    assert takeover <= LEASE_DURATION + RETRY_PERIOD + 1, takeover

    # SIGTERM the leader with a standby ready: it exits within 5 s, releasing the lease, and
    # the standby takes over at its next try instead of waiting out the duration.
    c, c_id = replicas.start("op-c")
    wait_for("op-c to stand by", lambda: "standby:" in c.log.read_text(), 30)
    terminated = time.monotonic()
    terminated_at = time.time()
    assert b.proc is not None
    b.proc.send_signal(signal.SIGTERM)
    b.proc.wait(timeout=15)
    exited = time.monotonic() - terminated
    wait_for(
        "op-c to take over",
        lambda: _holder(kube, replicas.lease) == c_id,
        LEASE_DURATION,
        interval=0.1,
    )
    handover = time.monotonic() - terminated
    print(f"SIGTERM: exit after {exited:.2f}s, handover after {handover:.1f}s")
    assert b.proc.returncode == 0
    assert exited < 5, exited
    assert handover < RETRY_PERIOD + 3, handover  # not the lease's 12 s
    assert "released Lease" in b.log.read_text()
    third = Cluster(kube, replicas.namespace, "third")
    third.create({"instances": 1, **PARKED})
    wait_for("the third leader to reconcile third", lambda: _reconciled(third), 60)

    # The audit log: one writer at a time, each only while it led.
    writers = _writers(control_plane, began, replicas.namespace)
    by = {a_id: "op-a", b_id: "op-b", c_id: "op-c"}
    named = [(t, next((n for i, n in by.items() if i in agent), agent)) for t, agent in writers]
    assert {n for _, n in named} == {"op-a", "op-b", "op-c"}, named
    assert all(t <= killed_at for t, n in named if n == "op-a")
    assert all(killed_at < t <= terminated_at for t, n in named if n == "op-b")
    assert all(terminated_at < t for t, n in named if n == "op-c")
