"""Observe: the only reader. Builds one cluster's immutable Snapshot from the watch-fed caches.

In steady state it makes no API call. It reads the metadata of a name (never a Secret's
data) only where the caches cannot tell whose an object is: Patroni's DCS names before the
cluster's first instance exists (a neighbour's ConfigMap there would be written into by
Patroni), a child's name a create was refused for (`recheck`: a neighbour's object, or the
cluster's own not cached yet), and a referenced Secret that has not opted in. It asks an
instance's Patroni for its state only while the kubelet and Patroni's annotation disagree on
whether the instance is ready.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from datetime import datetime

from pydantic import ValidationError

from pgherd.api.v1alpha1 import (
    BACKUP_KIND,
    DATABASE_KIND,
    KIND,
    POOLER_KIND,
    PostgresCluster,
)
from pgherd.contract import TLS_CA
from pgherd.controller import (
    databases_read,
    drain,
    pooler_read,
    postgres,
    references,
    rehearsal,
    rehearsal_plan,
    roles,
    sql,
)
from pgherd.controller.backups import recovery_source_store
from pgherd.controller.cache import Cache
from pgherd.controller.client import Manifest
from pgherd.controller.poolers import wants_sql as pooler_wants_sql
from pgherd.controller.snapshot import (
    CHILD_KINDS,
    READY_STATES,
    ChildKey,
    Member,
    Snapshot,
    expected_children,
    member_from_pod,
)
from pgherd.render import labels, names, ownership

Probe = Callable[[str, str, str], Manifest | None]  # (kind, namespace, name): metadata or None
# (Patroni's api_url, the CA bundle to verify it with): the state it reports now, or None.
LiveState = Callable[[str, str | None], str | None]
# (target, database, the user's query): what a rehearsal's check gave, None when the copy
# could not be reached (the next pass tries again).
Checker = Callable[[sql.Target, str, str], rehearsal.CheckOutcome | None]
# The label the Job controller puts on its pods.
JOB_NAME_LABEL = "batch.kubernetes.io/job-name"


def _confirmed(m: Member, live_state: LiveState | None, cadata: str | None) -> Member:
    """A member the kubelet already finds Ready while Patroni's annotation, rewritten once per
    loop_wait, still shows an earlier state: Patroni is asked directly, so that a rolling step
    moves on when the pod is ready rather than up to loop_wait later."""
    if live_state is None or m.ready or not m.pod_ready or m.terminating or not m.api_url:
        return m
    state = live_state(m.api_url, cadata)
    if state not in READY_STATES:
        return m
    return dataclasses.replace(m, ready=True, state=state)


def _parse(raw: Manifest) -> tuple[PostgresCluster | None, str | None]:
    try:
        return PostgresCluster.model_validate(raw), None
    except ValidationError as e:
        parts = [
            f"{'.'.join(str(x) for x in err['loc'])}: {err['msg']}"
            for err in e.errors(include_input=False, include_url=False)
        ]
        return None, ("the spec is invalid: " + "; ".join(parts))[:2000]


def observe(
    cache: Cache,
    probe: Probe,
    namespace: str,
    name: str,
    now: datetime,
    *,
    recheck: frozenset[ChildKey] = frozenset(),
    live_state: LiveState | None = None,
    read_sql: sql.Reader | None = None,
    run_check: Checker | None = None,
) -> Snapshot:
    """The snapshot of cluster namespace/name; probe reads the metadata of a name the caches
    cannot see (see the module docstring for which), live_state asks a member's Patroni,
    read_sql queries the primary (only for what a cluster's managed roles, databases and
    poolers need to compare), run_check runs a major upgrade rehearsal's check on its copy."""
    raw = cache.get(KIND, namespace, name)
    backups = tuple(
        b for b in cache.all(BACKUP_KIND, namespace) if (b.get("spec") or {}).get("cluster") == name
    )
    poolers = tuple(
        p for p in cache.all(POOLER_KIND, namespace) if (p.get("spec") or {}).get("cluster") == name
    )
    databases = tuple(
        d
        for d in cache.all(DATABASE_KIND, namespace)
        if (d.get("spec") or {}).get("cluster") == name
    )
    if raw is None:
        return Snapshot(namespace, name, now, backups=backups, poolers=poolers, databases=databases)
    cluster, invalid = _parse(raw)
    children: dict[ChildKey, Manifest] = {}
    for kind in CHILD_KINDS:
        for obj in cache.of_cluster(kind, namespace, name):
            children[(kind, obj["metadata"]["name"])] = obj
    pods = cache.of_cluster("Pod", namespace, name)
    claims = cache.of_cluster("PersistentVolumeClaim", namespace, name)
    selector = labels.selector_labels(name)

    def selected(obj: Manifest) -> bool:
        have = obj["metadata"].get("labels") or {}
        return all(have.get(k) == v for k, v in selector.items())

    dcs = set(names.patroni_dcs_configmaps(name))
    first_instance = ("StatefulSet", names.statefulset(name)) not in children
    unsure = [
        key
        for key in expected_children(name)
        if key not in children and (key in recheck or (first_instance and key[1] in dcs))
    ]
    probed = {key: found for key in unsure if (found := probe(key[0], namespace, key[1]))}

    def ours(key: ChildKey, obj: Manifest) -> bool:
        if key[0] == "ConfigMap" and key[1] in dcs:
            return ownership.owns_dcs(name, obj)
        return cluster is not None and ownership.owns(cluster, key[0], obj)

    tls = children.get(("Secret", names.tls_secret(name)))
    trust = (
        references.decoded(tls, TLS_CA)
        if tls is not None and ours(("Secret", names.tls_secret(name)), tls)
        else None
    )
    usable = {
        s["metadata"]["name"]: s
        for s in cache.all("Secret", namespace)
        if ((s["metadata"].get("labels") or {}).get(references.USE_LABEL)) == "true"
    }
    snapshot = Snapshot(
        namespace,
        name,
        now,
        raw=raw,
        cluster=cluster,
        invalid=invalid,
        children=children,
        foreign=frozenset(k for k, obj in probed.items() if not ours(k, obj)),
        unsynced=frozenset(k for k, obj in probed.items() if ours(k, obj)),
        members=tuple(
            sorted(
                (_confirmed(member_from_pod(p), live_state, trust) for p in pods if selected(p)),
                key=lambda m: m.ordinal,
            )
        ),
        claims=tuple(c for c in claims if selected(c)),
        usable_secrets=usable,
        backups=backups,
        poolers=poolers,
        databases=databases,
        pod_monitors_served=cache.listed("PodMonitor"),
        draining_nodes=_draining_nodes(cache, pods),
        jobs={j["metadata"]["name"]: j for j in cache.of_cluster("Job", namespace, name)},
        job_pods=tuple(p for p in pods if JOB_NAME_LABEL in (p["metadata"].get("labels") or {})),
    )
    if cluster is None:
        return snapshot
    wanted_class = cluster.spec.storage.storage_class_name
    missing_class = (
        wanted_class
        if wanted_class and cache.get("StorageClass", "", wanted_class) is None
        else None
    )
    recovery_backup = recovery_cluster = None
    recovery = cluster.spec.bootstrap.recovery
    if recovery is not None and recovery.source.backup is not None:
        recovery_backup = cache.get(BACKUP_KIND, namespace, recovery.source.backup)
        source = ((recovery_backup or {}).get("spec") or {}).get("cluster")
        recovery_cluster = cache.get(KIND, namespace, source) if source else None
    store = recovery_source_store(cluster, recovery_cluster)
    wanted = {r.secret for r in references.references(cluster, restore_store=store)}
    wanted |= roles.secret_names(cluster)  # managed roles' password Secrets
    unusable = frozenset(
        s for s in wanted if s not in usable and probe("Secret", namespace, s) is not None
    )
    snapshot = dataclasses.replace(
        snapshot,
        storage_class_missing=missing_class,
        unusable_secrets=unusable,
        recovery_backup=recovery_backup,
        recovery_cluster=recovery_cluster,
    )
    snapshot = _with_rehearsal(cache, probe, snapshot, cluster, run_check)
    target = sql.target(snapshot)
    if target is None or read_sql is None:
        return snapshot
    # What the database holds, read only for the features the cluster uses (each adds its
    # own field to the snapshot here).
    snapshot = dataclasses.replace(snapshot, sql_target=target)
    snapshot = dataclasses.replace(snapshot, roles_seen=_roles_seen(read_sql, target, cluster))
    # PostgresPooler: its role and auth_query functions, only while the cluster has a pooler
    # or the last one's are still to be taken away.
    if pooler_wants_sql(poolers, name, snapshot.children):
        snapshot = dataclasses.replace(snapshot, pooler_seen=pooler_read.read(read_sql, target))
    if snapshot.databases:
        seen = databases_read.read(read_sql, target, snapshot.databases)
        snapshot = dataclasses.replace(snapshot, databases_seen=seen)
    return snapshot


