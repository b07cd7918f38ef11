"""Plan: what one pass over a cluster should do, as a pure function of its snapshot.

plan(snapshot, settings) returns the actions (each with its reason), what is wrong that only
the operator can see (problems, for Degraded), and what the cluster is doing (activity, for
Progressing). Same snapshot, same plan; nothing here reads or writes the API.

Rules it keeps:
- only the cluster's own objects are changed or deleted (pgherd.render.ownership); a
  neighbour's object with a child's name is a ChildNameConflict, and no instance starts
  while one is in the way, nor with a Secret that did not opt in (pgherd.controller.
  references) or an image the operator does not have;
- an object is applied only when the live one differs (pgherd.controller.diff);
- at most one disruptive action (deleting a pod, a switchover, a restart) per pass, and only
  while every other instance is ready: rolling updates take replicas first, then switch over,
  then the old primary; scaling down first moves the primary below the new size;
- Patroni's configuration goes through the primary, or any member when no primary runs, so a
  parameter that keeps PostgreSQL from starting can be reverted.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from pgherd import contract
from pgherd.api.v1alpha1 import (
    LEGACY_DEFAULT_IMAGES,
    LIBRARY_PARAMETERS,
    CredentialsStatus,
    PostgresCluster,
    RecoverySource,
    RehearsalStatus,
    UpgradeStatus,
)
from pgherd.controller import (
    backups,
    certificates,
    credentials,
    databases,
    drain,
    leader_release,
    major_upgrade,
    major_upgrade_plan,
    poolers,
    references,
    rehearsal_plan,
    roles,
    storage,
)
from pgherd.controller import conditions as c
from pgherd.controller.actions import (
    Action,
    Apply,
    Delete,
    Event,
    Patch,
    PatroniConfig,
    ReleaseLeader,
    Restart,
    SetPassword,
    Switchover,
)
from pgherd.controller.conditions import Activity, Problem
from pgherd.controller.databases import Decision as DatabaseDecision
from pgherd.controller.diff import APPLIED_HASH, contains, merge_patch, stamped
from pgherd.controller.snapshot import READY_STATES, Member, Snapshot
from pgherd.render import names, ownership
from pgherd.render.children import desired_children
from pgherd.render.names import SecretKind
from pgherd.render.patroni_config import dynamic_config
from pgherd.render.secrets import render_secret, render_vault, username_for
from pgherd.settings import Settings

Manifest = dict[str, Any]
Generator = Callable[[], str]

# Problems that keep the StatefulSet from being applied: its pods would use what they must
# not (a neighbour's object, a Secret that did not opt in) or could not run at all.
HOLDS_WORKLOAD = frozenset(
    {
        c.CHILD_NAME_CONFLICT,
        c.SECRET_NOT_FOUND,
        c.SECRET_NOT_PERMITTED,
        c.SECRET_INVALID,
        c.NO_IMAGE,
    }
)


@dataclass(frozen=True)
class Plan:
    """One pass's decisions (see the module docstring)."""

    actions: tuple[Action, ...] = ()
    problems: tuple[Problem, ...] = ()
    activity: Activity | None = None
    held_back: Mapping[str, str] = field(default_factory=dict)
    switchover_handled: str | None = None
    restored_from: RecoverySource | None = None
    last_schedule_time: datetime | None = None
    # The cluster with its recovery source resolved (what was rendered), for status.
    cluster: PostgresCluster | None = None
    # Patroni's REST API password, for act's calls (never shown).
    patroni_password: str | None = field(default=None, repr=False)
    image: str | None = None  # the operand image chosen (status.image)
    # The certificates settled on (status.tls; the CA bundle act verifies Patroni with).
    tls: certificates.Outcome | None = None
    credentials: CredentialsStatus | None = None  # rotations carried out (status.credentials)
    # Managed roles: one decision per role of spec.managed.roles (status.managedRoles).
    managed_roles: roles.RolesPlan | None = None
    # PostgresDatabases: what was decided for each, for their status after act.
    databases: tuple[DatabaseDecision, ...] = ()
    # Disks that do not fill: the size autoGrow grew the claims to (status.storage).
    storage_grown: str | None = None
    # The major upgrade's progress (status.upgrade; pgherd.controller.major_upgrade).
    upgrade: UpgradeStatus | None = None
    # The last rehearsal of a major upgrade (status.rehearsal; pgherd.controller.rehearsal).
    rehearsal: RehearsalStatus | None = None

    @property
    def disruptive(self) -> list[Action]:
        return [a for a in self.actions if a.disruptive]


