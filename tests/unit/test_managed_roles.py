"""Managed roles (pgherd.controller.roles): the SCRAM check against libpq's own verifiers,
every decision of the diff between spec.managed.roles and what the primary holds, the states
status reports after act, and the API's rules as the generated CRD carries them."""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from psycopg import pq

from pgherd.api.v1alpha1 import PostgresCluster
from pgherd.controller import plan as planning
from pgherd.controller import roles
from pgherd.controller import status as st
from pgherd.controller.actions import RunSql
from pgherd.controller.roles import RolesSeen, SeenRole
from pgherd.controller.sql import Lit, Statement, Target
from pgherd_packaging import crds
from tests.unit.snapshots import SETTINGS, healthy, snapshot

TARGET = Target("postgres://10.0.0.1:5432/postgres", ("pw",), "CA")
SALT = b"0123456789abcdef"
HOSTILE = ['we"ird; DROP TABLE x;--', "ünï cødé", "with space"]


def _libpq_verifier(password: str, role: str = "alice") -> str:
    # libpq computes a SCRAM verifier without a server once the algorithm is named.
    conn = pq.PGconn.connect_start(b"host=/nonexistent port=1 dbname=x connect_timeout=1")
    verifier: bytes = conn.encrypt_password(password.encode(), role.encode(), b"scram-sha-256")
    return verifier.decode()


# ---- SCRAM --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "password",
    ["pencil", "", "with space", "ünïcødé pässwörd", "IⅨ", "a\u00adb", "x\u200by", "ﬁ", "😀"],
)
def test_a_libpq_verifier_matches_its_password_and_no_other(password: str) -> None:
    verifier = _libpq_verifier(password)
    assert roles.scram_matches(verifier, password)
    assert not roles.scram_matches(verifier, password + "x")


def test_our_verifier_is_what_libpq_would_accept() -> None:
    ours = roles.scram_verifier("s3cret", SALT)
    assert ours.startswith("SCRAM-SHA-256$4096:" + base64.b64encode(SALT).decode() + "$")
    assert roles.scram_matches(ours, "s3cret")
    assert not roles.scram_matches(ours, "S3cret")


@pytest.mark.parametrize(
    "stored",
    [None, "", "md5" + "0" * 32, "plain", "SCRAM-SHA-256$x:y$z", "SCRAM-SHA-256$0:AAAA$AA==:AA=="],
)
def test_anything_but_a_scram_verifier_never_matches(stored: str | None) -> None:
    assert not roles.scram_matches(stored, "plain")


# ---- the diff -----------------------------------------------------------------------------
def cluster(*managed: dict[str, Any], owner: str = "app") -> PostgresCluster:
    return PostgresCluster.model_validate(
        {
            "metadata": {"name": "db", "namespace": "prod"},
            "spec": {"bootstrap": {"owner": owner}, "managed": {"roles": list(managed)}},
        }
    )


def secret(name: str, username: str, password: str, *, type_: str = "kubernetes.io/basic-auth",
           opted_in: bool = True) -> dict[str, Any]:  # fmt: skip
    def b64(s: str) -> str:
        return base64.b64encode(s.encode()).decode()

    return {
        "metadata": {"name": name, "labels": {"pgherd.io/use": "true"} if opted_in else {}},
        "type": type_,
        "data": {"username": b64(username), "password": b64(password)},
    }


def as_seen(name: str, **attrs: Any) -> SeenRole:
    return SeenRole(name=name, **attrs)


def decide(
    c: PostgresCluster,
    seen: dict[str, SeenRole] | None,
    *,
    secrets: dict[str, Any] | None = None,
    unusable: frozenset[str] = frozenset(),
    target: Target | None = TARGET,
) -> roles.RolesPlan:
    return roles.plan_roles(
        c, RolesSeen(seen) if seen is not None else None, target,
        usable_secrets=secrets or {}, unusable_secrets=unusable, salt=lambda: SALT,
    )  # fmt: skip


