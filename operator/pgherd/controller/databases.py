"""PostgresDatabase decisions, pure: what each database of a cluster needs (SQL to run on the
primary, a finalizer to add or release) and, once act has run it, the resource's status.

A PostgresDatabase points at a PostgresCluster; its events queue the cluster (as a
PostgresBackup's do), and the cluster's pass decides for all of its databases at once, from
what observe read on the primary (pgherd.controller.databases_read): the pg_database rows,
the roles they name, the extensions the image ships, and inside each database its extensions
and the schemas the specs name. Statements are pgherd.controller.sql values: every name is an
identifier or a literal quoted by psycopg at act time, so a hostile name stays one name.

Order inside a database: wanted schemas first (an extension may go into one), then extensions
(created, updated with ALTER EXTENSION ... UPDATE TO when the version differs, moved when the
schema differs), then unwanted extensions, then unwanted schemas. Nothing is dropped with
CASCADE: an extension or a schema something else depends on stays, and the error says why.

Finalizer (`pgherd.io/database-reclaim`): only on a resource with reclaimPolicy delete. There,
deleting the resource needs the operator: DROP DATABASE must run before the object is gone,
or nothing would be left to say which database to drop. A retained database needs nothing on
deletion, so such a resource has no finalizer and deleting it never waits for the operator
(a policy changed to retain removes it). The finalizer is released without dropping anything
when the cluster is gone or being deleted (its databases go with it; nothing could drop them),
when the database is already gone, and when another (older) resource manages the database.
While the cluster is gone there is no finalizer at all, so a resource left behind is deleted
at once.

Dropping (reclaim delete, or ensure: absent) is a plain DROP DATABASE, not WITH (FORCE): the
operator never ends application sessions on its own. While clients are connected, PostgreSQL's
"is being accessed by other users" is the resource's error, and the drop is tried again at each
pass until they leave (or an administrator ends their sessions).

Two resources naming the same database of a cluster: the older one (creationTimestamp, then
name) manages it; the other gets an error and is never acted on.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from pgherd.api.v1alpha1 import (
    DATABASE_KIND,
    Condition,
    PostgresDatabase,
    PostgresDatabaseSpec,
    PostgresDatabaseStatus,
)
from pgherd.controller import conditions as c
from pgherd.controller.actions import Action, Involved, Patch, RunSql, ready_events
from pgherd.controller.sql import Ident, Lit, Statement, join

if TYPE_CHECKING:
    from pgherd.controller.snapshot import Snapshot

Manifest = dict[str, Any]
FINALIZER = "pgherd.io/database-reclaim"

# Ready's reasons on a PostgresDatabase.
APPLIED = "Applied"
DROPPED = "Dropped"
CLUSTER_NOT_FOUND = "ClusterNotFound"
DUPLICATE = "DuplicateDatabase"
WAITING = "WaitingForPrimary"
UNREACHABLE = "Unreachable"
ROLE_NOT_FOUND = "RoleNotFound"
EXTENSION_NOT_AVAILABLE = "ExtensionNotAvailable"
CANNOT_CHANGE = "SetAtCreation"
SQL_FAILED = "SqlFailed"
DELETING = "Deleting"


# ---- what observe reads -----------------------------------------------------------------
@dataclass(frozen=True)
class LiveDatabase:
    """A pg_database row."""

    owner: str
    encoding: str
    collate: str
    ctype: str


@dataclass(frozen=True)
class Inside:
    """What one database holds of what the specs name: installed extensions (name ->
    (version, schema)) and the named schemas (name -> owner); error when it could not be read."""

    extensions: Mapping[str, tuple[str, str]] = field(default_factory=dict)
    schemas: Mapping[str, str] = field(default_factory=dict)
    error: str | None = None


@dataclass(frozen=True)
class DatabasesSeen:
    """What the primary holds for a cluster's PostgresDatabases; error when it could not be
    read at all (then nothing is decided on it)."""

    error: str | None = None
    databases: Mapping[str, LiveDatabase] = field(default_factory=dict)
    roles: frozenset[str] = frozenset()
    # Extension -> the versions the image ships (pg_available_extension_versions), and the
    # default one (pg_available_extensions).
    available: Mapping[str, frozenset[str]] = field(default_factory=dict)
    defaults: Mapping[str, str] = field(default_factory=dict)
    inside: Mapping[str, Inside] = field(default_factory=dict)


def parse(raw: Manifest) -> PostgresDatabase | None:
    try:
        return PostgresDatabase.model_validate(raw)
    except ValidationError:
        return None  # the API's schema refuses what does not parse; a stale one is skipped


def wanted_names(specs: Sequence[PostgresDatabaseSpec]) -> tuple[set[str], set[str], set[str]]:
    """The database, role and extension names the specs mention (what observe asks about)."""
    dbs = {s.name for s in specs}
    roles = {s.owner for s in specs} | {x.owner for s in specs for x in s.schemas if x.owner}
    extensions = {e.name for s in specs for e in s.extensions}
    return dbs, roles, extensions


def group(resource: str) -> str:
    """The RunSql group of a resource's statements on the postgres database."""
    return f"database:{resource}"