# ---- the whole pass ---------------------------------------------------------------------
def plan(
    snapshot: Snapshot,
    settings: Settings,
    new_password: Generator = credentials.generate,
    mint: certificates.Mint | None = None,
) -> Plan:
    """The actions for one pass over the cluster, and why."""
    stale_after = timedelta(seconds=settings.backup_stale_seconds)
    if snapshot.raw is None or snapshot.cluster is None:
        # Gone, or its spec does not parse: nothing of it is touched; its backups are told.
        invalid = (Problem(c.INVALID_SPEC, snapshot.invalid),) if snapshot.invalid else ()
        # A cluster gone tells its databases too; an invalid spec leaves them be.
        return with_databases(Plan(tuple(
            backups.plan_backups(snapshot, stale_after) + plan_pooler_actions(
                snapshot, None, settings, new_password=new_password, mint=mint)
        ), invalid), snapshot)  # fmt: skip
    cluster = snapshot.cluster
    actions: list[Action] = []
    problems: list[Problem] = list(dcs_conflicts(snapshot))
    if not problems:
        # First, so that nothing slower in this pass delays it (spec.patroni.profile fast).
        actions += plan_leader_release(cluster, snapshot) + clear_stale_dcs(cluster, snapshot)
    # A raised postgresVersion: the major upgrade decides how the instances are rendered.
    upgrade, (resolved, gate, growth) = plan_major_upgrade(cluster, snapshot, settings)
    refused, adopted, refused_fields = check_references(resolved, snapshot)
    problems += refused + major_upgrade_plan.problems_of(upgrade)
    tls = plan_certificates(
        resolved, snapshot, settings, refused_fields, mint or certificates.Mint()
    )
    actions += [Event(reason, message=message) for reason, message in tls.issued]
    problems += tls.problems
    if (bad := backups.schedule_problem(cluster, snapshot.now)) is not None:
        problems.append(bad)
    image, no_image = choose_image(resolved, snapshot, settings)
    if no_image is not None:
        problems.append(no_image)
    passwords, credential_actions, credential_problems = plan_credentials(
        cluster, snapshot, adopted, new_password
    )
    actions += credential_actions
    problems += credential_problems
    rotation = plan_rotation(cluster, snapshot, passwords, new_password, tls.server_trust)
    children, conflicts = plan_children(
        resolved,
        snapshot,
        passwords=passwords,
        tls=(tls.ca, tls.tls) if tls.ca is not None and tls.tls is not None else None,
        vault_extra=rotation.vault_extra,
        image=image,
        hold_workload=gate.blocked
        or tls.tls is None
        or any(p.reason in HOLDS_WORKLOAD for p in problems),
        allow_primary_eviction=drain_decision(cluster, snapshot).allow_eviction,
    )
    actions += (
        children
        + reown_claims(resolved, snapshot)
        + major_upgrade_plan.actions_of(upgrade, cluster, snapshot)
    )
    problems += conflicts
    if gate.problem is not None:
        problems.append(gate.problem)

    held = held_back_parameters(cluster, snapshot)
    config = plan_patroni_config(cluster, snapshot, held)
    actions += config
    config_activity = Activity(c.RESTARTING, "applying PostgreSQL parameters") if config else None
    switchover_handled = cluster.status.switchover_handled if cluster.status else None
    if cluster.spec.switchover is None:
        switchover_handled = None
    activity: Activity | None = None
    primary = snapshot.primary
    if primary is not None and passwords is not None:
        # As rendered: a major upgrade's stop scales down as spec.instances would.
        step_actions, activity, switchover_handled = plan_disruption(
            resolved, snapshot, primary, config_activity
        )
        actions += step_actions
    if rotation.activity is not None and not any(a.disruptive for a in actions):
        actions += rotation.actions
        activity = activity or rotation.activity
    activity = (
        major_upgrade_plan.activity_of(upgrade)
        or activity
        or config_activity
        or scaling_activity(cluster, snapshot)
    )

    actions += backups.plan_backups(snapshot, stale_after)
    schedule_actions, last_schedule = backups.plan_schedule(
        cluster, snapshot, has_primary=primary is not None
    )
    actions += schedule_actions
    actions += backups.plan_prune(cluster, snapshot) + plan_pooler_actions(
        snapshot, resolved, settings, image=image, tls=tls, new_password=new_password, mint=mint
    )
    restored_from = (
        cluster.status.backup.restored_from if cluster.status and cluster.status.backup else None
    ) or gate.resolved
    # Managed roles come last: their SQL is independent of the rest; then the databases,
    # whose owner may be a managed role created by the same pass.
    return with_rehearsal(with_growth(with_databases(with_switchover_refusal(cluster, snapshot,
        with_managed_roles(Plan(
        tuple(actions),
        tuple(problems),
        activity,
        held,
        switchover_handled,
        restored_from,
        last_schedule,
        resolved,
        (passwords or {}).get("restapi"),
        image,
        tls,
        rotation.status,
        upgrade=major_upgrade_plan.status_of(upgrade.progress),
    ), cluster, snapshot)), snapshot), growth), cluster, snapshot)  # fmt: skip


# ---- the major upgrade: a raised spec.postgresVersion -------------------------------------
def plan_major_upgrade(
    cluster: PostgresCluster, snapshot: Snapshot, settings: Settings
) -> tuple[major_upgrade.Step, tuple[PostgresCluster, backups.Gate, storage.Growth]]:
    """The major upgrade's next step (pgherd.controller.major_upgrade), the new major's image
    chosen as for any cluster of that major; and the cluster to render as the step says it
    (its major and instances), then resolved and sized (resolve_sized)."""
    to_image, _ = choose_image(cluster, snapshot, settings)
    step = major_upgrade.decide(major_upgrade_plan.view_of(cluster, snapshot, to_image))
    return step, resolve_sized(major_upgrade_plan.rendered(cluster, step.render), snapshot)


# ---- disks that do not fill: spec.storage.autoGrow ------------------------------------------
def resolve_sized(
    cluster: PostgresCluster, snapshot: Snapshot
) -> tuple[PostgresCluster, backups.Gate, storage.Growth]:
    """The cluster to render (its recovery source resolved, backups.resolve) with the claims'
    size autoGrow decides (storage.autogrow), which the storage-growth path then applies."""
    resolved, gate = backups.resolve(cluster, snapshot)
    volumes = {m.name: m.report.volume if m.report else None for m in snapshot.members}
    growth = storage.autogrow(cluster, volumes)
    return storage.sized(resolved, growth.size), gate, growth


def with_growth(decided: Plan, growth: storage.Growth) -> Plan:
    """The plan with autoGrow's problem (at the limit), its Event and the grown size."""
    return dataclasses.replace(
        decided,
        actions=(*decided.actions,
                 *([Event(c.VOLUME_AUTO_GROWN, message=growth.reason)] if growth.reason else [])),
        problems=(*decided.problems, *([growth.problem] if growth.problem else [])),
        storage_grown=growth.grown,
    )  # fmt: skip


def with_rehearsal(decided: Plan, cluster: PostgresCluster, snapshot: Snapshot) -> Plan:
    """The plan with a major upgrade's rehearsal (pgherd.controller.rehearsal): it works on a
    throwaway copy, never on this cluster's objects, and is the activity shown only when
    nothing of the cluster's own is under way."""
    step = rehearsal_plan.decide(cluster, snapshot)
    return dataclasses.replace(
        decided,
        actions=(*decided.actions, *rehearsal_plan.actions_of(step, cluster, snapshot)),
        activity=decided.activity or rehearsal_plan.activity_of(step),
        rehearsal=step.record,
    )


def with_managed_roles(decided: Plan, cluster: PostgresCluster, snapshot: Snapshot) -> Plan:
    """The plan with the managed roles' SQL after its other actions: independent of them,
    and never held back by them."""
    if not roles.managed_roles(cluster):
        return decided
    managed = roles.plan_roles(
        cluster, snapshot.roles_seen, snapshot.sql_target,
        usable_secrets=snapshot.usable_secrets, unusable_secrets=snapshot.unusable_secrets,
    )  # fmt: skip
    return dataclasses.replace(
        decided, actions=(*decided.actions, *managed.actions), managed_roles=managed
    )


def with_databases(decided: Plan, snapshot: Snapshot) -> Plan:
    """The plan with the PostgresDatabases' SQL last (after the managed roles': a database's
    owner may be created by the same pass), and their decisions for status after act."""
    if not snapshot.databases or (snapshot.raw is not None and snapshot.cluster is None):
        return decided
    db_actions, db_decisions = databases.plan_databases(snapshot)
    return dataclasses.replace(
        decided, actions=(*decided.actions, *db_actions), databases=db_decisions
    )


