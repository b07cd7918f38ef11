"""The major upgrade inside one pass: the View pgherd.controller.major_upgrade decides from,
read off the snapshot; the cluster as its Step says to render it; the Step's intents as
actions (the rendered Jobs, a PostgresBackup, claims deleted, Patroni's keys reset); its
Progress as status.upgrade. Pure, like the planner it serves.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any, TypeGuard

from pgherd.api.v1alpha1 import BACKUP_KIND, PostgresCluster, UpgradeProblem, UpgradeStatus
from pgherd.controller import major_upgrade as mu
from pgherd.controller.actions import Action, Apply, Create, Delete, Event, Patch
from pgherd.controller.backups import CLUSTER_LABEL
from pgherd.controller.conditions import Activity, Problem
from pgherd.controller.snapshot import Member, Snapshot
from pgherd.controller.upgrade_outcome import read_outcome
from pgherd.render import labels, names
from pgherd.render.upgrade_jobs import (
    UpgradeImages,
    render_check_job,
    render_rollback_job,
    render_upgrade_job,
)

Manifest = dict[str, Any]
# The label the Job controller puts on the pods of a Job.
JOB_NAME_LABEL = "batch.kubernetes.io/job-name"
# Patroni's keys of the old system, cleared while nothing runs (the config key stays: it
# holds the dynamic configuration; its initialize and history are the old system's).
RESET_KEYS = ("leader", "sync", "failover")


def job_names(cluster: str) -> dict[mu.JobKind, str]:
    return {
        "preflight": names.upgrade_check_job(cluster),
        "upgrade": names.upgrade_job(cluster),
        "rollback": names.upgrade_rollback_job(cluster),
    }


def _created(obj: Manifest) -> str:
    return str(obj["metadata"].get("creationTimestamp") or "")


def job_seen(snapshot: Snapshot, name: str) -> mu.JobSeen:
    """One Job as the machine sees it: a Job being deleted still runs until its pods are gone
    (deleted in the foreground), so that a run again never overlaps the last."""
    job = snapshot.jobs.get(name)
    if job is None:
        return mu.ABSENT
    if job["metadata"].get("deletionTimestamp"):
        return mu.JobSeen("running")
    pods = [
        p
        for p in snapshot.job_pods
        if (p["metadata"].get("labels") or {}).get(JOB_NAME_LABEL) == name
    ]
    outcome = read_outcome(max(pods, key=_created) if pods else None)
    if outcome.phase == "running":
        failed = next(
            (x for x in (job.get("status") or {}).get("conditions") or []
             if x.get("type") == "Failed" and x.get("status") == "True"),
            None,
        )  # fmt: skip
        if failed is None:
            return mu.JobSeen("running")
        # Its pod gone without an outcome (deleted, its node lost): no report.
        return mu.JobSeen("failed", {}, str(failed.get("message") or failed.get("reason") or ""))
    report: dict[str, Any] = dict(outcome.report or {})
    if outcome.problems:
        report["problems"] = [dict(p) for p in outcome.problems]
    if outcome.phase == "failed" and not report.get("error"):
        report = {}  # killed or unreadable: no report, so it is run again
    return mu.JobSeen(outcome.phase, report, outcome.message)


def progress_of(status: UpgradeStatus | None) -> mu.Progress | None:
    if status is None or status.phase is None or status.from_version is None:
        return None
    return mu.Progress(
        phase=status.phase,
        from_version=status.from_version,
        to_version=status.to_version or status.from_version,
        method=status.method or "link",
        generation=status.generation or 0,
        started_at=status.started_at or datetime.min,
        from_image=status.from_image,
        to_image=status.to_image,
        primary=status.primary,
        outage_started_at=status.outage_started_at,
        outage_seconds=status.outage_seconds,
        system_identifier=status.system_identifier,
        backup=status.backup,
        runs=status.runs or 0,
        reason=status.reason,
        message=status.message,
        problems=tuple(p.model_dump(by_alias=True) for p in status.problems or ()),
        finished_at=status.finished_at,
    )


def status_of(p: mu.Progress | None) -> UpgradeStatus | None:
    if p is None:
        return None
    return UpgradeStatus(
        phase=p.phase,  # type: ignore[arg-type]
        from_version=p.from_version,
        to_version=p.to_version,
        method=p.method,  # type: ignore[arg-type]
        generation=p.generation,
        started_at=p.started_at,
        from_image=p.from_image,
        to_image=p.to_image,
        primary=p.primary,
        outage_started_at=p.outage_started_at,
        outage_seconds=p.outage_seconds,
        system_identifier=p.system_identifier,
        backup=p.backup,
        runs=p.runs or None,
        reason=p.reason,
        message=p.message,
        problems=[UpgradeProblem.model_validate(x) for x in p.problems[:32]] or None,
        finished_at=p.finished_at,
    )


def serving(primary: Member | None) -> TypeGuard[Member]:
    """Whether the leader runs as a primary, promotion done: Patroni takes the leader key
    and labels the pod primary before its promotion completes (a switchover's candidate
    reports role "promoted" meanwhile, seen for 14 s on a loaded machine), and a member
    stopped in that window leaves a standby's data directory (standby.signal), which must
    never be the one upgraded. Patroni's own status says "primary" once it is done."""
    return (
        primary is not None
        and primary.running
        and primary.role == labels.ROLE_PRIMARY
        and primary.patroni_role == labels.ROLE_PRIMARY
        and primary.state == "running"
    )


