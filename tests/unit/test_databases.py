"""PostgresDatabase decisions, table-driven: for a snapshot (the resources, what the primary
holds), the SQL planned, the finalizer added or released, and the status after act; and the
read of the primary from query rows."""

from __future__ import annotations

import copy
from dataclasses import replace
from typing import Any

import pytest

from pgherd.controller import databases as d
from pgherd.controller import databases_read
from pgherd.controller.actions import Action, Event, Involved, Patch, RunSql
from pgherd.controller.databases import FINALIZER, DatabasesSeen, Inside, LiveDatabase
from pgherd.controller.plan import plan
from pgherd.controller.postgres import PostgresError
from pgherd.controller.roles import RolesSeen
from pgherd.controller.snapshot import Snapshot
from pgherd.controller.sql import Statement, Target
from tests.unit.snapshots import NOW, SETTINGS, cluster_raw, healthy, snapshot

Manifest = dict[str, Any]
TARGET = Target("postgres://10.0.0.0:5432/postgres", ("pw",), "CA")
EXT = {"citext": frozenset({"1.6"}), "hstore": frozenset({"1.7", "1.8"})}
DEFAULTS = {"citext": "1.6", "hstore": "1.8"}


def resource(
    name: str = "app",
    *,
    db: str = "app",
    owner: str = "alice",
    created: str = "2026-11-30T10:00:00Z",
    finalizers: list[str] | None = None,
    deleting: bool = False,
    status: dict[str, Any] | None = None,
    **spec: Any,
) -> Manifest:
    meta: Manifest = {
        "name": name,
        "namespace": "prod",
        "uid": f"uid-{name}",
        "generation": 1,
        "resourceVersion": "7",
        "creationTimestamp": created,
    }
    if finalizers is not None:
        meta["finalizers"] = finalizers
    if deleting:
        meta["deletionTimestamp"] = "2026-11-30T12:00:00Z"
    raw: Manifest = {
        "apiVersion": "pgherd.io/v1alpha1",
        "kind": "PostgresDatabase",
        "metadata": meta,
        "spec": {"cluster": "db", "name": db, "owner": owner, **spec},
    }
    if status is not None:
        raw["status"] = status
    return raw


def seen(
    dbs: dict[str, LiveDatabase] | None = None,
    roles: tuple[str, ...] = ("alice", "bob"),
    inside: dict[str, Inside] | None = None,
    error: str | None = None,
) -> DatabasesSeen:
    return DatabasesSeen(
        error=error,
        databases=dbs or {},
        roles=frozenset(roles),
        available=EXT,
        defaults=DEFAULTS,
        inside=inside or {},
    )


LIVE = LiveDatabase("alice", "UTF8", "C", "C")


def snap(
    *resources: Manifest,
    seen_: DatabasesSeen | None = None,
    cluster: Manifest | bool | None = True,
) -> Snapshot:
    raw = cluster_raw() if cluster is True else (cluster or None)
    return Snapshot("prod", "db", NOW, raw=raw, databases=resources, databases_seen=seen_,
                    sql_target=TARGET if seen_ is not None else None)  # fmt: skip


def sql(actions: list[Action]) -> list[tuple[str, str, list[str]]]:
    return [
        (a.group, a.database, [s.shown() for s in a.statements])
        for a in actions
        if isinstance(a, RunSql)
    ]


def patches(actions: list[Action]) -> list[Manifest]:
    return [a.body for a in actions if isinstance(a, Patch)]


def finalizer_patches(s: Snapshot) -> list[Manifest]:
    """The finalizer patches after act (none of them runs before the SQL)."""
    actions, decisions = d.plan_databases(s)
    assert not [a for a in actions if not isinstance(a, RunSql)]
    done = {a.group for a in actions if isinstance(a, RunSql)}
    return [p for p in patches(d.after_act(decisions, {}, done, NOW)) if "metadata" in p]


