"""The operator's side of backups: restore resolution and safety, cluster backup status,
schedules, and PostgresBackup assignment. Reads and writes through pgherd.kube only.

The operator never runs barman itself: the instance's backup agent does (see
pgherd.backup.agent), and publishes what it sees on its pod, which this module reads.

A backup must never stay Running or Pending forever because the instance taking it is
gone: a Running backup fails when its pod was replaced, or when the agent's heartbeat (a
pod annotation refreshed while barman runs) is older than STALE_AFTER seconds, which is
what a lost node or a killed container that does not come back look like; a Pending one
moves to another ready instance when its assigned pod is not ready. Every status write is
guarded by the resourceVersion read, so it never overwrites what an agent wrote meanwhile.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from croniter import croniter
from kubernetes.client.exceptions import ApiException

from pgherd import conditions as c
from pgherd.api.v1alpha1 import (
    API_VERSION,
    BACKUP_KIND,
    ClusterBackupStatus,
    PostgresBackup,
    PostgresCluster,
    PostgresClusterStatus,
    RecoverySource,
)
from pgherd.backup import store as st
from pgherd.backup import wal
from pgherd.backup.agent import (
    ARCHIVER_ANNOTATION,
    BACKUPS_ANNOTATION,
    HEARTBEAT_ANNOTATION,
    HEARTBEAT_EVERY,
)
from pgherd.backup.render import server_name
from pgherd.conditions import Problem
from pgherd.kube import Kube, Manifest
from pgherd.observe import Observed, member_from_pod
from pgherd.render import labels

log = logging.getLogger(__name__)

EventSink = Callable[[str, str, str], None]
CLUSTER_LABEL = "pgherd.io/cluster"
SCHEDULED_LABEL = "pgherd.io/scheduled"
TERMINAL = ("Completed", "Failed")
# Six missed heartbeats: long enough for API hiccups and modest clock skew between the
# instance and the operator, short enough that a dead agent's backup fails within minutes.
STALE_AFTER = float(os.environ.get("PGHERD_BACKUP_STALE_SECONDS", str(6 * HEARTBEAT_EVERY)))


@dataclass(frozen=True)
class Gate:
    """Whether the StatefulSet may be applied; when not, why (for Degraded)."""

    reason: str | None = None
    message: str | None = None
    resolved: RecoverySource | None = None

    @property
    def blocked(self) -> bool:
        return self.reason is not None


# ---- restore --------------------------------------------------------------------
def _resolve_source(kube: Kube, cluster: PostgresCluster) -> RecoverySource | str:
    """The recovery source as an object store + server name + backup id, or why not."""
    recovery = cluster.spec.bootstrap.recovery
    assert recovery is not None  # noqa: S101 - callers check
    source = recovery.source
    if source.backup is None:
        return source
    ns = cluster.metadata.namespace
    raw = kube.get(BACKUP_KIND, ns, source.backup)
    if raw is None:
        return f"PostgresBackup {source.backup!r} does not exist in namespace {ns}"
    backup = PostgresBackup.model_validate(raw)
    bs = backup.status
    if bs is None or bs.phase != "Completed" or not bs.backup_id:
        phase = bs.phase if bs and bs.phase else "Pending"
        return f"PostgresBackup {source.backup!r} is {phase}, not Completed"
    source_raw = kube.get("PostgresCluster", ns, backup.spec.cluster)
    if source_raw is None:
        return (
            f"PostgresCluster {backup.spec.cluster!r} of PostgresBackup {source.backup!r} no "
            "longer exists; restore with source.objectStore, serverName and backupId instead"
        )
    source_cluster = PostgresCluster.model_validate(source_raw)
    if source_cluster.spec.backup is None:
        return f"PostgresCluster {backup.spec.cluster!r} has no spec.backup (object store)"
    return RecoverySource(
        object_store=source_cluster.spec.backup.object_store,
        server_name=bs.server_name or server_name(source_cluster),
        backup_id=bs.backup_id,
    )


def resolve(kube: Kube, cluster: PostgresCluster) -> tuple[PostgresCluster, Gate]:
    """The cluster with its recovery source resolved, and whether its StatefulSet may go on.

    Refuses (blocks the StatefulSet) when the source cannot be resolved yet, and whenever
    the cluster's own archive is the source's: it would overwrite the source's archive."""
    recovery = cluster.spec.bootstrap.recovery
    if recovery is None:
        return cluster, Gate()
    cached = (
        cluster.status.backup.restored_from if cluster.status and cluster.status.backup else None
    )
    resolved = cached or _resolve_source(kube, cluster)
    if isinstance(resolved, str):
        return cluster, Gate(c.RECOVERY_SOURCE_NOT_READY, f"cannot restore yet: {resolved}")
    assert resolved.object_store is not None and resolved.server_name is not None  # noqa: S101
    backup = cluster.spec.backup
    if backup is not None and st.same_location(
        backup.object_store, server_name(cluster), resolved.object_store, resolved.server_name
    ):
        return cluster, Gate(
            c.ARCHIVE_WOULD_OVERWRITE_SOURCE,
            f"spec.backup archives to {st.destination_url(backup.object_store)}/"
            f"{server_name(cluster)}, the archive this cluster restores from; that would "
            "overwrite the source's WAL. Set spec.backup.serverName (or objectStore.path) to "
            "a new location. No instance is created until then.",
            resolved,
        )
    spec = cluster.spec.model_copy(
        update={
            "bootstrap": cluster.spec.bootstrap.model_copy(
                update={"recovery": recovery.model_copy(update={"source": resolved})}
            )
        }
    )
    return cluster.model_copy(update={"spec": spec}), Gate(resolved=resolved)