def plan_disruption(
    cluster: PostgresCluster,
    snapshot: Snapshot,
    primary: Member,
    config_activity: Activity | None,
) -> tuple[list[Action], Activity | None, str | None]:
    """One disruptive step per pass, the first that applies (the next pass observes its
    effect first): a drain of the primary's node (it will not wait), parameters being
    applied, a switchover asked for, a rolling update, a scale-down."""
    switch_actions, switch_activity, handled = plan_switchover_request(cluster, snapshot, primary)
    steps: list[tuple[list[Action], Activity | None]] = [
        plan_drain_switchover(primary, drain_decision(cluster, snapshot)),
        ([], config_activity),
        (switch_actions, switch_activity),
        plan_roll(snapshot, primary),
        plan_scale_down(cluster, snapshot, primary),
    ]
    for step_actions, step_activity in steps:
        if step_activity is not None:
            return step_actions, step_activity, handled
    return [], None, handled


# ---- ownership and children -------------------------------------------------------------
def _key(child: Manifest) -> tuple[str, str]:
    return str(child["kind"]), str(child["metadata"]["name"])


def _conflict(kind: str, name: str) -> Problem:
    return Problem(
        c.CHILD_NAME_CONFLICT,
        f"{kind} {name!r} exists but is not this cluster's (it lacks pgherd's labels and "
        "owner); pgherd leaves it untouched and creates no instance while it is in the way: "
        "rename or remove it, or give the cluster another name",
    )


def dcs_conflicts(snapshot: Snapshot) -> list[Problem]:
    """Patroni would write into a same-named ConfigMap that is not its own for this cluster."""
    out = []
    for cm_name in names.patroni_dcs_configmaps(snapshot.name):
        cm = snapshot.child("ConfigMap", cm_name)
        foreign = ("ConfigMap", cm_name) in snapshot.foreign
        if foreign or (cm is not None and not ownership.owns_dcs(snapshot.name, cm)):
            out.append(_conflict("ConfigMap", cm_name))
    return out


def clear_stale_dcs(cluster: PostgresCluster, snapshot: Snapshot) -> list[Action]:
    """Remove Patroni's DCS ConfigMaps left by a deleted cluster of the same name.

    Patroni creates them without an owner, and the operator must never write them while
    Patroni runs (a write changes their resourceVersion and breaks Patroni's compare-and-swap
    updates of the leader and sync keys). So they outlive a deleted cluster, and a new
    cluster of that name, before any instance exists, deletes them: otherwise Patroni would
    find the old system's initialize key and refuse to bootstrap.
    """
    if cluster.status is not None or snapshot.members or snapshot.statefulset is not None:
        return []
    return [
        Delete(
            "left by a deleted cluster of the same name",
            kind="ConfigMap",
            name=cm_name,
            uid=cm["metadata"].get("uid"),
        )
        for cm_name, cm in sorted(snapshot.dcs_configmaps.items())
    ]


def wants_pod_monitor(cluster: PostgresCluster) -> bool:
    monitoring = cluster.spec.monitoring
    return monitoring is not None and monitoring.enable_pod_monitor


def plan_children(
    cluster: PostgresCluster,
    snapshot: Snapshot,
    *,
    passwords: Mapping[SecretKind, str] | None,
    image: str | None,
    hold_workload: bool,
    tls: tuple[Mapping[str, str], Mapping[str, str]] | None = None,
    vault_extra: Mapping[str, str] | None = None,
    allow_primary_eviction: bool = False,
) -> tuple[list[Action], list[Problem]]:
    """Apply every rendered child that differs from its live one; none of a neighbour's."""
    actions: list[Action] = []
    problems: list[Problem] = []
    primary = snapshot.primary
    live_sts = snapshot.statefulset
    replicas = None
    # Scaling down removes the highest ordinals: never the primary's (it moves first). To
    # none, only while a major upgrade stops the primary as the last instance.
    size = cluster.spec.instances
    if live_sts is not None and primary is not None and 0 < size <= primary.ordinal:
        replicas = int(live_sts["spec"]["replicas"])
    pod_monitor = wants_pod_monitor(cluster) and snapshot.pod_monitors_served
    rendered = desired_children(
        cluster, passwords, tls=tls, vault_extra=vault_extra, image=image, replicas=replicas,
        pod_monitor=pod_monitor, allow_primary_eviction=allow_primary_eviction,
    )  # fmt: skip
    monitor = snapshot.child("PodMonitor", names.pod_monitor(cluster.metadata.name))
    if not pod_monitor and monitor is not None and ownership.owns(cluster, "PodMonitor", monitor):
        # Turned off: the cluster's own PodMonitor goes (a neighbour's never).
        actions.append(
            Delete(
                "spec.monitoring.enablePodMonitor is off",
                kind="PodMonitor",
                name=monitor["metadata"]["name"],
                uid=monitor["metadata"].get("uid"),
            )
        )

    def neighbours(kind: str, name: str) -> bool:
        live = snapshot.child(kind, name)
        foreign = live is not None and not ownership.owns(cluster, kind, live)
        return foreign or (kind, name) in snapshot.foreign

    conflicted = [(c["kind"], c["metadata"]["name"]) for c in rendered if neighbours(*_key(c))]
    problems += [_conflict(kind, name) for kind, name in conflicted]
    for desired in rendered:
        kind, name = _key(desired)
        live = snapshot.child(kind, name)
        if (kind, name) in snapshot.unsynced or (kind, name) in conflicted:
            continue  # not cached yet (the next pass compares it), or a neighbour's
        if kind == "StatefulSet":
            # No pod may start with a neighbour's object or a Secret it may not use.
            if hold_workload or conflicted or image is None:
                continue
            if live is not None and live["metadata"].get("deletionTimestamp"):
                # Being deleted (storage growth orphans its pods): created again once gone;
                # deleting it again would only repeat the write (issue 16, operator kills).
                continue
            if live is not None and (grow := plan_storage_growth(cluster, snapshot, desired)):
                actions += grow
                continue
        want = stamped(desired)
        if live is not None and contains(live, want):
            continue
        if live is None:
            # Created only if the name is free; the workload waits for the rest to exist.
            requires = frozenset(a.key for a in actions if isinstance(a, Apply)) if (
                kind == "StatefulSet") else frozenset()  # fmt: skip
            actions.append(Apply("missing", manifest=want, requires=requires))
        else:
            version = str(live["metadata"].get("resourceVersion"))
            actions.append(Apply("changed", manifest=want, resource_version=version,
                                 hand_edit=scaled_by_hand(live, want)))  # fmt: skip
    return actions, problems