def literals(statement: Statement) -> list[Lit]:
    out: list[Lit] = []
    for arg in statement.args:
        if isinstance(arg, Lit):
            out.append(arg)
        elif isinstance(arg, Statement):
            out += literals(arg)
    return out


def shown(plan: roles.RolesPlan) -> list[list[str]]:
    return [[s.shown() for s in a.statements] for a in plan.actions]


VERIFIER = roles.scram_verifier("pw1", SALT)
AS_DECLARED = {"inherit": True, "connection_limit": -1}


@pytest.mark.parametrize(
    ("role", "seen", "expected"),
    [
        # A new role: every attribute spelled out, then its comment and memberships.
        (
            {"name": "alice", "login": True, "inRoles": ["pg_monitor"], "comment": "team A"},
            None,
            [
                'CREATE ROLE "alice" WITH NOSUPERUSER NOCREATEDB NOCREATEROLE INHERIT LOGIN '
                "NOREPLICATION NOBYPASSRLS CONNECTION LIMIT -1",
                "COMMENT ON ROLE \"alice\" IS 'team A'",
                'GRANT "pg_monitor" TO "alice"',
            ],
        ),
        # As declared: nothing to run.
        ({"name": "alice"}, as_seen("alice"), []),
        # Changed by hand: only what differs is set back.
        (
            {"name": "alice", "login": True},
            as_seen("alice", login=False, createdb=True),
            ['ALTER ROLE "alice" WITH NOCREATEDB LOGIN'],
        ),
        (
            {"name": "alice", "superuser": True, "replication": True, "bypassrls": True},
            as_seen("alice"),
            ['ALTER ROLE "alice" WITH SUPERUSER REPLICATION BYPASSRLS'],
        ),
        (
            {"name": "alice", "inherit": False},
            as_seen("alice"),
            ['ALTER ROLE "alice" WITH NOINHERIT'],
        ),
        (
            {"name": "alice", "createrole": True, "connectionLimit": 5},
            as_seen("alice", connection_limit=10),
            ['ALTER ROLE "alice" WITH CREATEROLE CONNECTION LIMIT 5'],
        ),
        # VALID UNTIL: set, kept (to the second), and removed when unset.
        (
            {"name": "alice", "validUntil": "2030-01-01T00:00:00Z"},
            as_seen("alice"),
            ["ALTER ROLE \"alice\" WITH VALID UNTIL '2030-01-01T00:00:00+00:00'"],
        ),
        (
            {"name": "alice", "validUntil": "2030-01-01T00:00:00.5Z"},
            as_seen("alice", valid_until=int(datetime(2030, 1, 1, tzinfo=UTC).timestamp())),
            [],
        ),
        (
            {"name": "alice"},
            as_seen("alice", valid_until=1),
            ["ALTER ROLE \"alice\" WITH VALID UNTIL 'infinity'"],
        ),
        # Comment: changed, removed (empty), absent and empty are the same.
        (
            {"name": "alice", "comment": "x"},
            as_seen("alice", comment="y"),
            ["COMMENT ON ROLE \"alice\" IS 'x'"],
        ),
        ({"name": "alice"}, as_seen("alice", comment="y"), ['COMMENT ON ROLE "alice" IS NULL']),
        # Memberships are exactly inRoles: missing granted, extra revoked.
        (
            {"name": "alice", "inRoles": ["a", "pg_read_all_data"]},
            as_seen("alice", member_of=frozenset({"a", "b"})),
            ['GRANT "pg_read_all_data" TO "alice"', 'REVOKE "b" FROM "alice"'],
        ),
        # disablePassword: PASSWORD NULL when one is set, nothing when none is.
        (
            {"name": "alice", "disablePassword": True},
            as_seen("alice", password=VERIFIER),
            ['ALTER ROLE "alice" WITH PASSWORD NULL'],
        ),
        ({"name": "alice", "disablePassword": True}, as_seen("alice"), []),
        # Without passwordSecret the password is not managed.
        ({"name": "alice"}, as_seen("alice", password=VERIFIER), []),
        # Hostile names are one quoted identifier each.
        (
            {"name": HOSTILE[0], "inRoles": [HOSTILE[2]]},
            as_seen(HOSTILE[0]),
            ['GRANT "with space" TO "we""ird; DROP TABLE x;--"'],
        ),
    ],
)
def test_each_difference_becomes_its_statement(
    role: dict[str, Any], seen: SeenRole | None, expected: list[str]
) -> None:
    c = cluster(role)
    plan = decide(c, {seen.name: seen} if seen else {})
    assert shown(plan) == ([expected] if expected else [])
    (decision,) = plan.decisions
    assert decision.state == ("Pending" if expected else "Reconciled")
    for action in plan.actions:
        assert action.group == f"role:{role['name']}"
        assert action.database == "postgres" and action.target == TARGET
        assert action.reason.startswith(f"role {role['name']!r}: ")


