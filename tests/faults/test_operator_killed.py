"""The operator killed in the middle of each disruptive step (issue 16, item 1): a rolling
update, a switchover, a scale-down, a storage growth and a restore, each started and then the
operator frozen (SIGSTOP) at the first visible sign of the step under way and killed
(SIGKILL), as a crashed or evicted operator pod; a new operator process then starts at once.

For each step the test asserts that the step completes, that no pod was restarted or re-created
twice for it (the apiserver's audit log: pods created, pods the operator deleted, Patroni's
leader key changing hands, the StatefulSet re-created), that no object labelled as the
cluster's is orphaned (each has an owner reference to a live owner; only Patroni's DCS
ConfigMaps have none, by design) and no Job or extra Pod is left, and that the cluster is
healthy with every acknowledged write (AckedWriter, running through the first four steps)
still there. It prints, per step, where the kill landed, the time from the kill to the step
done and the restarts seen.

This file runs its own operator, watching only `opkill-*` namespaces (outside the session
operator's patterns), so it can be killed without disturbing the other tests.
"""

from __future__ import annotations

import base64
import json
import signal
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client as k8s

from pgherd.controller.client import Client as Kube
from pgherd_dev.controlplane import ControlPlane
from tests import s3_server
from tests.acked_writes import AckedWriter, primary_of, stored_ids
from tests.operator_harness import (
    OPERATOR_ACCOUNT,
    OPERATOR_NAMESPACE,
    Cluster,
    Operator,
    _epoch,
    operator_kubeconfig,
    wait_for,
)

pytestmark = [pytest.mark.cluster, pytest.mark.slow, pytest.mark.faults]

USER = f"system:serviceaccount:{OPERATOR_NAMESPACE}:{OPERATOR_ACCOUNT}"
PATRONI = {"ttl": 20, "loopWait": 2, "retryTimeout": 5}
BUCKET = "pgherd-opkill"
CREDS = "s3-creds"
# Patroni's own ConfigMaps: written by Patroni, never owned (pgherd must not write them while
# Patroni runs; they outlive the cluster by design, see the README's *Deletion*).
DCS_SUFFIXES = ("-leader", "-config", "-sync", "-failover")
# Objects a cluster's step could leave behind, and where the API serves them.
OWNED_KINDS = (
    "Pod", "PersistentVolumeClaim", "ConfigMap", "Secret", "Service", "ServiceAccount", "Role",
    "RoleBinding", "StatefulSet", "PodDisruptionBudget",
)  # fmt: skip


# ---- the operator under test ------------------------------------------------------------
@dataclass
class Killable:
    """This file's own operator, and the namespace it serves."""

    op: Operator
    namespace: str
    kills: int = 0
    # Stopped before the control plane goes, even when a test fails.
    writers: list[AckedWriter] = field(default_factory=list)

    def kill(self) -> float:
        """Freeze the operator where it is (SIGSTOP: nothing more reaches the API), kill it
        (SIGKILL: no clean-up, as a crashed pod), start a new one; the time of the kill."""
        assert self.op.proc is not None
        self.op.proc.send_signal(signal.SIGSTOP)
        killed = time.monotonic()
        self.op.stop(signal.SIGKILL)
        self.kills += 1
        self.op.start()
        return killed


@pytest.fixture
def killable(
    operator: Operator,  # the session's: installs the CRDs and the RBAC
    control_plane: ControlPlane,
    api: k8s.ApiClient,
    kube: Kube,
    tmp_path: Path,
) -> Iterator[Killable]:
    ns = f"opkill-{uuid.uuid4().hex[:6]}"  # outside the session operator's patterns
    kube.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
    op = Operator(
        operator_kubeconfig(control_plane, api, tmp_path / "kubeconfig"),
        control_plane.log_dir / f"operator-{ns}.log",
        args=["--namespace=opkill-*"],
    )
    op.start()
    killable = Killable(op, ns)
    yield killable
    for writer in killable.writers:
        writer.finish()
    op.stop()
    kube.delete("Namespace", None, ns)