# ---- bad input under fault: hand edits set back ------------------------------------------
def scaled_by_hand(live: Manifest, want: Manifest) -> Event | None:
    """The Event when the StatefulSet's size was changed behind the operator's back (kubectl
    scale, an edit): its applied-hash says the operator last applied exactly what it wants
    now, so the other size is someone's hand. The apply sets it back; act posts the Event
    once that went through."""
    if want["kind"] != "StatefulSet":
        return None
    mine = (live["metadata"].get("annotations") or {}).get(APPLIED_HASH)
    have, wanted = (live.get("spec") or {}).get("replicas"), want["spec"].get("replicas")
    if mine != want["metadata"]["annotations"][APPLIED_HASH] or have == wanted:
        return None
    return Event(
        c.SCALED_BY_HAND,
        type="Warning",
        message=f"StatefulSet {live['metadata']['name']} was scaled to {have} by hand; "
        f"set back to {wanted} (change spec.instances to resize the cluster)",
    )


def plan_storage_growth(
    cluster: PostgresCluster, snapshot: Snapshot, desired: Manifest
) -> list[Action]:
    """volumeClaimTemplates are immutable: grow the claims, then re-create the StatefulSet
    without its pods (orphan), which the new one adopts again."""
    live = snapshot.statefulset
    assert live is not None  # noqa: S101 - callers check

    def size(sts: Manifest) -> str:
        return str(
            sts["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"]
        )

    have, want = size(live), size(desired)
    if have == want:
        return []
    why = f"storage {have} -> {want}"
    grow: list[Action] = [
        Patch(
            why,
            kind="PersistentVolumeClaim",
            name=claim["metadata"]["name"],
            body={"spec": {"resources": {"requests": {"storage": want}}}},
        )
        for claim in snapshot.claims
        if ownership.owns_instance_object(
            cluster.metadata.name, snapshot.statefulset_uid, "PersistentVolumeClaim", claim
        )
        # A claim grown already (by a pass cut short: the operator restarted) is not
        # patched again; the StatefulSet's re-creation is what is left.
        and _claim_size(claim) != want
    ]
    return [
        *grow,
        Delete(
            f"{why}: re-created with the new size, its pods kept",
            kind="StatefulSet",
            name=live["metadata"]["name"],
            uid=snapshot.statefulset_uid,
            propagation="Orphan",
        ),
    ]


def _running_containers(snapshot: Snapshot) -> list[Manifest]:
    sts = snapshot.statefulset
    return ((sts or {}).get("spec", {}).get("template", {}).get("spec", {})).get("containers") or []


def _running_image(snapshot: Snapshot) -> str | None:
    return next((str(c["image"]) for c in _running_containers(snapshot) if c.get("image")), None)


def _running_major(snapshot: Snapshot) -> int | None:
    """The major the live StatefulSet tells its pods to run (None: none, or from before the
    operator told it)."""
    for container in _running_containers(snapshot):
        for env in container.get("env") or []:
            if env.get("name") == contract.POSTGRES_MAJOR_ENV and str(env.get("value")).isdigit():
                return int(env["value"])
    return None


def choose_image(
    cluster: PostgresCluster, snapshot: Snapshot, settings: Settings
) -> tuple[str | None, Problem | None]:
    """The operand image: spec.image; else, while the policy is Pinned, the image the cluster
    runs (recorded in status.image, or its StatefulSet's for a cluster from before that), so
    that an operator upgrade restarts nothing; else the operator's image for the major."""
    explicit = cluster.spec.image
    if explicit and explicit not in LEGACY_DEFAULT_IMAGES:
        return explicit, None
    major = cluster.spec.postgres_version
    status = cluster.status
    # The image pinned was chosen for the major the StatefulSet tells its pods (a cluster
    # whose pods never ran has no major in status yet): a raised major is not pinned to it.
    recorded = _running_major(snapshot) or (status.postgres_version if status else None)
    same_major = recorded in (None, major)
    if cluster.spec.image_update_policy == "Pinned" and same_major:
        pinned = (status.image if status else None) or _running_image(snapshot)
        if pinned:
            return pinned, None
    image = settings.image_for(major)
    if image is None:
        return None, Problem(
            c.NO_IMAGE,
            f"the operator has no image for PostgreSQL {major}: set spec.image, or give the "
            f"operator RELATED_IMAGE_POSTGRES_{major}. No instance is created until then.",
        )
    return image, None


# ---- Secrets ----------------------------------------------------------------------------
def check_references(
    cluster: PostgresCluster, snapshot: Snapshot
) -> tuple[list[Problem], dict[SecretKind, str | None], frozenset[str]]:
    """Problems with the Secrets the spec names, the passwords of those adopted at bootstrap
    (None while the adopted Secret cannot be used), and the fields whose Secret is refused."""
    problems: list[Problem] = []
    adopted: dict[SecretKind, str | None] = {}
    refused_fields: set[str] = set()
    for ref in references.references(cluster):
        secret = snapshot.usable_secrets.get(ref.secret)
        problem = references.check(
            cluster.metadata.name, ref, secret, exists=ref.secret in snapshot.unusable_secrets
        )
        if problem is not None:
            problems.append(problem)
            refused_fields.add(ref.field)
        if ref.username is not None:
            kind: SecretKind = "superuser" if ref.field.endswith("superuserSecret") else "app"
            adopted[kind] = None if problem else references.decoded(secret or {}, "password")
    return problems, adopted, frozenset(refused_fields)


def plan_certificates(
    cluster: PostgresCluster,
    snapshot: Snapshot,
    settings: Settings,
    refused_fields: frozenset[str],
    mint: certificates.Mint,
) -> certificates.Outcome:
    """The cluster's certificates (pgherd.controller.certificates), from its own Secrets and
    the opted-in ones spec.tls names."""
    name = cluster.metadata.name

    def own(secret_name: str) -> Manifest | None:
        secret = snapshot.child("Secret", secret_name)
        return secret if secret is not None and ownership.owns(cluster, "Secret", secret) else None

    return certificates.plan_tls(
        cluster,
        own(names.ca_secret(name)),
        own(names.tls_secret(name)),
        snapshot.usable_secrets,
        refused=bool(refused_fields & {"spec.tls.serverSecret", "spec.tls.caSecret"}),
        now=snapshot.now,
        policy=certificates.Policy(
            ca_lifetime=timedelta(seconds=settings.tls_ca_lifetime_seconds),
            certificate_lifetime=timedelta(seconds=settings.tls_certificate_lifetime_seconds),
            renew_fraction=settings.tls_renew_fraction,
        ),
        mint=mint,
    )