# ---- a major upgrade's rehearsal ----------------------------------------------------------
def _with_rehearsal(
    cache: Cache, probe: Probe, snapshot: Snapshot, cluster: PostgresCluster,
    run_check: Checker | None,
) -> Snapshot:  # fmt: skip
    """The rehearsal's copy as stored; and, in the Checking phase only, what the user's check
    gives on it (logged in as its application owner)."""
    name = rehearsal_plan.copy_name(cluster)
    live = cache.get(KIND, snapshot.namespace, name)
    snapshot = dataclasses.replace(snapshot, rehearsal_copy=live)
    spec = cluster.spec.upgrade.rehearsal
    record = cluster.status.rehearsal if cluster.status else None
    if (
        live is None
        or run_check is None
        or spec is None
        or spec.check is None
        or record is None
        or record.phase != rehearsal.CHECKING
        or record.request != rehearsal.request_of(spec)
    ):
        return snapshot
    # The copy is a cluster of its own: its snapshot says how to reach its primary.
    copy = observe(cache, probe, snapshot.namespace, name, snapshot.now)
    target = sql.owner_target(copy) if copy.cluster is not None else None
    if target is None or copy.cluster is None:
        return snapshot
    database = spec.check.database or copy.cluster.spec.bootstrap.database
    outcome = run_check(target, database, spec.check.query)
    return dataclasses.replace(snapshot, rehearsal_check=outcome)


# ---- drain-aware switchover ---------------------------------------------------------------
def _draining_nodes(cache: Cache, pods: list[Manifest]) -> frozenset[str]:
    """The nodes of the cluster's pods that are cordoned or tainted for removal."""
    nodes = {n for p in pods if (n := (p.get("spec") or {}).get("nodeName"))}
    return frozenset(n for n in nodes if drain.draining(cache.get("Node", "", n)))


# ---- managed roles ------------------------------------------------------------------------
def _roles_seen(
    read_sql: sql.Reader, target: sql.Target, cluster: PostgresCluster
) -> roles.RolesSeen | None:
    """The cluster's managed roles as the primary holds them (no SQL without any)."""
    try:
        return roles.read_roles(read_sql, target, cluster)
    except postgres.PostgresError as e:
        return roles.RolesSeen(unreachable=f"unreachable: {e}")