# ---- SQL --------------------------------------------------------------------------------
SQL_CASES = [
    (
        "a new database with encoding and locale: template0, then idempotent creates inside",
        resource(
            encoding="UTF8",
            locale="C",
            schemas=[{"name": "s", "owner": "bob"}],
            extensions=[{"name": "citext", "schema": "s", "version": "1.6"}],
        ),
        seen(),
        [
            (
                "database:app",
                "postgres",
                [
                    'CREATE DATABASE "app" OWNER "alice" TEMPLATE "template0" ENCODING \'UTF8\' '
                    "LOCALE 'C'"
                ],
            ),
            (
                "database:app:inside",
                "app",
                [
                    'CREATE SCHEMA IF NOT EXISTS "s" AUTHORIZATION "bob"',
                    'CREATE EXTENSION IF NOT EXISTS "citext" SCHEMA "s" VERSION \'1.6\'',
                ],
            ),
        ],
    ),
    (
        "a new database, no creation settings: no template named",
        resource(),
        seen(),
        [("database:app", "postgres", ['CREATE DATABASE "app" OWNER "alice"'])],
    ),
    (
        "LC_COLLATE and LC_CTYPE apart, and a template given",
        resource(lcCollate="C", lcCtype="en_US.UTF-8", template="tpl"),
        seen(),
        [
            (
                "database:app",
                "postgres",
                [
                    'CREATE DATABASE "app" OWNER "alice" TEMPLATE "tpl" LC_COLLATE \'C\' '
                    "LC_CTYPE 'en_US.UTF-8'"
                ],
            )
        ],
    ),
    (
        "hostile names stay single identifiers",
        resource(db='x"; DROP DATABASE postgres; --', owner="bob"),
        seen(),
        [
            (
                "database:app",
                "postgres",
                ['CREATE DATABASE "x""; DROP DATABASE postgres; --" OWNER "bob"'],
            )
        ],
    ),
    (
        "all in place: nothing to run",
        resource(schemas=[{"name": "s"}], extensions=[{"name": "citext"}]),
        seen({"app": LIVE}, inside={"app": Inside({"citext": ("1.6", "public")}, {"s": "alice"})}),
        [],
    ),
    (
        "owner changed by hand: set back",
        resource(),
        seen({"app": replace(LIVE, owner="postgres")}, inside={"app": Inside()}),
        [("database:app", "postgres", ['ALTER DATABASE "app" OWNER TO "alice"'])],
    ),
    (
        "a schema dropped and one's owner changed by hand; wanted owner defaults to the db's",
        resource(schemas=[{"name": "a"}, {"name": "b", "owner": "bob"}]),
        seen({"app": LIVE}, inside={"app": Inside(schemas={"b": "alice"})}),
        [
            (
                "database:app:inside",
                "app",
                ['CREATE SCHEMA "a" AUTHORIZATION "alice"', 'ALTER SCHEMA "b" OWNER TO "bob"'],
            )
        ],
    ),
    (
        "versions: update to the one asked for, or to the image's default; move schema",
        resource(
            extensions=[{"name": "hstore", "version": "1.8"}, {"name": "citext", "schema": "s"}]
        ),
        seen(
            {"app": LIVE},
            inside={"app": Inside({"hstore": ("1.7", "public"), "citext": ("1.5", "public")})},
        ),
        [
            (
                "database:app:inside",
                "app",
                [
                    "ALTER EXTENSION \"hstore\" UPDATE TO '1.8'",
                    "ALTER EXTENSION \"citext\" UPDATE TO '1.6'",
                    'ALTER EXTENSION "citext" SET SCHEMA "s"',
                ],
            )
        ],
    ),
    (
        "absent: extensions dropped before schemas, wanted created first; never CASCADE",
        resource(
            schemas=[
                {"name": "old", "ensure": "absent"},
                {"name": "new"},
                {"name": "gone", "ensure": "absent"},
            ],
            extensions=[
                {"name": "citext", "ensure": "absent"},
                {"name": "hstore", "schema": "new"},
            ],
        ),
        seen({"app": LIVE}, inside={"app": Inside({"citext": ("1.6", "old")}, {"old": "x"})}),
        [
            (
                "database:app:inside",
                "app",
                [
                    'CREATE SCHEMA "new" AUTHORIZATION "alice"',
                    'CREATE EXTENSION IF NOT EXISTS "hstore" SCHEMA "new"',
                    'DROP EXTENSION "citext"',
                    'DROP SCHEMA "old"',
                ],
            )
        ],
    ),
    (
        "ensure absent: DROP DATABASE (plain, no FORCE)",
        resource(ensure="absent"),
        seen({"app": LIVE}),
        [("database:app", "postgres", ['DROP DATABASE "app"'])],
    ),
    ("ensure absent, already gone: nothing", resource(ensure="absent"), seen(), []),
    ("owner missing: no SQL at all", resource(owner="carol"), seen(), []),
    ("no ready primary: nothing read, nothing run", resource(), None, []),
    ("the primary unreachable: nothing run", resource(), seen(error="unreachable"), []),
]


