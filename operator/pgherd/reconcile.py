"""The reconcile loop of one PostgresCluster: observe, act one safe step, compute status.

Level-based: every call starts from what the API shows, so a restarted operator picks up
a rollout or switchover where the previous one left it. Disruptive actions (deleting a
pod, a switchover, a restart) happen one at a time and only when every other instance is
ready; the next call continues.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from pgherd import conditions as c
from pgherd import passwords, patroni_api, status
from pgherd.api.v1alpha1 import PostgresCluster, PostgresClusterStatus
from pgherd.backup import controller as backup_controller
from pgherd.kube import Kube, Manifest
from pgherd.observe import Member, Observed, observe
from pgherd.render import names
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
    kube: Kube, cluster: PostgresCluster, emit: EventSink, now: datetime | None = None
) -> Outcome:
    key = f"{cluster.metadata.namespace}/{cluster.metadata.name}"
    with _lock(key):
        # The handler's body may predate a status written by a reconcile that held the
        # lock a moment ago; start from the stored object so events fire once.
        live = kube.get("PostgresCluster", cluster.metadata.namespace, cluster.metadata.name)
        if live is None:
            return Outcome(cluster.status or PostgresClusterStatus(), False)
        fresh = PostgresCluster.model_validate(live)
        return _reconcile(kube, fresh, emit, now or datetime.now(UTC))


def _reconcile(kube: Kube, cluster: PostgresCluster, emit: EventSink, now: datetime) -> Outcome:
    ns, name = cluster.metadata.namespace, cluster.metadata.name
    actions: list[str] = []
    observed = observe(kube, cluster)

    _clear_stale_dcs(kube, cluster, observed, actions)
    existing: dict[SecretKind, Manifest | None] = {
        k: kube.get("Secret", ns, names.secret(name, k)) for k in SECRET_KINDS
    }
    # pgherd.backup: resolve spec.bootstrap.recovery; a restore that cannot go on safely
    # holds the StatefulSet back, and cluster_status below reports why.
    cluster, backup_gate = backup_controller.resolve(kube, cluster)
    credentials = passwords.resolve(existing)
    children = desired_children(cluster, credentials)
    patroni = patroni_api.Client(RESTAPI_USERNAME, credentials["restapi"])
    primary = observed.primary
    for child in children:
        if child["kind"] == "StatefulSet" and backup_gate.blocked:
            continue
        if child["kind"] == "StatefulSet":
            _prepare_statefulset(kube, cluster, child, observed, actions)
        live = existing.get(_secret_kind(child)) if child["kind"] == "Secret" else None
        if kube.apply(child, live, check=True):
            actions.append(f"applied {child['kind']}/{child['metadata']['name']}")

    activity: Activity | None = None
    switchover_handled = cluster.status.switchover_handled if cluster.status else None
    if cluster.spec.switchover is None:
        switchover_handled = None
    if primary is not None:
        # At most one disruptive step per pass; the next pass observes its effect first.
        switch_activity, switchover_handled = _switchover_request(
            patroni, cluster, observed, primary, emit=emit, actions=actions
        )
        activity = (
            _sync_dynamic_config(patroni, cluster, observed, primary, actions)
            or switch_activity
            or _roll(patroni, kube, cluster, observed, primary, actions=actions)
            or _move_primary_before_scale_down(
                patroni, cluster, observed, primary, emit=emit, actions=actions
            )
        )
    activity = activity or _scaling_activity(cluster, observed)

    new_status = status.compute(
        cluster, observed, activity, now, switchover_handled=switchover_handled
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


def _secret_kind(child: Manifest) -> Any:
    return child["metadata"]["name"].rsplit("-", 1)[1]


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
        for claim in observed.claims:
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


def _sync_dynamic_config(
    patroni: patroni_api.Client,
    cluster: PostgresCluster,
    observed: Observed,
    primary: Member,
    actions: list[str],
) -> Activity | None:
    if observed.dcs_config is None or not primary.api_url:
        return None
    patch = config_patch(observed.dcs_config, dynamic_config(cluster))
    if not patch:
        return None
    try:
        patroni.patch_config(primary.api_url, patch)
        actions.append(f"patched Patroni configuration: {sorted(patch)}")
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
    restart = [m for m in members if m.pending_restart and not observed.outdated(m)]
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
        _update(patroni, kube, cluster, m, recreate=bool(outdated), actions=actions)
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
        _update(patroni, kube, cluster, primary, recreate=bool(outdated), actions=actions)
        return Activity(reason, f"updating the only instance {primary.name}")
    return Activity(reason, "waiting for an updated replica to take over as primary")


def _update(
    patroni: patroni_api.Client,
    kube: Kube,
    cluster: PostgresCluster,
    m: Member,
    *,
    recreate: bool,
    actions: list[str],
) -> None:
    """Recreate the pod (new template) or restart PostgreSQL in it (new parameters)."""
    if recreate:
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
    if _dump(cluster.status) == _dump(new):
        return False
    kube.patch(
        "PostgresCluster",
        cluster.metadata.namespace,
        cluster.metadata.name,
        {"status": _dump(new)},
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
    for type_ in (c.READY, c.DEGRADED):
        before, after = c.get(old.conditions, type_), c.get(new.conditions, type_)
        if after is None or (
            before and (before.status, before.reason) == (after.status, after.reason)
        ):
            continue
        if before is None and (after.status == "False") == (type_ == c.DEGRADED):
            continue  # at creation, "not degraded" and "not ready yet" are not news
        bad = (type_ == c.DEGRADED) == (after.status == "True")
        emit("Warning" if bad else "Normal", after.reason, after.message)
