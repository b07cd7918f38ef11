"""The declarative major upgrade as a pure state machine: from what one pass sees (View) to
the next step (Step): the upgrade's progress for status.upgrade, how the instances are to be
rendered this pass, and what to do (intents the planner turns into actions).

Raising spec.postgresVersion above the major the data is at starts an attempt, for that
spec's generation. Its phases, each resumed from what is observed, so that an operator killed
at any point carries on:

- Preflight: a Job runs `pgherd upgrade check` (pg_upgrade --check in a throwaway copy of the
  running primary). Problems end the attempt as PreflightFailed; nothing was changed.
- BackingUp (spec.upgrade.backupFirst): a PostgresBackup, waited for; its failure ends the
  attempt as Failed, nothing changed.
- Stopping: the instances are first scaled to one, which the ordinary scale-down does by
  moving the primary to ordinal 0; then to none. That single member stops PostgreSQL cleanly
  with no other member left to take over, so the volume upgraded holds every commit. The
  write outage starts here.
- Upgrading: a Job runs `pgherd upgrade run` on the primary's volume. A pod lost without a
  report is run again (the journal on the volume resumes it); an error rolls back.
- Resetting: the replicas' claims are deleted (their data belongs to the old system) and
  Patroni is handed the new system identifier (ResetDcs), all while nothing runs.
- Starting: the instances at the new major and image; the outage ends when a primary runs.
- Analyzing: the new primary rebuilds statistics (its instance reports when done).
- Completed.
- RollingBack: a Job runs `pgherd upgrade rollback`; then Failed, and the old major starts
  again as it was (replica claims are only deleted after the upgrade succeeded).

Failed and PreflightFailed end an attempt: nothing is retried for the same generation. Any
change of the spec (a fixed image, a dropped extension) starts a new attempt; setting
postgresVersion back to the old major (which the API allows only then) ends the upgrade.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from pgherd import contract

PREFLIGHT = "Preflight"
PREFLIGHT_FAILED = "PreflightFailed"
BACKING_UP = "BackingUp"
STOPPING = "Stopping"
UPGRADING = "Upgrading"
RESETTING = "Resetting"
STARTING = "Starting"
ANALYZING = "Analyzing"
COMPLETED = "Completed"
FAILED = "Failed"
ROLLING_BACK = "RollingBack"

PHASES = (
    PREFLIGHT, PREFLIGHT_FAILED, BACKING_UP, STOPPING, UPGRADING, RESETTING, STARTING, ANALYZING,
    COMPLETED, FAILED, ROLLING_BACK,
)  # fmt: skip
ENDED = frozenset({PREFLIGHT_FAILED, FAILED, COMPLETED})
# From Resetting on, the data directory the cluster runs is the new major's.
DATA_UPGRADED = frozenset({RESETTING, STARTING, ANALYZING, COMPLETED})
# Before Stopping, an attempt may simply be dropped: nothing was touched.
UNTOUCHED = frozenset({PREFLIGHT, BACKING_UP})
# A Job lost without a report (node lost, evicted, OOM) is run again this many times.
MAX_RUNS = 3

# Reasons: of the Progressing condition while an attempt runs, of Degraded and Events after.
UPGRADING_REASON = "MajorUpgrade"
PREFLIGHT_FAILED_REASON = "UpgradePreflightFailed"
FAILED_REASON = "UpgradeFailed"
ROLLBACK_FAILED_REASON = "UpgradeRollbackFailed"
COMPLETED_REASON = "UpgradeCompleted"
STARTED_REASON = "UpgradeStarted"
WAITING_REASON = "UpgradeWaiting"

JobKind = Literal["preflight", "upgrade", "rollback"]
JobState = Literal["absent", "running", "succeeded", "problems", "failed"]
JOB_KINDS: tuple[JobKind, ...] = ("preflight", "upgrade", "rollback")


@dataclass(frozen=True)
class JobSeen:
    """One upgrade Job as observed: its state and, once finished, its pod's report."""

    state: JobState = "absent"
    report: Mapping[str, Any] = field(default_factory=dict)
    message: str = ""  # why it failed, in a sentence (the report's error, or the pod's)


ABSENT = JobSeen()