@pytest.mark.parametrize(("why", "raw", "seen_", "expected"), SQL_CASES,
                         ids=[c[0] for c in SQL_CASES])  # fmt: skip
def test_sql_planned(why: str, raw: Manifest, seen_: DatabasesSeen | None,
                     expected: list[Any]) -> None:  # fmt: skip
    actions, _ = d.plan_databases(snap(raw, seen_=seen_))
    assert sql(actions) == expected, why
    assert all(a.target == TARGET for a in actions if isinstance(a, RunSql))


# ---- errors and status ------------------------------------------------------------------
ERROR_CASES = [
    ("owner missing", resource(owner="carol"), seen(), d.ROLE_NOT_FOUND,
     "owner role 'carol' does not exist"),
    ("extension not in the image", resource(extensions=[{"name": "postgis"}]), seen(),
     d.EXTENSION_NOT_AVAILABLE, "extension 'postgis' is not available in the image"),
    ("version not in the image", resource(extensions=[{"name": "hstore", "version": "9"}]),
     seen(), d.EXTENSION_NOT_AVAILABLE, "has no version '9' in the image (it has 1.7, 1.8)"),
    ("schema owner missing", resource(schemas=[{"name": "s", "owner": "carol"}]), seen(),
     d.ROLE_NOT_FOUND, "schema 's': role 'carol' does not exist"),
    ("encoding differs from the existing database",
     resource(encoding="LATIN1", locale="en_US.utf8"),
     seen({"app": replace(LIVE, collate="en_US.UTF-8", ctype="en_US.UTF-8")},
          inside={"app": Inside()}),
     d.CANNOT_CHANGE, "the database has encoding UTF8 (spec: LATIN1)"),
    ("cannot read inside the database", resource(),
     seen({"app": LIVE}, inside={"app": Inside(error="cannot read database 'app': no")}),
     d.UNREACHABLE, "cannot read database 'app': no"),
    ("the primary unreachable", resource(), seen(error="cannot read the primary: x"),
     d.UNREACHABLE, "cannot read the primary: x"),
    ("cluster missing", resource(), None, d.CLUSTER_NOT_FOUND,
     "PostgresCluster db does not exist in namespace prod"),
]  # fmt: skip


@pytest.mark.parametrize(("why", "raw", "seen_", "reason", "error"), ERROR_CASES,
                         ids=[c[0] for c in ERROR_CASES])  # fmt: skip
def test_errors(why: str, raw: Manifest, seen_: DatabasesSeen | None, reason: str,
                error: str) -> None:  # fmt: skip
    s = snap(raw, seen_=seen_, cluster=why != "cluster missing")
    _, (decision,) = d.plan_databases(s)
    status = d.status_of(decision, {}, NOW)
    assert (status.applied, status.conditions[0].reason) == (False, reason), why
    assert error in (status.error or ""), status.error


def test_an_unavailable_extension_leaves_the_rest_applied() -> None:
    raw = resource(extensions=[{"name": "postgis"}, {"name": "citext"}],
                   schemas=[{"name": "s"}])  # fmt: skip
    actions, _ = d.plan_databases(snap(raw, seen_=seen({"app": LIVE}, inside={"app": Inside()})))
    assert sql(actions) == [("database:app:inside", "app", [
        'CREATE SCHEMA "s" AUTHORIZATION "alice"',
        'CREATE EXTENSION IF NOT EXISTS "citext"'])]  # fmt: skip


def test_the_older_resource_owns_the_database() -> None:
    old = resource("b-old", created="2026-11-30T09:00:00Z")
    new = resource("a-new", created="2026-11-30T10:00:00Z", owner="bob")
    actions, decisions = d.plan_databases(snap(new, old, seen_=seen()))
    assert [a.group for a in actions if isinstance(a, RunSql)] == ["database:b-old"]
    loser = next(x for x in decisions if x.name == "a-new")
    assert loser.reason == d.DUPLICATE
    assert "managed by the older PostgresDatabase b-old" in (loser.error or "")
    # Same creation time: the name decides.
    twin = resource("a-twin", created="2026-11-30T09:00:00Z")
    assert d.winners([(r, d.parse(r)) for r in (old, twin)]) == {"app": "a-twin"}  # type: ignore[misc]