def test_a_password_is_set_as_a_verifier_only_when_it_differs() -> None:
    c = cluster({"name": "alice", "login": True, "passwordSecret": {"name": "alice-pw"}})
    secrets = {"alice-pw": secret("alice-pw", "alice", "pw1")}
    same = decide(c, {"alice": as_seen("alice", login=True, password=VERIFIER)}, secrets=secrets)
    assert same.actions == () and same.decisions[0].state == "Reconciled"
    # Another salt, same password: still unchanged.
    other_salt = roles.scram_verifier("pw1", b"fedcba9876543210", 8192)
    assert decide(c, {"alice": as_seen("alice", login=True, password=other_salt)},
                  secrets=secrets).actions == ()  # fmt: skip
    secrets = {"alice-pw": secret("alice-pw", "alice", "pw2")}
    changed = decide(c, {"alice": as_seen("alice", login=True, password=VERIFIER)},
                     secrets=secrets)  # fmt: skip
    (action,) = changed.actions
    assert [s.shown() for s in action.statements] == ["ALTER ROLE \"alice\" WITH PASSWORD '***'"]
    assert "pw2" not in repr(action) and "SCRAM" not in repr(action)
    (verifier,) = [x.value for x in literals(action.statements[0]) if x.secret]
    assert isinstance(verifier, str) and roles.scram_matches(verifier, "pw2")
    assert "password from its Secret" in action.reason


@pytest.mark.parametrize(
    ("secrets", "unusable", "words"),
    [
        ({}, frozenset(), "does not exist"),
        ({}, frozenset({"alice-pw"}), "has not opted in"),
        (
            {"alice-pw": secret("alice-pw", "alice", "pw", type_="Opaque")},
            frozenset(),
            "must be of type kubernetes.io/basic-auth",
        ),
        ({"alice-pw": secret("alice-pw", "bob", "pw")}, frozenset(), "must have username 'alice'"),
        ({"alice-pw": secret("alice-pw", "alice", "")}, frozenset(), "no (or an empty) password"),
    ],
)
def test_an_unusable_password_secret_fails_that_role_only(
    secrets: dict[str, Any], unusable: frozenset[str], words: str
) -> None:
    c = cluster(
        {"name": "alice", "login": True, "passwordSecret": {"name": "alice-pw"}},
        {"name": "bob", "login": True},
    )
    plan = decide(c, {}, secrets=secrets, unusable=unusable)
    alice, _ = plan.decisions
    assert alice.state == "Failed" and words in (alice.message or "")
    assert "spec.managed.roles['alice'].passwordSecret" in (alice.message or "")
    # The role is still created, without a password; bob is created as usual.
    assert [s.shown().split(" WITH")[0] for a in plan.actions for s in a.statements] == [
        'CREATE ROLE "alice"',
        'CREATE ROLE "bob"',
    ]
    assert "PASSWORD" not in plan.actions[0].statements[0].shown()
    status = roles.states(plan, {"role:alice", "role:bob"}, {})
    assert status is not None
    assert [(s.name, s.state) for s in status] == [("alice", "Failed"), ("bob", "Reconciled")]
    (problem,) = roles.problems(status)
    assert problem.reason == "ManagedRoleFailed" and "'alice'" in problem.message
    assert "'bob'" not in problem.message