# ---- what the audit log and the API show --------------------------------------------------
def _audit(cp: ControlPlane, namespace: str, since: float) -> list[dict[str, Any]]:
    out = []
    for line in cp.audit_log.read_text().splitlines():
        event = json.loads(line)
        if (
            event.get("stage") == "ResponseComplete"
            and event.get("objectRef", {}).get("namespace") == namespace
            and _epoch(event) >= since
            and int((event.get("responseStatus") or {}).get("code") or 0) < 300
        ):
            out.append(event)
    return out


def _name(event: dict[str, Any]) -> str:
    ref = event.get("objectRef", {})
    return str(ref.get("name") or ((event.get("requestObject") or {}).get("metadata") or {})
               .get("name") or "")  # fmt: skip


def _leaders(cp: ControlPlane, namespace: str, cluster: str, since: float) -> list[str]:
    """Each new holder of Patroni's leader key after `since`, in order (from the writes to the
    `<cluster>-leader` ConfigMap)."""
    seen: str | None = None
    out = []
    for line in cp.audit_log.read_text().splitlines():
        event = json.loads(line)
        ref = event.get("objectRef", {})
        if (
            event.get("stage") != "ResponseComplete"
            or ref.get("resource") != "configmaps"
            or ref.get("namespace") != namespace
            or _name(event) != f"{cluster}-leader"
            or int((event.get("responseStatus") or {}).get("code") or 0) >= 300
        ):
            continue
        meta = (event.get("requestObject") or {}).get("metadata") or {}
        leader = (meta.get("annotations") or {}).get("leader")
        if not leader or leader == seen:
            continue
        if seen is not None and _epoch(event) >= since:
            out.append(str(leader))
        seen = leader
    return out


@dataclass
class Restarts:
    """What the audit log shows a step did to the instances."""

    created: Counter[str] = field(default_factory=Counter)  # pods (re-)created, by name
    deleted: Counter[str] = field(default_factory=Counter)  # pods the operator deleted
    # Re-created after kwok's stray delete (see restarts()): the test bed's, not the operator's.
    kwok_strays: Counter[str] = field(default_factory=Counter)
    new_leaders: list[str] = field(default_factory=list)  # Patroni's leader key's new holders
    statefulsets_created: int = 0  # by the operator (storage growth re-creates it)
    statefulsets_deleted: int = 0

    def __str__(self) -> str:
        return (
            f"pods created {dict(self.created) or 0}, pods deleted by the operator "
            f"{dict(self.deleted) or 0}, new leaders {self.new_leaders or 0}, StatefulSet "
            f"deleted {self.statefulsets_deleted} created {self.statefulsets_created}"
            + (f", re-created after kwok's stray delete {dict(self.kwok_strays)}"
               if self.kwok_strays else "")
        )  # fmt: skip


def restarts(cp: ControlPlane, namespace: str, cluster: str, since: float) -> Restarts:
    """What the step did, from the audit log.

    kwok (v0.8.0, the test bed's stand-in for the node) removes a terminating pod with a
    delete by NAME, grace 0 and no uid precondition, sometimes twice for one pod: the second
    can land on the replacement the StatefulSet controller just made under the same name,
    which is then made a third time. Such a re-creation, after a grace-0 delete of a pod that
    nobody had asked to delete, is counted apart (kwok_strays): the operator did not cause it.
    Events are taken in the order they completed (a run caught a stray delete received before
    the create of the pod it deleted).
    Every other creation counts.
    """
    out = Restarts(new_leaders=_leaders(cp, namespace, cluster, since))
    deleted: set[str] = set()
    asked: dict[str, bool] = {}  # pod name -> its current incarnation was asked to go
    stray: set[str] = set()  # pod names whose current incarnation kwok deleted unasked
    # In the order the API server completed them: kwok's second delete can be received before
    # the replacement's create and still complete after it, deleting the replacement.
    events = sorted(_audit(cp, namespace, since), key=lambda e: e["stageTimestamp"])
    for event in events:
        ref, verb = event.get("objectRef", {}), event.get("verb")
        name = _name(event)
        if not name.startswith(f"{cluster}-") and name != cluster:
            continue
        if ref.get("resource") == "pods" and not ref.get("subresource"):
            if verb == "create":
                if name in stray:
                    stray.discard(name)
                    out.kwok_strays[name] += 1
                else:
                    out.created[name] += 1
                asked[name] = False
            elif verb == "delete":
                body = event.get("requestObject") or {}
                if event.get("user", {}).get("username") == USER:
                    out.deleted[name] += 1
                if body.get("gracePeriodSeconds") != 0:
                    asked[name] = True
                elif not asked.get(name, True) and "kwok/" in event.get("userAgent", ""):
                    stray.add(name)
        if ref.get("resource") == "statefulsets" and event.get("user", {}).get("username") == USER:
            # Server-side apply of a missing object is a patch that creates it.
            created = verb == "create" or (
                verb == "patch" and (event.get("responseStatus") or {}).get("code") == 201
            )
            out.statefulsets_created += created
            if verb == "delete":
                # Deleting one already being deleted changes nothing: count StatefulSets.
                body = event.get("requestObject") or {}
                deleted.add(str((body.get("preconditions") or {}).get("uid") or event["auditID"]))
    out.statefulsets_deleted = len(deleted)
    return out