# ---- finalizer --------------------------------------------------------------------------
FINALIZER_CASES = [
    ("delete policy: the finalizer is added, conditional on the version seen",
     resource(reclaimPolicy="delete", finalizers=["other"]), seen(),
     [{"metadata": {"resourceVersion": "7", "finalizers": ["other", FINALIZER]}}]),
    ("retain policy: no finalizer", resource(), seen(), []),
    ("policy changed to retain: released, others kept",
     resource(finalizers=["other", FINALIZER]), seen(),
     [{"metadata": {"resourceVersion": "7", "finalizers": ["other"]}}]),
    ("delete policy, finalizer present: nothing", resource(reclaimPolicy="delete",
                                                           finalizers=[FINALIZER]), seen(), []),
]  # fmt: skip


@pytest.mark.parametrize(("why", "raw", "seen_", "expected"), FINALIZER_CASES,
                         ids=[c[0] for c in FINALIZER_CASES])  # fmt: skip
def test_finalizer(why: str, raw: Manifest, seen_: DatabasesSeen, expected: list[Any]) -> None:
    assert finalizer_patches(snap(raw, seen_=seen_)) == expected, why


def test_no_finalizer_while_the_cluster_is_missing() -> None:
    raw = resource(reclaimPolicy="delete", finalizers=[FINALIZER])
    assert finalizer_patches(snap(raw, cluster=None)) == [
        {"metadata": {"resourceVersion": "7", "finalizers": []}}
    ]
    fresh = resource(reclaimPolicy="delete")
    assert finalizer_patches(snap(fresh, cluster=None)) == []


def _deleting(**kw: Any) -> Manifest:
    return resource(deleting=True, **{"reclaimPolicy": "delete", "finalizers": [FINALIZER], **kw})


gone_cluster = cluster_raw()
gone_cluster["metadata"]["deletionTimestamp"] = "2026-11-30T11:00:00Z"
DELETE_CASES = [
    # (why, resources, seen, cluster, SQL, released)
    ("drop, then release", [_deleting()], seen({"app": LIVE}), True,
     [("database:app", "postgres", ['DROP DATABASE "app"'])], True),
    ("database already gone: release", [_deleting()], seen(), True, [], True),
    ("cluster gone: release without waiting", [_deleting()], None, None, [], True),
    ("cluster being deleted: release", [_deleting()], seen({"app": LIVE}), gone_cluster, [],
     True),
    ("retain (finalizer left from delete): release, no drop",
     [_deleting(reclaimPolicy="retain")], seen({"app": LIVE}), True, [], True),
    ("another resource manages it: release, never drop",
     [_deleting(created="2026-11-30T11:00:00Z"), resource("older", created="2026-11-30T01:00:00Z")],
     seen({"app": LIVE}, inside={"app": Inside()}), True, [], True),
    ("no primary: wait", [_deleting()], None, True, [], False),
    ("primary unreachable: wait", [_deleting()], seen(error="x"), True, [], False),
    ("not ours (retain, no finalizer): nothing", [resource(deleting=True)], seen({"app": LIVE}),
     True, [], False),
]  # fmt: skip


@pytest.mark.parametrize(("why", "resources", "seen_", "cluster", "expected", "released"),
                         DELETE_CASES, ids=[c[0] for c in DELETE_CASES])  # fmt: skip
def test_deletion(why: str, resources: list[Manifest], seen_: DatabasesSeen | None,
                  cluster: Any, expected: list[Any], released: bool) -> None:  # fmt: skip
    actions, decisions = d.plan_databases(snap(*resources, seen_=seen_, cluster=cluster))
    assert sql(actions) == expected, why
    done = {a.group for a in actions if isinstance(a, RunSql)}
    after = d.after_act(decisions, {}, done, NOW)
    release = [p for p in patches(after) if "finalizers" in p.get("metadata", {})]
    assert bool(release) == released, why
    if released:
        assert FINALIZER not in release[0]["metadata"]["finalizers"]


def test_a_drop_refused_keeps_the_finalizer_and_says_why() -> None:
    _, decisions = d.plan_databases(snap(_deleting(), seen_=seen({"app": LIVE})))
    error = 'DROP DATABASE "app": database "app" is being accessed by other users'
    after = d.after_act(decisions, {"database:app": error}, set(), NOW)
    assert [(a.subresource, a.body["status"]["error"]) for a in after
            if isinstance(a, Patch)] == [("status", error)]  # fmt: skip