# ---- cluster status ---------------------------------------------------------------
def _annotation(pod: Manifest, key: str) -> dict[str, Any] | None:
    raw = (pod["metadata"].get("annotations") or {}).get(key)
    try:
        value = json.loads(raw) if raw else None
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def _time(value: Any) -> datetime | None:
    if not value:
        return None
    try:
        return datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return None


def _put(
    conds: list[Any],
    *,
    previous: list[Any],
    type_: str,
    status: c.Status,
    reason: str,
    message: str,
    gen: int | None,
    now: datetime,
) -> list[Any]:
    # Transition time from the stored status, so an unchanged world writes nothing.
    before = c.get(previous, type_)
    since = before.last_transition_time if before and before.status == status else now
    return c.set_condition(
        [x for x in conds if x.type != type_],
        type_,
        status=status,
        reason=reason,
        message=message,
        generation=gen,
        now=since,
    )


def _archiving(archiver: dict[str, Any] | None) -> tuple[c.Status, str, str]:
    if archiver is None:
        return ("Unknown", c.ARCHIVE_PENDING, "waiting for the primary to report WAL archiving")
    last_ok, last_bad = archiver.get("lastArchivedTime"), archiver.get("lastFailedTime")
    if last_bad and (not last_ok or last_bad > last_ok):
        error = archiver.get("error") or "see the primary's PostgreSQL log"
        return (
            "False",
            c.ARCHIVE_FAILING,
            f"archiving {archiver.get('lastFailedWal')} failed at {last_bad}: {error}. Check "
            "spec.backup.objectStore (endpoint, bucket, region) and the credentials Secret; "
            "PostgreSQL keeps the WAL and retries.",
        )
    if last_ok:
        return (
            "True",
            c.ARCHIVING_WORKS,
            f"last WAL {archiver.get('lastArchivedWal')} archived at {last_ok}",
        )
    return ("Unknown", c.ARCHIVE_PENDING, "no WAL archived yet")


