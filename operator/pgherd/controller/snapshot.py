"""The Snapshot a pass decides from: one cluster's world, read once, never changed.

It holds the stored PostgresCluster (parsed, or why it does not parse), the objects labelled
for the cluster (children, pods, claims, Patroni's DCS ConfigMaps), what Patroni and the
instances publish on them (Member, InstanceReport), the PostgresBackups of the cluster and the
Secrets that opted in to pgherd. pgherd.controller.observe builds it; plan and status read it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from pgherd import contract
from pgherd.api.v1alpha1 import PostgresCluster
from pgherd.controller.databases import DatabasesSeen
from pgherd.controller.leader_release import ContainerSeen
from pgherd.controller.rehearsal import CheckOutcome
from pgherd.controller.roles import RolesSeen
from pgherd.controller.sql import Target
from pgherd.controller.storage import VolumeUsage
from pgherd.render import labels, names

if TYPE_CHECKING:
    from pgherd.controller.poolers import PoolerSeen

Manifest = dict[str, Any]
REVISION_LABEL = "controller-revision-hash"
READY_STATES = frozenset({"running", "streaming"})
# Kinds of the objects a cluster owns, as the caches hold them.
CHILD_KINDS = (
    "ServiceAccount",
    "Role",
    "RoleBinding",
    "Secret",
    "ConfigMap",
    "Service",
    "StatefulSet",
    "PodDisruptionBudget",
    "PodMonitor",
    # PostgresPooler: the Deployments of a cluster's poolers (their other children are
    # ConfigMaps, Secrets and Services, labelled for the cluster too).
    "Deployment",
)
ChildKey = tuple[str, str]  # (kind, name)


@dataclass(frozen=True)
class InstanceReport:
    """What the instance's supervisor publishes about itself (pgherd.operand.report)."""

    postgres_major: int | None = None
    libraries: frozenset[str] | None = None
    error: str | None = None
    ignored_parameters: tuple[tuple[str, str], ...] = ()
    # The data volume and pg_wal as the instance measured them (disks that do not fill).
    volume: VolumeUsage | None = None
    # The major of the last upgrade this instance's volume finished (statistics rebuilt).
    upgraded_to: int | None = None

    @classmethod
    def from_annotation(cls, raw: str | None) -> InstanceReport | None:
        try:
            data = json.loads(raw) if raw else None
        except ValueError:
            return None
        if not isinstance(data, dict):
            return None
        major = data.get(contract.REPORT_MAJOR)
        libs = data.get(contract.REPORT_LIBRARIES)
        error = data.get(contract.REPORT_ERROR)
        ignored = data.get(contract.REPORT_IGNORED) or {}
        return cls(
            postgres_major=major if isinstance(major, int) else None,
            libraries=frozenset(str(x) for x in libs) if isinstance(libs, list) else None,
            error=str(error) if error else None,
            ignored_parameters=tuple(sorted((str(k), str(v)) for k, v in ignored.items()))
            if isinstance(ignored, dict)
            else (),
            volume=VolumeUsage.parse(data.get(contract.REPORT_VOLUME)),
            upgraded_to=_upgraded_to(data.get(contract.REPORT_UPGRADED)),
        )


def _upgraded_to(value: Any) -> int | None:
    major = value.get("toMajor") if isinstance(value, dict) else None
    return major if isinstance(major, int) else None


@dataclass(frozen=True)
class Member:
    """One instance pod with what Patroni publishes about it in the pod's annotations."""

    name: str
    ordinal: int
    ready: bool
    running: bool
    created: datetime | None
    revision: str | None
    role: str | None
    state: str | None
    api_url: str | None
    lsn: int | None
    pending_restart: bool
    # Since when the pod has not been Ready (its Ready condition's last transition), or
    # since it was created when it never was.
    unready_since: datetime | None = None
    # Deleted, still shutting down: its StatefulSet re-creates it once it is gone.
    terminating: bool = False
    # The kubelet's Ready alone: its probe is Patroni's /readiness (running, streaming, not
    # lagging), fresher than Patroni's annotation, which is rewritten once per loop_wait.
    pod_ready: bool = False
    controller_uid: str | None = None
    uid: str | None = None
    report: InstanceReport | None = None
    annotations: Mapping[str, str] = field(default_factory=dict)
    # postgres://host:port/postgres, as Patroni advertises the instance's PostgreSQL.
    conn_url: str | None = None
    # The node the pod is scheduled on (drain-aware switchover).
    node: str | None = None
    # The kubelet's report of the instance container (operator-assisted leader release).
    container: ContainerSeen | None = None
    # The role in Patroni's own status annotation: "promoted" while a promotion is under way
    # (the pod's role label already says primary then), "primary" once it is done.
    patroni_role: str | None = None