def plan_credentials(
    cluster: PostgresCluster,
    snapshot: Snapshot,
    adopted: dict[SecretKind, str | None],
    new_password: Generator,
) -> tuple[dict[SecretKind, str] | None, list[Action], list[Problem]]:
    """Each kind's password (None while a Secret to adopt cannot be used yet: nothing is
    generated in its place), with the Events and problems resolving them found."""
    name = cluster.metadata.name

    def own(secret_name: str) -> Manifest | None:
        secret = snapshot.child("Secret", secret_name)
        return secret if secret is not None and ownership.owns(cluster, "Secret", secret) else None

    vault = own(names.vault(name))
    published = {k: own(names.secret(name, k)) for k in names.SECRET_KINDS}
    if any(
        password is None and credentials.kept(vault, published.get(kind), kind) is None
        for kind, password in adopted.items()
    ):
        return None, [], []
    resolved = credentials.resolve(
        vault,
        published,
        {k: v for k, v in adopted.items() if v is not None},
        # Volumes exist once the StatefulSet does: from then on the database has passwords.
        has_data=bool(snapshot.members or snapshot.claims) or snapshot.statefulset is not None,
        generator=new_password,
    )
    events: list[Action] = [
        Event(
            "CredentialRegenerated",
            type="Warning",
            message=f"Secrets {names.secret(name, kind)} and {names.vault(name)} were both "
            f"deleted: a new {kind} password was generated, which the database does not have",
        )
        for kind in resolved.regenerated
    ]
    problems = [
        Problem(
            c.REFERENCED_SECRET_CHANGED,
            "the password in the Secret named by spec.bootstrap "
            f"({'superuserSecret' if kind == 'superuser' else 'secret'}) changed after the "
            "cluster was created; the cluster keeps its password (in "
            f"{names.secret(name, kind)}): put it back, or rotate it with "
            f"spec.credentials.rotate.{kind}",
        )
        for kind in resolved.adopted_changed
        # Once rotated, the adopted Secret is no longer where the password comes from.
        if credentials.rotation(vault, kind).done == 0
    ]
    return resolved.passwords, events, problems


@dataclass(frozen=True)
class RotationPlan:
    """Password rotations of one pass (see pgherd.controller.credentials)."""

    actions: tuple[Action, ...] = ()
    vault_extra: Mapping[str, str] = field(default_factory=dict, repr=False)
    activity: Activity | None = None
    status: CredentialsStatus | None = None


def plan_rotation(
    cluster: PostgresCluster,
    snapshot: Snapshot,
    passwords: Mapping[SecretKind, str] | None,
    new_password: Generator,
    trust: str | None,
) -> RotationPlan:
    """Rotations asked for by spec.credentials.rotate, one step per pass: choose and keep the
    next password (in the vault), then set it in PostgreSQL and, only after that, in the vault
    and the Secret. One password is committed per pass."""
    name = cluster.metadata.name
    vault = snapshot.child("Secret", names.vault(name))
    if vault is not None and not ownership.owns(cluster, "Secret", vault):
        vault = None
    states = {kind: credentials.rotation(vault, kind) for kind in names.ROTATABLE_KINDS}
    carried_out = {
        kind: {"rotation": st.done, "lastRotated": st.rotated_at}
        for kind, st in states.items()
        if st.done
    }
    status = CredentialsStatus.model_validate(carried_out) if carried_out else None
    if passwords is None:
        return RotationPlan(status=status)
    wanted = {kind: getattr(cluster.spec.credentials.rotate, kind) for kind in states}
    asked = [kind for kind in states if wanted[kind] > states[kind].done]
    for kind in asked:
        if states[kind].pending is None:
            states[kind] = dataclasses.replace(states[kind], pending=new_password())

    def extra(of: Mapping[SecretKind, credentials.Rotation]) -> dict[str, str]:
        out: dict[str, str] = {}
        for kind, st in of.items():
            out |= credentials.rotation_record(kind, st)
        return out

    kept = extra(states)
    if not asked:
        return RotationPlan(vault_extra=kept, status=status)
    kind = asked[0]
    activity = Activity(c.ROTATING_CREDENTIALS,
                        f"rotating the {kind} password (rotation {wanted[kind]})")  # fmt: skip
    live_pending = credentials.rotation(vault, kind).pending
    primary = snapshot.primary
    published = snapshot.child("Secret", names.secret(name, kind))
    if published is not None and not ownership.owns(cluster, "Secret", published):
        published = None  # a neighbour's Secret with the child's name is never written
    if (
        live_pending is None  # the next password is kept first (this pass's vault apply)
        or vault is None
        or published is None
        or primary is None
        or not primary.ready
        or not primary.conn_url
        or not trust
    ):
        return RotationPlan(vault_extra=kept, activity=activity, status=status)
    done = {**states, kind: credentials.Rotation(wanted[kind], snapshot.now, None)}
    rotated = {**passwords, kind: live_pending}
    then = (
        Apply(
            f"the {kind} password is set in PostgreSQL",
            manifest=stamped(render_vault(cluster, rotated, extra(done))),
            resource_version=str(vault["metadata"].get("resourceVersion")),
        ),
        Apply(
            f"the {kind} password is set in PostgreSQL",
            manifest=stamped(
                render_secret(cluster, kind, username_for(cluster, kind), live_pending, trust)
            ),
            resource_version=str(published["metadata"].get("resourceVersion")),
        ),
    )
    action = SetPassword(
        f"spec.credentials.rotate.{kind} is {wanted[kind]}, last carried out {states[kind].done}",
        role=username_for(cluster, kind),
        conn_url=primary.conn_url,
        password=live_pending,
        # A superuser rotation cut short may have set the new password already.
        superuser_passwords=(passwords["superuser"],)
        + ((live_pending,) if kind == "superuser" else ()),
        cadata=trust,
        then=then,
    )
    return RotationPlan((action,), kept, activity, status)