def inside_group(resource: str) -> str:
    """The RunSql group of its statements inside the database itself."""
    return f"database:{resource}:inside"


# ---- decisions --------------------------------------------------------------------------
@dataclass(frozen=True)
class Decision:
    """What one pass decided for one PostgresDatabase, for its status once act has run."""

    name: str
    generation: int | None
    stored: Manifest  # the resource as cached (status, finalizers, resourceVersion)
    groups: tuple[str, ...] = ()  # the RunSql groups planned, in order
    reason: str = APPLIED
    error: str | None = None  # known before any SQL runs
    message: str = ""
    waiting: bool = False
    # Remove the finalizer once every group ran (at once when there are none).
    release: bool = False
    # A deleting resource gets no status, only the finalizer's release (or the error).
    deleting: bool = False
    # Finalizer patches, written after the SQL with the status: a refused one concerns this
    # resource alone, never the cluster's status.
    first: tuple[Action, ...] = ()


def _finalizers(raw: Manifest) -> list[str]:
    return list((raw.get("metadata") or {}).get("finalizers") or [])


def _finalizer_patch(raw: Manifest, finalizers: list[str], why: str) -> Patch:
    meta = raw["metadata"]
    return Patch(
        why,
        kind=DATABASE_KIND,
        name=meta["name"],
        # Conditional: a merge patch replaces the whole list, so a finalizer someone added
        # meanwhile must not be lost (the next pass tries again).
        body={"metadata": {"resourceVersion": meta.get("resourceVersion"),
                           "finalizers": finalizers}},
    )  # fmt: skip


def release_patch(raw: Manifest, why: str) -> Patch:
    return _finalizer_patch(raw, [f for f in _finalizers(raw) if f != FINALIZER], why)


def winners(resources: Sequence[tuple[Manifest, PostgresDatabase]]) -> dict[str, str]:
    """Database name -> the resource that manages it: the oldest claiming it (creation
    timestamps are RFC 3339 in UTC, so they sort as text; the name breaks a tie)."""
    out: dict[str, str] = {}
    for _, r in sorted(resources, key=lambda p: (
        str(p[0]["metadata"].get("creationTimestamp") or ""), p[1].metadata.name,
    )):  # fmt: skip
        out.setdefault(r.spec.name, r.metadata.name)
    return out


def _normal_locale(value: str) -> str:
    """en_US.UTF-8 and en_US.utf8 name the same locale."""
    lang, _, codeset = value.partition(".")
    return lang + ("." + codeset.lower().replace("-", "") if codeset else "")