def _time(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value.replace("Z", "+00:00")) if value else None


def member_from_pod(pod: Manifest) -> Member:
    meta, status = pod["metadata"], pod.get("status", {})
    annotations = meta.get("annotations") or {}
    try:
        patroni = json.loads(annotations.get("status", "{}"))
    except ValueError:
        patroni = {}
    conditions = {c["type"]: c["status"] for c in status.get("conditions", [])}
    ready_condition = next(
        (c for c in status.get("conditions", []) if c.get("type") == "Ready"), None
    )
    controller = next((r for r in meta.get("ownerReferences") or [] if r.get("controller")), None)
    name = meta["name"]
    lsn = patroni.get("xlog_location")
    role = (meta.get("labels") or {}).get(labels.ROLE) or patroni.get("role")
    created = _time(meta.get("creationTimestamp"))
    return Member(
        name=name,
        ordinal=int(name.rsplit("-", 1)[1]),
        # The pod's readiness alone can run ahead of Patroni (a kubelet's first probe, or a
        # pod whose Patroni has not registered yet); an instance is ready when both agree.
        ready=conditions.get("Ready") == "True" and patroni.get("state") in READY_STATES,
        running=status.get("phase") == "Running" and not meta.get("deletionTimestamp"),
        created=created,
        revision=(meta.get("labels") or {}).get(REVISION_LABEL),
        role=role,
        state=patroni.get("state"),
        api_url=patroni.get("api_url"),
        lsn=int(lsn) if isinstance(lsn, int | str) and str(lsn).isdigit() else None,
        pending_restart=bool(patroni.get("pending_restart")),
        # A pod Ready by the kubelet but not (yet) by Patroni counts from when it got Ready.
        unready_since=(
            _time(ready_condition.get("lastTransitionTime")) if ready_condition else None
        )
        or created,
        terminating=bool(meta.get("deletionTimestamp")),
        pod_ready=conditions.get("Ready") == "True",
        controller_uid=controller.get("uid") if controller else None,
        uid=meta.get("uid"),
        report=InstanceReport.from_annotation(annotations.get(contract.INSTANCE_ANNOTATION)),
        annotations=annotations,
        conn_url=patroni.get("conn_url") if isinstance(patroni.get("conn_url"), str) else None,
        node=(pod.get("spec") or {}).get("nodeName") or None,
        container=ContainerSeen.from_pod(pod, contract.CONTAINER),
        patroni_role=str(patroni["role"]) if isinstance(patroni.get("role"), str) else None,
    )