@dataclass(frozen=True)
class Progress:
    """status.upgrade: one attempt, as far as it has gone."""

    phase: str
    from_version: int
    to_version: int
    method: str
    generation: int
    started_at: datetime
    from_image: str | None = None
    to_image: str | None = None
    primary: str | None = None
    outage_started_at: datetime | None = None
    outage_seconds: float | None = None
    system_identifier: str | None = None
    backup: str | None = None
    runs: int = 0  # runs of the current phase's Job lost without a report
    reason: str | None = None
    message: str | None = None
    problems: tuple[Mapping[str, str], ...] = ()
    finished_at: datetime | None = None

    def to(self, phase: str, **changes: Any) -> Progress:
        return dataclasses.replace(self, phase=phase, runs=0, **changes)


@dataclass(frozen=True)
class View:
    """What one pass sees of a cluster, as far as its major upgrade goes."""

    now: datetime
    cluster: str
    generation: int
    want: int  # spec.postgresVersion
    data_major: int | None  # the major the data is at (status.postgresVersion)
    instances: int  # spec.instances
    method: str = "link"
    backup_first: bool = False
    progress: Progress | None = None
    from_image: str | None = None  # what runs (status.image)
    to_image: str | None = None  # the operand image for want (None: the operator has none)
    primary: str | None = None  # the instance pod Patroni runs as primary
    pods: tuple[str, ...] = ()  # instance pods that exist (terminating ones included)
    all_ready: bool = False
    preflight: JobSeen = ABSENT
    upgrade: JobSeen = ABSENT
    rollback: JobSeen = ABSENT
    backup_phase: str | None = None  # of the PostgresBackup progress.backup names
    claims: tuple[str, ...] = ()  # the instances' data claims that exist (being deleted too)
    dcs_system: str | None = None  # the system identifier Patroni's DCS holds (initialize)
    dcs_keys: bool = False  # Patroni's leader, sync or failover key exists
    analyzed: bool = False  # the new primary reports its statistics rebuilt
    archives: bool = False  # spec.backup is set: the new system wants its first base backup


# ---- what a step asks for ---------------------------------------------------------------------
@dataclass(frozen=True)
class RunJob:
    kind: JobKind
    claim: str | None = None  # the volume it works on (upgrade, rollback)


@dataclass(frozen=True)
class DeleteJob:
    kind: JobKind


@dataclass(frozen=True)
class CreateBackup:
    name: str


@dataclass(frozen=True)
class DeleteClaims:
    names: tuple[str, ...]


@dataclass(frozen=True)
class ResetDcs:
    """Hand Patroni the new system: initialize set to it, leader, sync and failover cleared."""

    system_identifier: str


Intent = RunJob | DeleteJob | CreateBackup | DeleteClaims | ResetDcs


@dataclass(frozen=True)
class Render:
    """How the instances are rendered this pass: None keeps the spec's value."""

    instances: int | None = None
    major: int | None = None
    # The image the cluster runs while its data is at the old major (spec.image may already
    # name the new major's); None: chosen for the major as usual (plan.choose_image).
    image: str | None = None


@dataclass(frozen=True)
class Step:
    progress: Progress | None
    render: Render = Render()
    intents: tuple[Intent, ...] = ()
    reason: str | None = None  # Progressing while an attempt runs; Degraded once it failed
    message: str | None = None
    events: tuple[tuple[str, str], ...] = ()  # (reason, message), once per transition
    degraded: bool = False


def claim_of(pod: str) -> str:
    """The data claim of an instance pod (the StatefulSet's volumeClaimTemplate)."""
    return f"{contract.DATA_VOLUME}-{pod}"


def backup_name(view: View) -> str:
    return f"{view.cluster}-upgrade-{view.want}-g{view.generation}"


# ---- the machine ------------------------------------------------------------------------------
def decide(view: View) -> Step:
    """The next step of the cluster's major upgrade (see the module docstring)."""
    p = view.progress
    if p is not None and p.phase in DATA_UPGRADED and (view.data_major or 0) < p.to_version:
        # The instances report the new major only once they run it: the data is there first.
        view = dataclasses.replace(view, data_major=p.to_version)
    if p is not None and p.phase not in ENDED:
        if p.phase in UNTOUCHED and view.want != p.to_version:
            return _drop(view, p)
        return _PHASES[p.phase](view, p)
    return _idle(view, p)


def _held(view: View, p: Progress | None) -> Render:
    """The cluster as it ran: its data's major (and image, which plan chooses from it)."""
    if p is not None and p.phase == FAILED and p.reason == ROLLBACK_FAILED_REASON:
        return Render(instances=0)  # neither major can start on what the volume holds
    return Render(major=view.data_major, image=view.from_image)