def create_database(spec: PostgresDatabaseSpec) -> Statement:
    options: list[Statement] = [Statement("OWNER {}", (Ident(spec.owner),))]
    template = spec.template
    if template is None and (spec.encoding or spec.locale or spec.lc_collate or spec.lc_ctype):
        template = "template0"  # template1's encoding and locale may differ from these
    if template is not None:
        options.append(Statement("TEMPLATE {}", (Ident(template),)))
    if spec.encoding:
        options.append(Statement("ENCODING {}", (Lit(spec.encoding),)))
    if spec.locale:
        options.append(Statement("LOCALE {}", (Lit(spec.locale),)))
    if spec.lc_collate:
        options.append(Statement("LC_COLLATE {}", (Lit(spec.lc_collate),)))
    if spec.lc_ctype:
        options.append(Statement("LC_CTYPE {}", (Lit(spec.lc_ctype),)))
    return Statement("CREATE DATABASE {} {}", (Ident(spec.name), join(options)))


def drop_database(name: str) -> Statement:
    return Statement("DROP DATABASE {}", (Ident(name),))


def creation_differences(spec: PostgresDatabaseSpec, live: LiveDatabase) -> list[str]:
    """What of the creation-only settings the existing database does not have."""
    out = []
    if spec.encoding and spec.encoding.upper().replace("-", "") != live.encoding.upper():
        out.append(f"encoding {live.encoding} (spec: {spec.encoding})")
    collate = spec.lc_collate or spec.locale
    ctype = spec.lc_ctype or spec.locale
    if collate and _normal_locale(collate) != _normal_locale(live.collate):
        out.append(f"LC_COLLATE {live.collate} (spec: {collate})")
    if ctype and _normal_locale(ctype) != _normal_locale(live.ctype):
        out.append(f"LC_CTYPE {live.ctype} (spec: {ctype})")
    return out


def _schemas(
    spec: PostgresDatabaseSpec, schemas: Mapping[str, str], seen: DatabasesSeen, *, fresh: bool
) -> tuple[list[Statement], list[Statement], list[tuple[str, str]]]:
    first: list[Statement] = []
    then: list[Statement] = []
    problems: list[tuple[str, str]] = []
    for s in spec.schemas:
        owner = s.owner or spec.owner
        if s.ensure == "absent":
            if s.name in schemas:
                then.append(Statement("DROP SCHEMA {}", (Ident(s.name),)))
        elif owner not in seen.roles:
            problems.append((ROLE_NOT_FOUND, f"schema {s.name!r}: role {owner!r} does not exist"))
        elif s.name not in schemas:
            verb = "CREATE SCHEMA IF NOT EXISTS {} AUTHORIZATION {}" if fresh else \
                "CREATE SCHEMA {} AUTHORIZATION {}"  # fmt: skip
            first.append(Statement(verb, (Ident(s.name), Ident(owner))))
        elif schemas[s.name] != owner:
            first.append(Statement("ALTER SCHEMA {} OWNER TO {}", (Ident(s.name), Ident(owner))))
    return first, then, problems


def _extensions(
    spec: PostgresDatabaseSpec, extensions: Mapping[str, tuple[str, str]], seen: DatabasesSeen
) -> tuple[list[Statement], list[Statement], list[tuple[str, str]]]:
    first: list[Statement] = []
    then: list[Statement] = []
    problems: list[tuple[str, str]] = []
    for e in spec.extensions:
        installed = extensions.get(e.name)
        versions = seen.available.get(e.name)
        if e.ensure == "absent":
            if installed is not None:
                then.append(Statement("DROP EXTENSION {}", (Ident(e.name),)))
        elif not versions:
            problems.append((EXTENSION_NOT_AVAILABLE, f"extension {e.name!r} is not available "
                             "in the image (pg_available_extensions)"))  # fmt: skip
        elif e.version is not None and e.version not in versions:
            problems.append(
                (
                    EXTENSION_NOT_AVAILABLE,
                    f"extension {e.name!r} has no version "
                    f"{e.version!r} in the image (it has {', '.join(sorted(versions))})",
                )
            )
        elif installed is None:
            parts: list[Statement] = [Statement("CREATE EXTENSION IF NOT EXISTS {}",
                                                (Ident(e.name),))]  # fmt: skip
            if e.schema_:
                parts.append(Statement("SCHEMA {}", (Ident(e.schema_),)))
            if e.version:
                parts.append(Statement("VERSION {}", (Lit(e.version),)))
            first.append(join(parts))
        else:
            version, where = installed
            wanted = e.version or seen.defaults.get(e.name)
            if wanted and version != wanted:
                first.append(Statement("ALTER EXTENSION {} UPDATE TO {}",
                                       (Ident(e.name), Lit(wanted))))  # fmt: skip
            if e.schema_ and where != e.schema_:
                first.append(Statement("ALTER EXTENSION {} SET SCHEMA {}",
                                       (Ident(e.name), Ident(e.schema_))))  # fmt: skip
    return first, then, problems