# ---- status after act -------------------------------------------------------------------
def test_status_is_written_only_when_it_changes() -> None:
    raw = resource()
    s = snap(raw, seen_=seen({"app": LIVE}, inside={"app": Inside()}))
    _, decisions = d.plan_databases(s)
    (first,) = d.after_act(decisions, {}, set(), NOW)
    assert isinstance(first, Patch) and first.subresource == "status"
    body = first.body["status"]
    assert (body["applied"], body["observedGeneration"], body["message"]) == (
        True, 1, "database in place")  # fmt: skip
    assert body["conditions"][0]["reason"] == d.APPLIED
    stored = copy.deepcopy(raw)
    stored["status"] = body
    _, again = d.plan_databases(snap(stored, seen_=seen({"app": LIVE}, inside={"app": Inside()})))
    assert d.after_act(again, {}, set(), NOW) == []


def test_a_failed_statement_is_the_error() -> None:
    _, decisions = d.plan_databases(snap(resource(), seen_=seen()))
    after = d.after_act(decisions, {"database:app": "CREATE DATABASE: boom"}, set(), NOW)
    (status,) = [a.body["status"] for a in after if isinstance(a, Patch)]
    assert (status["applied"], status["error"]) == (False, "CREATE DATABASE: boom")
    assert status["conditions"][0]["reason"] == d.SQL_FAILED


def test_waiting_for_a_primary_keeps_an_applied_status() -> None:
    applied = {"applied": True, "observedGeneration": 1, "message": "database in place"}
    _, decisions = d.plan_databases(snap(resource(status=applied), seen_=None))
    assert d.after_act(decisions, {}, set(), NOW) == []
    _, fresh = d.plan_databases(snap(resource(), seen_=None))
    (patch,) = d.after_act(fresh, {}, set(), NOW)
    assert isinstance(patch, Patch)
    assert patch.body["status"]["message"] == "waiting for a ready primary"


# ---- the whole plan ---------------------------------------------------------------------
def test_the_cluster_plan_carries_the_databases() -> None:
    s = replace(snapshot(pods=healthy(1)), databases=(resource(),), databases_seen=seen(),
                sql_target=TARGET)  # fmt: skip
    decided = plan(s, SETTINGS)
    assert [a.group for a in decided.actions if isinstance(a, RunSql)] == ["database:app"]
    assert [x.name for x in decided.databases] == ["app"]
    gone = Snapshot("prod", "db", NOW, databases=(resource(),))
    assert [x.error for x in plan(gone, SETTINGS).databases] == [
        "PostgresCluster db does not exist in namespace prod"]  # fmt: skip


def test_no_databases_nothing_decided() -> None:
    decided = plan(snapshot(pods=healthy(1)), SETTINGS)
    assert decided.databases == ()
    assert not any(isinstance(a, RunSql) for a in decided.actions)


# ---- reading the primary ----------------------------------------------------------------
def test_read_parses_rows_and_reads_inside_only_what_is_wanted() -> None:
    calls: list[tuple[str, Statement]] = []

    def reader(target: Target, dbname: str, query: Statement) -> list[tuple[Any, ...]]:
        calls.append((dbname, query))
        if dbname == "postgres":
            return [("db", "app", "alice", "UTF8", "C", "C"), ("role", "alice", None, None,
                     None, None), ("version", "citext", "1.6", None, None, None),
                    ("default", "citext", "1.6", None, None, None)]  # fmt: skip
        if dbname == "app":
            return [("ext", "citext", "1.6", "public"), ("schema", "s", "alice", None)]
        raise PostgresError("no such database")

    got = databases_read.read(reader, TARGET, [
        resource(schemas=[{"name": "s"}], extensions=[{"name": "citext"}]),
        resource("gone", db="gone"),  # not on the primary: nothing to read inside
        resource("dropping", db="app", deleting=True),
    ])  # fmt: skip
    assert got == DatabasesSeen(
        databases={"app": LIVE}, roles=frozenset({"alice"}),
        available={"citext": frozenset({"1.6"})}, defaults={"citext": "1.6"},
        inside={"app": Inside({"citext": ("1.6", "public")}, {"s": "alice"})},
    )  # fmt: skip
    assert [c[0] for c in calls] == ["postgres", "app"]
    # Every name travels as a literal.
    assert "ARRAY['app', 'gone']::text[]" in calls[0][1].shown()