def orphans(kube: Kube, api: k8s.ApiClient, namespace: str) -> list[str]:
    """Objects labelled as a pgherd cluster's whose owner is missing or gone (Patroni's DCS
    ConfigMaps excepted: they have no owner by design), and any Job."""
    objects: list[tuple[str, dict[str, Any]]] = [
        (kind, obj) for kind in OWNED_KINDS for obj in kube.list(kind, namespace)
    ]
    objects += [("PostgresCluster", obj) for obj in kube.list("PostgresCluster", namespace)]
    revisions = k8s.AppsV1Api(api).list_namespaced_controller_revision(namespace).items
    objects += [("ControllerRevision", api.sanitize_for_serialization(r)) for r in revisions]
    live = {obj["metadata"]["uid"] for _, obj in objects}
    found = []
    for kind, obj in objects:
        meta = obj["metadata"]
        if "pgherd.io/cluster" not in (meta.get("labels") or {}):
            continue
        owners = meta.get("ownerReferences") or []
        dcs = kind == "ConfigMap" and str(meta["name"]).endswith(DCS_SUFFIXES)
        if not owners and not dcs:
            found.append(f"{kind} {meta['name']}: no owner")
        found += [
            f"{kind} {meta['name']}: owner {o['kind']} {o['name']} is gone"
            for o in owners
            if o["uid"] not in live
        ]
    jobs = k8s.BatchV1Api(api).list_namespaced_job(namespace).items
    found += [f"Job {j.metadata.name} left" for j in jobs]
    return found


def pod_uids(cluster: Cluster) -> dict[str, str]:
    return {p["metadata"]["name"]: p["metadata"]["uid"] for p in cluster.pods()}


@dataclass
class Step:
    """One disruptive step with the operator killed in its middle."""

    name: str
    start: Callable[[], object]
    # True once the step is visibly under way (the kill point); may describe where.
    started: Callable[[], Any]
    done: Callable[[], Any]
    timeout: float = 240.0


@dataclass
class Outcome:
    name: str
    kill_point: str
    seconds: float  # from the kill to the step done
    restarts: Restarts

    def report(self) -> str:
        return (
            f"{self.name}: killed at {self.kill_point}; done {self.seconds:.1f}s after the "
            f"kill; {self.restarts}"
        )


def run_step(step: Step, killable: Killable, cp: ControlPlane, cluster: Cluster) -> Outcome:
    since = time.time()
    step.start()
    point = wait_for(f"{step.name} under way", step.started, timeout=180, interval=0.05)
    killed = killable.kill()
    wait_for(f"{step.name} done after the operator was killed", step.done, step.timeout)
    took = time.monotonic() - killed
    outcome = Outcome(step.name, str(point), took, restarts(cp, cluster.namespace, cluster.name,
                                                            since))  # fmt: skip
    print(outcome.report())
    return outcome