def plan_inside(
    spec: PostgresDatabaseSpec, inside: Inside | None, seen: DatabasesSeen
) -> tuple[list[Statement], list[tuple[str, str]]]:
    """The statements inside the database (inside None: just created, holding what its
    template holds, so schemas are created only if missing), and the problems (reason,
    message) that leave a part out. Wanted schemas, then extensions, then unwanted
    extensions, then unwanted schemas (an extension may live in a schema)."""
    schema_first, schema_then, schema_problems = _schemas(
        spec, inside.schemas if inside else {}, seen, fresh=inside is None
    )
    ext_first, ext_then, ext_problems = _extensions(spec, inside.extensions if inside else {}, seen)
    statements = schema_first + ext_first + ext_then + schema_then
    return statements, schema_problems + ext_problems


def _cluster_missing(snapshot: Snapshot, spec: PostgresDatabaseSpec) -> str | None:
    if snapshot.raw is None:
        return f"PostgresCluster {spec.cluster} does not exist in namespace {snapshot.namespace}"
    if (snapshot.raw.get("metadata") or {}).get("deletionTimestamp"):
        return f"PostgresCluster {spec.cluster} is being deleted"
    return None


def _shown(statements: Sequence[Statement]) -> str:
    return "; ".join(s.shown() for s in statements)[:1000]


