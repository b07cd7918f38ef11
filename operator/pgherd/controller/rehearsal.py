"""The rehearsal of a major upgrade (spec.upgrade.rehearsal) as a pure state machine: from what
one pass sees (View) to the next step (Step): the record for status.rehearsal, how the
throwaway copy is to be rendered, whether it goes, and the one Event of the outcome.

A rehearsal restores a base backup of the cluster into a throwaway PostgresCluster (one
instance, no archiving, owned by the cluster: pgherd.render.rehearsal), raises the copy's
postgresVersion so that the ordinary major upgrade (pgherd.controller.major_upgrade) runs on
it, runs the user's check on the result, reports the durations and deletes the copy. The
cluster itself is never touched: the copy has its own name, volumes, Secrets and Patroni
state, and reads the cluster's archive without ever writing to it.

Phases, each resumed from what is observed (the copy as stored, its status, and the record):
Restoring -> Upgrading -> Checking -> Succeeded | Failed. A rehearsal runs once per distinct
spec.upgrade.rehearsal (its hash, status.rehearsal.request): a finished one is not repeated
until that spec changes, and a changed spec replaces a running one (its copy is deleted
first). Removing spec.upgrade.rehearsal cancels a running one. The cluster's own health is not
the rehearsal's: it reports in status.rehearsal and one Event, never in Degraded.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Final

from pgherd.api.v1alpha1 import (
    MAX_UPGRADE_PROBLEMS,
    RehearsalStatus,
    UpgradeRehearsalSpec,
    UpgradeStatus,
)

RESTORING: Final = "Restoring"
UPGRADING: Final = "Upgrading"
CHECKING: Final = "Checking"
SUCCEEDED: Final = "Succeeded"
FAILED: Final = "Failed"
RUNNING = frozenset({RESTORING, UPGRADING, CHECKING})
ENDED = frozenset({SUCCEEDED, FAILED})

# Reasons (status.rehearsal.reason and the Event's).
REHEARSAL_SUCCEEDED = "RehearsalSucceeded"
REHEARSAL_NO_BACKUP = "RehearsalNoBackup"
REHEARSAL_NOT_AN_UPGRADE = "RehearsalNotAnUpgrade"
REHEARSAL_NAME_TAKEN = "RehearsalNameTaken"
REHEARSAL_UPGRADE_FAILED = "RehearsalUpgradeFailed"
REHEARSAL_CHECK_FAILED = "RehearsalCheckFailed"
REHEARSAL_TIMED_OUT = "RehearsalTimedOut"
REHEARSAL_CANCELLED = "RehearsalCancelled"
REHEARSAL_COPY_LOST = "RehearsalCopyLost"
# Progressing's reason while one runs (never Degraded: see the module docstring).
REHEARSING = "RehearsingUpgrade"

# The copy's upgrade phases that end it (pgherd.controller.major_upgrade.ENDED).
_UPGRADE_FAILED = frozenset({"PreflightFailed", "Failed"})


def request_of(spec: UpgradeRehearsalSpec | None) -> str | None:
    """The hash a rehearsal runs once for: any change of spec.upgrade.rehearsal changes it."""
    if spec is None:
        return None
    canonical = json.dumps(spec.model_dump(mode="json", by_alias=True), sort_keys=True)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class CopySeen:
    """The throwaway PostgresCluster as stored."""

    ours: bool  # the cluster is its controller (a neighbour's of that name is never touched)
    deleting: bool = False
    version: int | None = None  # spec.postgresVersion
    # Its status: phase, whether it is of the stored generation, the major its data is at,
    # its last major upgrade, and the Degraded condition's message while True.
    phase: str | None = None
    current: bool = False
    running_major: int | None = None
    upgrade: UpgradeStatus | None = None
    degraded: str | None = None

    @property
    def healthy(self) -> bool:
        return self.current and self.phase == "Healthy" and not self.deleting


@dataclass(frozen=True)
class CheckOutcome:
    """What spec.upgrade.rehearsal.check gave on the upgraded copy."""

    passed: bool
    result: str


@dataclass(frozen=True)
class View:
    """What one pass sees of a cluster, as far as its rehearsal goes."""

    now: datetime
    spec: UpgradeRehearsalSpec | None
    record: RehearsalStatus | None  # status.rehearsal
    running_major: int | None  # the major the cluster's data is at (status.postgresVersion)
    method: str  # spec.upgrade.method: the copy is upgraded as the cluster would be
    copy_name: str
    copy: CopySeen | None
    backup: str | None  # the backup a new rehearsal restores
    no_backup: str  # why there is none (when backup is None)
    check: CheckOutcome | None = None  # read only in Checking

    @property
    def request(self) -> str | None:
        return request_of(self.spec)


@dataclass(frozen=True)
class Step:
    """The record to keep, the copy's major to render (None: leave it as it is), whether the
    copy is deleted, the outcome's Event (reason, message) and the activity while one runs."""

    record: RehearsalStatus | None
    render: int | None = None
    delete: bool = False
    event: tuple[str, str] | None = None
    activity: str | None = None