# ---- the steps on one 3-instance cluster --------------------------------------------------
def _creds(kube: Kube, namespace: str, s3: s3_server.S3Server) -> None:
    kube.create(
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": CREDS, "namespace": namespace,
                         "labels": {"pgherd.io/use": "true"}},
            "data": {"id": base64.b64encode(s3.access_key.encode()).decode(),
                     "secret": base64.b64encode(s3.secret_key.encode()).decode()},
        }
    )  # fmt: skip


def _backup_spec(s3: s3_server.S3Server) -> dict[str, Any]:
    return {
        "objectStore": {
            "endpointURL": s3.url, "bucket": BUCKET, "path": "pg", "region": s3_server.REGION,
            "credentials": {"accessKeyId": {"name": CREDS, "key": "id"},
                            "secretAccessKey": {"name": CREDS, "key": "secret"}},
        }
    }  # fmt: skip


def _healthy(cluster: Cluster, instances: int) -> bool:
    s = cluster.status()
    gen = cluster.obj()["metadata"]["generation"]
    return (
        s.get("phase") == "Healthy"
        and s.get("readyInstances") == instances
        and s.get("observedGeneration") == gen
        and len(cluster.pods()) == instances
    )


def _failover_key(kube: Kube, namespace: str, cluster: str) -> dict[str, str]:
    cm = kube.get("ConfigMap", namespace, f"{cluster}-failover") or {}
    return dict((cm.get("metadata") or {}).get("annotations") or {})


def _claim_sizes(kube: Kube, namespace: str, cluster: str) -> dict[str, str]:
    return {
        c["metadata"]["name"]: c["spec"]["resources"]["requests"]["storage"]
        for c in kube.list("PersistentVolumeClaim", namespace, f"pgherd.io/cluster={cluster}")
    }