# ---- Patroni's dynamic configuration ------------------------------------------------------
def config_patch(current: dict[str, Any], desired: dict[str, Any]) -> dict[str, Any]:
    """Patch for the keys pgherd manages; postgresql.parameters is owned as a whole."""
    patch: dict[str, Any] = {}
    for key, want in desired.items():
        if key == "postgresql":
            have_pg = current.get("postgresql") or {}
            pg_patch: dict[str, Any] = {}
            for pg_key, pg_want in want.items():
                if pg_key == "parameters":
                    params = merge_patch(have_pg.get("parameters") or {}, pg_want)
                    if params:
                        pg_patch["parameters"] = params
                elif have_pg.get(pg_key) != pg_want:
                    pg_patch[pg_key] = pg_want
            if pg_patch:
                patch["postgresql"] = pg_patch
        elif current.get(key) != want:
            patch[key] = want
    return patch


def held_back_parameters(cluster: PostgresCluster, snapshot: Snapshot) -> dict[str, str]:
    """Parameters not sent to Patroni, each with the reason: libraries the image does not
    have (PostgreSQL would not start with them)."""
    reported = [m.report.libraries for m in snapshot.members if m.report and m.report.libraries]
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


def config_target(snapshot: Snapshot) -> Member | None:
    """Where to send configuration: the primary, or any running member without one."""
    primary = snapshot.primary
    if primary is not None and primary.api_url:
        return primary
    return next((m for m in snapshot.members if m.running and m.api_url), None)


def plan_patroni_config(
    cluster: PostgresCluster, snapshot: Snapshot, held: Mapping[str, str]
) -> list[Action]:
    current = snapshot.dcs_config
    target = config_target(snapshot)
    if current is None or target is None or target.api_url is None:
        return []
    desired = dynamic_config(cluster)
    current_params = (current.get("postgresql") or {}).get("parameters") or {}
    params = dict(desired["postgresql"]["parameters"])
    for key in held:
        # Held back: whatever runs now stays.
        params.pop(key, None)
        if key in current_params:
            params[key] = current_params[key]
    desired = {**desired, "postgresql": {**desired["postgresql"], "parameters": params}}
    patch = config_patch(current, desired)
    if not patch:
        return []
    return [
        PatroniConfig(
            "the spec's configuration differs from Patroni's",
            member=target.name,
            api_url=target.api_url,
            patch=patch,
            hand_edit=config_edited_by_hand(cluster, patch, current),
        ),
    ]


# ---- issue 16: API-server outage ----
# Keys of Patroni's dynamic configuration that operator versions after 0.1.0 set: a cluster
# an older operator made has none, so their first patch is an upgrade, not a hand edit.
ADDED_CONFIG_KEYS = frozenset({"failsafe_mode"})


def config_edited_by_hand(
    cluster: PostgresCluster,
    patch: Mapping[str, Any],
    current: Mapping[str, Any] | None = None,
) -> Event | None:
    """The Warning Event when Patroni's dynamic configuration (the `<cluster>-config`
    ConfigMap) was changed by hand (None otherwise): the spec has not changed since the
    operator last applied it (status observed this generation), so the difference is
    someone's edit, which the PatroniConfig undoes. Act posts it once the patch is done."""
    status = cluster.status
    if status is None or status.observed_generation != cluster.metadata.generation:
        return None
    # Keys this operator version added (ADDED_CONFIG_KEYS) and Patroni's configuration does
    # not hold yet: the operator was upgraded, nobody edited anything.
    patch = {k: v for k, v in patch.items() if k not in ADDED_CONFIG_KEYS or k in (current or {})}
    if not patch:
        return None
    keys = [k for k in sorted(patch) if k != "postgresql"]
    pg = patch.get("postgresql") or {}
    keys += [f"postgresql.{k}" for k in sorted(pg) if k != "parameters"]
    keys += [f"postgresql.parameters.{k}" for k in sorted(pg.get("parameters") or {})]
    return Event(
        c.PATRONI_CONFIG_EDITED,
        type="Warning",
        message=f"Patroni's configuration (ConfigMap {cluster.metadata.name}-config, or its "
        f"REST API) was changed by hand: {', '.join(keys)}; set back to the spec (change the "
        "PostgresCluster instead)",
    )


# ---- switchover, rolling updates, scaling -----------------------------------------------
def _switchover(primary: Member, candidate: str, why: str, *, announce: bool = True) -> Action:
    return Switchover(
        why,
        primary=primary.name,
        api_url=primary.api_url or "",
        candidate=candidate,
        announce=announce,
    )


def plan_switchover_request(
    cluster: PostgresCluster, snapshot: Snapshot, primary: Member
) -> tuple[list[Action], Activity | None, str | None]:
    """Carry out spec.switchover once: (actions, activity, the handled target)."""
    request = cluster.spec.switchover
    handled = cluster.status.switchover_handled if cluster.status else None
    if request is None:
        return [], None, None
    target_name = request.target_instance
    if handled == target_name:
        return [], None, handled
    if target_name == primary.name:
        return [], None, target_name
    target = snapshot.member(target_name)
    if target is not None and switchover_refusal(cluster, snapshot) is not None:
        # Refused (Degraded says why): the other steps (a rolling update) go on.
        return [], None, handled
    if target is None or not target.ready or not primary.api_url:
        return (
            [],
            Activity(
                c.SWITCHOVER, f"switchover to {target_name} waits for it to exist and be ready"
            ),
            handled,
        )
    return (
        [_switchover(primary, target.name, "requested in spec.switchover")],
        Activity(c.SWITCHOVER, f"switching over from {primary.name} to {target.name}"),
        handled,
    )


# ---- drain-aware switchover (pgherd.controller.drain) ---------------------------------------
def drain_decision(cluster: PostgresCluster, snapshot: Snapshot) -> drain.Decision:
    """What a drain of the primary's node asks for, from the snapshot."""
    primary = snapshot.primary

    def instance(m: Member) -> drain.Instance:
        unready = (
            (snapshot.now - m.unready_since).total_seconds()
            if not m.ready and m.unready_since is not None
            else None
        )
        return drain.Instance(m.name, m.node, m.ready, member_lag(snapshot, m), m.terminating,
                              unready, m.name in snapshot.sync_standbys)  # fmt: skip

    return drain.decide(
        instance(primary) if primary is not None else None,
        tuple(instance(m) for m in snapshot.members if primary is None or m.name != primary.name),
        snapshot.draining_nodes,
        instances=cluster.spec.instances,
        max_lag=cluster.spec.patroni.maximum_lag_on_failover,
    )


def plan_drain_switchover(
    primary: Member, drained: drain.Decision
) -> tuple[list[Action], Activity | None]:
    """The switchover a drain of the primary's node asks for (its eviction waits for it)."""
    if drained.message is None:
        return [], None
    activity = Activity(c.NODE_DRAINING, drained.message)
    if drained.switch_to is None or not primary.api_url:
        return [], activity
    why = f"the node of {primary.name} is draining"
    return [_switchover(primary, drained.switch_to, why)], activity