def decide(  # noqa: PLR0911, PLR0912, PLR0915 - one branch per case of the module docstring
    raw: Manifest,
    resource: PostgresDatabase,
    snapshot: Snapshot,
    winner: str | None,
) -> tuple[list[Action], Decision]:
    """The actions and the decision for one PostgresDatabase of the cluster."""
    spec, meta = resource.spec, resource.metadata
    base = Decision(meta.name, meta.generation, raw)
    finalizers = _finalizers(raw)
    ours = FINALIZER in finalizers
    deleting = bool((raw.get("metadata") or {}).get("deletionTimestamp"))
    missing = _cluster_missing(snapshot, spec)
    seen = snapshot.databases_seen
    sql_target = snapshot.sql_target

    def run(group_: str, database: str, statements: list[Statement], why: str) -> RunSql:
        return RunSql(why, group=group_, database=database, statements=tuple(statements),
                      target=sql_target)  # fmt: skip

    if deleting:
        if not ours:
            return [], Decision(meta.name, meta.generation, raw, deleting=True, release=False,
                                reason=DELETING, message="deleting")  # fmt: skip
        done = Decision(meta.name, meta.generation, raw, deleting=True, release=True,
                        reason=DELETING)  # fmt: skip
        if missing is not None:
            return [], _with(done, message=f"{missing}: nothing to drop")
        if spec.reclaim_policy == "retain" or winner != meta.name:
            return [], _with(done, message="database retained")
        if seen is None:
            return [], _with(
                done,
                release=False,
                waiting=True,
                reason=WAITING,
                message="waiting for a ready primary to drop the database",
            )
        if seen.error is not None:
            return [], _with(done, release=False, reason=UNREACHABLE, error=seen.error)
        if spec.name not in seen.databases:
            return [], _with(done, message="database already gone")
        drop = run(
            group(meta.name),
            "postgres",
            [drop_database(spec.name)],
            f"PostgresDatabase {meta.name} deleted with reclaimPolicy delete",
        )
        return [drop], _with(done, groups=(drop.group,), message="database dropped")

    actions: list[Action] = []
    if missing is not None:
        if ours:  # the cluster's databases went with it: nothing to wait for on deletion
            actions.append(release_patch(raw, f"{missing}: nothing to drop on deletion"))
        return actions, _with(base, reason=CLUSTER_NOT_FOUND, error=missing)
    if spec.reclaim_policy == "delete" and not ours:
        actions.append(
            _finalizer_patch(
                raw, [*finalizers, FINALIZER], "reclaimPolicy delete: the database is dropped first"
            )
        )
    elif spec.reclaim_policy == "retain" and ours:
        actions.append(release_patch(raw, "reclaimPolicy retain: deleting needs nothing"))
    if winner != meta.name:
        return actions, _with(base, reason=DUPLICATE, error=(
            f"database {spec.name!r} of PostgresCluster {spec.cluster} is managed by the older "
            f"PostgresDatabase {winner}; this one is ignored"))  # fmt: skip
    if seen is None:
        return actions, _with(
            base, waiting=True, reason=WAITING, message="waiting for a ready primary"
        )
    if seen.error is not None:
        return actions, _with(base, reason=UNREACHABLE, error=seen.error)
    live = seen.databases.get(spec.name)
    if spec.ensure == "absent":
        if live is None:
            return actions, _with(base, reason=DROPPED, message="database absent")
        drop = run(group(meta.name), "postgres", [drop_database(spec.name)], "ensure: absent")
        return [*actions, drop], _with(
            base, groups=(drop.group,), reason=DROPPED, message="database dropped"
        )
    if spec.owner not in seen.roles:
        return actions, _with(base, reason=ROLE_NOT_FOUND, error=(
            f"owner role {spec.owner!r} does not exist; create it (spec.managed.roles or by "
            "hand) and the database follows"))  # fmt: skip
    outer: list[Statement] = []
    problems: list[tuple[str, str]] = []
    if live is None:
        outer.append(create_database(spec))
    else:
        if live.owner != spec.owner:
            outer.append(Statement("ALTER DATABASE {} OWNER TO {}",
                                   (Ident(spec.name), Ident(spec.owner))))  # fmt: skip
        problems += [(CANNOT_CHANGE, f"the database has {d}, which is set only at creation")
                     for d in creation_differences(spec, live)]  # fmt: skip
    inside = seen.inside.get(spec.name) if live is not None else None
    if inside is not None and inside.error is not None:
        problems.append((UNREACHABLE, inside.error))
        inner: list[Statement] = []
    else:
        inner, inner_problems = plan_inside(spec, inside, seen)
        problems += inner_problems
    groups: list[str] = []
    if outer:
        actions.append(run(group(meta.name), "postgres", outer, "database " + spec.name))
        groups.append(group(meta.name))
    if inner:
        actions.append(
            run(
                inside_group(meta.name),
                spec.name,
                inner,
                "extensions and schemas of database " + spec.name,
            )
        )
        groups.append(inside_group(meta.name))
    ran = _shown(outer + inner)
    return actions, _with(
        base,
        groups=tuple(groups),
        reason=problems[0][0] if problems else APPLIED,
        error="; ".join(m for _, m in problems)[:2000] or None,
        message=f"ran: {ran}" if ran else "database in place",
    )


def _with(d: Decision, **changes: Any) -> Decision:
    return replace(d, **changes)


