"""Backup decisions, pure: restore resolution and safety, PostgresBackup placement and
failure, the schedule and its history limit, and the cluster's backup status.

The operator never runs barman itself: each instance's agent does (pgherd.operand.agent) and
publishes what it sees on its pod, which the snapshot carries. A backup must never stay
Running or Pending forever because the instance taking it is gone: a Running backup fails when
its pod was replaced, or when the agent's heartbeat (a pod annotation refreshed while barman
runs) is older than the stale limit, which is what a lost node or a killed container that does
not come back look like; a Pending one moves to another ready instance when its assigned pod
is not ready. Every status patch carries the resourceVersion seen, so it never overwrites
what an agent wrote meanwhile.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from croniter import croniter
from pydantic import ValidationError

from pgherd import contract
from pgherd.api.v1alpha1 import (
    API_VERSION,
    BACKUP_KIND,
    ClusterBackupStatus,
    ObjectStoreSpec,
    PostgresBackup,
    PostgresCluster,
    RecoverySource,
)
from pgherd.controller import conditions as c
from pgherd.controller.actions import Action, Create, Delete, Event, Patch
from pgherd.controller.conditions import Problem
from pgherd.render import labels
from pgherd.render.backup import server_name, upgraded_server_name

if TYPE_CHECKING:
    from pgherd.controller.snapshot import Member, Snapshot

Manifest = dict[str, Any]
CLUSTER_LABEL = labels.CLUSTER
SCHEDULED_LABEL = "pgherd.io/scheduled"
TERMINAL = ("Completed", "Failed")


@dataclass(frozen=True)
class Gate:
    """Whether the StatefulSet may be applied; when not, why (for Degraded)."""

    reason: str | None = None
    message: str | None = None
    resolved: RecoverySource | None = None

    @property
    def blocked(self) -> bool:
        return self.reason is not None

    @property
    def problem(self) -> Problem | None:
        return Problem(self.reason, self.message or "") if self.reason else None


def _parse_cluster(raw: Manifest | None) -> PostgresCluster | None:
    try:
        return PostgresCluster.model_validate(raw) if raw is not None else None
    except ValidationError:
        return None


# ---- restore ----------------------------------------------------------------------------
def recovery_source_store(
    cluster: PostgresCluster, recovery_cluster: Manifest | None
) -> ObjectStoreSpec | None:
    """The object store a restore reads: the spec's, or the source cluster's for a restore
    from a PostgresBackup."""
    recovery = cluster.spec.bootstrap.recovery
    if recovery is None:
        return None
    if recovery.source.object_store is not None:
        return recovery.source.object_store
    source = _parse_cluster(recovery_cluster)
    return source.spec.backup.object_store if source and source.spec.backup else None


def _resolve_source(cluster: PostgresCluster, snapshot: Snapshot) -> RecoverySource | str:
    """The recovery source as an object store + server name + backup id, or why not."""
    recovery = cluster.spec.bootstrap.recovery
    assert recovery is not None  # noqa: S101 - callers check
    source = recovery.source
    if source.backup is None:
        return source
    ns = cluster.metadata.namespace
    if snapshot.recovery_backup is None:
        return f"PostgresBackup {source.backup!r} does not exist in namespace {ns}"
    backup = PostgresBackup.model_validate(snapshot.recovery_backup)
    bs = backup.status
    if bs is None or bs.phase != "Completed" or not bs.backup_id:
        phase = bs.phase if bs and bs.phase else "Pending"
        return f"PostgresBackup {source.backup!r} is {phase}, not Completed"
    source_cluster = _parse_cluster(snapshot.recovery_cluster)
    if source_cluster is None:
        return (
            f"PostgresCluster {backup.spec.cluster!r} of PostgresBackup {source.backup!r} no "
            "longer exists; restore with source.objectStore, serverName and backupId instead"
        )
    if source_cluster.spec.backup is None:
        return f"PostgresCluster {backup.spec.cluster!r} has no spec.backup (object store)"
    return RecoverySource(
        object_store=source_cluster.spec.backup.object_store,
        server_name=bs.server_name or server_name(source_cluster),
        backup_id=bs.backup_id,
    )


def resolve(cluster: PostgresCluster, snapshot: Snapshot) -> tuple[PostgresCluster, Gate]:
    """The cluster with its recovery source resolved, and whether its StatefulSet may go on.

    Refuses (blocks the StatefulSet) when the source cannot be resolved yet, and whenever the
    cluster's own archive is the source's: it would overwrite the source's archive. Once
    resolved, the source is kept in status (restoredFrom), so the cluster never depends on
    the source PostgresBackup again."""
    recovery = cluster.spec.bootstrap.recovery
    if recovery is None:
        return cluster, Gate()
    cached = (
        cluster.status.backup.restored_from if cluster.status and cluster.status.backup else None
    )
    resolved = cached or _resolve_source(cluster, snapshot)
    if isinstance(resolved, str):
        return cluster, Gate(c.RECOVERY_SOURCE_NOT_READY, f"cannot restore yet: {resolved}")
    assert resolved.object_store is not None and resolved.server_name is not None  # noqa: S101
    backup = cluster.spec.backup
    if backup is not None and contract.same_location(
        backup.object_store, server_name(cluster), resolved.object_store, resolved.server_name
    ):
        return cluster, Gate(
            c.ARCHIVE_WOULD_OVERWRITE_SOURCE,
            f"spec.backup archives to {contract.destination_url(backup.object_store)}/"
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


# ---- schedule ---------------------------------------------------------------------------
def next_run(schedule: str, after: datetime) -> datetime:
    """The first cron time strictly after `after` (UTC)."""
    nxt: datetime = croniter(schedule, after.astimezone(UTC)).get_next(datetime)
    return nxt if nxt.tzinfo else nxt.replace(tzinfo=UTC)


def schedule_problem(cluster: PostgresCluster, now: datetime) -> Problem | None:
    """Why spec.backup.schedule cannot run, when the API's pattern let it through (a minute
    of 99, a day of month 0)."""
    spec = cluster.spec.backup
    if spec is None or not spec.schedule:
        return None
    try:
        next_run(spec.schedule, now)
    except (ValueError, KeyError) as e:
        return Problem(
            c.INVALID_SCHEDULE,
            f"spec.backup.schedule {spec.schedule!r} is not a valid cron schedule ({e}); no "
            "scheduled backup runs until it is fixed",
        )
    return None


def scheduled_backup(cluster: PostgresCluster, due: datetime) -> Manifest:
    """The PostgresBackup a schedule creates for the run due at `due`."""
    name = cluster.metadata.name
    return {
        "apiVersion": API_VERSION,
        "kind": BACKUP_KIND,
        "metadata": {
            "name": f"{name}-{due.strftime('%Y%m%d%H%M%S')}",
            "namespace": cluster.metadata.namespace,
            # No ownerReference: a backup's record must outlive its cluster, since restoring
            # from it is exactly what one does when the cluster is gone.
            "labels": {CLUSTER_LABEL: name, SCHEDULED_LABEL: "true"},
        },
        "spec": {"cluster": name},
    }


def plan_schedule(
    cluster: PostgresCluster, snapshot: Snapshot, *, has_primary: bool
) -> tuple[list[Action], datetime | None]:
    """The scheduled backup due now (if any) and the new lastScheduleTime."""
    spec = cluster.spec.backup
    if spec is None or not spec.schedule:
        return [], None
    previous = cluster.status.backup if cluster.status else None
    last = previous.last_schedule_time if previous else None
    now = snapshot.now
    if last is None:
        return [], now  # the first run is the schedule's next time after the cluster exists
    try:
        due = next_run(spec.schedule, last)
    except (ValueError, KeyError):
        return [], last  # reported by schedule_problem
    if now < due or not has_primary:
        return [], last
    backup = scheduled_backup(cluster, due)
    name = backup["metadata"]["name"]
    if any(b["metadata"]["name"] == name for b in snapshot.backups):
        return [], now
    why = f"scheduled backup ({spec.schedule}) due at {due.isoformat()}"
    return [
        Create(why, backup),
        Event("ScheduledBackup", message=f"created PostgresBackup {name} ({spec.schedule})"),
    ], now


def plan_prune(cluster: PostgresCluster, snapshot: Snapshot) -> list[Action]:
    """Delete the oldest finished scheduled PostgresBackups beyond the history limit (every
    pass, so that a finished run beyond the limit goes as soon as it finishes)."""
    spec = cluster.spec.backup
    if spec is None or not spec.schedule:
        return []
    want = {CLUSTER_LABEL: cluster.metadata.name, SCHEDULED_LABEL: "true"}
    done = [
        b
        for b in snapshot.backups
        if all((b["metadata"].get("labels") or {}).get(k) == v for k, v in want.items())
        and (b.get("status") or {}).get("phase") in TERMINAL
    ]
    done.sort(key=lambda b: b["metadata"].get("creationTimestamp", ""))
    return [
        Delete(
            f"scheduled backups beyond scheduleHistoryLimit {spec.schedule_history_limit}",
            kind=BACKUP_KIND,
            name=b["metadata"]["name"],
            uid=b["metadata"].get("uid"),
        )
        for b in done[: max(0, len(done) - spec.schedule_history_limit)]
    ]


# ---- PostgresBackup ---------------------------------------------------------------------
def choose_instance(members: Sequence[Member], target: str) -> Member | None:
    """The instance to back up: the ready primary, or with prefer-standby a ready streaming
    replica (the most advanced) when there is one."""
    ready = [m for m in members if m.ready]
    primaries = [m for m in ready if m.role == labels.ROLE_PRIMARY]
    if target == "prefer-standby":
        standbys = [
            m
            for m in ready
            if m.role != labels.ROLE_PRIMARY and m.state in ("streaming", "running")
        ]
        if standbys:
            return max(standbys, key=lambda m: m.lsn or 0)
    return primaries[0] if primaries else None


def _annotation(annotations: Any, key: str) -> dict[str, Any] | None:
    raw = (annotations or {}).get(key)
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


def _silent_for(member: Member, backup: PostgresBackup, now: datetime) -> float:
    """Seconds since the agent last showed life on this backup: its heartbeat, or when it
    claimed the backup (beginTime) before the first beat."""
    beat = _annotation(member.annotations, contract.HEARTBEAT_ANNOTATION) or {}
    seen = [backup.status.begin_time if backup.status else None]
    if beat.get("backup") == backup.metadata.name:
        seen.append(_time(beat.get("time")))
    latest = max((t for t in seen if t is not None), default=None)
    return (now - latest).total_seconds() if latest is not None else 0.0


def _failed(error: str) -> dict[str, Any]:
    return {"phase": "Failed", "error": error}


def backup_patch(  # noqa: PLR0911 - one return per outcome
    backup: PostgresBackup,
    cluster: PostgresCluster | None,
    members: Sequence[Member],
    now: datetime,
    stale_after: timedelta,
) -> dict[str, Any] | None:
    """The status patch one pass decides for a PostgresBackup of `cluster`, or None."""
    status = backup.status
    phase = status.phase if status else None
    if phase in TERMINAL:
        return None
    if status is not None and status.instance:
        member = next((m for m in members if m.name == status.instance), None)
        same = member is not None and member.uid == status.instance_uid
        if phase == "Running" and not same:
            return _failed(
                f"instance {status.instance} went away (deleted or replaced) while taking the "
                "backup; create a new PostgresBackup"
            )
        if phase == "Running" and member is not None:
            silent = _silent_for(member, backup, now)
            if silent <= stale_after.total_seconds():
                return None  # the instance's agent is on it
            return _failed(
                f"instance {status.instance} stopped reporting progress on the backup "
                f"{silent:.0f}s ago (its node, container or backup agent is down); "
                "create a new PostgresBackup"
            )
        if same and member is not None and member.ready:
            return None  # Pending: the instance's agent claims it on its next pass
    ns = backup.metadata.namespace
    if cluster is None:
        return _failed(f"PostgresCluster {backup.spec.cluster!r} does not exist in {ns}")
    spec = cluster.spec.backup
    if spec is None:
        return _failed(
            f"PostgresCluster {backup.spec.cluster!r} has no spec.backup: configure an object "
            "store first"
        )
    chosen = choose_instance(members, backup.spec.target or spec.target)
    if chosen is None:
        message = "waiting for a ready instance to take the backup from"
        if status is not None and status.phase == "Pending" and status.error == message:
            return None
        return {"phase": "Pending", "error": message}
    return {
        "phase": "Pending",
        "instance": chosen.name,
        "instanceUid": chosen.uid,
        "destination": contract.destination_url(spec.object_store),
        "serverName": server_name(cluster),
        "error": None,
    }


def plan_backups(snapshot: Snapshot, stale_after: timedelta) -> list[Action]:
    """A status patch for every unfinished PostgresBackup of the cluster that needs one."""
    actions: list[Action] = []
    for raw in snapshot.backups:
        if (raw.get("status") or {}).get("phase") in TERMINAL:
            continue
        try:
            backup = PostgresBackup.model_validate(raw)
        except ValidationError:
            continue
        patch = backup_patch(backup, snapshot.cluster, snapshot.members, snapshot.now, stale_after)
        if patch is None:
            continue
        body = {
            "metadata": {"resourceVersion": raw["metadata"]["resourceVersion"]},
            "status": patch,
        }
        reason = patch.get("error") or f"assigned to {patch.get('instance')}"
        actions.append(
            Patch(str(reason), kind=BACKUP_KIND, name=backup.metadata.name, body=body,
                  subresource="status")
        )  # fmt: skip
    return actions


# ---- cluster backup status --------------------------------------------------------------
def archiving(archiver: dict[str, Any] | None) -> tuple[c.Status, str, str]:
    """The ContinuousArchiving condition from what the primary's agent publishes."""
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