def test_operator_killed_mid_rollout_switchover_scale_down_and_storage_growth(
    killable: Killable, kube: Kube, api: k8s.ApiClient, control_plane: ControlPlane
) -> None:
    ns, cp = killable.namespace, control_plane
    cluster = Cluster(kube, ns, "steps")
    name = cluster.name
    cluster.create(
        {
            "instances": 3,
            "patroni": PATRONI,
            # Asynchronous, so that any replica may take a switchover (in synchronous mode
            # Patroni takes only its synchronous standby, which the test cannot choose) and
            # the scale-down below always has to move the primary. A planned switchover loses
            # nothing acknowledged either way: Patroni releases the leader key only once a
            # replica received the shutdown checkpoint.
            "synchronousMode": "off",
            "storage": {"size": "1Gi", "reclaimPolicy": "Delete"},
        }
    )
    cluster.wait_healthy(3, timeout=300)
    writer = AckedWriter(primary_of(cluster))
    writer.create_table()
    killable.writers.append(writer)
    writer.start()
    writer.flowing(30)
    outcomes: list[Outcome] = []

    # 1. Rolling update (kubectl pgherd restart's annotation: a new pod template): killed
    #    once the first pod is being deleted.
    before = pod_uids(cluster)

    def replaced() -> set[str]:
        return {n for n, uid in pod_uids(cluster).items() if before.get(n) != uid}

    def first_going() -> str | None:
        pods = cluster.pods()
        going = [p["metadata"]["name"] for p in pods if p["metadata"].get("deletionTimestamp")]
        return (f"{going[0]} terminating" if going else None) or (
            f"{sorted(replaced())} re-created" if replaced() or len(pods) < 3 else None
        )

    outcomes.append(run_step(Step(
        "rollout",
        start=lambda: kube.patch("PostgresCluster", ns, name, {"metadata": {"annotations": {
            "pgherd.io/restartedAt": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}}}),
        started=first_going,
        done=lambda: len(replaced()) == 3 and _healthy(cluster, 3),
        timeout=400,
    ), killable, cp, cluster))  # fmt: skip
    rollout = outcomes[-1].restarts
    assert rollout.created == Counter({f"{name}-{i}": 1 for i in range(3)}), rollout
    assert all(n <= 1 for n in rollout.deleted.values()), rollout
    assert len(rollout.new_leaders) <= 1, rollout  # one switchover, before the old primary
    assert orphans(kube, api, ns) == []

    # 2. Switchover (spec.switchover), to the highest ordinal so that the scale-down below has
    #    to move the primary: killed once Patroni has taken the request (its failover key).
    primary = cluster.primary()
    target = f"{name}-2" if primary != f"{name}-2" else f"{name}-1"
    outcomes.append(run_step(Step(
        "switchover",
        start=lambda: cluster.patch_spec({"switchover": {"targetInstance": target}}),
        started=lambda: (
            (k := _failover_key(kube, ns, name)).get("member") == target
            and f"Patroni's failover key {k}"
        ) or (cluster.primary() == target and "the target already primary"),
        done=lambda: cluster.status().get("switchoverHandled") == target
        and cluster.primary() == target and _healthy(cluster, 3),
    ), killable, cp, cluster))  # fmt: skip
    switched = outcomes[-1].restarts
    assert switched.new_leaders == [target], switched
    assert not switched.created and not switched.deleted, switched
    assert orphans(kube, api, ns) == []

    # 3. Scale-down to 2: the primary moves off the highest ordinal first; killed once that
    #    switchover is under way (or, with the primary already below, the StatefulSet shrunk).
    moves = cluster.primary() == f"{name}-2"

    def scale_started() -> str | None:
        key = _failover_key(kube, ns, name)
        if moves and key.get("leader") == f"{name}-2" and key.get("member"):
            return f"Patroni's failover key {key}"
        sts = kube.get("StatefulSet", ns, name) or {}
        if sts.get("spec", {}).get("replicas") == 2:
            return "the StatefulSet at 2 replicas"
        return None

    outcomes.append(run_step(Step(
        "scale-down",
        start=lambda: cluster.patch_spec({"instances": 2, "switchover": None}),
        started=scale_started,
        done=lambda: _healthy(cluster, 2),
    ), killable, cp, cluster))  # fmt: skip
    scaled = outcomes[-1].restarts
    assert len(scaled.new_leaders) == (1 if moves else 0), scaled
    assert not scaled.created and not scaled.deleted, scaled
    assert cluster.primary() in (f"{name}-0", f"{name}-1")
    assert orphans(kube, api, ns) == []

    # 4. Storage growth (claims expanded, the StatefulSet re-created around its pods): killed
    #    once the first claim has the new size.
    before = pod_uids(cluster)

    def growth_started() -> str | None:
        grown = [n for n, s in _claim_sizes(kube, ns, name).items() if s == "2Gi"]
        if not grown:
            return None
        sts = kube.get("StatefulSet", ns, name)
        return f"claims grown {sorted(grown)}, StatefulSet {'there' if sts else 'deleted'}"

    def grown() -> bool:
        sts = kube.get("StatefulSet", ns, name) or {}
        templates = (sts.get("spec") or {}).get("volumeClaimTemplates") or [{}]
        sizes = _claim_sizes(kube, ns, name)
        return (
            templates[0].get("spec", {}).get("resources", {}).get("requests", {}).get("storage")
            == "2Gi"
            and all(s == "2Gi" for n, s in sizes.items() if n.rsplit("-", 1)[1] in "01")
            and _healthy(cluster, 2)
            and all(
                r.get("uid") == sts["metadata"]["uid"]
                for p in cluster.pods()
                for r in p["metadata"].get("ownerReferences") or []
                if r.get("controller")
            )
        )

    outcomes.append(run_step(Step(
        "storage growth",
        start=lambda: cluster.patch_spec({"storage": {"size": "2Gi"}}),
        started=growth_started,
        done=grown,
    ), killable, cp, cluster))  # fmt: skip
    growth = outcomes[-1].restarts
    assert pod_uids(cluster) == before, "storage growth replaced a pod"
    assert not growth.created and not growth.deleted and not growth.new_leaders, growth
    assert growth.statefulsets_deleted == 1 and growth.statefulsets_created == 1, growth
    # The claim of the instance scaled away is kept by design (whenScaled: Retain, so scaling
    # back up reuses its data); it belongs to the live StatefulSet, so it is no orphan.
    assert orphans(kube, api, ns) == []

    # Nothing acknowledged lost, one primary accepting writes.
    writer.flowing(20)
    writer.finish()
    with cluster.connect(cluster.primary()) as conn:
        lost = writer.lost(stored_ids(conn))
    print(
        f"acknowledged writes: {len(writer.acked)}, lost {len(lost)}, "
        f"operator kills {killable.kills}"
    )
    assert lost == [], f"{len(lost)} acknowledged rows lost"
    assert killable.kills == 4