def test_ensure_absent_drops_an_existing_role_and_reports_absent() -> None:
    c = cluster({"name": "gone", "ensure": "absent"}, {"name": "never", "ensure": "absent"})
    plan = decide(c, {"gone": as_seen("gone")})
    assert shown(plan) == [['DROP ROLE "gone"']]
    assert [d.state for d in plan.decisions] == ["Pending", "Absent"]
    after = roles.states(plan, {"role:gone"}, {})
    assert after is not None and [s.state for s in after] == ["Absent", "Absent"]
    # A role that owns objects is not forced: the server's error is the role's message.
    error = 'DROP ROLE "gone": role "gone" cannot be dropped because some objects depend on it'
    failed = roles.states(plan, set(), {"role:gone": error})
    assert failed is not None and failed[0].state == "Failed" and failed[0].message == error


def test_a_role_removed_from_the_spec_is_left_alone() -> None:
    plan = decide(cluster({"name": "kept"}), {"kept": as_seen("kept"), "other": as_seen("other")})
    assert plan.actions == () and [d.name for d in plan.decisions] == ["kept"]


def test_roles_others_are_members_of_come_first_and_status_keeps_the_spec_order() -> None:
    c = cluster({"name": "child", "inRoles": ["parent"]}, {"name": "parent"})
    plan = decide(c, {})
    assert [a.group for a in plan.actions] == ["role:parent", "role:child"]
    assert [d.name for d in plan.decisions] == ["child", "parent"]
    # A cycle (refused by PostgreSQL) keeps an order instead of looping.
    cyclic = cluster({"name": "a", "inRoles": ["b"]}, {"name": "b", "inRoles": ["a"]})
    assert len(decide(cyclic, {}).actions) == 2


def test_without_a_primary_every_role_is_pending_and_nothing_runs() -> None:
    c = cluster({"name": "alice"}, {"name": "bob", "passwordSecret": {"name": "missing"}})
    for plan in (
        decide(c, None),
        decide(c, {}, target=None),
        roles.plan_roles(
            c, RolesSeen(unreachable="unreachable: refused"), TARGET, usable_secrets={}
        ),
    ):
        assert plan.actions == ()
        assert [d.state for d in plan.decisions] == ["Pending", "Failed"]
    unreachable = roles.plan_roles(c, RolesSeen(unreachable="unreachable: refused"), TARGET,
                                   usable_secrets={})  # fmt: skip
    assert unreachable.decisions[0].message == "unreachable: refused"


def test_an_sql_error_fails_the_role_and_an_unrun_action_stays_pending() -> None:
    plan = decide(cluster({"name": "a"}, {"name": "b"}), {})
    got = roles.states(plan, {"role:b"}, {"role:a": 'CREATE ROLE "a": boom'})
    assert got is not None
    assert [(s.state, s.message) for s in got] == [
        ("Failed", 'CREATE ROLE "a": boom'),
        ("Reconciled", None),
    ]
    pending = roles.states(plan, set(), {})
    assert pending is not None and {s.state for s in pending} == {"Pending"}


@pytest.mark.parametrize(
    "name", ["postgres", "replicator", "pgherd", "pg_x", "pgherd_pooler", "app"]
)
def test_a_reserved_role_stored_before_the_rules_is_never_touched(name: str) -> None:
    # The API refuses these; model_construct stands for an object stored before a rule.
    c = cluster({"name": "placeholder"})
    managed = c.spec.managed
    assert managed is not None
    managed.roles[0].name = name
    plan = decide(c, {})
    assert plan.actions == () and plan.decisions[0].state == "Failed"


def test_the_query_reads_only_the_spec_roles_with_literals() -> None:
    query = roles.roles_query(HOSTILE)
    assert query.shown().endswith(
        "WHERE r.rolname IN ('we\"ird; DROP TABLE x;--', 'ünï cødé', 'with space') ORDER BY 1"
    )


