"""Managed roles (spec.managed.roles) on real PostgreSQL and Patroni, one 1-instance cluster:
roles created with their attributes, memberships and comments; changes made by hand set back
at the next pass; a changed password Secret applied (the new password works, the old one is
refused); ensure: absent drops, a role removed from the spec is left alone; hostile names
created and logging in; a missing password Secret fails that role alone (Degraded names it,
one Event) while the others are reconciled; reserved names refused by the API."""

from __future__ import annotations

import base64
import time
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from pgherd.controller.client import ApiError
from pgherd.controller.client import Client as Kube
from tests.operator_harness import RESYNC_SECONDS, Cluster, Operator, wait_for

pytestmark = [pytest.mark.cluster]

WEIRD = 'we"ird; DROP TABLE x;--'
UNICODE = "ünï cødé"
SPACED = "with space"
HOSTILE = {WEIRD: "weird-pw", UNICODE: "unicode-pw", SPACED: "spaced-pw"}


def basic_auth(namespace: str, name: str, username: str, password: str) -> dict[str, Any]:
    def b64(s: str) -> str:
        return base64.b64encode(s.encode()).decode()

    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "namespace": namespace, "labels": {"pgherd.io/use": "true"}},
        "type": "kubernetes.io/basic-auth",
        "data": {"username": b64(username), "password": b64(password)},
    }


def roles_spec(*, old: str = "present", with_temp: bool = True) -> list[dict[str, Any]]:
    roles: list[dict[str, Any]] = [
        {
            "name": "alice",
            "login": True,
            "createdb": True,
            "connectionLimit": 5,
            "validUntil": "2040-01-01T00:00:00Z",
            "inRoles": ["readers", "pg_monitor"],
            "comment": "team A's app",
            "passwordSecret": {"name": "alice-pw"},
        },
        {"name": "readers", "comment": "a group"},
        *(
            {"name": name, "login": True, "passwordSecret": {"name": secret}}
            for name, secret in HOSTILE.items()
        ),
        {"name": "nosecret", "login": True, "passwordSecret": {"name": "missing-pw"}},
        {"name": "old", "ensure": old},
    ]
    if with_temp:
        roles.append({"name": "temp", "login": False})
    return roles


@pytest.fixture(scope="module")
def managed(operator: Operator, kube: Kube) -> Iterator[Cluster]:
    ns = f"t-roles-{uuid.uuid4().hex[:6]}"
    kube.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
    kube.create(basic_auth(ns, "alice-pw", "alice", "pw-one"))
    for role, secret in HOSTILE.items():
        kube.create(basic_auth(ns, secret, role, f"{secret}-password"))
    cluster = Cluster(kube, ns, "roles")
    cluster.create({"instances": 1, "managed": {"roles": roles_spec()}})
    yield cluster
    kube.delete("Namespace", None, ns)


def states(cluster: Cluster) -> dict[str, tuple[str, str | None]]:
    return {
        r["name"]: (r["state"], r.get("message"))
        for r in cluster.status().get("managedRoles") or []
    }


def wait_states(cluster: Cluster, want: dict[str, str], timeout: float = 180) -> None:
    def reached() -> bool:
        got = states(cluster)
        return all(got.get(name, ("",))[0] == state for name, state in want.items())

    wait_for(f"managed roles {want}", reached, timeout)


def role_row(cluster: Cluster, name: str) -> tuple[Any, ...] | None:
    with cluster.connect_superuser() as conn:
        row = conn.execute(
            "SELECT rolcanlogin, rolcreatedb, rolsuper, rolreplication, rolconnlimit,"
            " rolvaliduntil = '2040-01-01T00:00:00Z'::timestamptz,"
            " shobj_description(oid, 'pg_authid'),"
            " ARRAY(SELECT g.rolname::text FROM pg_auth_members m JOIN pg_roles g"
            "       ON g.oid = m.roleid WHERE m.member = r.oid ORDER BY 1)"
            " FROM pg_authid r WHERE rolname = %s",
            (name,),
        ).fetchone()
    return tuple(row) if row else None


def login(cluster: Cluster, user: str, password: str) -> str:
    with cluster.connect(cluster.primary(), user=user, password=password,
                         dbname="postgres") as conn:  # fmt: skip
        row = conn.execute("SELECT current_user").fetchone()
    assert row is not None
    return str(row[0])


def test_roles_are_created_with_their_attributes_and_a_missing_secret_fails_one(
    managed: Cluster,
) -> None:
    wait_states(
        managed,
        {"alice": "Reconciled", "readers": "Reconciled", "old": "Reconciled",
         "temp": "Reconciled", WEIRD: "Reconciled", UNICODE: "Reconciled",
         SPACED: "Reconciled", "nosecret": "Failed"},
    )  # fmt: skip
    assert role_row(managed, "alice") == (
        True, True, False, False, 5, True, "team A's app", ["pg_monitor", "readers"]
    )  # fmt: skip
    assert role_row(managed, "readers") == (False, False, False, False, -1, None, "a group", [])
    assert login(managed, "alice", "pw-one") == "alice"
    # Hostile names are one role each, and log in with their passwords.
    for name, secret in HOSTILE.items():
        assert login(managed, name, f"{secret}-password") == name
    # The missing Secret fails that role alone: it exists (without a password), Degraded
    # names it, and one Event says so.
    message = states(managed)["nosecret"][1] or ""
    assert "'missing-pw' does not exist" in message
    assert role_row(managed, "nosecret") is not None
    degraded = managed.condition("Degraded")
    assert degraded["status"] == "True" and degraded["reason"] == "ManagedRoleFailed"
    assert "'nosecret'" in degraded["message"] and "alice" not in degraded["message"]
    events = [e for e in managed.kube.list("Event", managed.namespace)
              if e.get("reason") == "ManagedRoleFailed"]  # fmt: skip
    assert len(events) == 1 and "nosecret" in events[0]["message"]
    assert managed.condition("Ready")["status"] == "True"
    # Steady state writes nothing: a password set again would get a new salt.
    verifier = _verifier(managed, "alice")
    time.sleep(2 * RESYNC_SECONDS + 1)
    assert _verifier(managed, "alice") == verifier