def cluster_status(  # noqa: PLR0917 - mirrors status.compute's inputs
    kube: Kube,
    cluster: PostgresCluster,
    observed: Observed,
    new: PostgresClusterStatus,
    gate: Gate,
    now: datetime,
    emit: EventSink,
) -> PostgresClusterStatus:
    """new, with status.backup, the ContinuousArchiving condition and a blocked restore's
    Degraded condition; runs the backup schedule."""
    previous = cluster.status or PostgresClusterStatus()
    prev_backup = previous.backup or ClusterBackupStatus()
    stored = list(previous.conditions or [])
    conds = list(new.conditions or [])
    gen = cluster.metadata.generation
    phase = new.phase
    if gate.blocked:
        conds = _put(
            conds,
            previous=stored,
            type_=c.DEGRADED,
            status="True",
            reason=gate.reason or "",
            message=gate.message or "",
            gen=gen,
            now=now,
        )
        phase = c.PHASE_DEGRADED
        before = c.get(stored, c.DEGRADED)
        if before is None or before.reason != gate.reason:
            emit("Warning", gate.reason or "", gate.message or "")
    restored_from = prev_backup.restored_from or gate.resolved
    spec = cluster.spec.backup
    if spec is None:
        conds = [x for x in conds if x.type != c.CONTINUOUS_ARCHIVING]
        backup = ClusterBackupStatus(restored_from=restored_from) if restored_from else None
        return new.model_copy(update={"conditions": conds, "backup": backup, "phase": phase})

    backups = kube.list(BACKUP_KIND, cluster.metadata.namespace)
    reconcile_backups(kube, cluster, backups)
    if spec.schedule:
        # Every pass, not only when the schedule fires: a finished run beyond the limit
        # goes as soon as it finishes.
        _prune(kube, cluster, spec.schedule_history_limit, backups)
    pods = {m.name: m for m in observed.members}
    raw_pods = kube.list(
        "Pod", cluster.metadata.namespace, labels.selector_string(cluster.metadata.name)
    )
    primary = observed.primary
    archiver = None
    summaries = []
    for pod in raw_pods:
        name = pod["metadata"]["name"]
        if primary is not None and name == primary.name:
            archiver = _annotation(pod, ARCHIVER_ANNOTATION)
        if name in pods and (summary := _annotation(pod, BACKUPS_ANNOTATION)):
            summaries.append(summary)
    if primary is not None:
        st_, reason, message = _archiving(archiver)
        conds = _put(
            conds,
            previous=stored,
            type_=c.CONTINUOUS_ARCHIVING,
            status=st_,
            reason=reason,
            message=message,
            gen=gen,
            now=now,
        )
        before = c.get(stored, c.CONTINUOUS_ARCHIVING)
        if st_ != "Unknown" and (before is None or before.reason != reason):
            emit("Warning" if st_ == "False" else "Normal", reason, message)
    elif (before_c := c.get(stored, c.CONTINUOUS_ARCHIVING)) is not None:
        conds = [x for x in conds if x.type != c.CONTINUOUS_ARCHIVING] + [before_c]
    summary = max(summaries, key=lambda s: s.get("lastBackupTime") or "", default={})
    archiver = archiver or {}
    backup = ClusterBackupStatus(
        # Never backwards: a new primary reports only what it archived itself.
        last_archived_wal=wal.newer(prev_backup.last_archived_wal, archiver.get("lastArchivedWal")),
        last_archived_time=_time(archiver.get("lastArchivedTime"))
        or prev_backup.last_archived_time,
        last_failed_wal=archiver.get("lastFailedWal") or prev_backup.last_failed_wal,
        last_failed_time=_time(archiver.get("lastFailedTime")) or prev_backup.last_failed_time,
        first_recoverability_point=_time(summary.get("firstRecoverabilityPoint"))
        or (prev_backup.first_recoverability_point if not summary else None),
        last_successful_backup=summary.get("lastBackup")
        or (prev_backup.last_successful_backup if not summary else None),
        last_successful_backup_time=_time(summary.get("lastBackupTime"))
        or (prev_backup.last_successful_backup_time if not summary else None),
        last_schedule_time=_schedule(
            kube,
            cluster,
            last=prev_backup.last_schedule_time,
            has_primary=primary is not None,
            now=now,
            emit=emit,
        ),
        restored_from=restored_from,
    )
    order = [c.READY, c.PROGRESSING, c.DEGRADED, c.CONTINUOUS_ARCHIVING]
    conds.sort(key=lambda x: order.index(x.type) if x.type in order else 99)
    return new.model_copy(update={"conditions": conds, "backup": backup, "phase": phase})


# ---- schedule ----------------------------------------------------------------------
def next_run(schedule: str, after: datetime) -> datetime:
    """The first cron time strictly after `after` (UTC)."""
    nxt: datetime = croniter(schedule, after.astimezone(UTC)).get_next(datetime)
    return nxt if nxt.tzinfo else nxt.replace(tzinfo=UTC)


