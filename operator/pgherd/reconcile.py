"""The reconcile loop of one PostgresCluster: observe, act one safe step, compute status.

Level-based: every call starts from what the API shows, so a restarted operator picks up
a rollout or switchover where the previous one left it. Disruptive actions (deleting a
pod, a switchover, a restart) happen one at a time and only when every other instance is
ready; the next call continues.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from kubernetes.client.exceptions import ApiException
from pydantic import ValidationError

from pgherd import conditions as c
from pgherd import passwords, patroni_api, references, status
from pgherd.api.v1alpha1 import (
    LIBRARY_PARAMETERS,
    ObjectMeta,
    PostgresCluster,
    PostgresClusterStatus,
)
from pgherd.backup import controller as backup_controller
from pgherd.conditions import Problem
from pgherd.kube import Kube, Manifest
from pgherd.observe import READY_STATES, Member, Observed, observe
from pgherd.render import names, ownership
from pgherd.render.children import desired_children
from pgherd.render.names import RESTAPI_USERNAME, SECRET_KINDS, SecretKind
from pgherd.render.patroni_config import dynamic_config
from pgherd.status import Activity

log = logging.getLogger(__name__)

EventSink = Callable[[str, str, str], None]  # (type, reason, message)


@dataclass
class Outcome:
    """What one reconcile did, for handlers and tests."""

    status: PostgresClusterStatus
    wrote_status: bool
    actions: list[str] = field(default_factory=list)


_locks: dict[str, threading.Lock] = {}
_locks_guard = threading.Lock()


def _lock(key: str) -> threading.Lock:
    # Change handlers and the resync timer may fire together for one cluster.
    with _locks_guard:
        return _locks.setdefault(key, threading.Lock())


def reconcile(
    kube: Kube, meta: ObjectMeta, emit: EventSink, now: datetime | None = None
) -> Outcome:
    key = f"{meta.namespace}/{meta.name}"
    with _lock(key):
        # The handler's body may predate a status written by a reconcile that held the
        # lock a moment ago; start from the stored object so events fire once.
        live = kube.get("PostgresCluster", meta.namespace, meta.name)
        if live is None:
            return Outcome(PostgresClusterStatus(), False)
        when = now or datetime.now(UTC)
        try:
            fresh = PostgresCluster.model_validate(live)
        except ValidationError as e:
            # Stored before a validation rule existed, or by something that bypassed it: say
            # so on the object instead of failing silently at every pass.
            return _report_failure(kube, live, c.INVALID_SPEC, _validation_message(e), emit, when)
        try:
            return _reconcile(kube, fresh, emit, when)
        except Exception as e:
            log.exception("reconcile of %s failed", key)
            return _report_failure(
                kube, live, c.RECONCILE_FAILED, f"{type(e).__name__}: {e}"[:1000], emit, when
            )


def _validation_message(e: ValidationError) -> str:
    parts = [
        f"spec.{'.'.join(str(x) for x in err['loc'][1:])}: {err['msg']}"
        if err["loc"][:1] == ("spec",)
        else f"{'.'.join(str(x) for x in err['loc'])}: {err['msg']}"
        for err in e.errors(include_input=False, include_url=False)
    ]
    return "the spec is invalid: " + "; ".join(parts)[:2000]


def _report_failure(  # noqa: PLR0917 - the parts of one report
    kube: Kube, live: Manifest, reason: str, message: str, emit: EventSink, now: datetime
) -> Outcome:
    """Degraded with reason and message (and one Event) when no status can be computed;
    the rest of the stored status is kept as it is."""
    meta = live["metadata"]
    stored = live.get("status") or {}
    conditions = [x for x in stored.get("conditions") or [] if x.get("type") != c.DEGRADED]
    before = next((x for x in stored.get("conditions") or [] if x.get("type") == c.DEGRADED), None)
    unchanged = (
        before is not None
        and before.get("status") == "True"
        and before.get("reason") == reason
        and before.get("message") == message
    )
    since = before.get("lastTransitionTime") if before and before.get("status") == "True" else None
    conditions.append(
        {
            "type": c.DEGRADED,
            "status": "True",
            "reason": reason,
            "message": message,
            "observedGeneration": meta.get("generation"),
            "lastTransitionTime": since or now.strftime("%Y-%m-%dT%H:%M:%SZ"),
        }
    )
    if not unchanged:
        kube.patch(
            "PostgresCluster",
            meta["namespace"],
            meta["name"],
            {"status": {"phase": c.PHASE_DEGRADED, "conditions": conditions}},
            subresource="status",
        )
        if before is None or before.get("reason") != reason or before.get("status") != "True":
            emit("Warning", reason, message)
    status = PostgresClusterStatus.model_validate({**stored, "conditions": conditions})
    return Outcome(status, not unchanged)


def _reconcile(kube: Kube, cluster: PostgresCluster, emit: EventSink, now: datetime) -> Outcome:
    ns, name = cluster.metadata.namespace, cluster.metadata.name
    actions: list[str] = []
    problems: list[Problem] = []
    observed = observe(kube, cluster)

    # Patroni would write into a same-named ConfigMap that is not its own for this cluster.
    problems += [
        _conflict("ConfigMap", cm_name)
        for cm_name, cm in observed.dcs_configmaps.items()
        if not ownership.owns_dcs(name, cm)
    ]
    if not problems:
        _clear_stale_dcs(kube, cluster, observed, actions)
    # pgherd.backup: resolve spec.bootstrap.recovery; a restore that cannot go on safely
    # holds the StatefulSet back, and cluster_status below reports why.
    cluster, backup_gate = backup_controller.resolve(kube, cluster)
    refused, adopted = _check_references(kube, cluster)
    problems += refused
    if (bad_schedule := backup_controller.schedule_problem(cluster)) is not None:
        problems.append(bad_schedule)
    credentials = _credentials(
        kube, cluster, observed, adopted=adopted, problems=problems, emit=emit
    )
    # Without credentials (a Secret to adopt is not usable yet) no Secret is written.
    children = desired_children(cluster, credentials)
    live = {_key(c): kube.get(c["kind"], ns, c["metadata"]["name"]) for c in children}
    conflicts = {
        key
        for key, obj in live.items()
        if obj is not None and not ownership.owns(cluster, key[0], obj)
    }
    problems += [_conflict(*key) for key in sorted(conflicts)]
    # A pod must never start with a neighbour's object or a Secret it may not use.
    hold_workload = backup_gate.blocked or any(p.reason in _HOLDS_WORKLOAD for p in problems)
    for child in children:
        key = _key(child)
        if key in conflicts or (child["kind"] == "StatefulSet" and hold_workload):
            continue
        if child["kind"] == "StatefulSet":
            _prepare_statefulset(kube, cluster, child, observed, actions)
        try:
            if kube.apply(child, live[key], check=True):
                actions.append(f"applied {key[0]}/{key[1]}")
        except ApiException as e:
            problems.append(_rejected(key, e))

    activity: Activity | None = None
    switchover_handled = cluster.status.switchover_handled if cluster.status else None
    if cluster.spec.switchover is None:
        switchover_handled = None
    patroni = patroni_api.Client(RESTAPI_USERNAME, (credentials or {}).get("restapi", ""))
    held = held_back_parameters(cluster, observed)
    # Even with no primary (PostgreSQL cannot start), the configuration goes to Patroni
    # through any member: reverting a bad parameter is how such a cluster gets well again.
    config_activity = _sync_dynamic_config(patroni, cluster, observed, held, actions)
    primary = observed.primary
    if primary is not None:
        # At most one disruptive step per pass; the next pass observes its effect first.
        switch_activity, switchover_handled = _switchover_request(
            patroni, cluster, observed, primary, emit=emit, actions=actions
        )
        activity = (
            config_activity
            or switch_activity
            or _roll(patroni, kube, cluster, observed, primary, actions=actions)
            or _move_primary_before_scale_down(
                patroni, cluster, observed, primary, emit=emit, actions=actions
            )
        )
    activity = activity or config_activity or _scaling_activity(cluster, observed)

    new_status = status.compute(
        cluster,
        observed,
        activity,
        now,
        switchover_handled=switchover_handled,
        problems=problems,
        held_back=held,
    )
    # pgherd.backup: status.backup, ContinuousArchiving, a blocked restore, the schedule.
    new_status = backup_controller.cluster_status(
        kube, cluster, observed, new_status, backup_gate, now, emit
    )
    wrote = _write_status(kube, cluster, new_status)
    _emit_transitions(cluster.status, new_status, emit)
    if actions:
        log.info("%s/%s: %s", ns, name, "; ".join(actions))
    return Outcome(new_status, wrote, actions)


# Problems that keep the StatefulSet from being applied: its pods would use what they
# must not (a neighbour's object, a Secret that did not opt in) or could not start.
_HOLDS_WORKLOAD = frozenset(
    {c.CHILD_NAME_CONFLICT, c.SECRET_NOT_FOUND, c.SECRET_NOT_PERMITTED, c.SECRET_INVALID}
)


def _key(child: Manifest) -> tuple[str, str]:
    return child["kind"], child["metadata"]["name"]


def _conflict(kind: str, name: str) -> Problem:
    return Problem(
        c.CHILD_NAME_CONFLICT,
        f"{kind} {name!r} exists but is not this cluster's (it lacks pgherd's labels and "
        "owner); pgherd leaves it untouched and creates no instance while it is in the way: "
        "rename or remove it, or give the cluster another name",
    )


def _rejected(key: tuple[str, str], e: ApiException) -> Problem:
    try:
        message = str(json.loads(e.body or "{}").get("message") or e.reason)
    except ValueError:
        message = str(e.reason)
    if key[0] == "Secret":
        message = str(e.reason)  # a Secret's error may quote its data
    return Problem(c.CHILD_REJECTED, f"the API server refused {key[0]} {key[1]!r}: {message[:600]}")


def _check_references(
    kube: Kube, cluster: PostgresCluster
) -> tuple[list[Problem], dict[SecretKind, str | None]]:
    """Problems with the Secrets the spec names, and the passwords of those adopted at
    bootstrap (None while the adopted Secret cannot be used)."""
    problems: list[Problem] = []
    adopted: dict[SecretKind, str | None] = {}
    fetched: dict[str, Manifest | None] = {}
    for ref in references.references(cluster):
        if ref.secret not in fetched:
            fetched[ref.secret] = kube.get("Secret", cluster.metadata.namespace, ref.secret)
        problem = references.check(cluster.metadata.name, ref, fetched[ref.secret])
        if problem is not None:
            problems.append(problem)
        if ref.username is not None:
            kind: SecretKind = "superuser" if ref.field.endswith("superuserSecret") else "app"
            adopted[kind] = (
                None if problem else references.decoded(fetched[ref.secret] or {}, "password")
            )
    return problems, adopted


def _credentials(
    kube: Kube,
    cluster: PostgresCluster,
    observed: Observed,
    *,
    adopted: dict[SecretKind, str | None],
    problems: list[Problem],
    emit: EventSink,
) -> dict[SecretKind, str] | None:
    """Each kind's password, or None while a Secret to adopt cannot be used yet (nothing is
    generated in its place: the cluster is created with the adopted password, or not yet)."""
    ns, name = cluster.metadata.namespace, cluster.metadata.name

    def own(secret_name: str) -> Manifest | None:
        secret = kube.get("Secret", ns, secret_name)
        return secret if secret is not None and ownership.owns(cluster, "Secret", secret) else None

    vault = own(names.vault(name))
    published = {k: own(names.secret(name, k)) for k in SECRET_KINDS}
    if any(
        password is None and passwords.kept(vault, published.get(kind), kind) is None
        for kind, password in adopted.items()
    ):
        return None
    resolved = passwords.resolve(
        vault,
        published,
        {k: v for k, v in adopted.items() if v is not None},
        # Volumes exist once the StatefulSet does: from then on the database has passwords.
        has_data=bool(observed.members or observed.claims) or observed.statefulset is not None,
    )
    for kind in resolved.regenerated:
        emit(
            "Warning",
            "CredentialRegenerated",
            f"Secrets {names.secret(name, kind)} and {names.vault(name)} were both deleted: "
            f"a new {kind} password was generated, which the database does not have yet",
        )
    problems += [
        Problem(
            c.REFERENCED_SECRET_CHANGED,
            f"the password in the Secret named by spec.bootstrap "
            f"({'superuserSecret' if kind == 'superuser' else 'secret'}) changed after the "
            "cluster was created; pgherd does not change passwords yet: put the previous "
            f"password back (it is in {names.secret(name, kind)})",
        )
        for kind in resolved.adopted_changed
    ]
    return resolved.passwords


# ---- children -------------------------------------------------------------
def _prepare_statefulset(
    kube: Kube, cluster: PostgresCluster, desired: Manifest, observed: Observed, actions: list[str]
) -> None:
    """Adjust the desired StatefulSet for what apply alone cannot do safely."""
    live = observed.statefulset
    primary = observed.primary
    want = desired["spec"]["replicas"]
    # Scaling down removes the highest ordinals; never let that be the primary.
    if live is not None and primary is not None and primary.ordinal >= want:
        desired["spec"]["replicas"] = live["spec"]["replicas"]
    if live is None:
        return
    # volumeClaimTemplates are immutable: grow the claims, then re-create the
    # StatefulSet without touching its pods (orphan), which adopts them again.
    have_size = live["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"]
    want_size = desired["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]["requests"][
        "storage"
    ]
    if have_size != want_size:
        sts_uid = live["metadata"].get("uid")
        for claim in observed.claims:
            if not ownership.owns_instance_object(
                cluster.metadata.name, sts_uid, "PersistentVolumeClaim", claim
            ):
                continue
            kube.patch(
                "PersistentVolumeClaim",
                cluster.metadata.namespace,
                claim["metadata"]["name"],
                {"spec": {"resources": {"requests": {"storage": want_size}}}},
            )
        kube.delete(
            "StatefulSet",
            cluster.metadata.namespace,
            live["metadata"]["name"],
            propagation="Orphan",
        )
        actions.append(
            f"storage {have_size} -> {want_size}: claims expanded, StatefulSet "
            "re-created (pods kept)"
        )
        observed.statefulset = None


def _clear_stale_dcs(
    kube: Kube, cluster: PostgresCluster, observed: Observed, actions: list[str]
) -> None:
    """Remove Patroni's DCS ConfigMaps left by a deleted cluster of the same name.

    Patroni creates them without an owner, and the operator must never write them while
    Patroni runs (a write changes their resourceVersion and breaks Patroni's
    compare-and-swap updates of the leader and sync keys). So they outlive a deleted
    cluster, and a new cluster of that name, before any instance exists, deletes them:
    otherwise Patroni would find the old system's initialize key and refuse to bootstrap.
    """
    if cluster.status is not None or observed.members or observed.statefulset is not None:
        return
    for cm_name in list(observed.dcs_configmaps):
        kube.delete("ConfigMap", cluster.metadata.namespace, cm_name)
        del observed.dcs_configmaps[cm_name]
        actions.append(f"removed stale Patroni ConfigMap/{cm_name}")


# ---- Patroni dynamic configuration ------------------------------------------
def config_patch(current: dict[str, Any], desired: dict[str, Any]) -> dict[str, Any]:
    """Patch for the keys pgherd manages; postgresql.parameters is owned as a whole."""
    patch: dict[str, Any] = {}
    for key, want in desired.items():
        if key == "postgresql":
            have_pg = current.get("postgresql") or {}
            pg_patch: dict[str, Any] = {}
            for pg_key, pg_want in want.items():
                if pg_key == "parameters":
                    params = patroni_api.merge_patch(have_pg.get("parameters") or {}, pg_want)
                    if params:
                        pg_patch["parameters"] = params
                elif have_pg.get(pg_key) != pg_want:
                    pg_patch[pg_key] = pg_want
            if pg_patch:
                patch["postgresql"] = pg_patch
        elif current.get(key) != want:
            patch[key] = want
    return patch


def held_back_parameters(cluster: PostgresCluster, observed: Observed) -> dict[str, str]:
    """Parameters the operator does not send to Patroni, each with the reason: libraries
    the image does not have (PostgreSQL would not start with them)."""
    reported = [m.report.libraries for m in observed.members if m.report and m.report.libraries]
    if not reported:
        return {}
    available = frozenset.intersection(*reported)
    held: dict[str, str] = {}
    for key, value in cluster.spec.postgresql.parameters.items():
        if key.lower() not in LIBRARY_PARAMETERS:
            continue
        wanted = [lib.strip().strip("'\"") for lib in value.split(",") if lib.strip()]
        # A library may be named by its file ("$libdir/auto_explain") as well as by its name.
        missing = [
            lib
            for lib in wanted
            if lib.removeprefix("$libdir/").removesuffix(".so") not in available
        ]
        if missing:
            held[key] = (
                f"the image has no library {', '.join(missing)}; PostgreSQL would not start. "
                "Not applied"
            )
    return held


def _config_target(observed: Observed) -> Member | None:
    primary = observed.primary
    if primary is not None and primary.api_url:
        return primary
    return next((m for m in observed.members if m.running and m.api_url), None)


def _sync_dynamic_config(
    patroni: patroni_api.Client,
    cluster: PostgresCluster,
    observed: Observed,
    held: dict[str, str],
    actions: list[str],
) -> Activity | None:
    target = _config_target(observed)
    if observed.dcs_config is None or target is None or target.api_url is None:
        return None
    desired = dynamic_config(cluster)
    current_params = (observed.dcs_config.get("postgresql") or {}).get("parameters") or {}
    params = desired["postgresql"]["parameters"]
    for key in held:
        # Held back: whatever runs now stays.
        params.pop(key, None)
        if key in current_params:
            params[key] = current_params[key]
    patch = config_patch(observed.dcs_config, desired)
    if not patch:
        return None
    try:
        patroni.patch_config(target.api_url, patch)
        actions.append(f"patched Patroni configuration through {target.name}: {sorted(patch)}")
    except patroni_api.PatroniError as e:
        log.warning("%s: configuration patch failed: %s", cluster.metadata.name, e)
    return Activity(c.RESTARTING, "applying PostgreSQL parameters")


# ---- switchover -------------------------------------------------------------
def _switchover_request(
    patroni: patroni_api.Client,
    cluster: PostgresCluster,
    observed: Observed,
    primary: Member,
    *,
    emit: EventSink,
    actions: list[str],
) -> tuple[Activity | None, str | None]:
    """Carry out spec.switchover once; returns the activity and the handled target."""
    request = cluster.spec.switchover
    handled = cluster.status.switchover_handled if cluster.status else None
    if request is None:
        return None, None
    target_name = request.target_instance
    if handled == target_name:
        return None, handled
    if target_name == primary.name:
        return None, target_name
    target = observed.member(target_name)
    if target is None or not target.ready:
        return Activity(
            c.SWITCHOVER, f"switchover to {target_name} waits for it to exist and be ready"
        ), handled
    _switch(
        patroni,
        cluster,
        primary,
        target.name,
        emit=emit,
        actions=actions,
        why="requested in spec.switchover",
    )
    return Activity(c.SWITCHOVER, f"switching over from {primary.name} to {target.name}"), handled


def _switch(
    patroni: patroni_api.Client,
    cluster: PostgresCluster,
    primary: Member,
    target: str,
    *,
    emit: EventSink,
    actions: list[str],
    why: str,
) -> bool:
    if not primary.api_url:
        return False
    try:
        patroni.switchover(primary.api_url, primary.name, target)
    except patroni_api.PatroniError as e:
        log.warning("%s: switchover to %s failed: %s", cluster.metadata.name, target, e)
        return False
    actions.append(f"switchover {primary.name} -> {target} ({why})")
    emit("Normal", "Switchover", f"switched over from {primary.name} to {target} ({why})")
    return True


# ---- rolling updates and restarts -------------------------------------------
def _roll(
    patroni: patroni_api.Client,
    kube: Kube,
    cluster: PostgresCluster,
    observed: Observed,
    primary: Member,
    *,
    actions: list[str],
) -> Activity | None:
    """One step of a rolling update or restart: replicas first, then a switchover, then
    the old primary. Returns the activity, or None when nothing is out of date."""
    members = observed.members
    outdated = [m for m in members if observed.outdated(m)]
    # A server that is not running has nothing to restart: Patroni starts it with the new
    # configuration itself (restarting one that cannot start would only repeat the error).
    restart = [
        m
        for m in members
        if m.pending_restart and not observed.outdated(m) and m.state in READY_STATES
    ]
    if not outdated and not restart:
        return None
    reason = c.ROLLING_UPDATE if outdated else c.RESTARTING
    todo = outdated or restart
    replicas = [m for m in todo if m.name != primary.name]
    if replicas:
        # A down replica is updated at once (the new template may be its cure); a
        # healthy one only while every instance is ready, so at most one is ever down.
        down = [m for m in replicas if not m.ready]
        m = down[0] if down else replicas[0]
        if not down and not all(x.ready for x in members):
            return Activity(reason, f"waiting for every instance to be ready before {m.name}")
        _update(patroni, kube, cluster, observed, m, recreate=bool(outdated), actions=actions)
        return Activity(reason, f"updating replica {m.name}")
    # Only the primary is left.
    candidates = [
        m
        for m in members
        if m.name != primary.name and m.ready and not observed.outdated(m) and not m.pending_restart
    ]
    if candidates:
        if all(m.ready for m in members):
            _switch(
                patroni,
                cluster,
                primary,
                candidates[0].name,
                emit=lambda *_: None,
                actions=actions,
                why="rolling update" if outdated else "restart for parameters",
            )
        return Activity(reason, f"switching over from {primary.name} before updating it")
    if len(members) == 1:
        _update(patroni, kube, cluster, observed, primary, recreate=bool(outdated), actions=actions)
        return Activity(reason, f"updating the only instance {primary.name}")
    return Activity(reason, "waiting for an updated replica to take over as primary")


def _update(
    patroni: patroni_api.Client,
    kube: Kube,
    cluster: PostgresCluster,
    observed: Observed,
    m: Member,
    *,
    recreate: bool,
    actions: list[str],
) -> None:
    """Recreate the pod (new template) or restart PostgreSQL in it (new parameters)."""
    if recreate:
        if m.controller_uid is None or m.controller_uid != observed.statefulset_uid:
            # Not a pod of this cluster's StatefulSet (a neighbour's, or an orphan).
            return
        kube.delete("Pod", cluster.metadata.namespace, m.name)
        actions.append(f"rolled {m.name}")
    elif m.api_url:
        try:
            patroni.restart(m.api_url)
            actions.append(f"restarted {m.name}")
        except patroni_api.PatroniError as e:
            log.warning("restart of %s failed: %s", m.name, e)


def _move_primary_before_scale_down(
    patroni: patroni_api.Client,
    cluster: PostgresCluster,
    observed: Observed,
    primary: Member,
    *,
    emit: EventSink,
    actions: list[str],
) -> Activity | None:
    want = cluster.spec.instances
    if primary.ordinal < want:
        return None
    keep = [m for m in observed.members if m.ordinal < want and m.ready]
    if keep and all(m.ready for m in observed.members):
        _switch(
            patroni,
            cluster,
            primary,
            keep[0].name,
            emit=emit,
            actions=actions,
            why=f"scaling down to {want} instances",
        )
    return Activity(
        c.SCALING, f"moving the primary off {primary.name} before scaling down to {want}"
    )


def _scaling_activity(cluster: PostgresCluster, observed: Observed) -> Activity | None:
    have, want = len(observed.members), cluster.spec.instances
    if have == want:
        return None
    if observed.primary is None and cluster.status is None:
        return Activity(c.CREATING, f"creating {want} instances")
    return Activity(c.SCALING, f"scaling from {have} to {want} instances")


# ---- status -----------------------------------------------------------------
def _dump(s: PostgresClusterStatus | None) -> dict[str, Any]:
    if s is None:
        return {}
    return s.model_dump(mode="json", by_alias=True, exclude_none=True, exclude={"kopf"})


def _write_status(kube: Kube, cluster: PostgresCluster, new: PostgresClusterStatus) -> bool:
    # A merge patch from the stored status: fields that went away are removed (null), which
    # sending the new status alone would leave in place.
    patch = patroni_api.merge_patch(_dump(cluster.status), _dump(new))
    if not patch:
        return False
    kube.patch(
        "PostgresCluster",
        cluster.metadata.namespace,
        cluster.metadata.name,
        {"status": patch},
        subresource="status",
    )
    return True


def _emit_transitions(
    old: PostgresClusterStatus | None, new: PostgresClusterStatus, emit: EventSink
) -> None:
    old = old or PostgresClusterStatus()
    if old.current_primary and new.current_primary and old.current_primary != new.current_primary:
        emit(
            "Normal",
            "PrimaryChanged",
            f"primary moved from {old.current_primary} to {new.current_primary}",
        )
    elif old.current_primary and not new.current_primary:
        emit("Warning", "PrimaryLost", f"no primary (was {old.current_primary})")
    ready_before, ready_after = c.get(old.conditions, c.READY), c.get(new.conditions, c.READY)
    # Readiness is news when it flips; while a cluster is still coming up (never ready yet)
    # its reasons change at every step of a normal bootstrap, which is not a warning.
    if ready_after is not None and (
        ready_before is None or ready_before.status != ready_after.status
    ):
        if ready_after.status == "True":
            emit("Normal", ready_after.reason, ready_after.message)
        elif ready_before is not None and ready_before.status == "True":
            emit("Warning", ready_after.reason, ready_after.message)
    for type_ in (c.DEGRADED, c.INSECURE_AUTHENTICATION):
        before, after = c.get(old.conditions, type_), c.get(new.conditions, type_)
        if after is None or (
            before and (before.status, before.reason) == (after.status, after.reason)
        ):
            continue
        if before is None and after.status == "False":
            continue  # at creation, "not degraded" is not news
        emit("Warning" if after.status == "True" else "Normal", after.reason, after.message)