def _verifier(cluster: Cluster, name: str) -> str:
    with cluster.connect_superuser() as conn:
        row = conn.execute("SELECT rolpassword FROM pg_authid WHERE rolname = %s", (name,))
        got = row.fetchone()
    assert got is not None and str(got[0]).startswith("SCRAM-SHA-256$")
    return str(got[0])


def test_changes_by_hand_are_set_back(managed: Cluster) -> None:
    with managed.connect_superuser(autocommit=True) as conn:
        conn.execute(
            "ALTER ROLE alice NOLOGIN SUPERUSER CONNECTION LIMIT 1 VALID UNTIL '2001-01-01'"
        )
        conn.execute("REVOKE readers FROM alice")
        conn.execute("GRANT pg_read_all_data TO alice")
        conn.execute("COMMENT ON ROLE alice IS 'changed'")
        conn.execute('ALTER ROLE "we""ird; DROP TABLE x;--" PASSWORD \'other\'')
    want = (True, True, False, False, 5, True, "team A's app", ["pg_monitor", "readers"])
    wait_for("alice set back", lambda: role_row(managed, "alice") == want, 30)
    wait_for("the hostile role's password set back",
             lambda: _logs_in(managed, WEIRD, "weird-pw-password"), 30)  # fmt: skip


def _logs_in(cluster: Cluster, user: str, password: str) -> bool:
    try:
        return login(cluster, user, password) == user
    except psycopg.OperationalError:
        return False


def test_a_changed_password_secret_is_applied_and_the_old_password_refused(
    managed: Cluster,
) -> None:
    managed.kube.apply(basic_auth(managed.namespace, "alice-pw", "alice", "pw-two"))
    wait_for("the new password", lambda: _logs_in(managed, "alice", "pw-two"), 30)
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        login(managed, "alice", "pw-one")


def test_absent_drops_and_a_role_removed_from_the_spec_is_left_alone(managed: Cluster) -> None:
    # A role that owns something is not forced out: the server's refusal is its state.
    with managed.connect_superuser(autocommit=True) as conn:
        conn.execute("CREATE TABLE owned_by_old (n int)")
        conn.execute("ALTER TABLE owned_by_old OWNER TO old")
    managed.patch_spec({"managed": {"roles": roles_spec(old="absent", with_temp=False)}})
    wait_states(managed, {"old": "Failed"}, 30)
    assert "cannot be dropped because some objects depend on it" in (
        states(managed)["old"][1] or ""
    )
    assert "'old'" in managed.condition("Degraded")["message"]
    with managed.connect_superuser(autocommit=True) as conn:
        conn.execute("DROP TABLE owned_by_old")
    wait_states(managed, {"old": "Absent"}, 30)
    wait_for("temp gone from status", lambda: "temp" not in states(managed), 30)
    assert role_row(managed, "old") is None
    assert role_row(managed, "temp") is not None


def test_the_missing_secret_once_created_reconciles_the_role(managed: Cluster) -> None:
    managed.kube.create(basic_auth(managed.namespace, "missing-pw", "nosecret", "now-there"))
    wait_states(managed, {"nosecret": "Reconciled"}, 30)
    assert login(managed, "nosecret", "now-there") == "nosecret"
    wait_for("Degraded cleared", lambda: managed.condition("Degraded")["status"] == "False", 30)


@pytest.mark.parametrize(
    ("role", "words"),
    [
        ({"name": "postgres"}, "postgres is a reserved role name"),
        ({"name": "pg_mine"}, "pg_mine is a reserved role name"),
        ({"name": "pgherd_pooler"}, "pgherd_pooler is a reserved role name"),
        ({"name": "replicator"}, "replicator is a reserved role name"),
        ({"name": "app"}, "the bootstrap owner"),
        ({"name": ""}, "spec.managed.roles[0].name"),
        ({"name": "é" * 32}, "at most 63 bytes"),
        ({"name": "x", "inRoles": ["postgres"]}, "x may not be a member of postgres"),
        ({"name": "x", "inRoles": ["pgherd_pooler"]}, "x may not be a member of pgherd_pooler"),
        ({"name": "x", "superuser": "yes"}, "spec.managed.roles[0].superuser"),
        (
            {"name": "x", "passwordSecret": {"name": "s"}, "disablePassword": True},
            "passwordSecret and disablePassword exclude each other",
        ),
    ],
)
def test_reserved_and_invalid_roles_are_refused_by_the_api(
    operator: Operator, kube: Kube, namespace: str, role: dict[str, Any], words: str
) -> None:
    with pytest.raises(ApiError) as refused:
        Cluster(kube, namespace, "refused").create({"instances": 1, "managed": {"roles": [role]}})
    assert refused.value.status == 422
    assert words in refused.value.message


def test_predefined_roles_are_allowed_as_memberships(
    operator: Operator, kube: Kube, namespace: str
) -> None:
    # Parked off every node: only the API's judgement matters here.
    Cluster(kube, namespace, "allowed").create(
        {
            "instances": 1,
            "scheduling": {"nodeSelector": {"none": "x"}},
            "managed": {"roles": [{"name": "x", "inRoles": ["pg_monitor", "pg_read_all_data"]}]},
        }
    )
