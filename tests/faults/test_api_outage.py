"""An API-server outage longer than Patroni's TTL (issue 16): kube-apiserver is killed and
started again ttl + 10 s later, while a writer records every acknowledged commit.

With Patroni's failsafe mode (on by default) the primary cannot renew its leader key but
reaches every other member's REST API, so it keeps running as the primary: writes go on
through the outage, no replica is promoted, and nothing acknowledged is lost. The operator runs
as the Deployment runs it, two replicas electing a leader on a Lease (a replica that exits is
started again, as the kubelet's restartPolicy would): its watches, informers and election
recover, and it acts on a change within a minute of the API's return, one replica at a time;
so does the session's operator (one replica, no election), on a cluster created then.

Everything the test needs while the API is down (ports, certificates, credentials) is read
before the outage: instances are reached directly, never through the API.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes import client as k8s

from pgherd.controller.client import Client as Kube
from pgherd_dev.controlplane import ControlPlane
from tests.acked_writes import stored_ids
from tests.api_outage import api_down, instances, recording, synchronous_cluster
from tests.cluster.test_operator_ha import Replicas as LeaseReplicas
from tests.cluster.test_operator_ha import _holder, replica_group
from tests.operator_harness import (
    OPERATOR_ACCOUNT,
    OPERATOR_NAMESPACE,
    Cluster,
    Operator,
    _epoch,
    audit_writes,
    wait_for,
)

pytestmark = [pytest.mark.cluster, pytest.mark.slow, pytest.mark.faults]

USER = f"system:serviceaccount:{OPERATOR_NAMESPACE}:{OPERATOR_ACCOUNT}"
TIMINGS = {"ttl": 20, "loopWait": 2, "retryTimeout": 5}
# The API is down for longer than the leader key lives: without failsafe mode Patroni would
# demote the primary (it cannot renew the key) and a replica would take over.
DOWN_SECONDS = TIMINGS["ttl"] + 10
# The longest write outage allowed while the API is down. With failsafe mode nothing in the
# write path needs the API: PostgreSQL and its synchronous standby keep streaming, so any gap
# is scheduling on a shared machine. A demotion could not hide under it: Patroni demotes only
# after retryTimeout (5 s) of failed renewals, and a demoted primary takes writes again only
# after a failover or its own return as the primary, never within seconds.
WRITE_OUTAGE_BOUND = 5.0
# The operator acts on a change made after the API's return within this (issue 16).
OPERATOR_BOUND = 60.0
# A cluster no node takes: the operator reconciles it, and no PostgreSQL runs.
PARKED = {"scheduling": {"nodeSelector": {"pgherd.io/test": "parked"}}}


# ---- the operator as the Deployment runs it: two replicas on a Lease -----------------------
class Replicas(LeaseReplicas):
    """test_operator_ha's leader-elected replicas serving one namespace, under a restart
    policy: one that exits is started again after a short back-off, as the kubelet restarts
    a container."""

    def __init__(self, kubeconfig: Path, log_dir: Path, namespace: str, lease: str) -> None:
        super().__init__(kubeconfig, log_dir, namespace, lease)
        self.restarts: list[tuple[float, str, int | None]] = []
        self._stop = threading.Event()

    def supervise(self) -> None:
        threading.Thread(target=self._supervise, name="restart-policy", daemon=True).start()

    def _supervise(self) -> None:
        while not self._stop.wait(0.5):
            for op in self.started:
                if op.proc is not None and op.proc.poll() is not None:
                    code = op.proc.returncode
                    self.restarts.append((time.monotonic(), op.log.name, code))
                    if not self._stop.wait(2.0):
                        op.start()

    def stop(self) -> None:
        self._stop.set()
        super().stop()


@pytest.fixture
def replicas(
    operator: Operator,  # installs the CRDs and the RBAC (the leader election's Role too)
    control_plane: ControlPlane,
    api: k8s.ApiClient,
    kube: Kube,
    tmp_path: Path,
) -> Iterator[Replicas]:
    with replica_group(Replicas, "outage", control_plane, api, kube, tmp_path) as group:
        group.start("outage-a")
        group.start("outage-b")
        group.supervise()
        yield group


def _writers(cp: ControlPlane, since: float, namespace: str) -> list[tuple[float, str]]:
    """(time, holder identity) of the operators' writes in namespace, in order."""
    out = []
    for w in audit_writes(cp, USER, since, namespace):
        agent = str(w.get("userAgent", ""))
        identity = agent.partition("(")[2].partition(")")[0] or agent
        out.append((_epoch(w), identity))
    return sorted(out)


def _runs(writers: list[tuple[float, str]]) -> list[str]:
    """The writers' identities in order, each run of writes by one replica once."""
    runs: list[str] = []
    for _, who in writers:
        if not runs or runs[-1] != who:
            runs.append(who)
    return runs