def plan_databases(snapshot: Snapshot) -> tuple[list[Action], tuple[Decision, ...]]:
    """Every PostgresDatabase of the cluster: the SQL to run, and the decisions that after_act
    turns into finalizer and status patches."""
    parsed = [(raw, r) for raw in snapshot.databases if (r := parse(raw)) is not None]
    seen = snapshot.databases_seen
    managed = snapshot.cluster.spec.managed if snapshot.cluster is not None else None
    if seen is not None and managed is not None:
        # The managed roles' SQL runs first in the same pass: their roles count as there (if
        # creating one failed, CREATE DATABASE says so).
        created = {r.name for r in managed.roles if r.ensure == "present"}
        snapshot = replace(snapshot, databases_seen=replace(seen, roles=seen.roles | created))
    owner = winners(parsed)
    actions: list[Action] = []
    decisions: list[Decision] = []
    for raw, resource in parsed:
        more, decision = decide(raw, resource, snapshot, owner.get(resource.spec.name))
        actions += [a for a in more if isinstance(a, RunSql)]
        first = tuple(a for a in more if not isinstance(a, RunSql))
        decisions.append(replace(decision, first=first))
    return actions, tuple(decisions)


# ---- after act ----------------------------------------------------------------------------
def status_of(
    decision: Decision, sql_errors: Mapping[str, str], now: datetime
) -> PostgresDatabaseStatus:
    """The resource's status once its statements ran (or failed)."""
    stored = PostgresDatabaseStatus.model_validate(decision.stored.get("status") or {})
    if decision.waiting and stored.applied and stored.observed_generation == decision.generation:
        return stored  # applied before; a primary briefly missing (a switchover) changes nothing
    failed = next((sql_errors[g] for g in decision.groups if g in sql_errors), None)
    reason = SQL_FAILED if failed and decision.error is None else decision.reason
    error = "; ".join(e for e in (decision.error, failed) if e) or None
    applied = error is None and not decision.waiting
    message = decision.message if applied or decision.waiting else "not applied"
    conditions: list[Condition] = c.set_condition(
        list(stored.conditions), c.READY, status="True" if applied else "False",
        reason=reason, message=error or message, generation=decision.generation, now=now,
    )  # fmt: skip
    return PostgresDatabaseStatus(
        applied=applied,
        observed_generation=decision.generation,
        message=message,
        error=error,
        conditions=conditions,
    )


def _dump(status: PostgresDatabaseStatus) -> Manifest:
    out: Manifest = status.model_dump(mode="json", by_alias=True, exclude={"kopf"})
    return out


def after_act(
    decisions: Sequence[Decision],
    sql_errors: Mapping[str, str],
    sql_done: set[str],
    now: datetime,
) -> list[Action]:
    """The status patches (only where something changed) and finalizer releases that follow
    what act did."""
    actions: list[Action] = []
    for d in decisions:
        actions += d.first
        ran = all(g in sql_done for g in d.groups)
        if d.deleting:
            if d.release and ran:
                actions.append(release_patch(d.stored, d.message or "deleted"))
                continue  # the object goes: no status to write
            if not (d.release or d.error or d.waiting) and not d.groups:
                continue
        new = _dump(status_of(d, sql_errors, now))
        old = _dump(PostgresDatabaseStatus.model_validate(d.stored.get("status") or {}))
        patch = {k: v for k, v in new.items() if old.get(k) != v}
        if patch:
            # Not conditional: only the operator writes a PostgresDatabase's status.
            actions.append(Patch(str(new.get("error") or new.get("message")),
                                 kind=DATABASE_KIND, name=d.name, body={"status": patch},
                                 subresource="status"))  # fmt: skip
            actions += events_of(d, old, new)
    return actions


# Ready False on the way to applied: no warning (a primary missing for a moment).
PROGRESS = frozenset({WAITING})


def _ready(status: Manifest) -> Manifest | None:
    return next((x for x in status.get("conditions") or [] if x.get("type") == c.READY), None)


def events_of(decision: Decision, old: Manifest, new: Manifest) -> list[Action]:
    """The Event on the PostgresDatabase itself that its status going from old to new is
    worth (actions.ready_events)."""
    uid = (decision.stored.get("metadata") or {}).get("uid")
    involved = Involved(DATABASE_KIND, decision.name, uid)
    return list(ready_events(involved, _ready(old), _ready(new), PROGRESS))