@dataclass(frozen=True)
class Snapshot:
    """Everything one reconcile decides from, read once; never changed afterwards."""

    namespace: str
    name: str
    now: datetime
    raw: Manifest | None = None  # the stored PostgresCluster; None when it is gone
    cluster: PostgresCluster | None = None
    invalid: str | None = None  # why the stored spec does not parse
    # Objects labelled for the cluster, by (kind, name): children and Patroni's ConfigMaps.
    children: Mapping[ChildKey, Manifest] = field(default_factory=dict)
    # Names the cluster's children should have that are held by an object the caches do not
    # hold (not labelled for the cluster): a neighbour's.
    foreign: frozenset[ChildKey] = frozenset()
    # Children that exist and are the cluster's but have not reached the caches yet (just
    # written, or the caches are still filling): left alone until they have.
    unsynced: frozenset[ChildKey] = frozenset()
    members: tuple[Member, ...] = ()
    claims: tuple[Manifest, ...] = ()
    storage_class_missing: str | None = None
    # Secrets that opted in to pgherd (label pgherd.io/use) in the namespace, by name, and the
    # names of referenced Secrets that exist without opting in.
    usable_secrets: Mapping[str, Manifest] = field(default_factory=dict)
    unusable_secrets: frozenset[str] = frozenset()
    backups: tuple[Manifest, ...] = ()  # PostgresBackups naming this cluster
    # A restore from a PostgresBackup: that backup and its source cluster, as stored.
    recovery_backup: Manifest | None = None
    recovery_cluster: Manifest | None = None
    # PodMonitors are watched (their CRD is installed) and listed: only then is one made.
    pod_monitors_served: bool = False
    # How to reach the primary as the superuser, set by observe when it read the database.
    sql_target: Target | None = field(default=None, repr=False)
    # Managed roles: what the primary holds of spec.managed.roles (None: not read).
    roles_seen: RolesSeen | None = None
    # ---- PostgresDatabase (pgherd.controller.databases)
    databases: tuple[Manifest, ...] = ()  # PostgresDatabases naming this cluster
    databases_seen: DatabasesSeen | None = None  # what the primary holds of them
    # PostgresPooler: the poolers naming this cluster, as stored, and what the primary holds
    # for them (read only while there is one).
    poolers: tuple[Manifest, ...] = ()
    pooler_seen: PoolerSeen | None = None
    # Drain-aware switchover: the nodes of the instances that are cordoned or tainted for
    # removal (pgherd.controller.drain).
    draining_nodes: frozenset[str] = frozenset()
    # The major upgrade (pgherd.controller.major_upgrade): the cluster's Jobs and the pods
    # they ran (not instances), by name.
    jobs: Mapping[str, Manifest] = field(default_factory=dict)
    job_pods: tuple[Manifest, ...] = ()
    # The rehearsal of a major upgrade (pgherd.controller.rehearsal): its throwaway copy as
    # stored, and what the check gave on it (read only in the Checking phase).
    rehearsal_copy: Manifest | None = None
    rehearsal_check: CheckOutcome | None = None

    # ---- derived views ---------------------------------------------------------------
    def child(self, kind: str, name: str) -> Manifest | None:
        return self.children.get((kind, name))

    def member(self, name: str) -> Member | None:
        return next((m for m in self.members if m.name == name), None)

    @property
    def statefulset(self) -> Manifest | None:
        return self.child("StatefulSet", names.statefulset(self.name))

    @property
    def statefulset_uid(self) -> str | None:
        uid: str | None = (self.statefulset or {}).get("metadata", {}).get("uid")
        return uid

    @property
    def update_revision(self) -> str | None:
        if not self.statefulset:
            return None
        rev: str | None = self.statefulset.get("status", {}).get("updateRevision")
        return rev

    def outdated(self, m: Member) -> bool:
        return self.update_revision is not None and m.revision != self.update_revision

    def _dcs(self, suffix: str) -> Mapping[str, str]:
        cm = self.child("ConfigMap", names.patroni_dcs_configmap(self.name, suffix))
        return (cm or {}).get("metadata", {}).get("annotations") or {}

    @property
    def dcs_configmaps(self) -> dict[str, Manifest]:
        found = {n: self.child("ConfigMap", n) for n in names.patroni_dcs_configmaps(self.name)}
        return {n: cm for n, cm in found.items() if cm is not None}

    @property
    def leader(self) -> str | None:
        return self._dcs("leader").get("leader") or None

    @property
    def leader_lsn(self) -> int | None:
        optime = self._dcs("leader").get("optime")
        return int(optime) if optime and optime.isdigit() else None

    @property
    def dcs_config(self) -> dict[str, Any] | None:
        raw = self._dcs("config").get("config")
        try:
            value = json.loads(raw) if raw else None
        except ValueError:
            return None
        return value if isinstance(value, dict) else None

    @property
    def sync_standbys(self) -> frozenset[str]:
        raw = self._dcs("sync").get("sync_standby") or ""
        return frozenset(n for n in raw.split(",") if n)

    @property
    def primary(self) -> Member | None:
        if self.leader and (m := self.member(self.leader)) and m.running:
            return m
        return next((m for m in self.members if m.role == labels.ROLE_PRIMARY), None)


def expected_children(cluster: str) -> list[ChildKey]:
    """(kind, name) of every object a cluster's reconcile may create, Patroni's included."""
    return [
        ("ServiceAccount", names.instance_account(cluster)),
        ("Role", names.instance_account(cluster)),
        ("RoleBinding", names.instance_account(cluster)),
        ("Secret", names.vault(cluster)),
        ("Secret", names.ca_secret(cluster)),
        ("Secret", names.tls_secret(cluster)),
        *(("Secret", names.secret(cluster, k)) for k in names.SECRET_KINDS),
        ("ConfigMap", names.patroni_configmap(cluster)),
        ("Service", names.service_headless(cluster)),
        ("Service", names.service_rw(cluster)),
        ("Service", names.service_ro(cluster)),
        ("Service", names.service_any(cluster)),
        ("StatefulSet", names.statefulset(cluster)),
        ("PodDisruptionBudget", names.pdb(cluster)),
        ("PodDisruptionBudget", names.pdb_primary(cluster)),
        *(("ConfigMap", n) for n in names.patroni_dcs_configmaps(cluster)),
    ]
