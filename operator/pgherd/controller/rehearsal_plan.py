"""A major upgrade's rehearsal inside one pass: the View pgherd.controller.rehearsal decides
from, read off the snapshot (the copy as stored, the backup to restore, the check's outcome);
the Step as actions (the copy applied or deleted, the outcome's Event) and as the Progressing
activity. Pure, like the planner it serves.
"""

from __future__ import annotations

from typing import Any

from pgherd.api.v1alpha1 import (
    MAX_NAME_LENGTH,
    PostgresCluster,
    UpgradeStatus,
)
from pgherd.controller import rehearsal as rh
from pgherd.controller.actions import CREATE_ONLY, Action, Apply, Delete, Event
from pgherd.controller.conditions import Activity
from pgherd.controller.diff import contains, stamped
from pgherd.controller.snapshot import Snapshot
from pgherd.render import names
from pgherd.render.backup import server_name
from pgherd.render.ownership import owns
from pgherd.render.rehearsal import rehearsal_cluster

Manifest = dict[str, Any]


def copy_name(cluster: PostgresCluster) -> str:
    return names.rehearsal(cluster.metadata.name, MAX_NAME_LENGTH)


def copy_seen(cluster: PostgresCluster, live: Manifest | None) -> rh.CopySeen | None:
    """The copy as the machine sees it; a neighbour's cluster of that name is not ours."""
    if live is None:
        return None
    if not owns(cluster, "PostgresCluster", live):
        return rh.CopySeen(ours=False)
    meta, status = live["metadata"], live.get("status") or {}
    degraded = next(
        (c for c in status.get("conditions") or []
         if c.get("type") == "Degraded" and c.get("status") == "True"),
        None,
    )  # fmt: skip
    try:
        upgrade = UpgradeStatus.model_validate(status["upgrade"]) if status.get("upgrade") else None
    except ValueError:
        upgrade = None
    version = (live.get("spec") or {}).get("postgresVersion")
    return rh.CopySeen(
        ours=True,
        deleting=bool(meta.get("deletionTimestamp")),
        version=version if isinstance(version, int) else None,
        phase=status.get("phase"),
        current=status.get("observedGeneration") == meta.get("generation"),
        running_major=status.get("postgresVersion"),
        upgrade=upgrade,
        degraded=str(degraded.get("message") or degraded.get("reason")) if degraded else None,
    )


def backup_to_restore(cluster: PostgresCluster, snapshot: Snapshot) -> tuple[str | None, str]:
    """The PostgresBackup a new rehearsal restores: the one named, or the cluster's latest
    Completed one of its current database system (a backup of the system before a major
    upgrade restores only onto the old major); or why there is none."""
    spec = cluster.spec.upgrade.rehearsal
    again = " Then change spec.upgrade.rehearsal.run to rehearse."
    completed = [b for b in snapshot.backups if (b.get("status") or {}).get("phase") == "Completed"]
    if spec is not None and spec.backup:
        named = next((b for b in snapshot.backups if b["metadata"]["name"] == spec.backup), None)
        if named is None:
            return None, (f"PostgresBackup {spec.backup} (spec.upgrade.rehearsal.backup) does "
                          f"not exist for this cluster.{again}")  # fmt: skip
        if named not in completed:
            phase = (named.get("status") or {}).get("phase") or "Pending"
            return None, f"PostgresBackup {spec.backup} is {phase}, not Completed.{again}"
        return spec.backup, ""
    if cluster.spec.backup is None:
        return None, ("a rehearsal restores a base backup, and the cluster has no spec.backup: "
                      f"set one and take a backup (a PostgresBackup).{again}")  # fmt: skip
    current = server_name(cluster)
    mine = [b for b in completed if (b.get("status") or {}).get("serverName") == current]
    if not mine:
        return None, (f"the cluster has no Completed PostgresBackup of its current database "
                      f"system (server name {current}): take one.{again}")  # fmt: skip
    latest = max(mine, key=lambda b: str((b.get("status") or {}).get("endTime") or ""))
    return str(latest["metadata"]["name"]), ""


def view_of(cluster: PostgresCluster, snapshot: Snapshot) -> rh.View:
    status = cluster.status
    # Only a rehearsal asked for looks for a backup: not every pass of every cluster.
    backup, no_backup = (
        backup_to_restore(cluster, snapshot) if cluster.spec.upgrade.rehearsal else (None, "")
    )
    return rh.View(
        now=snapshot.now,
        spec=cluster.spec.upgrade.rehearsal,
        record=status.rehearsal if status else None,
        running_major=status.postgres_version if status else None,
        method=cluster.spec.upgrade.method,
        copy_name=copy_name(cluster),
        copy=copy_seen(cluster, snapshot.rehearsal_copy),
        backup=backup,
        no_backup=no_backup,
        check=snapshot.rehearsal_check,
    )


def decide(cluster: PostgresCluster, snapshot: Snapshot) -> rh.Step:
    return rh.decide(view_of(cluster, snapshot))


def actions_of(step: rh.Step, cluster: PostgresCluster, snapshot: Snapshot) -> list[Action]:
    """The copy applied as the step renders it (only when it differs), or deleted; the
    outcome's Event."""
    out: list[Action] = []
    live, rec = snapshot.rehearsal_copy, step.record
    image = cluster.status.image if cluster.status else None
    if step.render is not None and rec is not None and rec.backup and not step.delete:
        upgrading = step.render != rec.from_version
        spec = cluster.spec.upgrade.rehearsal
        want = stamped(rehearsal_cluster(
            cluster, (snapshot.raw or {}).get("spec") or {}, name=copy_name(cluster),
            backup=rec.backup, version=step.render, method=rec.method or "link",
            image=(spec.image if spec else None) if upgrading else image,
        ))  # fmt: skip
        if live is None:
            out.append(Apply("rehearsal: the throwaway copy", manifest=want))
        elif not contains(live, want) and not live["metadata"].get("deletionTimestamp"):
            version = str(live["metadata"].get("resourceVersion") or CREATE_ONLY)
            out.append(Apply("rehearsal: the copy's next step", manifest=want,
                             resource_version=version))  # fmt: skip
    if step.delete and live is not None:
        out.append(Delete("rehearsal: the throwaway copy goes", kind="PostgresCluster",
                          name=copy_name(cluster), uid=live["metadata"].get("uid")))  # fmt: skip
    if step.event is not None:
        reason, message = step.event
        kind = "Normal" if reason == rh.REHEARSAL_SUCCEEDED else "Warning"
        out.append(Event(reason, type=kind, message=message))
    return out


def activity_of(step: rh.Step) -> Activity | None:
    return Activity(rh.REHEARSING, step.activity) if step.activity else None
