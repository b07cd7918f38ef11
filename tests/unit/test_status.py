"""Status, computed purely from a snapshot and a plan: phase, conditions (with reason, message
and observedGeneration), lag rounding, a stable result for an unchanged world, and Events only
on transitions."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import pytest

from pgherd.api.v1alpha1 import PostgresClusterStatus
from pgherd.controller import conditions as c
from pgherd.controller import status as st
from pgherd.controller.conditions import Activity, Problem
from pgherd.controller.plan import Plan
from pgherd.controller.snapshot import Snapshot
from tests.unit.snapshots import NOW, STORE, healthy, pod, snapshot

STUCK = timedelta(seconds=300)
RECENT = NOW - timedelta(seconds=10)


def compute(s: Snapshot, plan: Plan | None = None, **kw: Any) -> PostgresClusterStatus:
    new = st.compute(s, plan or Plan(), stuck_after=STUCK, **kw)
    assert new is not None
    return new


def cond(status: PostgresClusterStatus, type_: str) -> tuple[str, str]:
    found = c.get(status.conditions, type_)
    assert found is not None, type_
    return found.status, found.reason


@pytest.mark.parametrize(
    ("pods", "leader", "stored", "plan", "phase"),
    [
        ([], None, None, Plan(), c.PHASE_CREATING),
        (healthy(), "db-0", None, Plan(), c.PHASE_HEALTHY),
        (healthy(), "db-0", None, Plan(activity=Activity(c.SCALING, "x")), c.PHASE_UPDATING),
        ([*healthy(2), pod(2, ready=False, ready_since=RECENT)], "db-0", None, Plan(),
         c.PHASE_UPDATING),
        # it had a primary and lost it
        ([pod(0, ready=False, state="stopped", ready_since=RECENT)], None,
         {"currentPrimary": "db-0"}, Plan(), c.PHASE_UNAVAILABLE),
        (healthy(), "db-0", None, Plan(problems=(Problem(c.SECRET_INVALID, "m"),)),
         c.PHASE_DEGRADED),
    ],
)  # fmt: skip
def test_phase(
    pods: list[dict[str, Any]], leader: str | None, stored: Any, plan: Plan, phase: str
) -> None:
    s = snapshot({}, pods=pods, leader=leader, status=stored)
    assert compute(s, plan).phase == phase


def test_conditions_carry_reason_message_and_observed_generation() -> None:
    new = compute(snapshot({}, pods=healthy(), leader="db-0", generation=7))
    assert [x.type for x in new.conditions or []] == [c.READY, c.PROGRESSING, c.DEGRADED]
    assert {x.observed_generation for x in new.conditions or []} == {7}
    assert cond(new, c.READY) == ("True", c.ALL_READY)
    assert cond(new, c.PROGRESSING) == ("False", c.UP_TO_DATE)
    assert cond(new, c.DEGRADED) == ("False", c.AS_EXPECTED)
    assert all(x.message for x in new.conditions or [])


@pytest.mark.parametrize(
    ("primary_lsn", "replica_lsn", "lag"),
    [
        (100 * 2**20, 100 * 2**20, 0),
        (100 * 2**20 + 5000, 100 * 2**20, 0),  # an idle primary's few bytes stay 0
        (103 * 2**20 + 7, 100 * 2**20, 3 * 2**20),
        (100 * 2**20, 101 * 2**20, 0),  # never negative
    ],
)
def test_lag_is_reported_in_whole_mib(primary_lsn: int, replica_lsn: int, lag: int) -> None:
    pods = [pod(0, role="primary", lsn=primary_lsn), pod(1, lsn=replica_lsn)]
    s = snapshot({"instances": 2}, pods=pods)  # no leader key: the primary's own position
    new = compute(s)
    assert [i.lag_bytes for i in new.instances_status or []] == [0, lag]


def test_an_unchanged_world_gives_the_same_status_and_no_event() -> None:
    s = snapshot({}, pods=healthy(), leader="db-0")
    first = compute(s)
    stored = st.dump(first)
    again = compute(snapshot({}, pods=healthy(), leader="db-0", status=stored,
                             now=NOW + timedelta(minutes=5)))  # fmt: skip
    assert st.status_patch(stored, st.dump(again)) == {}
    assert st.transitions(first, again) == []


def test_a_field_that_went_away_is_removed_by_the_patch() -> None:
    assert st.status_patch(
        {"phase": "x", "ignoredParameters": [{"name": "a"}]}, {"phase": "x"}
    ) == {"ignoredParameters": None}


def _status(ready: str | None, reason: str = "R", **more: Any) -> PostgresClusterStatus:
    conds = []
    if ready is not None:
        conds.append({"type": c.READY, "status": ready, "reason": reason, "message": "m",
                      "lastTransitionTime": NOW.isoformat()})  # fmt: skip
    for type_, (status, why) in more.items():
        conds.append({"type": type_, "status": status, "reason": why, "message": why,
                      "lastTransitionTime": NOW.isoformat()})  # fmt: skip
    return PostgresClusterStatus.model_validate({"conditions": conds})


@pytest.mark.parametrize(
    ("old", "new", "events"),
    [
        # a normal bootstrap: not-ready reasons change, no warning; ready at last: Normal
        (None, _status("False", c.NO_PRIMARY), []),
        (_status("False", c.NO_PRIMARY), _status("False", c.INSTANCES_NOT_READY), []),
        (_status("False", c.INSTANCES_NOT_READY), _status("True", c.ALL_READY),
         [("Normal", c.ALL_READY)]),
        # a ready cluster that is not any more: Warning
        (_status("True", c.ALL_READY), _status("False", c.INSTANCES_NOT_READY),
         [("Warning", c.INSTANCES_NOT_READY)]),
        (_status("True"), _status("True", Degraded=("True", c.CHILD_NAME_CONFLICT)),
         [("Warning", c.CHILD_NAME_CONFLICT)]),
        (_status("True", Degraded=("True", c.CHILD_NAME_CONFLICT)),
         _status("True", Degraded=("True", c.CHILD_NAME_CONFLICT)), []),
        (_status("True", Degraded=("True", c.CHILD_NAME_CONFLICT)),
         _status("True", Degraded=("False", c.AS_EXPECTED)), [("Normal", c.AS_EXPECTED)]),
        (_status("True"), _status("True", ContinuousArchiving=("False", c.ARCHIVE_FAILING)),
         [("Warning", c.ARCHIVE_FAILING)]),
        (_status("True", ContinuousArchiving=("False", c.ARCHIVE_FAILING)),
         _status("True", ContinuousArchiving=("True", c.ARCHIVING_WORKS)),
         [("Normal", c.ARCHIVING_WORKS)]),
    ],
)  # fmt: skip
def test_events_only_on_transitions(
    old: PostgresClusterStatus | None, new: PostgresClusterStatus, events: list[tuple[str, str]]
) -> None:
    assert [(e.type, e.reason) for e in st.transitions(old, new)] == events


def test_a_primary_change_is_an_event() -> None:
    old = PostgresClusterStatus(current_primary="db-0")
    new = PostgresClusterStatus(current_primary="db-1")
    assert [(e.type, e.reason) for e in st.transitions(old, new)] == [("Normal", "PrimaryChanged")]
    gone = PostgresClusterStatus(current_primary=None)
    assert [(e.type, e.reason) for e in st.transitions(old, gone)] == [("Warning", "PrimaryLost")]


def test_archiving_condition_follows_the_primarys_agent() -> None:
    spec = {"backup": {"objectStore": STORE}}
    archiver = json.dumps(
        {
            "lastArchivedTime": "2026-11-30T11:00:00Z",
            "lastArchivedWal": "000000010000000000000003",
            "lastFailedTime": "2026-11-30T11:30:00Z",
            "lastFailedWal": "000000010000000000000004",
            "error": "AccessDenied",
        }
    )
    pods = [pod(0, role="primary", annotations={"pgherd.io/archiver": archiver})]
    new = compute(snapshot({**spec, "instances": 1}, pods=pods, leader="db-0"))
    assert cond(new, c.CONTINUOUS_ARCHIVING) == ("False", c.ARCHIVE_FAILING)
    assert new.backup is not None
    assert new.backup.last_archived_wal == "000000010000000000000003"


def test_last_archived_wal_never_goes_backwards() -> None:
    spec = {
        "instances": 1,
        "backup": {"objectStore": STORE},
    }
    stored = {"backup": {"lastArchivedWal": "00000002000000000000000E"}}
    archiver = json.dumps(
        {"lastArchivedTime": "2026-11-30T11:00:00Z", "lastArchivedWal": "000000010000000000000002"}
    )
    pods = [pod(0, role="primary", annotations={"pgherd.io/archiver": archiver})]
    new = compute(snapshot(spec, pods=pods, leader="db-0", status=stored))
    assert new.backup is not None
    assert new.backup.last_archived_wal == "00000002000000000000000E"