def member_lag(snapshot: Snapshot, m: Member) -> int | None:
    """Bytes m is behind the primary, as Patroni last published (None: unknown)."""
    primary = snapshot.primary
    leader_lsn = snapshot.leader_lsn
    if leader_lsn is None and primary is not None:
        leader_lsn = primary.lsn
    return None if leader_lsn is None or m.lsn is None else max(0, leader_lsn - m.lsn)


def switchover_refusal(cluster: PostgresCluster, snapshot: Snapshot) -> Problem | None:
    """Why spec.switchover's target may not take over now: it is not ready, it lags more
    than spec.patroni.maximumLagOnFailover (promoting it would lose what it has not
    received), or synchronous mode names another standby. None when there is nothing to
    refuse (no request pending, no such instance yet, or a fit target)."""
    request, primary = cluster.spec.switchover, snapshot.primary
    handled = cluster.status.switchover_handled if cluster.status else None
    if request is None or primary is None or request.target_instance in (handled, primary.name):
        return None
    target = snapshot.member(request.target_instance)
    if target is None:
        return None  # it may be created yet (scaling up): Progressing says it waits
    max_lag = cluster.spec.patroni.maximum_lag_on_failover
    lag = member_lag(snapshot, target)
    if not target.ready:
        why = f"is not ready (Patroni state {target.state or 'unknown'})"
    elif lag is None:
        why = "has not reported its WAL position"
    elif lag > max_lag:
        why = (
            f"lags {lag} bytes behind the primary, more than "
            f"spec.patroni.maximumLagOnFailover ({max_lag})"
        )
    elif (sync := snapshot.sync_standbys) and target.name not in sync:
        # Patroni refuses it (412, "candidate name does not match with sync_standby"): asking
        # every pass would be refused every pass, with nothing said to the user.
        why = (
            f"is not the synchronous standby ({', '.join(sorted(sync))}), the only instance "
            f"Patroni lets take over in synchronous mode "
            f"{cluster.spec.synchronous_mode} (spec.synchronousMode)"
        )
    else:
        return None
    return Problem(
        c.SWITCHOVER_REFUSED,
        f"spec.switchover.targetInstance {target.name} {why}: no switchover from "
        f"{primary.name}; it is carried out once {target.name} can take over "
        "(or name another instance, or remove spec.switchover)",
    )


def with_switchover_refusal(cluster: PostgresCluster, snapshot: Snapshot, decided: Plan) -> Plan:
    """The plan with a refused switchover request among its problems (Degraded, one Event)."""
    refused = switchover_refusal(cluster, snapshot)
    if refused is None:
        return decided
    return dataclasses.replace(decided, problems=(*decided.problems, refused))


def _update(snapshot: Snapshot, m: Member, *, recreate: bool, why: str) -> list[Action]:
    """Recreate the pod (new template) or restart PostgreSQL in it (new parameters)."""
    if recreate:
        if m.controller_uid is None or m.controller_uid != snapshot.statefulset_uid:
            return []  # not a pod of this cluster's StatefulSet
        return [Delete(why, kind="Pod", name=m.name, uid=m.uid, takes_instance=True)]
    if not m.api_url:
        return []
    return [Restart(why, member=m.name, api_url=m.api_url)]


def _missing(snapshot: Snapshot) -> list[str]:
    """Pods the StatefulSet is to have that the caches do not show (deleted, not re-created
    yet)."""
    replicas = ((snapshot.statefulset or {}).get("spec") or {}).get("replicas")
    present = {m.ordinal for m in snapshot.members}
    wanted = range(replicas) if isinstance(replicas, int) else ()
    return [names.pod(snapshot.name, i) for i in wanted if i not in present]


def _roll_replica(
    snapshot: Snapshot, replicas: list[Member], reason: str, why: str, *, recreate: bool
) -> tuple[list[Action], Activity | None]:
    # A down replica is updated at once (the new template may be its cure); a healthy one
    # only while every instance is ready, so at most one is ever down.
    down = [m for m in replicas if not m.ready]
    m = down[0] if down else replicas[0]
    if not down and not all(x.ready for x in snapshot.members):
        return [], Activity(reason, f"waiting for every instance to be ready before {m.name}")
    return _update(snapshot, m, recreate=recreate, why=why), Activity(
        reason, f"updating replica {m.name}"
    )


def plan_roll(snapshot: Snapshot, primary: Member) -> tuple[list[Action], Activity | None]:
    """One step of a rolling update or restart: replicas first, then a switchover, then the
    old primary; nothing when nothing is out of date."""
    members = snapshot.members
    outdated = [m for m in members if snapshot.outdated(m)]
    # A server that is not running has nothing to restart: Patroni starts it with the new
    # configuration itself (restarting one that cannot start would only repeat the error).
    restart = [
        m
        for m in members
        if m.pending_restart and not snapshot.outdated(m) and m.state in READY_STATES
    ]
    if not outdated and not restart:
        return [], None
    reason = c.ROLLING_UPDATE if outdated else c.RESTARTING
    why = "rolling update: the pod template changed" if outdated else "parameters need a restart"
    todo = outdated or restart
    # The step under way: a deleted pod keeps its old revision (and soon stops being ready)
    # until it is gone, then it is missing until its StatefulSet re-creates it. Neither may
    # count as "every instance ready": that would take a second instance down.
    going = [m.name for m in members if m.terminating] + _missing(snapshot)
    if going:
        return [], Activity(reason, f"waiting for {going[0]} to be re-created")
    replicas = [m for m in todo if m.name != primary.name]
    if replicas:
        return _roll_replica(snapshot, replicas, reason, why, recreate=bool(outdated))
    # Only the primary is left.
    candidates = takeover_order(snapshot, [
        m
        for m in members
        if m.name != primary.name and m.ready and not snapshot.outdated(m) and not m.pending_restart
    ])  # fmt: skip
    if candidates:
        actions: list[Action] = []
        if all(m.ready for m in members) and primary.api_url:
            reason_why = "rolling update" if outdated else "restart for parameters"
            actions = [_switchover(primary, candidates[0].name, reason_why, announce=False)]
        return actions, Activity(reason, f"switching over from {primary.name} before updating it")
    if len(members) == 1:
        return _update(snapshot, primary, recreate=bool(outdated), why=why), Activity(
            reason, f"updating the only instance {primary.name}"
        )
    return [], Activity(reason, "waiting for an updated replica to take over as primary")