def schedule_problem(cluster: PostgresCluster) -> Problem | None:
    """Why spec.backup.schedule cannot run, when the API's pattern let it through (a minute
    of 99, a day of month 0)."""
    spec = cluster.spec.backup
    if spec is None or not spec.schedule:
        return None
    try:
        next_run(spec.schedule, datetime.now(UTC))
    except (ValueError, KeyError) as e:
        return Problem(
            c.INVALID_SCHEDULE,
            f"spec.backup.schedule {spec.schedule!r} is not a valid cron schedule ({e}); no "
            "scheduled backup runs until it is fixed",
        )
    return None


def _schedule(
    kube: Kube,
    cluster: PostgresCluster,
    *,
    last: datetime | None,
    has_primary: bool,
    now: datetime,
    emit: EventSink,
) -> datetime | None:
    spec = cluster.spec.backup
    if spec is None or not spec.schedule:
        return None
    if last is None:
        return now  # the first run is the schedule's next time after the cluster exists
    try:
        due = next_run(spec.schedule, last)
    except (ValueError, KeyError) as e:
        log.warning("%s: invalid backup schedule %r: %s", cluster.metadata.name, spec.schedule, e)
        return last
    if now < due or not has_primary:
        return last
    name = f"{cluster.metadata.name}-{due.strftime('%Y%m%d%H%M%S')}"
    if kube.get(BACKUP_KIND, cluster.metadata.namespace, name) is None:
        kube.create(
            {
                "apiVersion": API_VERSION,
                "kind": BACKUP_KIND,
                "metadata": {
                    "name": name,
                    "namespace": cluster.metadata.namespace,
                    # No ownerReference: a backup's record must outlive its cluster, since
                    # restoring from it is exactly what one does when the cluster is gone.
                    "labels": {CLUSTER_LABEL: cluster.metadata.name, SCHEDULED_LABEL: "true"},
                },
                "spec": {"cluster": cluster.metadata.name},
            }
        )
        emit("Normal", "ScheduledBackup", f"created PostgresBackup {name} ({spec.schedule})")
    return now


def _prune(kube: Kube, cluster: PostgresCluster, limit: int, backups: list[Manifest]) -> None:
    """Delete the oldest finished scheduled PostgresBackups beyond the history limit."""
    want = {CLUSTER_LABEL: cluster.metadata.name, SCHEDULED_LABEL: "true"}
    items = [
        b
        for b in backups
        if all((b["metadata"].get("labels") or {}).get(k) == v for k, v in want.items())
        # The labels alone could be anyone's: only this cluster's own backups are pruned.
        and (b.get("spec") or {}).get("cluster") == cluster.metadata.name
    ]
    done = [b for b in items if (b.get("status") or {}).get("phase") in TERMINAL]
    done.sort(key=lambda b: b["metadata"].get("creationTimestamp", ""))
    for b in done[: max(0, len(done) - limit)]:
        kube.delete(BACKUP_KIND, cluster.metadata.namespace, b["metadata"]["name"])


# ---- PostgresBackup -----------------------------------------------------------------
def _failed(error: str) -> dict[str, Any]:
    return {"phase": "Failed", "error": error}


def choose_instance(pods: list[Manifest], target: str) -> Manifest | None:
    """The pod to back up: the ready primary, or with prefer-standby a ready streaming
    replica (the most advanced) when there is one."""
    members = {p["metadata"]["name"]: member_from_pod(p) for p in pods}
    ready = [p for p in pods if members[p["metadata"]["name"]].ready]
    primaries = [p for p in ready if members[p["metadata"]["name"]].role == labels.ROLE_PRIMARY]
    if target == "prefer-standby":
        standbys = [
            p
            for p in ready
            if members[p["metadata"]["name"]].role != labels.ROLE_PRIMARY
            and members[p["metadata"]["name"]].state in ("streaming", "running")
        ]
        if standbys:
            return max(standbys, key=lambda p: members[p["metadata"]["name"]].lsn or 0)
    return primaries[0] if primaries else None


