"""Computes a PostgresCluster's status from what was observed: a pure function.

Same inputs give the same status (transition times are carried over), so the caller can
compare it with the stored status and skip the write when nothing changed.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from datetime import datetime, timedelta

from pgherd import conditions as c
from pgherd.api.v1alpha1 import (
    INSECURE_HBA_METHOD,
    Condition,
    EndpointsStatus,
    IgnoredParameter,
    InstanceStatus,
    PostgresCluster,
    PostgresClusterStatus,
    SecretsStatus,
)
from pgherd.conditions import Problem
from pgherd.observe import READY_STATES, Observed
from pgherd.render import labels, names, operand

# An instance whose pod exists this long without becoming ready is reported as Degraded.
STUCK_AFTER = timedelta(seconds=float(os.environ.get("PGHERD_STUCK_AFTER_SECONDS", "300")))


LAG_GRANULARITY = 1024 * 1024


@dataclass(frozen=True)
class Activity:
    """What the reconcile is doing now, for the Progressing condition."""

    reason: str
    message: str


def _lag(observed: Observed, lsn: int | None, is_primary: bool) -> int | None:
    if is_primary:
        return 0
    primary_lsn = observed.leader_lsn
    if primary_lsn is None and (p := observed.primary) is not None:
        primary_lsn = p.lsn
    if primary_lsn is None or lsn is None:
        return None
    # Whole MiB: an idle primary still writes a little WAL (running-xacts records), and
    # byte-exact lag would rewrite the status on every resync.
    lag = max(0, primary_lsn - lsn)
    return lag - lag % LAG_GRANULARITY


def _stuck(observed: Observed, now: datetime, stuck_after: timedelta) -> Problem | None:
    # Counted from when each instance last stopped being ready (or was created), not from
    # the pod's age: an old pod that just turned unready is not "never ready".
    stuck = [
        m.name
        for m in observed.members
        if not m.ready and m.unready_since is not None and now - m.unready_since > stuck_after
    ]
    if not stuck:
        return None
    return Problem(
        c.INSTANCE_STUCK,
        f"instance(s) {', '.join(stuck)} not ready for more than "
        f"{int(stuck_after.total_seconds())}s; check their pods' events and logs",
    )


def instance_problems(cluster: PostgresCluster, observed: Observed) -> list[Problem]:
    """What the instances report is wrong: PostgreSQL not running (in its own words), and a
    server of another major version than spec.postgresVersion."""
    out: list[Problem] = []
    failing = [
        f"{m.name}: {m.report.error}"
        for m in observed.members
        if m.report is not None and m.report.error and m.state not in READY_STATES
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
    majors = sorted(
        {m.report.postgres_major for m in observed.members if m.report and m.report.postgres_major}
    )
    want = cluster.spec.postgres_version
    if majors and majors != [want]:
        out.append(
            Problem(
                c.VERSION_MISMATCH,
                f"spec.postgresVersion is {want}, but image {cluster.spec.image} runs "
                f"PostgreSQL {', '.join(map(str, majors))}: set spec.image to an image of "
                f"PostgreSQL {want} (major upgrades are not supported yet)",
            )
        )
    return out


def ignored_parameters(
    cluster: PostgresCluster, observed: Observed, held_back: dict[str, str]
) -> list[IgnoredParameter]:
    """Parameters of the spec the instances do not run with, and why."""
    params = cluster.spec.postgresql.parameters
    reasons = dict(held_back)
    for m in observed.members:
        for name, why in m.report.ignored_parameters if m.report else ():
            if name in params:
                reasons.setdefault(name, f"dropped by Patroni: {why}")
    return [
        IgnoredParameter(name=name, value=params.get(name), reason=why)
        for name, why in sorted(reasons.items())
    ]


def _degraded(
    cluster: PostgresCluster,
    observed: Observed,
    *,
    problems: list[Problem],
    ignored: list[IgnoredParameter],
    now: datetime,
    stuck_after: timedelta,
) -> tuple[c.Status, str, str]:
    """What only the operator can tell is wrong, as (status, reason, message): the first
    problem's reason, every problem's message."""
    found = list(problems)
    if observed.storage_class_missing:
        found.append(
            Problem(
                c.STORAGE_CLASS_NOT_FOUND,
                f"StorageClass {observed.storage_class_missing!r} does not exist; instances "
                "cannot get volumes. Create it, or recreate the cluster with an existing "
                "spec.storage.storageClassName.",
            )
        )
    found += instance_problems(cluster, observed)
    if ignored:
        held = [p for p in ignored if p.reason.endswith("Not applied")]
        found.append(
            Problem(
                c.LIBRARY_NOT_AVAILABLE if held else c.PARAMETERS_IGNORED,
                "parameters not in effect: "
                + "; ".join(f"{p.name}={p.value!r}: {p.reason}" for p in ignored),
            )
        )
    if (stuck := _stuck(observed, now, stuck_after)) is not None:
        found.append(stuck)
    if not found:
        return ("False", c.AS_EXPECTED, "no problem detected")
    message = found[0].message
    if len(found) > 1:
        message = "; also: ".join(p.message for p in found)
    return ("True", found[0].reason, message[:30000])


def _phase(
    conds: list[Condition], has_primary: bool, had_primary: str | None, activity: Activity | None
) -> str:
    degraded, ready = c.get(conds, c.DEGRADED), c.get(conds, c.READY)
    if degraded and degraded.status == "True":
        return c.PHASE_DEGRADED
    if not has_primary:
        return c.PHASE_UNAVAILABLE if had_primary else c.PHASE_CREATING
    if activity is not None or (ready and ready.status != "True"):
        return c.PHASE_UPDATING
    return c.PHASE_HEALTHY


def compute(
    cluster: PostgresCluster,
    observed: Observed,
    activity: Activity | None,
    now: datetime,
    *,
    stuck_after: timedelta = STUCK_AFTER,
    switchover_handled: str | None = None,
    problems: list[Problem] | None = None,
    held_back: dict[str, str] | None = None,
) -> PostgresClusterStatus:
    spec, meta = cluster.spec, cluster.metadata
    previous = cluster.status or PostgresClusterStatus()
    conds = list(previous.conditions or [])
    gen = meta.generation
    primary = observed.primary
    instances = [
        InstanceStatus(
            name=m.name,
            role="sync_standby" if m.name in observed.sync_standbys else m.role,
            state=m.state,
            lag_bytes=_lag(observed, m.lsn, primary is not None and m.name == primary.name),
            ready=m.ready,
        )
        for m in observed.members
    ]
    ready = sum(1 for m in observed.members if m.ready)
    not_ready = [m.name for m in observed.members if not m.ready]

    def put(type_: str, st: c.Status, reason: str, message: str) -> None:
        nonlocal conds
        conds = c.set_condition(
            conds, type_, status=st, reason=reason, message=message, generation=gen, now=now
        )

    if primary is None:
        put(c.READY, "False", c.NO_PRIMARY, "no instance is running as primary")
    elif ready < spec.instances:
        missing = ", ".join(not_ready) or f"{spec.instances - len(observed.members)} not created"
        put(
            c.READY,
            "False",
            c.INSTANCES_NOT_READY,
            f"{ready}/{spec.instances} instances ready; waiting for: {missing}",
        )
    else:
        put(
            c.READY,
            "True",
            c.ALL_READY,
            f"{ready}/{spec.instances} instances ready; primary {primary.name}",
        )
    if activity is not None:
        put(c.PROGRESSING, "True", activity.reason, activity.message)
    else:
        put(c.PROGRESSING, "False", c.UP_TO_DATE, "the cluster matches its spec")
    ignored = ignored_parameters(cluster, observed, held_back or {})
    put(
        c.DEGRADED,
        *_degraded(
            cluster,
            observed,
            problems=problems or [],
            ignored=ignored,
            now=now,
            stuck_after=stuck_after,
        ),
    )
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
    else:
        conds = [x for x in conds if x.type != c.INSECURE_AUTHENTICATION]
    phase = _phase(conds, primary is not None, previous.current_primary, activity)

    port = operand.POSTGRES_PORT
    ns = meta.namespace

    def endpoint(service: str) -> str:
        return f"{names.service_host(service, ns)}:{port}"

    order = [c.READY, c.PROGRESSING, c.DEGRADED, c.INSECURE_AUTHENTICATION]
    return PostgresClusterStatus(
        phase=phase,
        conditions=sorted(conds, key=lambda x: order.index(x.type) if x.type in order else 99),
        observed_generation=gen,
        instances=len(observed.members),
        ready_instances=ready,
        current_primary=primary.name if primary else None,
        selector=labels.selector_string(meta.name),
        instances_status=instances,
        endpoints=EndpointsStatus(
            read_write=endpoint(names.service_rw(meta.name)),
            read_only=endpoint(names.service_ro(meta.name)),
            any=endpoint(names.service_any(meta.name)),
        ),
        pending_restart=any(m.pending_restart for m in observed.members),
        secrets=SecretsStatus(
            superuser=names.secret(meta.name, "superuser"),
            replication=names.secret(meta.name, "replication"),
            app=names.secret(meta.name, "app"),
        ),
        switchover_handled=switchover_handled,
        ignored_parameters=ignored or None,
        postgres_version=next(
            (m.report.postgres_major for m in observed.members if m.report), None
        ),
        kopf=previous.kopf,
    )