def view_of(cluster: PostgresCluster, snapshot: Snapshot, to_image: str | None) -> mu.View:
    """What the machine decides from; to_image: the operand image for spec.postgresVersion."""
    name = cluster.metadata.name
    status = cluster.status
    progress = progress_of(status.upgrade if status else None)
    primary = snapshot.primary
    members = snapshot.members
    jobs = {kind: job_seen(snapshot, job) for kind, job in job_names(name).items()}
    backup = next(
        (b for b in snapshot.backups if progress and b["metadata"]["name"] == progress.backup),
        None,
    )
    data_prefix = f"{names.data_claim(name, 0).rsplit('-', 1)[0]}-"
    to = progress.to_version if progress else cluster.spec.postgres_version
    return mu.View(
        now=snapshot.now,
        cluster=name,
        generation=cluster.metadata.generation or 0,
        want=cluster.spec.postgres_version,
        data_major=status.postgres_version if status else None,
        instances=cluster.spec.instances,
        method=cluster.spec.upgrade.method,
        backup_first=cluster.spec.upgrade.backup_first,
        progress=progress,
        from_image=status.image if status else None,
        to_image=to_image,
        primary=primary.name if serving(primary) else None,
        pods=tuple(m.name for m in members),
        all_ready=len(members) == cluster.spec.instances and all(m.ready for m in members),
        preflight=jobs["preflight"],
        upgrade=jobs["upgrade"],
        rollback=jobs["rollback"],
        backup_phase=((backup or {}).get("status") or {}).get("phase") if backup else None,
        claims=tuple(
            sorted(
                c["metadata"]["name"]
                for c in snapshot.claims
                if c["metadata"]["name"].startswith(data_prefix)
            )
        ),
        dcs_system=_dcs(snapshot, "config").get("initialize"),
        dcs_keys=any(
            snapshot.child("ConfigMap", names.patroni_dcs_configmap(name, key)) is not None
            for key in RESET_KEYS
        ),
        analyzed=primary is not None
        and primary.report is not None
        and primary.report.upgraded_to == to,
        archives=cluster.spec.backup is not None,
    )


def _dcs(snapshot: Snapshot, suffix: str) -> Mapping[str, str]:
    cm = snapshot.child("ConfigMap", names.patroni_dcs_configmap(snapshot.name, suffix))
    return (cm or {}).get("metadata", {}).get("annotations") or {}


def rendered(cluster: PostgresCluster, render: mu.Render) -> PostgresCluster:
    """The cluster as this pass renders its instances (see mu.Render)."""
    changes: dict[str, Any] = {}
    if render.major is not None and render.major != cluster.spec.postgres_version:
        changes["postgres_version"] = render.major
    if render.instances is not None and render.instances != cluster.spec.instances:
        changes["instances"] = render.instances
    if render.image is not None and render.image != cluster.spec.image:
        # As if spec.image named it: the image the old major runs with, kept.
        changes["image"] = render.image
    if not changes:
        return cluster
    return cluster.model_copy(update={"spec": cluster.spec.model_copy(update=changes)})


