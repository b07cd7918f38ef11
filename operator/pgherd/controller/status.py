"""Status: a PostgresCluster's status from its snapshot, plan and what act could not do; pure.

Same inputs give the same status (transition times are carried over from the stored one), so
the caller compares it with the stored status and writes only what changed. Events are the
transitions between the stored and the new status (readiness flipping, Degraded's reason
changing, the primary moving, archiving breaking or recovering), so each is posted once.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from collections.abc import Set as AbstractSet
from datetime import datetime, timedelta
from typing import Any

from pgherd import contract
from pgherd.api.v1alpha1 import (
    INSECURE_HBA_METHOD,
    Condition,
    EndpointsStatus,
    IgnoredParameter,
    InstanceStatus,
    MonitoringStatus,
    PostgresCluster,
    PostgresClusterStatus,
    SecretsStatus,
    StorageStatus,
    UpgradeStatus,
)
from pgherd.controller import backups, major_upgrade, roles, storage
from pgherd.controller import conditions as c
from pgherd.controller.actions import Event
from pgherd.controller.conditions import Activity, Problem
from pgherd.controller.diff import merge_patch
from pgherd.controller.plan import Plan, wants_pod_monitor
from pgherd.controller.snapshot import READY_STATES, Snapshot
from pgherd.render import labels, names, ownership

# Lag is reported in whole MiB: an idle primary still writes a little WAL (running-xacts
# records), and byte-exact lag would rewrite the status on every resync.
LAG_GRANULARITY = 1024 * 1024
CONDITION_ORDER = [
    c.READY,
    c.PROGRESSING,
    c.DEGRADED,
    c.CONTINUOUS_ARCHIVING,
    c.INSECURE_AUTHENTICATION,
    c.STORAGE_NEARLY_FULL,
]


def _lag(snapshot: Snapshot, lsn: int | None, is_primary: bool) -> int | None:
    if is_primary:
        return 0
    primary_lsn = snapshot.leader_lsn
    if primary_lsn is None and (p := snapshot.primary) is not None:
        primary_lsn = p.lsn
    if primary_lsn is None or lsn is None:
        return None
    lag = max(0, primary_lsn - lsn)
    return lag - lag % LAG_GRANULARITY


def _stuck(snapshot: Snapshot, stuck_after: timedelta) -> Problem | None:
    # Counted from when each instance last stopped being ready (or was created), not from
    # the pod's age: an old pod that just turned unready is not "never ready".
    stuck = [
        m.name
        for m in snapshot.members
        if not m.ready
        and m.unready_since is not None
        and snapshot.now - m.unready_since > stuck_after
    ]
    if not stuck:
        return None
    return Problem(
        c.INSTANCE_STUCK,
        f"instance(s) {', '.join(stuck)} not ready for more than "
        f"{int(stuck_after.total_seconds())}s; check their pods' events and logs",
    )


def instance_problems(cluster: PostgresCluster, snapshot: Snapshot, want: int) -> list[Problem]:
    """What the instances report is wrong: PostgreSQL not running (in its own words), and a
    server of another major version than the one rendered (want: spec.postgresVersion, or
    the data's major until a major upgrade has carried the data over)."""
    out: list[Problem] = []
    majors = sorted(
        {m.report.postgres_major for m in snapshot.members if m.report and m.report.postgres_major}
    )
    if majors and majors != [want]:
        image = cluster.spec.image or "the operator's image"
        out.append(
            Problem(
                c.VERSION_MISMATCH,
                f"spec.postgresVersion is {want}, but {image} runs PostgreSQL "
                f"{', '.join(map(str, majors))}: set spec.image to an image of PostgreSQL "
                f"{want}",
            )
        )
    # An instance of another major fails for that reason (an image without the cluster's
    # major does not start): the mismatch above says it, not a parameter to fix.
    failing = [
        f"{m.name}: {m.report.error}"
        for m in snapshot.members
        if m.report is not None
        and m.report.error
        and m.state not in READY_STATES
        and m.report.postgres_major in (None, want)
    ]
    if failing:
        out.append(
            Problem(
                c.POSTGRES_NOT_RUNNING,
                "PostgreSQL does not run on " + "; ".join(failing) + ". Fix (or revert) the "
                "setting it names in spec.postgresql.parameters; the operator applies the "
                "change even while no primary runs",
            )
        )
    return out


def ignored_parameters(
    cluster: PostgresCluster, snapshot: Snapshot, held_back: dict[str, str]
) -> list[IgnoredParameter]:
    """Parameters of the spec the instances do not run with, and why."""
    params = cluster.spec.postgresql.parameters
    reasons = dict(held_back)
    for m in snapshot.members:
        for name, why in m.report.ignored_parameters if m.report else ():
            if name in params:
                reasons.setdefault(name, f"dropped by Patroni: {why}")
    return [
        IgnoredParameter(name=name, value=params.get(name), reason=why)
        for name, why in sorted(reasons.items())
    ]


def degraded(
    cluster: PostgresCluster,
    snapshot: Snapshot,
    problems: Sequence[Problem],
    ignored: Sequence[IgnoredParameter],
    stuck_after: timedelta,
    *,
    major: int | None = None,
) -> tuple[c.Status, str, str]:
    """What only the operator can tell is wrong, as (status, reason, message): the first
    problem's reason, every problem's message."""
    found = list(problems)
    if snapshot.storage_class_missing:
        found.append(
            Problem(
                c.STORAGE_CLASS_NOT_FOUND,
                f"StorageClass {snapshot.storage_class_missing!r} does not exist; instances "
                "cannot get volumes. Create it, or recreate the cluster with an existing "
                "spec.storage.storageClassName.",
            )
        )
    found += instance_problems(cluster, snapshot, major or cluster.spec.postgres_version)
    if ignored:
        held = [p for p in ignored if p.reason.endswith("Not applied")]
        found.append(
            Problem(
                c.LIBRARY_NOT_AVAILABLE if held else c.PARAMETERS_IGNORED,
                "parameters not in effect: "
                + "; ".join(f"{p.name}={p.value!r}: {p.reason}" for p in ignored),
            )
        )
    if (stuck := _stuck(snapshot, stuck_after)) is not None:
        found.append(stuck)
    if not found:
        return ("False", c.AS_EXPECTED, "no problem detected")
    message = "; also: ".join(dict.fromkeys(p.message for p in found))
    return ("True", found[0].reason, message[:30000])


def _phase(
    conds: list[Condition], has_primary: bool, had_primary: str | None, activity: Activity | None
) -> str:
    degraded_, ready = c.get(conds, c.DEGRADED), c.get(conds, c.READY)
    if degraded_ and degraded_.status == "True":
        return c.PHASE_DEGRADED
    if not has_primary:
        return c.PHASE_UNAVAILABLE if had_primary else c.PHASE_CREATING
    if activity is not None or (ready and ready.status != "True"):
        return c.PHASE_UPDATING
    return c.PHASE_HEALTHY


def monitoring(cluster: PostgresCluster, snapshot: Snapshot) -> MonitoringStatus | None:
    """The PodMonitor that exists, or why none does although one is asked for."""
    name = names.pod_monitor(cluster.metadata.name)
    live = snapshot.child("PodMonitor", name)
    if live is not None and ownership.owns(cluster, "PodMonitor", live):
        return MonitoringStatus(pod_monitor=name)
    if not wants_pod_monitor(cluster):
        return None
    if not snapshot.pod_monitors_served:
        return MonitoringStatus(
            message="the PodMonitor CRD (monitoring.coreos.com/v1) is not installed: install "
            "the Prometheus Operator (pgherd notices within a resync), or scrape each "
            f"instance's port {contract.METRICS_PORT_NAME} ({contract.METRICS_PORT}) yourself"
        )
    return MonitoringStatus(message=f"PodMonitor {name} is being created")


def compute(
    snapshot: Snapshot,
    plan: Plan,
    *,
    failures: Sequence[Problem] = (),
    stuck_after: timedelta,
    sql_done: AbstractSet[str] = frozenset(),
    sql_errors: Mapping[str, str] | None = None,
) -> PostgresClusterStatus | None:
    """The cluster's new status; None when the cluster is gone or its spec does not parse
    (see failure_status)."""
    cluster = snapshot.cluster
    if cluster is None:
        return None
    spec, meta, now = cluster.spec, cluster.metadata, snapshot.now
    previous = cluster.status or PostgresClusterStatus()
    conds = list(previous.conditions or [])
    gen = meta.generation
    primary = snapshot.primary
    members = snapshot.members
    ready = sum(1 for m in members if m.ready)

    def put(type_: str, st: c.Status, reason: str, message: str) -> None:
        nonlocal conds
        conds = c.set_condition(
            conds, type_, status=st, reason=reason, message=message, generation=gen, now=now
        )

    if primary is None:
        put(c.READY, "False", c.NO_PRIMARY, "no instance is running as primary")
    elif ready < spec.instances:
        not_ready = [m.name for m in members if not m.ready]
        missing = ", ".join(not_ready) or f"{spec.instances - len(members)} not created"
        put(
            c.READY,
            "False",
            c.INSTANCES_NOT_READY,
            f"{ready}/{spec.instances} instances ready; waiting for: {missing}",
        )
    else:
        put(c.READY, "True", c.ALL_READY, f"{ready}/{spec.instances} instances ready; "
            f"primary {primary.name}")  # fmt: skip
    activity = plan.activity
    if activity is not None:
        put(c.PROGRESSING, "True", activity.reason, activity.message)
    else:
        put(c.PROGRESSING, "False", c.UP_TO_DATE, "the cluster matches its spec")
    ignored = ignored_parameters(cluster, snapshot, dict(plan.held_back))
    # Managed roles: their states after act, and a problem naming those that failed.
    managed_roles = roles.states(plan.managed_roles, set(sql_done), sql_errors or {})
    failures = [*failures, *roles.problems(managed_roles)]
    rendered = (plan.cluster or cluster).spec.postgres_version
    put(c.DEGRADED, *degraded(cluster, snapshot, [*plan.problems, *failures], ignored,
                              stuck_after, major=rendered))  # fmt: skip
    insecure = [
        line
        for line in spec.postgresql.pg_hba
        if re.match(INSECURE_HBA_METHOD, line) and spec.postgresql.allow_insecure_authentication
    ]
    if insecure:
        put(
            c.INSECURE_AUTHENTICATION,
            "True",
            c.TRUST_ALLOWED,
            "pg_hba lets TCP clients in without a password (allowInsecureAuthentication): "
            + "; ".join(insecure),
        )
    elif spec.tls.allow_plain_text:
        put(
            c.INSECURE_AUTHENTICATION,
            "True",
            c.PLAIN_TEXT_ALLOWED,
            "clients may connect without TLS (spec.tls.allowPlainText): their passwords and "
            "data cross the network unencrypted; remove it once no legacy client needs it",
        )
    else:
        conds = [x for x in conds if x.type != c.INSECURE_AUTHENTICATION]
    if spec.backup is None:
        conds = [x for x in conds if x.type != c.CONTINUOUS_ARCHIVING]
    elif primary is not None:
        # Without a primary nobody archives; the last word stays as it was.
        put(c.CONTINUOUS_ARCHIVING, *backups.archiving(backups.primary_archiver(snapshot)))
    instances_status = _instances(snapshot, previous, primary.name if primary else None)
    conds = _storage_condition(conds, instances_status, gen, now)
    phase = _phase(conds, primary is not None, previous.current_primary, activity)
    port = contract.POSTGRES_PORT

    def endpoint(service: str) -> str:
        return f"{names.service_host(service, meta.namespace)}:{port}"

    return PostgresClusterStatus(
        phase=phase,
        conditions=sorted(
            conds,
            key=lambda x: CONDITION_ORDER.index(x.type) if x.type in CONDITION_ORDER else 99,
        ),
        observed_generation=gen,
        instances=len(members),
        ready_instances=ready,
        current_primary=primary.name if primary else None,
        selector=labels.selector_string(meta.name),
        instances_status=instances_status,
        endpoints=EndpointsStatus(
            read_write=endpoint(names.service_rw(meta.name)),
            read_only=endpoint(names.service_ro(meta.name)),
            any=endpoint(names.service_any(meta.name)),
        ),
        pending_restart=any(m.pending_restart for m in members),
        secrets=SecretsStatus(
            superuser=names.secret(meta.name, "superuser"),
            replication=names.secret(meta.name, "replication"),
            app=names.secret(meta.name, "app"),
        ),
        switchover_handled=plan.switchover_handled,
        ignored_parameters=ignored or None,
        # What the data is at: the major a ready instance runs (an instance of another
        # major's image fails on it and is not ready), kept while none is ready.
        postgres_version=next(
            (m.report.postgres_major for m in members if m.report and m.ready),
            previous.postgres_version,
        ),
        image=plan.image or previous.image,
        tls=plan.tls.status if plan.tls and plan.tls.status else previous.tls,
        credentials=plan.credentials,
        monitoring=monitoring(cluster, snapshot),
        managed_roles=managed_roles,
        storage=StorageStatus(grown_size=plan.storage_grown) if plan.storage_grown else None,
        backup=backups.cluster_backup_status(
            cluster,
            snapshot,
            restored_from=plan.restored_from,
            last_schedule_time=plan.last_schedule_time,
            upgraded_system=_upgraded_system(plan.upgrade),
        ),
        upgrade=plan.upgrade,
        rehearsal=plan.rehearsal,
        kopf=previous.kopf,
    )


def _upgraded_system(upgrade: UpgradeStatus | None) -> str | None:
    """The system a major upgrade carried the data to (from its Resetting phase on)."""
    if upgrade is None or upgrade.phase not in major_upgrade.DATA_UPGRADED:
        return None
    return upgrade.system_identifier


def _instances(
    snapshot: Snapshot, previous: PostgresClusterStatus, primary: str | None
) -> list[InstanceStatus]:
    before = {i.name: i.volume for i in previous.instances_status or []}
    return [
        InstanceStatus(
            name=m.name,
            role="sync_standby" if m.name in snapshot.sync_standbys else m.role,
            state=m.state,
            lag_bytes=_lag(snapshot, m.lsn, m.name == primary),
            ready=m.ready,
            volume=storage.volume_status(
                m.report.volume if m.report else None, before.get(m.name), snapshot.now
            ),
        )
        for m in snapshot.members
    ]


def _storage_condition(
    conds: list[Condition], instances: Sequence[InstanceStatus], gen: int | None, now: datetime
) -> list[Condition]:
    """Disks that do not fill: StorageNearlyFull from volume use, and from pg_wal growing
    while archiving fails (the ContinuousArchiving condition just computed)."""
    archiving = c.get(conds, c.CONTINUOUS_ARCHIVING)
    archiving_fails = archiving is not None and archiving.reason == c.ARCHIVE_FAILING
    full = storage.nearly_full(instances, archiving_fails)
    if full is None:
        return [x for x in conds if x.type != c.STORAGE_NEARLY_FULL]
    status_, reason, message = full
    return c.set_condition(conds, c.STORAGE_NEARLY_FULL, status=status_, reason=reason,
                           message=message, generation=gen, now=now)  # fmt: skip


def failure_status(
    stored: dict[str, Any], generation: int | None, problem: Problem, now: datetime
) -> dict[str, Any]:
    """The stored status with Degraded set to problem, for a cluster whose status cannot be
    computed (its spec does not parse, or the pass failed unexpectedly)."""
    conds = [Condition.model_validate(x) for x in stored.get("conditions") or []]
    conds = c.set_condition(
        conds,
        c.DEGRADED,
        status="True",
        reason=problem.reason,
        message=problem.message,
        generation=generation,
        now=now,
    )
    return {
        **stored,
        "phase": c.PHASE_DEGRADED,
        "conditions": [x.model_dump(mode="json", by_alias=True, exclude_none=True) for x in conds],
    }


def dump(s: PostgresClusterStatus | None) -> dict[str, Any]:
    if s is None:
        return {}
    return s.model_dump(mode="json", by_alias=True, exclude_none=True, exclude={"kopf"})


def status_patch(stored: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """The merge patch from the stored status to the new one ({}: nothing to write); fields
    that went away are removed (null), which sending the new status alone would not do."""
    return merge_patch({k: v for k, v in stored.items() if k != "kopf"}, new)


def transitions(old: PostgresClusterStatus | None, new: PostgresClusterStatus) -> list[Event]:
    """The Events a status change is worth, each once."""
    old = old or PostgresClusterStatus()
    events: list[Event] = []
    if old.current_primary and new.current_primary and old.current_primary != new.current_primary:
        events.append(
            Event(
                "PrimaryChanged",
                message=f"primary moved from {old.current_primary} to {new.current_primary}",
            )
        )
    elif old.current_primary and not new.current_primary:
        events.append(
            Event("PrimaryLost", type="Warning", message=f"no primary (was {old.current_primary})")
        )
    ready_before, ready_after = c.get(old.conditions, c.READY), c.get(new.conditions, c.READY)
    # Readiness is news when it flips; while a cluster is still coming up (never ready yet)
    # its reasons change at every step of a normal bootstrap, which is not a warning.
    flipped = ready_before is None or (
        ready_after is not None and ready_before.status != ready_after.status
    )
    if ready_after is not None and flipped:
        if ready_after.status == "True":
            events.append(Event(ready_after.reason, message=ready_after.message))
        elif ready_before is not None and ready_before.status == "True":
            events.append(Event(ready_after.reason, type="Warning", message=ready_after.message))
    for type_ in (
        c.DEGRADED,
        c.INSECURE_AUTHENTICATION,
        c.CONTINUOUS_ARCHIVING,
        c.STORAGE_NEARLY_FULL,
    ):
        before, after = c.get(old.conditions, type_), c.get(new.conditions, type_)
        if (
            after is None
            or after.status == "Unknown"
            or (before and (before.status, before.reason) == (after.status, after.reason))
        ):
            continue
        if before is None and after.status == "False" and type_ != c.CONTINUOUS_ARCHIVING:
            continue  # at creation, "not degraded" is not news
        bad = (after.status == "True") != (type_ == c.CONTINUOUS_ARCHIVING)
        events.append(Event(after.reason, type="Warning" if bad else "Normal",
                            message=after.message))  # fmt: skip
    return events
