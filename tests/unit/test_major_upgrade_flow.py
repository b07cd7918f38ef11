"""The major upgrade's state machine: each phase's decision from what a pass sees, one row each."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from pgherd.controller import major_upgrade as mu
from pgherd.controller.major_upgrade import (
    CreateBackup,
    DeleteClaims,
    DeleteJob,
    JobSeen,
    Progress,
    Render,
    ResetDcs,
    RunJob,
    View,
)

T0 = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
NOW = T0 + timedelta(minutes=5)
PODS = ("pg-0", "pg-1", "pg-2")
CLAIMS = tuple(f"pgdata-{p}" for p in PODS)
NEW_SYSTEM = "7448000000000000002"
OLD_SYSTEM = "7448000000000000001"


def view(**changes: Any) -> View:
    base = View(
        now=NOW,
        cluster="pg",
        generation=2,
        want=18,
        data_major=15,
        instances=3,
        from_image="img:15",
        to_image="img:18",
        primary="pg-1",
        pods=PODS,
        all_ready=True,
        claims=CLAIMS,
        dcs_system=OLD_SYSTEM,
    )
    return dataclasses.replace(base, **changes)


def progress(phase: str, **changes: Any) -> Progress:
    base = Progress(
        phase=phase,
        from_version=15,
        to_version=18,
        method="link",
        generation=2,
        started_at=T0,
        from_image="img:15",
        to_image="img:18",
    )
    return dataclasses.replace(base, **changes)


STOPPED = progress(mu.STOPPING, primary="pg-0", outage_started_at=T0)
PREFLIGHT_PROBLEMS = JobSeen(
    "problems",
    {
        "ok": False,
        "problems": [
            {"check": "extension", "subject": "adminpack", "message": "not in 18", "hint": "drop"}
        ],
    },
)
LOST = JobSeen("failed", {}, "pod deleted")
ERROR = JobSeen("failed", {"ok": False, "error": "pg_upgrade failed"}, "pg_upgrade failed")
UPGRADED = JobSeen("succeeded", {"ok": True, "systemIdentifier": NEW_SYSTEM})

# How the instances are rendered while the data is at 15: its major, the image it runs.
HELD = Render(major=15, image="img:15")
ALONE_15 = Render(instances=1, major=15, image="img:15")
STOPPED_15 = Render(instances=0, major=15, image="img:15")

# (name, view, phase after (None: no attempt), intents, render, degraded)
CASES: list[tuple[str, View, str | None, tuple[Any, ...], Render, bool]] = [
    ("nothing asked", view(want=15), None, (), Render(), False),
    ("never ran: a new cluster just takes the spec", view(data_major=None), None, (), Render(),
     False),
    ("raised: the preflight starts", view(), mu.PREFLIGHT, (RunJob("preflight"),),
     HELD, False),
    ("raised while an instance is not ready: waits", view(all_ready=False), None, (),
     HELD, False),
    ("raised with no image for the new major: plan says so", view(to_image=None), None, (),
     HELD, False),
    ("a previous attempt's Jobs are removed first", view(upgrade=JobSeen("failed")), None,
     (DeleteJob("upgrade"),), HELD, False),
    ("preflight Job missing (operator restarted): run", view(progress=progress(mu.PREFLIGHT)),
     mu.PREFLIGHT, (RunJob("preflight"),), HELD, False),
    ("preflight running", view(progress=progress(mu.PREFLIGHT), preflight=JobSeen("running")),
     mu.PREFLIGHT, (), HELD, False),
    ("preflight passed: down to the primary alone",
     view(progress=progress(mu.PREFLIGHT), preflight=JobSeen("succeeded", {"ok": True})),
     mu.STOPPING, (DeleteJob("preflight"),), ALONE_15, False),
    ("preflight passed, backup first",
     view(progress=progress(mu.PREFLIGHT), preflight=JobSeen("succeeded", {"ok": True}),
          backup_first=True),
     mu.BACKING_UP, (DeleteJob("preflight"), CreateBackup("pg-upgrade-18-g2")), HELD,
     False),
    ("preflight found problems: nothing changes",
     view(progress=progress(mu.PREFLIGHT), preflight=PREFLIGHT_PROBLEMS),
     mu.PREFLIGHT_FAILED, (), HELD, True),
    ("preflight pod lost: run again", view(progress=progress(mu.PREFLIGHT), preflight=LOST),
     mu.PREFLIGHT, (DeleteJob("preflight"),), HELD, False),
    ("preflight pod lost a third time: ends",
     view(progress=progress(mu.PREFLIGHT, runs=2), preflight=LOST),
     mu.PREFLIGHT_FAILED, (), HELD, True),
    ("preflight failed, same spec: stays failed",
     view(progress=progress(mu.PREFLIGHT_FAILED, reason="x", message="y"),
          preflight=PREFLIGHT_PROBLEMS),
     mu.PREFLIGHT_FAILED, (), HELD, True),
    ("preflight failed, spec changed: its Job goes, then a new attempt",
     view(progress=progress(mu.PREFLIGHT_FAILED), generation=3, preflight=PREFLIGHT_PROBLEMS),
     mu.PREFLIGHT_FAILED, (DeleteJob("preflight"),), HELD, False),
    ("preflight failed, spec changed, Job gone: a new attempt",
     view(progress=progress(mu.PREFLIGHT_FAILED), generation=3),
     mu.PREFLIGHT, (RunJob("preflight"),), HELD, False),
    ("preflight failed, version set back: the upgrade ends",
     view(progress=progress(mu.PREFLIGHT_FAILED), want=15, generation=3),
     mu.PREFLIGHT_FAILED, (), Render(), False),
    ("target changed during the preflight: dropped",
     view(progress=progress(mu.PREFLIGHT), want=17, preflight=JobSeen("running")),
     None, (DeleteJob("preflight"),), HELD, False),
    ("backing up: the backup is created",
     view(progress=progress(mu.BACKING_UP, backup="pg-upgrade-18-g2")),
     mu.BACKING_UP, (CreateBackup("pg-upgrade-18-g2"),), HELD, False),
    ("backing up: waits", view(progress=progress(mu.BACKING_UP, backup="b"),
                               backup_phase="Running"),
     mu.BACKING_UP, (), HELD, False),
    ("backed up: stopping", view(progress=progress(mu.BACKING_UP, backup="b"),
                                 backup_phase="Completed"),
     mu.STOPPING, (), ALONE_15, False),
    ("backup failed: nothing changed", view(progress=progress(mu.BACKING_UP, backup="b"),
                                            backup_phase="Failed"),
     mu.FAILED, (), HELD, True),
    ("stopping: the primary moves to ordinal 0 first", view(progress=progress(mu.STOPPING)),
     mu.STOPPING, (), ALONE_15, False),
    ("stopping: the primary alone at ordinal 0, then none",
     view(progress=progress(mu.STOPPING), primary="pg-0", pods=("pg-0",)),
     mu.STOPPING, (), STOPPED_15, False),
    ("stopped: pg_upgrade on the primary's volume", view(progress=STOPPED, primary=None, pods=()),
     mu.UPGRADING, (RunJob("upgrade", "pgdata-pg-0"),), STOPPED_15, False),
    ("upgrading", view(progress=STOPPED.to(mu.UPGRADING), primary=None, pods=(),
                       upgrade=JobSeen("running")),
     mu.UPGRADING, (), STOPPED_15, False),
    ("upgrade pod lost: run again (the journal resumes it)",
     view(progress=STOPPED.to(mu.UPGRADING), primary=None, pods=(), upgrade=LOST),
     mu.UPGRADING, (DeleteJob("upgrade"),), STOPPED_15, False),
    ("upgrade failed: roll back",
     view(progress=STOPPED.to(mu.UPGRADING), primary=None, pods=(), upgrade=ERROR),
     mu.ROLLING_BACK, (DeleteJob("upgrade"), RunJob("rollback", "pgdata-pg-0")),
     STOPPED_15, False),
    ("upgraded: replicas' volumes go, Patroni gets the new system",
     view(progress=STOPPED.to(mu.UPGRADING), primary=None, pods=(), upgrade=UPGRADED),
     mu.RESETTING,
     (DeleteJob("upgrade"), DeleteClaims(("pgdata-pg-1", "pgdata-pg-2")), ResetDcs(NEW_SYSTEM)),
     Render(instances=0, major=18), False),
    ("Patroni's old keys not gone yet: reset again",
     view(progress=STOPPED.to(mu.RESETTING, system_identifier=NEW_SYSTEM), primary=None,
          pods=(), claims=("pgdata-pg-0",), dcs_system=NEW_SYSTEM, dcs_keys=True),
     mu.RESETTING, (ResetDcs(NEW_SYSTEM),), Render(instances=0, major=18), False),
    ("reset: the new major starts",
     view(progress=STOPPED.to(mu.RESETTING, system_identifier=NEW_SYSTEM), primary=None,
          pods=(), claims=("pgdata-pg-0",), dcs_system=NEW_SYSTEM),
     mu.STARTING, (), Render(major=18), False),
    ("a primary runs the new major: outage measured, analyzing",
     view(progress=STOPPED.to(mu.STARTING, system_identifier=NEW_SYSTEM), primary="pg-0",
          pods=PODS, claims=CLAIMS, dcs_system=NEW_SYSTEM),
     mu.ANALYZING, (), Render(major=18), False),
    ("analyzed: completed, the new system's first backup",
     view(progress=STOPPED.to(mu.ANALYZING, outage_seconds=12.5), primary="pg-0",
          analyzed=True, archives=True),
     mu.COMPLETED, (CreateBackup("pg-upgraded-18-g2"),), Render(major=18),
     False),
    ("completed, before the instances report 18: no new attempt",
     view(progress=STOPPED.to(mu.COMPLETED)), mu.COMPLETED, (), Render(), False),
    ("rolled back: failed, the old major starts again as it was",
     view(progress=STOPPED.to(mu.ROLLING_BACK, message="the upgrade failed: x"), primary=None,
          pods=(), rollback=JobSeen("succeeded", {"ok": True})),
     mu.FAILED, (DeleteJob("rollback"),), HELD, True),
    ("rollback failed: kept stopped",
     view(progress=STOPPED.to(mu.ROLLING_BACK), primary=None, pods=(), rollback=ERROR),
     mu.FAILED, (), Render(instances=0), True),
    ("rollback failed, same spec: still stopped",
     view(progress=STOPPED.to(mu.FAILED, reason=mu.ROLLBACK_FAILED_REASON), primary=None,
          pods=()),
     mu.FAILED, (), Render(instances=0), True),
]  # fmt: skip


@pytest.mark.parametrize(
    ("seen", "phase", "intents", "render", "degraded"),
    [c[1:] for c in CASES],
    ids=[c[0] for c in CASES],
)
def test_each_phase_decides_its_next_step(
    seen: View, phase: str | None, intents: tuple[Any, ...], render: Render, degraded: bool
) -> None:
    step = mu.decide(seen)
    assert (step.progress.phase if step.progress else None) == phase
    assert step.intents == intents
    assert step.render == render
    assert step.degraded == degraded


def test_the_outage_runs_from_the_last_stop_to_the_new_primary() -> None:
    started = view(progress=progress(mu.STOPPING), primary="pg-0", pods=("pg-0",))
    stopping = mu.decide(started).progress
    assert stopping is not None and stopping.outage_started_at == NOW
    later = dataclasses.replace(
        stopping, phase=mu.STARTING, system_identifier=NEW_SYSTEM, primary="pg-0"
    )
    step = mu.decide(view(progress=later, now=NOW + timedelta(seconds=42.5), primary="pg-0"))
    assert step.progress is not None and step.progress.outage_seconds == 42.5


def test_a_failed_preflight_says_what_to_fix_and_announces_it_once() -> None:
    step = mu.decide(view(progress=progress(mu.PREFLIGHT), preflight=PREFLIGHT_PROBLEMS))
    assert step.progress is not None
    assert step.reason == mu.PREFLIGHT_FAILED_REASON
    assert "adminpack: not in 18" in (step.message or "")
    assert "Nothing was changed" in (step.message or "")
    assert step.progress.problems[0]["subject"] == "adminpack"
    assert [r for r, _ in step.events] == [mu.PREFLIGHT_FAILED_REASON]
    again = mu.decide(view(progress=step.progress, preflight=PREFLIGHT_PROBLEMS))
    assert again.events == () and again.degraded


def test_every_phase_is_decided() -> None:
    unhandled = {
        mu.PREFLIGHT, mu.BACKING_UP, mu.STOPPING, mu.UPGRADING, mu.RESETTING, mu.STARTING,
        mu.ANALYZING, mu.ROLLING_BACK,
    } - set(mu._PHASES)  # fmt: skip
    assert not unhandled