def _backup(cluster: PostgresCluster, name: str) -> Manifest:
    return {
        "apiVersion": "pgherd.io/v1alpha1",
        "kind": BACKUP_KIND,
        "metadata": {
            "name": name,
            "namespace": cluster.metadata.namespace,
            # As a scheduled backup: no owner, its record outlives the cluster.
            "labels": {CLUSTER_LABEL: cluster.metadata.name},
        },
        "spec": {"cluster": cluster.metadata.name},
    }


def actions_of(step: mu.Step, cluster: PostgresCluster, snapshot: Snapshot) -> list[Action]:
    """The step's intents as writes, each with the step's message as its reason; its events."""
    why = step.message or "major upgrade"
    out: list[Action] = []
    for intent in step.intents:
        out += _writes(intent, step.progress, cluster, snapshot, why)
    out += [Event(reason, message=message) for reason, message in step.events]
    return out


def _job(intent: mu.RunJob, p: mu.Progress, cluster: PostgresCluster) -> Manifest:
    images = UpgradeImages(
        old_major=p.from_version,
        old_image=p.from_image or "",
        new_major=p.to_version,
        new_image=p.to_image or "",
    )
    method: Any = p.method
    if intent.kind == "preflight":
        return render_check_job(cluster, images, method=method)
    if intent.kind == "upgrade":
        return render_upgrade_job(cluster, images, method=method, claim=intent.claim or "")
    return render_rollback_job(cluster, images, claim=intent.claim or "")


def _writes(
    intent: mu.Intent,
    p: mu.Progress | None,
    cluster: PostgresCluster,
    snapshot: Snapshot,
    why: str,
) -> list[Action]:
    if isinstance(intent, mu.RunJob):
        return [Apply(why, _job(intent, p, cluster))] if p is not None else []
    if isinstance(intent, mu.DeleteJob):
        name = job_names(cluster.metadata.name)[intent.kind]
        # Foreground: the Job stays (being deleted) until its pod is gone.
        return [
            Delete(why, kind="Job", name=name, uid=live["metadata"].get("uid"),
                   propagation="Foreground")
            for live in [snapshot.jobs.get(name)]
            if live is not None
        ]  # fmt: skip
    if isinstance(intent, mu.CreateBackup):
        taken = any(b["metadata"]["name"] == intent.name for b in snapshot.backups)
        return [] if taken else [Create(why, _backup(cluster, intent.name))]
    if isinstance(intent, mu.DeleteClaims):
        return [
            Delete(why, kind="PersistentVolumeClaim", name=c["metadata"]["name"],
                   uid=c["metadata"].get("uid"))
            for c in snapshot.claims
            # A claim being deleted is waited for, not deleted again: a pod must not start
            # on it.
            if c["metadata"]["name"] in intent.names and not c["metadata"].get("deletionTimestamp")
        ]  # fmt: skip
    return _reset_dcs(snapshot, intent.system_identifier, why)


def _reset_dcs(snapshot: Snapshot, system: str, why: str) -> list[Action]:
    """Patroni's state handed to the new system while nothing runs: initialize names it (so the
    upgraded primary, whose identifier it is, runs), the old system's leader, sync and
    failover keys go, and with them its timeline history (the new system starts at 1)."""
    out: list[Action] = []
    config = snapshot.child("ConfigMap", names.patroni_dcs_configmap(snapshot.name, "config"))
    if config is not None and _dcs(snapshot, "config").get("initialize") != system:
        out.append(Patch(why, kind="ConfigMap", name=config["metadata"]["name"], body={
            "metadata": {
                "resourceVersion": config["metadata"].get("resourceVersion"),
                "annotations": {"initialize": system, "history": None},
            }
        }))  # fmt: skip
    for suffix in RESET_KEYS:
        name = names.patroni_dcs_configmap(snapshot.name, suffix)
        if (cm := snapshot.child("ConfigMap", name)) is not None:
            out.append(Delete(why, kind="ConfigMap", name=name, uid=cm["metadata"].get("uid")))
    return out


def problems_of(step: mu.Step) -> list[Problem]:
    """Degraded once an attempt failed (reason and message of the machine's)."""
    if step.degraded and step.reason and step.message:
        return [Problem(step.reason, step.message)]
    return []


def activity_of(step: mu.Step) -> Activity | None:
    """Progressing while an attempt runs or waits to start."""
    if step.degraded or not step.reason or not step.message:
        return None
    return Activity(step.reason, step.message)