def primary_archiver(snapshot: Snapshot) -> dict[str, Any] | None:
    primary = snapshot.primary
    if primary is None:
        return None
    return _annotation(primary.annotations, contract.ARCHIVER_ANNOTATION)


def cluster_backup_status(
    cluster: PostgresCluster,
    snapshot: Snapshot,
    *,
    restored_from: RecoverySource | None,
    last_schedule_time: datetime | None,
    upgraded_system: str | None = None,
) -> ClusterBackupStatus | None:
    """status.backup: the archive and base backups as the instances report them. The last
    archived WAL never goes backwards: a new primary reports only what it archived itself.
    upgraded_system: the system a major upgrade carried the data to, which archives under
    its own name from then on."""
    if cluster.spec.backup is None:
        return ClusterBackupStatus(restored_from=restored_from) if restored_from else None
    previous = (cluster.status.backup if cluster.status else None) or ClusterBackupStatus()
    server = (
        upgraded_server_name(cluster, upgraded_system) if upgraded_system else previous.server_name
    )
    if server != previous.server_name:
        # A new system's archive: the old system's WAL and backups say nothing of it.
        previous = ClusterBackupStatus(server_name=server)
    summaries = [
        s
        for m in snapshot.members
        if (s := _annotation(m.annotations, contract.BACKUPS_ANNOTATION))
    ]
    summary = max(summaries, key=lambda s: s.get("lastBackupTime") or "", default={})
    archiver = primary_archiver(snapshot) or {}
    return ClusterBackupStatus(
        last_archived_wal=contract.newer(
            previous.last_archived_wal, archiver.get("lastArchivedWal")
        ),
        last_archived_time=_time(archiver.get("lastArchivedTime")) or previous.last_archived_time,
        last_failed_wal=archiver.get("lastFailedWal") or previous.last_failed_wal,
        last_failed_time=_time(archiver.get("lastFailedTime")) or previous.last_failed_time,
        first_recoverability_point=_time(summary.get("firstRecoverabilityPoint"))
        or (previous.first_recoverability_point if not summary else None),
        last_successful_backup=summary.get("lastBackup")
        or (previous.last_successful_backup if not summary else None),
        last_successful_backup_time=_time(summary.get("lastBackupTime"))
        or (previous.last_successful_backup_time if not summary else None),
        last_schedule_time=last_schedule_time,
        server_name=server,
        restored_from=restored_from,
    )