def _idle(view: View, p: Progress | None) -> Step:
    if view.data_major is None or view.want <= view.data_major:
        return Step(p)  # nothing asked; a past attempt stays on record
    held = _held(view, p)
    if p is not None and p.phase in (PREFLIGHT_FAILED, FAILED) and p.generation == view.generation:
        return Step(p, held, reason=p.reason, message=p.message, degraded=True)
    if view.to_image is None:
        return Step(p, held)  # plan reports NoImageForVersion; nothing to start with
    leftovers = [k for k in JOB_KINDS if _job(view, k).state != "absent"]
    if leftovers:
        return Step(
            p,
            held,
            tuple(DeleteJob(k) for k in leftovers),
            WAITING_REASON,
            "removing the Jobs of the previous upgrade attempt",
        )
    if view.primary is None or not view.all_ready:
        return Step(
            p,
            held,
            (),
            WAITING_REASON,
            f"waiting for every instance to be ready before upgrading to {view.want}",
        )
    started = Progress(
        phase=PREFLIGHT,
        from_version=view.data_major,
        to_version=view.want,
        method=view.method,
        generation=view.generation,
        started_at=view.now,
        from_image=view.from_image,
        to_image=view.to_image,
    )
    message = (
        f"upgrading PostgreSQL {view.data_major} to {view.want} ({view.method}): "
        "preflight in a copy of the primary"
    )
    return Step(
        started,
        held,
        (RunJob("preflight"),),
        UPGRADING_REASON,
        message,
        ((STARTED_REASON, message),),
    )


def _job(view: View, kind: JobKind) -> JobSeen:
    seen: JobSeen = getattr(view, kind)
    return seen


def _running(p: Progress, render: Render, what: str) -> Step:
    return Step(p, render, (), UPGRADING_REASON, f"{p.phase}: {what}")


def _lost_run(view: View, p: Progress, kind: JobKind, render: Render) -> Step:
    """A Job's pod gone without a report: run it again, up to MAX_RUNS."""
    return Step(
        dataclasses.replace(p, runs=p.runs + 1),
        render,
        (DeleteJob(kind),),
        UPGRADING_REASON,
        f"{p.phase}: the {kind} Job ended without a report ({_job(view, kind).message}); "
        f"running it again ({p.runs + 2} of {MAX_RUNS})",
    )


def _drop(view: View, p: Progress) -> Step:
    """The target changed before anything was stopped: this attempt is dropped."""
    dropped = tuple(DeleteJob(k) for k in ("preflight",) if view.preflight.state != "absent")
    return Step(
        None,
        Render(major=view.data_major, image=view.from_image),
        dropped,
        WAITING_REASON,
        f"postgresVersion changed from {p.to_version} to {view.want} before the "
        "upgrade stopped anything: starting over",
    )


def _preflight(view: View, p: Progress) -> Step:
    held = Render(major=view.data_major, image=view.from_image)
    job = view.preflight
    if job.state == "absent":
        return Step(
            p,
            held,
            (RunJob("preflight"),),
            UPGRADING_REASON,
            f"{PREFLIGHT}: pg_upgrade --check in a copy of the primary",
        )
    if job.state == "running":
        return _running(p, held, "pg_upgrade --check in a copy of the primary")
    if job.state == "succeeded":
        if view.backup_first:
            nxt = p.to(BACKING_UP, backup=backup_name(view))
            return Step(
                nxt,
                held,
                (DeleteJob("preflight"), CreateBackup(nxt.backup or "")),
                UPGRADING_REASON,
                f"{BACKING_UP}: a base backup before anything stops",
            )
        return _stop(view, p.to(STOPPING), (DeleteJob("preflight"),))
    if job.state == "failed" and not job.report and p.runs + 1 < MAX_RUNS:
        return _lost_run(view, p, "preflight", held)
    problems = tuple(job.report.get("problems") or ())
    if job.state == "problems":
        listed = "; ".join(
            f"{x.get('subject', '')}: {x.get('message', '')}".strip(": ")
            for x in problems
            if x.get("severity", "error") == "error"
        )
        message = (
            f"the upgrade to {p.to_version} cannot run: {listed or 'see status.upgrade.problems'}. "
            "Nothing was changed; fix what is listed (or set postgresVersion back to "
            f"{p.from_version}), and any change of the spec checks again"
        )
    else:
        message = (
            f"the upgrade preflight did not finish: {job.message}. Nothing was changed; any "
            f"change of the spec tries again (or set postgresVersion back to {p.from_version})"
        )
    ended = p.to(
        PREFLIGHT_FAILED,
        reason=PREFLIGHT_FAILED_REASON,
        message=message,
        problems=problems,
        finished_at=view.now,
    )
    return Step(
        ended,
        held,
        (),
        PREFLIGHT_FAILED_REASON,
        message,
        ((PREFLIGHT_FAILED_REASON, message),),
        degraded=True,
    )