def plan_scale_down(
    cluster: PostgresCluster, snapshot: Snapshot, primary: Member
) -> tuple[list[Action], Activity | None]:
    """Before the highest ordinals go, the primary moves to one that stays."""
    want = cluster.spec.instances
    if primary.ordinal < want:
        return [], None
    keep = takeover_order(snapshot, [m for m in snapshot.members if m.ordinal < want and m.ready])
    actions: list[Action] = []
    if keep and all(m.ready for m in snapshot.members) and primary.api_url:
        actions = [_switchover(primary, keep[0].name, f"scaling down to {want} instances")]
    return actions, Activity(
        c.SCALING, f"moving the primary off {primary.name} before scaling down to {want}"
    )


def scaling_activity(cluster: PostgresCluster, snapshot: Snapshot) -> Activity | None:
    have, want = len(snapshot.members), cluster.spec.instances
    if have == want:
        return None
    if snapshot.primary is None and cluster.status is None:
        return Activity(c.CREATING, f"creating {want} instances")
    return Activity(c.SCALING, f"scaling from {have} to {want} instances")


# ---- synchronous mode: the switchover candidate Patroni accepts (issue 16, operator kills) ---
def takeover_order(snapshot: Snapshot, candidates: list[Member]) -> list[Member]:
    """The candidates of a planned switchover (a rolling update's, a scale-down's), Patroni's
    synchronous standby first. In synchronous mode (on, strict) Patroni refuses a switchover
    to any other member (412, "candidate name does not match with sync_standby"), so taking
    the first by ordinal would be retried, refused, every pass for as long as another member
    is the synchronous standby: the step would never finish. Asynchronous clusters publish no
    synchronous standby: their order is kept."""
    sync = snapshot.sync_standbys
    return sorted(candidates, key=lambda m: m.name not in sync)


def _claim_size(claim: Manifest) -> str | None:
    size = (((claim.get("spec") or {}).get("resources") or {}).get("requests") or {}).get("storage")
    return str(size) if size is not None else None


# ---- storage growth: claims left without their owner (issue 16, operator kills) -----------
def reown_claims(cluster: PostgresCluster, snapshot: Snapshot) -> list[Action]:
    """Give the live StatefulSet back the claims of instances scaled away that its
    re-creation (storage growth) left without an owner.

    With reclaimPolicy Delete the StatefulSet owns its claims (whenDeleted: Delete), so they
    go with the cluster. Storage growth deletes the StatefulSet with its dependents orphaned
    and creates it again: the new one adopts its pods and the claims of its ordinals, but
    not the claim of an instance scaled away (whenScaled: Retain keeps it for a scale-up),
    which would be left behind forever when the cluster is deleted. Only such claims,
    beyond the live StatefulSet's replicas, are patched: the StatefulSet controller itself
    owns the rest (and sets their owner a moment after creating them). The patch carries
    the claim's resourceVersion, so it never overwrites a change it did not see."""
    live, uid = snapshot.statefulset, snapshot.statefulset_uid
    if cluster.spec.storage.reclaim_policy != "Delete" or live is None or uid is None:
        return []
    replicas = (live.get("spec") or {}).get("replicas")
    if not isinstance(replicas, int):
        return []
    prefix = f"{contract.DATA_VOLUME}-{names.statefulset(snapshot.name)}-"
    out: list[Action] = []
    for claim in snapshot.claims:
        meta = claim["metadata"]
        ordinal = str(meta["name"]).removeprefix(prefix)
        if (
            meta.get("ownerReferences")
            or meta.get("deletionTimestamp")
            or not ordinal.isdigit()
            or int(ordinal) < replicas
            or not ownership.owns_instance_object(
                snapshot.name, uid, "PersistentVolumeClaim", claim
            )
        ):
            continue
        owner = {"apiVersion": "apps/v1", "kind": "StatefulSet", "name": live["metadata"]["name"],
                 "uid": uid, "controller": True, "blockOwnerDeletion": True}  # fmt: skip
        out.append(
            Patch(
                "a claim of an instance scaled away, left without its owner when the "
                "StatefulSet was re-created (reclaimPolicy Delete: it goes with the cluster)",
                kind="PersistentVolumeClaim",
                name=str(meta["name"]),
                body={
                    "metadata": {
                        "resourceVersion": meta.get("resourceVersion"),
                        "ownerReferences": [owner],
                    }
                },
            )
        )
    return out


# ---- PostgresPooler ---------------------------------------------------------------------
def plan_pooler_actions(
    snapshot: Snapshot,
    cluster: PostgresCluster | None,
    settings: Settings,
    *,
    new_password: Generator,
    mint: certificates.Mint | None,
    image: str | None = None,
    tls: certificates.Outcome | None = None,
) -> list[Action]:
    """The cluster's poolers (pgherd.controller.poolers): their role, children and status.
    A cluster whose spec does not parse is no cluster to a pooler."""
    problem = (
        (poolers.CLUSTER_INVALID, f"PostgresCluster {snapshot.name!r}: {snapshot.invalid}")
        if snapshot.raw is not None and snapshot.cluster is None
        else None
    )
    inputs = poolers.Inputs(
        cluster=cluster,
        children=snapshot.children,
        poolers=snapshot.poolers,
        seen=snapshot.pooler_seen,
        target=snapshot.sql_target,
        now=snapshot.now,
        image=image,
        tls=tls,
        policy=poolers.policy_from(
            settings.tls_ca_lifetime_seconds,
            settings.tls_certificate_lifetime_seconds,
            settings.tls_renew_fraction,
        ),
        cluster_problem=problem,
    )
    return poolers.plan_poolers(inputs, new_password, mint)


# ---- operator-assisted leader release (spec.patroni.profile fast) -------------------------
def plan_leader_release(cluster: PostgresCluster, snapshot: Snapshot) -> list[Action]:
    """Release Patroni's leader key when the kubelet reports its holder's container dead
    (pgherd.controller.leader_release), conditional on the leader ConfigMap as cached."""
    cm_name = names.patroni_dcs_configmap(snapshot.name, "leader")
    key = leader_release.LeaderKey.from_configmap(snapshot.child("ConfigMap", cm_name))
    member = snapshot.member(key.holder) if key is not None and key.holder else None
    holder = leader_release.HolderPod(member.name, member.container) if member else None
    decided = leader_release.decide(cluster.spec.patroni.profile, key, holder)
    if decided is None:
        return []
    return [
        ReleaseLeader(
            decided.why,
            configmap=cm_name,
            resource_version=decided.resource_version,
            pod=decided.pod,
        )
    ]