def _seconds(start: datetime | None, end: datetime | None) -> float | None:
    return round((end - start).total_seconds(), 2) if start and end else None


def _finish(view: View, rec: RehearsalStatus, phase: str, reason: str, message: str,
            **changes: Any) -> Step:  # fmt: skip
    done = rec.model_copy(update={
        "phase": phase, "reason": reason, "message": message, "finished_at": view.now, **changes,
    })  # fmt: skip
    copy = view.copy
    return Step(done, delete=copy is not None and copy.ours and not copy.deleting,
                event=(reason, message))  # fmt: skip


def _refuse(view: View, reason: str, message: str) -> Step:
    """A rehearsal that cannot start: recorded as Failed for its request, nothing created."""
    rec = RehearsalStatus(
        request=view.request, cluster=view.copy_name, started_at=view.now,
        to_version=view.spec.postgres_version if view.spec else None,
    )  # fmt: skip
    return _finish(view, rec, FAILED, reason, message)


def decide(view: View) -> Step:  # noqa: PLR0911 - one return per case of the docstring
    rec, copy, spec = view.record, view.copy, view.spec
    copy_ours = copy is not None and copy.ours
    if spec is None:
        if rec is not None and rec.phase in RUNNING:
            return _finish(view, rec, FAILED, REHEARSAL_CANCELLED,
                           "spec.upgrade.rehearsal was removed; the rehearsal was cancelled and "
                           f"its copy {view.copy_name} deleted.")  # fmt: skip
        return Step(rec, delete=copy_ours and not copy.deleting)  # type: ignore[union-attr]
    if rec is None or rec.request != view.request:
        return _start(view)
    if rec.phase in ENDED:
        return Step(rec, delete=copy_ours and not copy.deleting)  # type: ignore[union-attr]
    if copy is not None and not copy.ours:
        return _finish(view, rec, FAILED, REHEARSAL_NAME_TAKEN, _name_taken(view))
    if rec.started_at and view.now - rec.started_at > timedelta(minutes=spec.timeout_minutes):
        return _finish(view, rec, FAILED, REHEARSAL_TIMED_OUT,
                       f"the rehearsal did not end within {spec.timeout_minutes} minutes "
                       f"(spec.upgrade.rehearsal.timeoutMinutes) and was stopped in its "
                       f"{rec.phase} phase" + (f"; the copy reported: {copy.degraded}"
                       if copy and copy.degraded else ""))  # fmt: skip
    if copy is None:
        if rec.phase == RESTORING:  # just created: the caches have not seen it yet
            return _running(rec, rec.from_version, f"restoring {rec.backup} into {view.copy_name}")
        return _finish(view, rec, FAILED, REHEARSAL_COPY_LOST,
                       f"the rehearsal's copy {view.copy_name} was deleted during its "
                       f"{rec.phase} phase; change spec.upgrade.rehearsal.run to rehearse "
                       "again.")  # fmt: skip
    if rec.phase == RESTORING:
        return _restoring(view, rec, copy)
    if rec.phase == UPGRADING:
        return _upgrading(view, rec, copy)
    return _checking(view, rec)


def _name_taken(view: View) -> str:
    return (f"a PostgresCluster named {view.copy_name} exists and is not this cluster's "
            "rehearsal copy; it is left alone. Rename or delete it to rehearse.")  # fmt: skip


def _running(rec: RehearsalStatus, render: int | None, activity: str) -> Step:
    return Step(rec, render=render, activity=activity)