def test_operator_killed_mid_restore(
    killable: Killable, kube: Kube, api: k8s.ApiClient, control_plane: ControlPlane
) -> None:
    ns = killable.namespace
    s3 = s3_server.start(control_plane.log_dir / f"moto-{ns}.log")
    try:
        s3.create_bucket(BUCKET)
        _creds(kube, ns, s3)
        source = Cluster(kube, ns, "src")
        # reclaimPolicy Delete: its claims and Secrets are owned too (Retain keeps them
        # ownerless on purpose, to outlive the cluster), so any object without one is an orphan.
        source.create({"instances": 1, "patroni": PATRONI, "backup": _backup_spec(s3),
                       "storage": {"reclaimPolicy": "Delete"}})  # fmt: skip
        source.wait_healthy(1, timeout=240)
        wait_for(
            "archiving",
            lambda: source.condition("ContinuousArchiving").get("status") == "True",
            timeout=120,
        )
        writer = AckedWriter(primary_of(source))
        writer.create_table()
        killable.writers.append(writer)
        writer.start()
        writer.flowing(100)
        kube.create({
            "apiVersion": "pgherd.io/v1alpha1", "kind": "PostgresBackup",
            "metadata": {"name": "b1", "namespace": ns}, "spec": {"cluster": "src"},
        })  # fmt: skip
        wait_for(
            "backup b1 Completed",
            lambda: ((kube.get("PostgresBackup", ns, "b1") or {}).get("status") or {}).get(
                "phase") == "Completed",
            timeout=180,
        )  # fmt: skip
        writer.finish()
        with source.connect(source.primary(), autocommit=True) as conn:
            have = stored_ids(conn)  # the app database's
        with source.connect_superuser(autocommit=True) as conn:
            row = conn.execute("SELECT pg_walfile_name(pg_switch_wal())").fetchone()
        assert row is not None
        wal = str(row[0])
        wait_for(
            f"{wal} archived",
            lambda: (
                ((source.status().get("backup") or {}).get("lastArchivedWal") or "")[:24]
                >= wal[:24]
            ),
            timeout=120,
        )

        restored = Cluster(kube, ns, "restored")

        def restoring() -> str | None:
            pods = restored.pods()
            if pods and not any(
                c["type"] == "Ready" and c["status"] == "True"
                for c in pods[0].get("status", {}).get("conditions") or []
            ):
                return f"{pods[0]['metadata']['name']} restoring (not ready)"
            return None

        outcome = run_step(Step(
            "restore",
            start=lambda: restored.create({
                "instances": 1, "patroni": PATRONI, "storage": {"reclaimPolicy": "Delete"},
                "bootstrap": {"recovery": {"source": {"backup": "b1"}}},
            }),
            started=restoring,
            done=lambda: _healthy(restored, 1),
        ), killable, control_plane, restored)  # fmt: skip
        assert outcome.restarts.created == Counter({"restored-0": 1}), outcome.restarts
        assert not outcome.restarts.deleted, outcome.restarts
        assert outcome.restarts.statefulsets_created == 1, outcome.restarts
        assert (restored.status().get("backup") or {}).get("restoredFrom"), restored.status()
        with restored.connect(restored.primary()) as conn:
            got = stored_ids(conn)
        assert writer.lost(got) == [], "acknowledged rows missing from the restore"
        assert got == have, (len(got), len(have))
        print(f"restore: {len(got)} rows restored, as acknowledged before the backup")
        assert orphans(kube, api, ns) == []
    finally:
        s3.stop()