def _backing_up(view: View, p: Progress) -> Step:
    held = Render(major=view.data_major, image=view.from_image)
    if view.backup_phase is None:
        return Step(
            p,
            held,
            (CreateBackup(p.backup or backup_name(view)),),
            UPGRADING_REASON,
            f"{BACKING_UP}: a base backup before anything stops",
        )
    if view.backup_phase == "Completed":
        return _stop(view, p.to(STOPPING), ())
    if view.backup_phase == "Failed":
        message = (
            f"the backup before the upgrade ({p.backup}) failed; nothing was changed. Fix the "
            "object store, then any change of the spec tries again"
        )
        ended = p.to(FAILED, reason=FAILED_REASON, message=message, finished_at=view.now)
        return Step(
            ended, held, (), FAILED_REASON, message, ((FAILED_REASON, message),), degraded=True
        )
    return _running(p, held, f"waiting for the backup {p.backup}")


def _stop(view: View, p: Progress, intents: tuple[Intent, ...]) -> Step:
    """Stopping: down to the primary alone at ordinal 0, then to none."""
    first = f"{view.cluster}-0"
    if p.primary is None:
        if view.primary == first and view.pods == (first,):
            p = dataclasses.replace(p, primary=first, outage_started_at=view.now)
        else:
            return Step(
                p,
                Render(instances=1, major=view.data_major, image=view.from_image),
                intents,
                UPGRADING_REASON,
                f"{STOPPING}: down to the primary alone, at {first}",
            )
    if view.pods:
        return Step(
            p,
            Render(instances=0, major=view.data_major, image=view.from_image),
            intents,
            UPGRADING_REASON,
            f"{STOPPING}: stopping {p.primary} (the write outage has begun)",
        )
    return _upgrading(view, p.to(UPGRADING), intents)


def _stopping(view: View, p: Progress) -> Step:
    return _stop(view, p, ())


def _upgrading(view: View, p: Progress, intents: tuple[Intent, ...] = ()) -> Step:
    stopped = Render(instances=0, major=view.data_major, image=view.from_image)
    claim = claim_of(p.primary or f"{view.cluster}-0")
    job = view.upgrade
    if job.state == "absent":
        return Step(
            p,
            stopped,
            (*intents, RunJob("upgrade", claim)),
            UPGRADING_REASON,
            f"{UPGRADING}: pg_upgrade --{p.method} on {claim}",
        )
    if job.state == "running":
        return _running(p, stopped, f"pg_upgrade --{p.method} on {claim}")
    if job.state == "succeeded":
        system = str(job.report.get("systemIdentifier") or "")
        if not system:
            return _roll_back(view, p, "the upgrade reported no system identifier", claim)
        return _resetting(view, p.to(RESETTING, system_identifier=system), (DeleteJob("upgrade"),))
    if not job.report and p.runs + 1 < MAX_RUNS:
        return _lost_run(view, p, "upgrade", stopped)
    return _roll_back(view, p, job.message or "pg_upgrade failed", claim)


def _roll_back(view: View, p: Progress, why: str, claim: str) -> Step:
    nxt = p.to(ROLLING_BACK, message=f"the upgrade failed: {why}")
    return Step(
        nxt,
        Render(instances=0, major=view.data_major, image=view.from_image),
        (DeleteJob("upgrade"), RunJob("rollback", claim)),
        UPGRADING_REASON,
        f"{ROLLING_BACK}: {nxt.message}; putting PostgreSQL {p.from_version} back",
    )


