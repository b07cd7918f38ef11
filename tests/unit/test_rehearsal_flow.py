"""A major upgrade's rehearsal: each decision from what a pass sees, one row each; the copy as
rendered; the backup a rehearsal restores."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from pgherd.api.v1alpha1 import (
    RehearsalCheck,
    RehearsalStatus,
    UpgradeRehearsalSpec,
    UpgradeStatus,
)
from pgherd.controller import rehearsal as rh
from pgherd.controller.rehearsal import CheckOutcome, CopySeen, View

T0 = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
NOW = T0 + timedelta(minutes=5)
SPEC = UpgradeRehearsalSpec(
    postgres_version=18, check=RehearsalCheck(query="SELECT count(*) = 5000 FROM items")
)
REQUEST = rh.request_of(SPEC)
COPY = "pg-rehearsal"


def view(**changes: Any) -> View:
    base = View(
        now=NOW, spec=SPEC, record=None, running_major=15, method="link", copy_name=COPY,
        copy=None, backup="pg-nightly", no_backup="",
    )  # fmt: skip
    return dataclasses.replace(base, **changes)


def record(phase: str, **changes: Any) -> RehearsalStatus:
    base = RehearsalStatus(
        phase=phase, request=REQUEST, cluster=COPY, backup="pg-nightly", from_version=15,  # type: ignore[arg-type]
        to_version=18, method="link", started_at=T0,
    )  # fmt: skip
    return base.model_copy(update=changes)


def copy(**changes: Any) -> CopySeen:
    return dataclasses.replace(
        CopySeen(ours=True, version=15, phase="Healthy", current=True, running_major=15),
        **changes,
    )


def upgraded(phase: str, **changes: Any) -> UpgradeStatus:
    return UpgradeStatus(
        phase=phase, from_version=15, to_version=18, started_at=T0 + timedelta(minutes=2),  # type: ignore[arg-type]
        finished_at=T0 + timedelta(minutes=3), outage_seconds=12.5, **changes,
    )  # fmt: skip


UPGRADED = copy(version=18, running_major=18, upgrade=upgraded("Completed"))

# (id, view, phase recorded, reason, render, delete, event reason)
ROWS: list[tuple[str, View, str | None, str | None, int | None, bool, str | None]] = [
    ("nothing asked, nothing there", view(spec=None), None, None, None, False, None),
    ("nothing asked, a finished one's copy goes",
     view(spec=None, record=record("Succeeded"), copy=copy()), "Succeeded", None, None, True, None),
    ("removed while running: cancelled, its copy goes",
     view(spec=None, record=record("Upgrading"), copy=copy()),
     "Failed", rh.REHEARSAL_CANCELLED, None, True, rh.REHEARSAL_CANCELLED),
    ("a new request starts restoring the latest backup", view(),
     "Restoring", None, 15, False, None),
    ("a new request waits for the cluster to have run", view(running_major=None),
     None, None, None, False, None),
    ("a version not above the cluster's is refused", view(running_major=18),
     "Failed", rh.REHEARSAL_NOT_AN_UPGRADE, None, False, rh.REHEARSAL_NOT_AN_UPGRADE),
    ("no backup to restore is refused", view(backup=None, no_backup="take one"),
     "Failed", rh.REHEARSAL_NO_BACKUP, None, False, rh.REHEARSAL_NO_BACKUP),
    ("a neighbour's cluster of the copy's name is never touched",
     view(copy=CopySeen(ours=False)),
     "Failed", rh.REHEARSAL_NAME_TAKEN, None, False, rh.REHEARSAL_NAME_TAKEN),
    ("a changed request deletes the running one's copy first",
     view(record=record("Upgrading", request="old"), copy=copy()),
     "Failed", rh.REHEARSAL_CANCELLED, None, True, None),
    ("a changed request waits for the old copy to be gone",
     view(record=record("Succeeded", request="old"), copy=copy(deleting=True)),
     "Succeeded", None, None, False, None),
    ("restoring: a copy not in the caches yet is rendered again",
     view(record=record("Restoring")), "Restoring", None, 15, False, None),
    ("restoring: waits for the copy to be healthy",
     view(record=record("Restoring"), copy=copy(phase="Creating")),
     "Restoring", None, 15, False, None),
    ("restoring: a status of an older generation is not trusted",
     view(record=record("Restoring"), copy=copy(current=False)),
     "Restoring", None, 15, False, None),
    ("restored: the copy is raised to the new major",
     view(record=record("Restoring"), copy=copy()), "Upgrading", None, 18, False, None),
    ("upgrading: waits for the copy's upgrade",
     view(record=record("Upgrading"), copy=copy(version=18, upgrade=upgraded("Upgrading"))),
     "Upgrading", None, 18, False, None),
    ("upgraded: the check runs next", view(record=record("Upgrading"), copy=UPGRADED),
     "Checking", None, 18, False, None),
    ("upgraded, no check: succeeded, the copy goes",
     view(spec=SPEC.model_copy(update={"check": None}),
          record=record("Upgrading", request=rh.request_of(SPEC.model_copy(
              update={"check": None}))), copy=UPGRADED),
     "Succeeded", rh.REHEARSAL_SUCCEEDED, None, True, rh.REHEARSAL_SUCCEEDED),
    ("the copy's preflight failed: failed with its problems, the copy goes",
     view(record=record("Upgrading"), copy=copy(version=18, upgrade=upgraded(
         "PreflightFailed", message="adminpack is missing")) ),
     "Failed", rh.REHEARSAL_UPGRADE_FAILED, None, True, rh.REHEARSAL_UPGRADE_FAILED),
    ("the copy's upgrade failed", view(record=record("Upgrading"), copy=copy(
        version=18, upgrade=upgraded("Failed", message="pg_upgrade failed"))),
     "Failed", rh.REHEARSAL_UPGRADE_FAILED, None, True, rh.REHEARSAL_UPGRADE_FAILED),
    ("checking: waits for the check's outcome", view(record=record("Checking"), copy=UPGRADED),
     "Checking", None, 18, False, None),
    ("checking: the check held", view(record=record("Checking"), copy=UPGRADED,
                                      check=CheckOutcome(True, "True")),
     "Succeeded", rh.REHEARSAL_SUCCEEDED, None, True, rh.REHEARSAL_SUCCEEDED),
    ("checking: the check did not hold", view(record=record("Checking"), copy=UPGRADED,
                                              check=CheckOutcome(False, "False")),
     "Failed", rh.REHEARSAL_CHECK_FAILED, None, True, rh.REHEARSAL_CHECK_FAILED),
    ("finished: not repeated for the same request",
     view(record=record("Succeeded")), "Succeeded", None, None, False, None),
    ("finished: its copy goes", view(record=record("Failed"), copy=copy()),
     "Failed", None, None, True, None),
    ("running too long: timed out, the copy goes",
     view(now=T0 + timedelta(minutes=61), record=record("Restoring"),
          copy=copy(phase="Degraded", degraded="cannot restore yet")),
     "Failed", rh.REHEARSAL_TIMED_OUT, None, True, rh.REHEARSAL_TIMED_OUT),
    ("the copy deleted by someone while upgrading", view(record=record("Upgrading")),
     "Failed", rh.REHEARSAL_COPY_LOST, None, False, rh.REHEARSAL_COPY_LOST),
    ("a neighbour took the copy's name mid-way",
     view(record=record("Restoring"), copy=CopySeen(ours=False)),
     "Failed", rh.REHEARSAL_NAME_TAKEN, None, False, rh.REHEARSAL_NAME_TAKEN),
]  # fmt: skip


@pytest.mark.parametrize(
    ("given", "phase", "reason", "render", "delete", "event"),
    [row[1:] for row in ROWS],
    ids=[row[0] for row in ROWS],
)
def test_each_case_decides_as_the_table_says(
    given: View,
    phase: str | None,
    reason: str | None,
    render: int | None,
    delete: bool,
    event: str | None,
) -> None:
    step = rh.decide(given)
    got_phase = step.record.phase if step.record else None
    got_reason = step.record.reason if step.record else None
    assert (got_phase, got_reason if reason else None) == (phase, reason)
    assert (step.render, step.delete) == (render, delete)
    assert (step.event[0] if step.event else None) == event


def test_a_finished_rehearsal_reports_its_durations_and_the_copys_outage() -> None:
    step = rh.decide(view(record=record("Checking", restore_seconds=60.0, upgrade_seconds=60.0,
                                        outage_seconds=12.5),
                          copy=UPGRADED, check=CheckOutcome(True, "True")))  # fmt: skip
    rec = step.record
    assert rec is not None
    assert (rec.check_passed, rec.check_result, rec.finished_at) == (True, "True", NOW)
    assert step.event is not None and "write outage 12.5 s" in step.event[1]
    upgraded_step = rh.decide(view(record=record("Upgrading"), copy=UPGRADED))
    assert upgraded_step.record is not None
    assert (upgraded_step.record.upgrade_seconds, upgraded_step.record.outage_seconds) == (
        60.0, 12.5,
    )  # fmt: skip


def test_a_restored_copy_records_how_long_the_restore_took() -> None:
    step = rh.decide(view(record=record("Restoring"), copy=copy()))
    assert step.record is not None and step.record.restore_seconds == 300.0


def test_any_change_of_the_rehearsal_spec_is_a_new_request() -> None:
    again = SPEC.model_copy(update={"run": "2026-12-02"})
    assert rh.request_of(again) != REQUEST
    assert rh.request_of(SPEC.model_copy()) == REQUEST
    assert rh.request_of(None) is None