def test_api_server_outage_keeps_the_primary_and_the_operator_recovers(
    replicas: Replicas, control_plane: ControlPlane, kube: Kube, namespace: str
) -> None:
    began = time.time()
    cluster = synchronous_cluster(kube, replicas.namespace, "outage", TIMINGS)
    # Failsafe mode reached Patroni, and the primary wrote the topology it will call.
    members = instances(cluster)
    names = sorted(m.name for m in members)

    def topology() -> list[str] | None:
        leader = kube.get("ConfigMap", cluster.namespace, "outage-leader") or {}
        raw = (leader.get("metadata", {}).get("annotations") or {}).get("failsafe")
        return sorted(json.loads(raw)) if raw else None

    wait_for("the failsafe topology of every member", lambda: topology() == names, timeout=60)
    config = kube.get("ConfigMap", cluster.namespace, "outage-config") or {}
    assert json.loads(config["metadata"]["annotations"]["config"])["failsafe_mode"] is True

    primary = cluster.primary()
    writer, prober = recording(members, primary)
    leader_before = _holder(kube, replicas.lease)

    # ---- the outage ---------------------------------------------------------------------
    stopped, back, start_seconds = api_down(control_plane, DOWN_SECONDS)
    back_epoch = time.time()
    down = back - stopped
    # A change only the operator acts on, made at once: a new generation of the spec (seen
    # through kopf's watch) and a child deleted (seen through pgherd's informers).
    generation = cluster.obj()["metadata"]["generation"] + 1
    cluster.patch_spec({"postgresql": {"parameters": {"work_mem": "5MB"}}})
    kube.delete("Service", cluster.namespace, "outage-r")
    # And the session's operator (one replica, no election) serves a cluster created now.
    parked = Cluster(kube, namespace, "after-outage")
    parked.create({"instances": 1, **PARKED})
    changed = time.monotonic()

    observed = wait_for(
        "the operator to observe the new generation",
        lambda: cluster.status().get("observedGeneration") == generation and time.monotonic(),
        timeout=OPERATOR_BOUND + 30,
        interval=0.2,
    )
    recreated = wait_for(
        "the operator to re-create Service outage-r",
        lambda: kube.get("Service", cluster.namespace, "outage-r") is not None and time.monotonic(),
        timeout=OPERATOR_BOUND + 30,
        interval=0.2,
    )
    served = wait_for(
        "the session's operator to reconcile a new cluster",
        lambda: parked.status().get("phase") and time.monotonic(),
        timeout=OPERATOR_BOUND + 30,
        interval=0.2,
    )
    writer.flowing(20, timeout=60)
    cluster.wait_healthy(3, timeout=120)
    prober.stop.set()
    prober.join(timeout=10)
    writer.finish()

    write_outage = writer.outage(stopped, back)
    acted, restored, single = observed - changed, recreated - changed, served - changed
    print(
        f"API outage: {down:.1f}s down (restart to /readyz {start_seconds:.1f}s); "
        f"longest write gap meanwhile {write_outage:.2f}s over {len(writer.acked)} commits; "
        f"failsafe active for {len(prober.failsafe_active)} probes; operator acted "
        f"{acted:.1f}s (new generation) and {restored:.1f}s (deleted Service) after the API "
        f"returned, the session's operator {single:.1f}s (new cluster); operator restarts "
        f"{replicas.restarts}"
    )

    # The outage was longer than the TTL: without failsafe mode the primary would be gone.
    assert down > TIMINGS["ttl"] + 5, down
    assert prober.failsafe_active, "the primary's Patroni never reported failsafe mode active"
    # Never two primaries, and never another one: the original primary throughout.
    assert prober.primaries() == {primary}, prober.primaries()
    assert prober.demoted() == [], f"{primary} was seen in recovery"
    assert cluster.primary() == primary
    last = prober.samples[-1][1]
    assert [n for n, r in last.items() if r is False] == [primary], last
    # The primary kept accepting writes throughout.
    assert write_outage <= WRITE_OUTAGE_BOUND, (write_outage, writer.errors())
    with members[names.index(primary)].connect() as conn:
        lost = writer.lost(stored_ids(conn))
    assert lost == [], f"{len(lost)} acknowledged rows lost"
    # The operator's watches (kopf's and the informers) came back within a minute.
    assert acted <= OPERATOR_BOUND, acted
    assert restored <= OPERATOR_BOUND, restored
    assert single <= OPERATOR_BOUND, single

    # One replica acted at a time: the writes in the namespace come in runs, one replica's
    # each, and a replica that stopped leading never wrote again.
    runs = _runs(_writers(control_plane, began, replicas.namespace))
    assert runs, "the operator wrote nothing"
    assert len(runs) == len(set(runs)), runs
    leader_after = _holder(kube, replicas.lease)
    assert leader_after and runs[-1] == leader_after, (runs, leader_after)
    assert runs[0] == leader_before, (runs, leader_before)
    # The new leader's fresh lists match what it renders: no child is written again (only
    # what the change asked for: the Service deleted, the configuration, the status).
    rewritten = sorted(
        f"{w['objectRef']['resource']}/{w['objectRef'].get('name')}"
        for w in audit_writes(control_plane, USER, back_epoch, replicas.namespace)
        if w["objectRef"]["resource"]
        in ("serviceaccounts", "roles", "rolebindings", "secrets", "statefulsets",
            "poddisruptionbudgets")
    )  # fmt: skip
    assert rewritten == [], rewritten
    # The whole control plane survived: every component still runs.
    assert set(control_plane.status()["processes"].values()) == {"running"}
