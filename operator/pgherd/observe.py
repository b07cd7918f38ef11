"""Reads the world a PostgresCluster lives in: its pods, Patroni's view of each member,
the StatefulSet's rollout, claims and storage class. Nothing here writes."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from pgherd.api.v1alpha1 import PostgresCluster
from pgherd.kube import Kube, Manifest
from pgherd.render import labels, names, operand

REVISION_LABEL = "controller-revision-hash"
READY_STATES = frozenset({"running", "streaming"})


@dataclass(frozen=True)
class InstanceReport:
    """What the instance's supervisor publishes about itself (pgherd.instance_report)."""

    postgres_major: int | None = None
    libraries: frozenset[str] | None = None
    error: str | None = None
    ignored_parameters: tuple[tuple[str, str], ...] = ()

    @classmethod
    def from_annotation(cls, raw: str | None) -> InstanceReport | None:
        try:
            data = json.loads(raw) if raw else None
        except ValueError:
            return None
        if not isinstance(data, dict):
            return None
        major = data.get(operand.REPORT_MAJOR)
        libs = data.get(operand.REPORT_LIBRARIES)
        error = data.get(operand.REPORT_ERROR)
        ignored = data.get(operand.REPORT_IGNORED) or {}
        return cls(
            postgres_major=major if isinstance(major, int) else None,
            libraries=frozenset(str(x) for x in libs) if isinstance(libs, list) else None,
            error=str(error) if error else None,
            ignored_parameters=tuple(sorted((str(k), str(v)) for k, v in ignored.items()))
            if isinstance(ignored, dict)
            else (),
        )


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
    timeline: int | None
    pending_restart: bool
    # Since when the pod has not been Ready (its Ready condition's last transition), or
    # since it was created when it never was.
    unready_since: datetime | None = None
    controller_uid: str | None = None
    report: InstanceReport | None = None


@dataclass
class Observed:
    """Everything one reconcile needs to decide, read once."""

    members: list[Member] = field(default_factory=list)
    leader: str | None = None
    leader_lsn: int | None = None
    statefulset: Manifest | None = None
    dcs_config: dict[str, Any] | None = None
    dcs_configmaps: dict[str, Manifest] = field(default_factory=dict)
    failover_key: dict[str, str] = field(default_factory=dict)
    sync_standbys: frozenset[str] = frozenset()
    claims: list[Manifest] = field(default_factory=list)
    storage_class_missing: str | None = None

    def member(self, name: str) -> Member | None:
        return next((m for m in self.members if m.name == name), None)

    @property
    def primary(self) -> Member | None:
        if self.leader and (m := self.member(self.leader)) and m.running:
            return m
        return next((m for m in self.members if m.role == labels.ROLE_PRIMARY), None)

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
    return Member(
        name=name,
        ordinal=int(name.rsplit("-", 1)[1]),
        # The pod's readiness alone can run ahead of Patroni (a kubelet's first probe, or a
        # pod whose Patroni has not registered yet); an instance is ready when both agree.
        ready=conditions.get("Ready") == "True" and patroni.get("state") in READY_STATES,
        running=status.get("phase") == "Running" and not meta.get("deletionTimestamp"),
        created=_time(meta.get("creationTimestamp")),
        revision=(meta.get("labels") or {}).get(REVISION_LABEL),
        role=role,
        state=patroni.get("state"),
        api_url=patroni.get("api_url"),
        lsn=int(lsn) if isinstance(lsn, int | str) and str(lsn).isdigit() else None,
        timeline=patroni.get("timeline"),
        pending_restart=bool(patroni.get("pending_restart")),
        unready_since=_unready_since(meta, ready_condition),
        controller_uid=controller.get("uid") if controller else None,
        report=InstanceReport.from_annotation(annotations.get(operand.INSTANCE_ANNOTATION)),
    )


def _unready_since(meta: Manifest, ready: dict[str, Any] | None) -> datetime | None:
    # A pod Ready by the kubelet but not (yet) by Patroni counts from when it got Ready.
    created = _time(meta.get("creationTimestamp"))
    return (_time(ready.get("lastTransitionTime")) if ready else None) or created


def observe(kube: Kube, cluster: PostgresCluster) -> Observed:
    name, ns = cluster.metadata.name, cluster.metadata.namespace
    selector = ",".join(f"{k}={v}" for k, v in labels.selector_labels(name).items())
    pods = kube.list("Pod", ns, selector)
    observed = Observed(
        members=sorted((member_from_pod(p) for p in pods), key=lambda m: m.ordinal),
        statefulset=kube.get("StatefulSet", ns, names.statefulset(name)),
        claims=kube.list("PersistentVolumeClaim", ns, selector),
    )
    for cm_name in names.patroni_dcs_configmaps(name):
        cm = kube.get("ConfigMap", ns, cm_name)
        if cm is not None:
            observed.dcs_configmaps[cm_name] = cm
    leader_cm = observed.dcs_configmaps.get(f"{name}-leader")
    if leader_cm:
        ann = leader_cm["metadata"].get("annotations") or {}
        observed.leader = ann.get("leader") or None
        optime = ann.get("optime")
        observed.leader_lsn = int(optime) if optime and optime.isdigit() else None
    config_cm = observed.dcs_configmaps.get(f"{name}-config")
    if config_cm:
        raw = (config_cm["metadata"].get("annotations") or {}).get("config")
        try:
            observed.dcs_config = json.loads(raw) if raw else None
        except ValueError:
            observed.dcs_config = None
    failover_cm = observed.dcs_configmaps.get(f"{name}-failover")
    if failover_cm:
        observed.failover_key = dict(failover_cm["metadata"].get("annotations") or {})
    sync_cm = observed.dcs_configmaps.get(f"{name}-sync")
    if sync_cm:
        raw_sync = (sync_cm["metadata"].get("annotations") or {}).get("sync_standby") or ""
        observed.sync_standbys = frozenset(n for n in raw_sync.split(",") if n)
    wanted_class = cluster.spec.storage.storage_class_name
    if wanted_class and kube.get("StorageClass", None, wanted_class) is None:
        observed.storage_class_missing = wanted_class
    return observed