def test_read_failures_become_errors() -> None:
    def down(target: Target, dbname: str, query: Statement) -> list[tuple[Any, ...]]:
        raise PostgresError("cannot connect", transient=True)

    assert databases_read.read(down, TARGET, [resource()]).error == (
        "cannot read the primary: cannot connect")  # fmt: skip

    def inside_fails(target: Target, dbname: str, query: Statement) -> list[tuple[Any, ...]]:
        if dbname == "postgres":
            return [("db", "app", "alice", "UTF8", "C", "C")]
        raise PostgresError("no connect")

    got = databases_read.read(inside_fails, TARGET, [resource()])
    assert got.inside["app"].error == "cannot read database 'app': no connect"


def test_a_managed_role_owns_a_database_created_by_the_same_pass() -> None:
    s = replace(
        snapshot({"managed": {"roles": [{"name": "carol", "login": True}]}}, pods=healthy(1)),
        databases=(resource(owner="carol"),),
        databases_seen=seen(),
        roles_seen=RolesSeen(),
        sql_target=TARGET,
    )
    groups = [a.group for a in plan(s, SETTINGS).actions if isinstance(a, RunSql)]
    assert groups == ["role:carol", "database:app"]


# ---- Events on the resource itself -------------------------------------------------------
def _status_after(raw: Manifest, seen_: DatabasesSeen | None, errors: dict[str, str],
                  cluster: bool = True) -> tuple[list[Action], Manifest]:  # fmt: skip
    """One pass (act ran the SQL; errors: the groups that failed): its actions after act,
    and the resource as stored once they are written."""
    actions, decisions = d.plan_databases(snap(raw, seen_=seen_, cluster=cluster))
    done = {a.group for a in actions if isinstance(a, RunSql)} - set(errors)
    after = d.after_act(decisions, errors, done, NOW)
    stored = copy.deepcopy(raw)
    for body in patches(after):
        stored["status"] = {**stored.get("status", {}), **body.get("status", {})}
    return after, stored


NO_OWNER = seen(roles=("bob",))
READY_SEEN = seen({"app": LIVE}, inside={"app": Inside()})
SQL_ERR = {"database:app": 'CREATE DATABASE "app": boom'}


def _stored(*passes: tuple[DatabasesSeen | None, dict[str, str], bool]) -> Manifest:
    raw = resource()
    for seen_, errors, cluster in passes:
        _, raw = _status_after(raw, seen_, errors, cluster)
    return raw


EVENT_CASES = [
    ("new, its owner missing: one warning", [], NO_OWNER, {}, True,
     [("Warning", d.ROLE_NOT_FOUND)]),
    ("new, applied at once: nothing to tell", [], READY_SEEN, {}, True, []),
    ("new, waiting for a primary: a normal step", [], None, {}, True, []),
    ("new, its cluster missing", [], None, {}, False, [("Warning", d.CLUSTER_NOT_FOUND)]),
    ("the same failure again: nothing", [(NO_OWNER, {}, True)], NO_OWNER, {}, True, []),
    ("another failure: a new warning", [(NO_OWNER, {}, True)], seen(), SQL_ERR, True,
     [("Warning", d.SQL_FAILED)]),
    ("applied after a failure: normal", [(NO_OWNER, {}, True)], READY_SEEN, {}, True,
     [("Normal", d.APPLIED)]),
    ("applied after waiting: normal", [(None, {}, True)], READY_SEEN, {}, True,
     [("Normal", d.APPLIED)]),
    ("applied, then a statement fails", [(READY_SEEN, {}, True)], seen(), SQL_ERR, True,
     [("Warning", d.SQL_FAILED)]),
    ("applied and still so: nothing", [(READY_SEEN, {}, True)], READY_SEEN, {}, True, []),
]  # fmt: skip


@pytest.mark.parametrize(("why", "before", "seen_", "errors", "cluster", "expected"),
                         EVENT_CASES, ids=[c[0] for c in EVENT_CASES])  # fmt: skip
def test_events_on_the_resource(why: str, before: list[Any], seen_: DatabasesSeen | None,
                                errors: dict[str, str], cluster: bool,
                                expected: list[tuple[str, str]]) -> None:  # fmt: skip
    after, _ = _status_after(_stored(*before), seen_, errors, cluster)
    events = [a for a in after if isinstance(a, Event)]
    assert [(e.type, e.reason) for e in events] == expected
    for e in events:
        assert e.involved == Involved("PostgresDatabase", "app", "uid-app")
        status = next(p["status"] for p in patches(after) if "status" in p)
        assert e.message == status["conditions"][0]["message"]