def _start(view: View) -> Step:
    spec, copy = view.spec, view.copy
    assert spec is not None  # noqa: S101 - decide checks
    if copy is not None and copy.ours:
        # The last rehearsal's copy (replaced or finished) goes before a new one of that name.
        rec = view.record
        if rec is not None and rec.phase in RUNNING:
            rec = rec.model_copy(update={
                "phase": FAILED, "reason": REHEARSAL_CANCELLED, "finished_at": view.now,
                "message": "spec.upgrade.rehearsal changed: this rehearsal was replaced.",
            })  # fmt: skip
        return Step(rec, delete=not copy.deleting,
                    activity=f"deleting the last rehearsal's copy {view.copy_name}")  # fmt: skip
    if copy is not None:
        return _refuse(view, REHEARSAL_NAME_TAKEN, _name_taken(view))
    if view.running_major is None:
        return Step(view.record)  # the cluster has not run yet: nothing to restore
    if spec.postgres_version <= view.running_major:
        return _refuse(view, REHEARSAL_NOT_AN_UPGRADE,
                       f"spec.upgrade.rehearsal.postgresVersion is {spec.postgres_version} and "
                       f"the cluster runs {view.running_major}: there is no upgrade to "
                       "rehearse.")  # fmt: skip
    if view.backup is None:
        return _refuse(view, REHEARSAL_NO_BACKUP, view.no_backup)
    rec = RehearsalStatus(
        phase=RESTORING, request=view.request, cluster=view.copy_name, backup=view.backup,
        from_version=view.running_major, to_version=spec.postgres_version,
        method=view.method,  # type: ignore[arg-type]
        started_at=view.now,
    )  # fmt: skip
    return _running(rec, rec.from_version, f"restoring {view.backup} into {view.copy_name}")


def _restoring(view: View, rec: RehearsalStatus, copy: CopySeen) -> Step:
    if copy.healthy and copy.running_major == rec.from_version:
        up = rec.model_copy(update={
            "phase": UPGRADING, "restored_at": view.now,
            "restore_seconds": _seconds(rec.started_at, view.now),
        })  # fmt: skip
        return _running(up, rec.to_version,
                        f"upgrading the copy {view.copy_name} to {rec.to_version}")  # fmt: skip
    waiting = f"restoring {rec.backup} into {view.copy_name}"
    return _running(
        rec,
        rec.from_version,
        waiting + (f" (it reports: {copy.degraded})" if copy.degraded else ""),
    )


def _upgrading(view: View, rec: RehearsalStatus, copy: CopySeen) -> Step:
    up = copy.upgrade
    mine = up is not None and up.to_version == rec.to_version and copy.version == rec.to_version
    if mine and up is not None and up.phase == "Completed":
        done = rec.model_copy(update={
            "upgrade_seconds": _seconds(up.started_at, up.finished_at),
            "outage_seconds": up.outage_seconds,
        })  # fmt: skip
        if view.spec is not None and view.spec.check is not None:
            return _running(
                done.model_copy(update={"phase": CHECKING}),
                rec.to_version,
                f"running the check on the upgraded copy {view.copy_name}",
            )
        return _succeeded(view, done)
    if mine and up is not None and up.phase in _UPGRADE_FAILED:
        return _finish(view, rec, FAILED, REHEARSAL_UPGRADE_FAILED,
                       f"the rehearsed upgrade to {rec.to_version} ended {up.phase}: "
                       f"{up.message or up.reason}", problems=(up.problems or [])[
                           :MAX_UPGRADE_PROBLEMS] or None)  # fmt: skip
    phase = f" ({up.phase})" if mine and up is not None and up.phase else ""
    return _running(
        rec, rec.to_version, f"upgrading the copy {view.copy_name} to {rec.to_version}{phase}"
    )


def _checking(view: View, rec: RehearsalStatus) -> Step:
    if view.check is None:
        return _running(
            rec, rec.to_version, f"running the check on the upgraded copy {view.copy_name}"
        )
    result = {"check_passed": view.check.passed, "check_result": view.check.result[:1024]}
    if view.check.passed:
        return _succeeded(view, rec.model_copy(update=result))
    return _finish(view, rec, FAILED, REHEARSAL_CHECK_FAILED,
                   f"the upgrade to {rec.to_version} went through, but the check did not hold "
                   f"on the upgraded copy: {view.check.result[:1024]}", **result)  # fmt: skip


def _succeeded(view: View, rec: RehearsalStatus) -> Step:
    outage = f"{rec.outage_seconds:.1f} s" if rec.outage_seconds is not None else "unknown"
    upgrade = f"{rec.upgrade_seconds:.1f} s" if rec.upgrade_seconds is not None else "unknown"
    checked = "; the check held" if rec.check_passed else ""
    return _finish(view, rec, SUCCEEDED, REHEARSAL_SUCCEEDED,
                   f"{rec.backup} restored into {view.copy_name} and upgraded from "
                   f"{rec.from_version} to {rec.to_version} ({rec.method}): upgrade "
                   f"{upgrade}, write outage {outage}{checked}.")  # fmt: skip