def test_read_roles_turns_rows_into_seen_roles_and_reads_nothing_without_roles() -> None:
    calls: list[str] = []

    def read(target: Target, db: str, statement: Any) -> list[tuple[Any, ...]]:
        calls.append(db)
        return [("alice", False, True, False, True, True, False, False, 3, VERIFIER, None,
                 "c", ["pg_monitor"])]  # fmt: skip

    assert roles.read_roles(read, TARGET, cluster()) is None and calls == []
    seen = roles.read_roles(read, TARGET, cluster({"name": "alice"}))
    assert seen is not None and calls == ["postgres"]
    assert seen.roles["alice"] == SeenRole(
        "alice", createdb=True, login=True, connection_limit=3, password=VERIFIER, comment="c",
        member_of=frozenset({"pg_monitor"}),
    )  # fmt: skip
    assert VERIFIER not in repr(seen)


# ---- the API ------------------------------------------------------------------------------
def _role_schema() -> dict[str, Any]:
    spec = crds.postgrescluster_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    managed = spec["properties"]["spec"]["properties"]["managed"]
    items: dict[str, Any] = managed["properties"]["roles"]["items"]
    return items


def test_the_crd_carries_the_role_rules() -> None:
    items = _role_schema()
    rules = [v["rule"] for v in items["x-kubernetes-validations"]]
    assert "bytes(self.name).size() <= 63" in rules
    assert any("'postgres', 'replicator', 'pgherd'" in r and "startsWith('pg_')" in r
               and "startsWith('pgherd_')" in r for r in rules)  # fmt: skip
    # In inRoles pg_* is allowed (predefined roles), pgherd_* is not.
    (members,) = [r for r in rules if r.startswith("self.inRoles.all")]
    assert "pgherd_" in members and "'pg_'" not in members
    assert "!(has(self.passwordSecret) && self.disablePassword)" in rules
    props = items["properties"]
    assert props["name"]["minLength"] == 1
    assert props["superuser"]["default"] is False and props["replication"]["default"] is False
    assert props["login"]["default"] is False and props["inherit"]["default"] is True
    assert props["validUntil"]["format"] == "date-time"
    assert items["required"] == ["name"]


def test_the_model_refuses_names_over_63_bytes() -> None:
    with pytest.raises(ValueError, match="63 bytes"):
        cluster({"name": "é" * 32})
    cluster({"name": "é" * 31})


# ---- through the whole pass: plan() and status.compute() ------------------------------------
def test_the_pass_runs_role_sql_last_and_status_reports_each_role() -> None:
    spec = {"instances": 1, "managed": {"roles": [
        {"name": "alice", "login": True}, {"name": "bob", "passwordSecret": {"name": "nope"}},
    ]}}  # fmt: skip
    seen = RolesSeen({"alice": as_seen("alice", login=True)})
    s = snapshot(spec, pods=healthy(1), leader="db-0", roles_seen=seen, sql_target=TARGET)
    decided = planning.plan(s, SETTINGS)
    assert decided.managed_roles is not None
    # alice is as declared; bob is created (without a password: its Secret is missing).
    (run,) = [a for a in decided.actions if isinstance(a, RunSql)]
    assert decided.actions[-1] is run and run.group == "role:bob"
    new = st.compute(s, decided, stuck_after=timedelta(seconds=300), sql_done={"role:bob"})
    assert new is not None and new.managed_roles is not None
    assert [(r.name, r.state) for r in new.managed_roles] == [
        ("alice", "Reconciled"),
        ("bob", "Failed"),
    ]
    degraded = next(x for x in new.conditions or [] if x.type == "Degraded")
    assert degraded.status == "True" and degraded.reason == "ManagedRoleFailed"
    assert "'bob'" in degraded.message and "'nope' does not exist" in degraded.message
    # A cluster without managed roles: no decisions, no status field.
    plain = snapshot({"instances": 1}, pods=healthy(1), leader="db-0", sql_target=TARGET)
    decided = planning.plan(plain, SETTINGS)
    assert decided.managed_roles is None
    got = st.compute(plain, decided, stuck_after=timedelta(seconds=300))
    assert got is not None and got.managed_roles is None