def apply_backup(kube: Kube, raw: Manifest, now: datetime | None = None) -> None:
    """One pass over a PostgresBackup (as read from the API): write what reconcile_backup
    decides, unless the object changed since it was read."""
    backup = PostgresBackup.model_validate(raw)
    patch = reconcile_backup(kube, backup, now or datetime.now(UTC))
    if patch is None:
        return
    body = {"metadata": {"resourceVersion": raw["metadata"]["resourceVersion"]}, "status": patch}
    try:
        kube.patch(
            BACKUP_KIND, backup.metadata.namespace, backup.metadata.name, body, subresource="status"
        )
    except ApiException as e:
        if e.status != 409:
            raise
        # An agent claimed or finished it meanwhile; the next pass sees the new state.
        log.info("PostgresBackup %s changed meanwhile; not written", backup.metadata.name)


def reconcile_backups(kube: Kube, cluster: PostgresCluster, backups: list[Manifest]) -> None:
    """Every unfinished PostgresBackup of the cluster (of `backups`, the namespace's), from
    the cluster's resync."""
    for raw in backups:
        if raw.get("spec", {}).get("cluster") != cluster.metadata.name:
            continue
        if (raw.get("status") or {}).get("phase") in TERMINAL:
            continue
        try:
            apply_backup(kube, raw)
        except Exception:
            log.exception("PostgresBackup %s", raw["metadata"]["name"])


def _silent_for(pod: Manifest, backup: PostgresBackup, now: datetime) -> float:
    """Seconds since the agent last showed life on this backup: its heartbeat, or when it
    claimed the backup (beginTime) before the first beat."""
    beat = _annotation(pod, HEARTBEAT_ANNOTATION) or {}
    seen = [backup.status.begin_time if backup.status else None]
    if beat.get("backup") == backup.metadata.name:
        seen.append(_time(beat.get("time")))
    latest = max((t for t in seen if t is not None), default=None)
    return (now - latest).total_seconds() if latest is not None else 0.0


def reconcile_backup(  # noqa: PLR0911 - one return per outcome
    kube: Kube, backup: PostgresBackup, now: datetime
) -> dict[str, Any] | None:
    """The status patch one pass decides for a PostgresBackup, or None."""
    status = backup.status
    phase = status.phase if status else None
    if phase in TERMINAL:
        return None
    ns = backup.metadata.namespace
    if status is not None and status.instance:
        pod = kube.get("Pod", ns, status.instance)
        same = pod is not None and pod["metadata"].get("uid") == status.instance_uid
        if phase == "Running" and not same:
            return _failed(
                f"instance {status.instance} went away (deleted or replaced) while taking the "
                "backup; create a new PostgresBackup"
            )
        if phase == "Running" and pod is not None:
            silent = _silent_for(pod, backup, now)
            if silent <= STALE_AFTER:
                return None  # the instance's agent is on it
            return _failed(
                f"instance {status.instance} stopped reporting progress on the backup "
                f"{silent:.0f}s ago (its node, container or backup agent is down); "
                "create a new PostgresBackup"
            )
        if same and pod is not None and member_from_pod(pod).ready:
            return None  # Pending: the instance's agent claims it on its next pass
    raw = kube.get("PostgresCluster", ns, backup.spec.cluster)
    if raw is None:
        return _failed(f"PostgresCluster {backup.spec.cluster!r} does not exist in {ns}")
    cluster = PostgresCluster.model_validate(raw)
    spec = cluster.spec.backup
    if spec is None:
        return _failed(
            f"PostgresCluster {backup.spec.cluster!r} has no spec.backup: configure an object "
            "store first"
        )
    pods = kube.list("Pod", ns, labels.selector_string(cluster.metadata.name))
    chosen = choose_instance(pods, backup.spec.target or spec.target)
    if chosen is None:
        message = "waiting for a ready instance to take the backup from"
        if status is not None and status.phase == "Pending" and status.error == message:
            return None
        return {"phase": "Pending", "error": message}
    return {
        "phase": "Pending",
        "instance": chosen["metadata"]["name"],
        "instanceUid": chosen["metadata"]["uid"],
        "destination": st.destination_url(spec.object_store),
        "serverName": server_name(cluster),
        "error": None,
    }