def _rolling_back(view: View, p: Progress) -> Step:
    stopped = Render(instances=0, major=view.data_major, image=view.from_image)
    claim = claim_of(p.primary or f"{view.cluster}-0")
    job = view.rollback
    if job.state == "absent":
        return Step(
            p,
            stopped,
            (RunJob("rollback", claim),),
            UPGRADING_REASON,
            f"{ROLLING_BACK}: putting PostgreSQL {p.from_version} back",
        )
    if job.state == "running":
        return _running(p, stopped, f"putting PostgreSQL {p.from_version} back")
    if job.state != "succeeded" and not job.report and p.runs + 1 < MAX_RUNS:
        return _lost_run(view, p, "rollback", stopped)
    if job.state == "succeeded":
        message = (
            f"{p.message}. Rolled back: the cluster runs PostgreSQL {p.from_version} again. "
            f"Set postgresVersion back to {p.from_version}, or fix the cause and change the "
            "spec to try again"
        )
        ended = p.to(
            FAILED,
            reason=FAILED_REASON,
            message=message,
            finished_at=view.now,
            outage_seconds=_outage(view, p),
        )
        return Step(
            ended,
            Render(major=view.data_major, image=view.from_image),
            (DeleteJob("rollback"),),
            FAILED_REASON,
            message,
            ((FAILED_REASON, message),),
            degraded=True,
        )
    message = (
        f"{p.message}; the rollback failed too: {job.message}. The cluster is kept stopped; "
        f"{p.primary}'s volume holds the journal (pgherd-upgrade/journal.json): see "
        "docs/major-upgrade.md"
    )
    ended = p.to(FAILED, reason=ROLLBACK_FAILED_REASON, message=message, finished_at=view.now)
    return Step(
        ended,
        Render(instances=0),
        (),
        ROLLBACK_FAILED_REASON,
        message,
        ((ROLLBACK_FAILED_REASON, message),),
        degraded=True,
    )


def _resetting(view: View, p: Progress, intents: tuple[Intent, ...] = ()) -> Step:
    stopped = Render(instances=0, major=p.to_version)
    keep = claim_of(p.primary or f"{view.cluster}-0")
    stale = tuple(c for c in view.claims if c != keep)
    system = p.system_identifier or ""
    todo: tuple[Intent, ...] = ()
    if stale:
        todo += (DeleteClaims(stale),)
    if view.dcs_system != system or view.dcs_keys:
        todo += (ResetDcs(system),)
    if todo:
        return Step(
            p,
            stopped,
            intents + todo,
            UPGRADING_REASON,
            f"{RESETTING}: the replicas' volumes removed, Patroni handed the new system {system}",
        )
    return _starting(view, p.to(STARTING), intents)


def _resetting_phase(view: View, p: Progress) -> Step:
    return _resetting(view, p)


def _outage(view: View, p: Progress) -> float | None:
    if p.outage_started_at is None:
        return None
    return round((view.now - p.outage_started_at).total_seconds(), 3)


def _starting(view: View, p: Progress, intents: tuple[Intent, ...] = ()) -> Step:
    new = Render(major=p.to_version)
    if view.primary is None:
        return Step(
            p,
            new,
            intents,
            UPGRADING_REASON,
            f"{STARTING}: PostgreSQL {p.to_version} starting on {p.primary}",
        )
    return _analyzing(view, p.to(ANALYZING, outage_seconds=_outage(view, p)), intents)


def _starting_phase(view: View, p: Progress) -> Step:
    return _starting(view, p)


def _analyzing(view: View, p: Progress, intents: tuple[Intent, ...] = ()) -> Step:
    new = Render(major=p.to_version)
    if not view.analyzed:
        return Step(
            p,
            new,
            intents,
            UPGRADING_REASON,
            f"{ANALYZING}: PostgreSQL {p.to_version} runs (write outage "
            f"{p.outage_seconds} s); rebuilding statistics",
        )
    message = (
        f"upgraded from PostgreSQL {p.from_version} to {p.to_version} with {p.method}: "
        f"write outage {p.outage_seconds} s; replicas re-created from the new primary"
    )
    done = p.to(COMPLETED, reason=COMPLETED_REASON, message=message, finished_at=view.now)
    # The old system's backups restore only onto the old major: the new one's first, now.
    first = (CreateBackup(f"{view.cluster}-upgraded-{p.to_version}-g{p.generation}"),)
    return Step(
        done,
        new,
        intents + (first if view.archives else ()),
        None,
        None,
        ((COMPLETED_REASON, message),),
    )


def _analyzing_phase(view: View, p: Progress) -> Step:
    return _analyzing(view, p)


_PHASES = {
    PREFLIGHT: _preflight,
    BACKING_UP: _backing_up,
    STOPPING: _stopping,
    UPGRADING: _upgrading,
    RESETTING: _resetting_phase,
    STARTING: _starting_phase,
    ANALYZING: _analyzing_phase,
    ROLLING_BACK: _rolling_back,
}
