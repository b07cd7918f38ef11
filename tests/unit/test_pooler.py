"""PostgresPooler, pure parts: the rendered children (golden file), the API's allowed settings,
the SCRAM verifier the role gets, the plan's decisions per situation (table-driven) and the
pgbouncer.ini the pod writes."""

from __future__ import annotations

import base64
import copy
import os
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from pgherd import contract
from pgherd.api import v1alpha1
from pgherd.api.v1alpha1 import PostgresPooler
from pgherd.controller import certificates, poolers
from pgherd.controller.actions import Action, Apply, Delete, Event, Involved, Patch, RunSql
from pgherd.controller.diff import stamped
from pgherd.controller.poolers import Inputs, PoolerSeen
from pgherd.controller.sql import Target
from pgherd.operand import pooler as operand
from pgherd.render import pooler as render
from pgherd.render import yaml_text
from pgherd_packaging.crds import postgrespooler_crd
from tests.unit.clusters import make_cluster
from tests.unit.snapshots import NOW, tls_data

GOLDEN = Path(__file__).resolve().parents[1] / "golden" / "pooler" / "transaction.yaml"
POOLER_UID = "7a1b2c3d-0000-4000-8000-00000000beef"
PASSWORD = "pooler-Pa55word"
TARGET = Target("postgres://10.0.0.1:5432/postgres", ("su",), "<ca>")
ALL_DBS = ("app", "postgres", "template1")


def pooler_raw(spec: dict[str, Any] | None = None, *, status: dict[str, Any] | None = None,
               name: str = "pgb") -> dict[str, Any]:  # fmt: skip
    raw: dict[str, Any] = {
        "apiVersion": "pgherd.io/v1alpha1",
        "kind": "PostgresPooler",
        "metadata": {"name": name, "namespace": "prod", "uid": POOLER_UID, "generation": 1},
        "spec": {"cluster": "db", "poolMode": "transaction", **(spec or {})},
    }
    if status is not None:
        raw["status"] = status
    return raw


def pooler(spec: dict[str, Any] | None = None) -> PostgresPooler:
    return PostgresPooler.model_validate(pooler_raw(spec))


# ---- rendering --------------------------------------------------------------------------
def test_golden() -> None:
    tls = {"tls.crt": "<pooler certificate>", "tls.key": "<pooler key>", "ca.crt": "<CA>",
           contract.POOLER_SERVER_CA: "<server CA>"}  # fmt: skip
    spec = {"instances": 2, "parameters": {"default_pool_size": "20", "max_client_conn": "500"},
            "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}}}  # fmt: skip
    rendered = yaml_text.dump_all(
        [*render.render_pooler(pooler(spec), "registry.example/pgherd/postgres:15-0.2.0", tls),
         render.render_auth_secret(make_cluster(), PASSWORD)]
    )  # fmt: skip
    if os.environ.get("PGHERD_UPDATE_GOLDEN") == "1":
        GOLDEN.parent.mkdir(parents=True, exist_ok=True)
        GOLDEN.write_text(rendered, encoding="utf-8")
    assert rendered == GOLDEN.read_text(encoding="utf-8"), "PGHERD_UPDATE_GOLDEN=1 to accept"


def test_the_pod_meets_the_restricted_pod_security_standard() -> None:
    deployment = render.render_deployment(pooler(), "img")
    pod = deployment["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert container["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
    }
    assert pod["automountServiceAccountToken"] is False
    # The pods are no instances of the cluster: nothing selecting those may find them.
    assert "pgherd.io/cluster" not in deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["metadata"]["labels"]["pgherd.io/cluster"] == "db"


def test_the_operator_settings_win_and_the_target_follows_type() -> None:
    settings = render.settings(pooler({"parameters": {"ignore_startup_parameters": "search_path"}}))
    assert settings["pool_mode"] == "transaction"
    assert settings["server_tls_sslmode"] == "verify-ca"
    assert settings["auth_query"] == contract.POOLER_AUTH_QUERY
    assert settings["ignore_startup_parameters"] == "search_path"
    assert render.target_service(pooler()) == "db-rw"
    assert render.target_service(pooler({"type": "ro"})) == "db-ro"
    assert render.render_config(pooler({"paused": True}))["data"]["paused"] == "true"


# ---- the API's allowed settings ---------------------------------------------------------
@pytest.mark.parametrize(
    ("parameters", "error"),
    [
        ({"max_client_conn": "500", "query_wait_timeout": "30"}, None),
        ({"bogus_setting": "1"}, "not a PgBouncer setting"),
        ({"listen_port": "6432"}, "not a PgBouncer setting"),
        ({"auth_query": "SELECT 1"}, "not a PgBouncer setting"),
        ({"server_tls_sslmode": "disable"}, "not a PgBouncer setting"),
        ({"server_reset_query": "DISCARD ALL\nlisten_port = 1"}, "line break"),
    ],
)
def test_parameters_are_checked(parameters: dict[str, str], error: str | None) -> None:
    if error is None:
        pooler({"parameters": parameters})
        return
    with pytest.raises(ValidationError, match=error):
        pooler({"parameters": parameters})


def test_the_crd_refuses_owned_and_unknown_settings_by_name() -> None:
    schema = postgrespooler_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    rules = schema["properties"]["spec"]["properties"]["parameters"]["x-kubernetes-validations"]
    owned, allowed = rules[0], rules[1]
    assert "is managed by pgherd" in owned["messageExpression"]
    for name in ("listen_addr", "auth_type", "pidfile", "logfile", "unix_socket_dir"):
        assert f"'{name}'" in owned["rule"]
    assert "k.contains('_tls_')" in owned["rule"] and "k.startsWith('auth_')" in owned["rule"]
    assert "is not a PgBouncer setting a PostgresPooler may set" in allowed["messageExpression"]
    # No allowed setting is one the operator owns.
    assert not set(v1alpha1.POOLER_PARAMETERS) & set(v1alpha1.POOLER_OWNED_PARAMETERS)
    assert not [p for p in v1alpha1.POOLER_PARAMETERS if "_tls_" in p or p.startswith("auth_")]
    spec_rules = schema["properties"]["spec"]["x-kubernetes-validations"]
    assert spec_rules[0]["rule"] == "self.cluster == oldSelf.cluster"


# ---- SCRAM ------------------------------------------------------------------------------
def test_the_scram_verifier_matches_its_password_only() -> None:
    verifier = poolers.scram_verifier(PASSWORD, b"0123456789abcdef")
    assert verifier.startswith("SCRAM-SHA-256$4096:MDEyMzQ1Njc4OWFiY2RlZg==$")
    assert poolers.scram_matches(verifier, PASSWORD)
    assert not poolers.scram_matches(verifier, PASSWORD + "x")
    assert not poolers.scram_matches("md5abc", PASSWORD)
    assert not poolers.scram_matches(None, PASSWORD)


# ---- plan -------------------------------------------------------------------------------
CLUSTER = make_cluster()


def _tls() -> certificates.Outcome:
    ca, tls = tls_data()
    return certificates.Outcome(ca=ca, tls=tls, server_trust=tls["ca.crt"])


def _auth_secret(password: str = PASSWORD) -> dict[str, Any]:
    secret = copy.deepcopy(stamped(render.render_auth_secret(CLUSTER, password)))
    secret["metadata"]["resourceVersion"] = "3"
    return secret


SEEN_OK = PoolerSeen(
    role_exists=True,
    role_verifier=poolers.scram_verifier(PASSWORD, b"salt-salt-salt!!"),
    role_attributes_ok=True,
    databases=ALL_DBS,
    functions_ok=frozenset(ALL_DBS),
)


def _live(raw: dict[str, Any], ready: int | None = None) -> dict[tuple[str, str], Any]:
    """The children of the pooler as the API holds them after applying what plan rendered."""
    actions = poolers.plan_poolers(_inputs(raw, {("Secret", "db-pooler"): _auth_secret()}),
                                   lambda: PASSWORD)  # fmt: skip
    out: dict[tuple[str, str], Any] = {("Secret", "db-pooler"): _auth_secret()}
    for a in actions:
        if isinstance(a, Apply):
            live = copy.deepcopy(a.manifest)
            live["metadata"]["resourceVersion"] = "5"
            if a.kind == "Deployment" and ready is not None:
                live["status"] = {"replicas": ready, "readyReplicas": ready}
            out[a.key] = live
    return out


def _inputs(raw: dict[str, Any], children: dict[tuple[str, str], Any], **kw: Any) -> Inputs:
    fields: dict[str, Any] = {
        "cluster": CLUSTER, "children": children, "poolers": [raw], "seen": SEEN_OK,
        "target": TARGET, "now": NOW, "image": "img", "tls": _TLS,
    }  # fmt: skip
    return Inputs(**(fields | kw))


_TLS = _tls()


def _reason(actions: list[Action]) -> str | None:
    patch = next((a for a in actions if isinstance(a, Patch)), None)
    return None if patch is None else patch.body["status"]["conditions"][0]["reason"]


def _sql(actions: list[Action]) -> list[tuple[str, str]]:
    return [(a.database, a.statements[0].shown()[:12]) for a in actions if isinstance(a, RunSql)]


def _applies(actions: list[Action]) -> list[tuple[str, str]]:
    return [a.key for a in actions if isinstance(a, Apply)]


def test_no_pooler_no_actions() -> None:
    assert poolers.plan_poolers(replace(_inputs(pooler_raw(), {}), poolers=[]), lambda: "x") == []


def _neighbours_secret() -> dict[str, Any]:
    secret = _auth_secret()
    secret["metadata"]["ownerReferences"][0]["uid"] = "someone-elses"
    return secret


GONE = PoolerSeen(role_exists=False, databases=ALL_DBS)
LEFT = replace(SEEN_OK, functions_present=frozenset({"app", "postgres"}))
# What the last pooler leaves behind is taken away in order: functions (and the role's use of
# the schema), then the role, then its password's Secret; never a neighbour's Secret, never
# on a guess (unread or unreachable primary).
CLEANUP_CASES = [
    ("functions and role", LEFT, _auth_secret(), TARGET,
     [("sql", "app", "DROP FUNCTION"), ("sql", "postgres", "DROP FUNCTION"),
      ("sql", "postgres", "DROP ROLE IF ")]),
    ("role only", SEEN_OK, _auth_secret(), TARGET, [("sql", "postgres", "DROP ROLE IF ")]),
    ("a function without its role", replace(GONE, functions_present=frozenset({"app"})),
     _auth_secret(), TARGET, [("sql", "app", "DROP FUNCTION")]),
    ("all gone: the Secret", GONE, _auth_secret(), TARGET, [("delete", "Secret", "db-pooler")]),
    ("no Secret: nothing of ours", LEFT, None, TARGET, []),
    ("a neighbour's Secret", LEFT, _neighbours_secret(), TARGET, []),
    ("primary unreachable", PoolerSeen(error="unreachable: x"), _auth_secret(), TARGET, []),
    ("not read", None, _auth_secret(), TARGET, []),
    ("no primary", LEFT, _auth_secret(), None, []),
]  # fmt: skip


@pytest.mark.parametrize(("why", "seen", "secret", "target", "expected"), CLEANUP_CASES,
                         ids=[c[0] for c in CLEANUP_CASES])  # fmt: skip
def test_the_last_poolers_role_and_function_are_taken_away(
    why: str, seen: PoolerSeen | None, secret: dict[str, Any] | None, target: Target | None,
    expected: list[tuple[str, str, str]],
) -> None:  # fmt: skip
    children = {} if secret is None else {("Secret", "db-pooler"): secret}
    inputs = replace(_inputs(pooler_raw(), children, seen=seen, target=target), poolers=[])
    actions = poolers.plan_poolers(inputs, lambda: "x")
    got = [
        ("sql", a.database, a.statements[0].shown()[:13]) if isinstance(a, RunSql)
        else ("delete", a.kind, a.name) if isinstance(a, Delete) else ("other", "", "")
        for a in actions
    ]  # fmt: skip
    assert got == expected
    for a in actions:
        if isinstance(a, Delete):
            assert a.uid == secret["metadata"].get("uid")  # type: ignore[index]
    # The role's privilege on the schema goes with the function while the role exists.
    if expected and expected[0][2] == "DROP FUNCTION" and seen is LEFT:
        assert "REVOKE ALL ON SCHEMA" in actions[0].statements[1].shown()  # type: ignore[attr-defined]
    assert poolers.wants_sql([], "db", children) is (secret is not None)


def test_a_pooler_of_no_cluster_says_so() -> None:
    actions = poolers.plan_poolers(_inputs(pooler_raw(), {}, cluster=None), lambda: "x")
    assert _reason(actions) == "ClusterNotFound" and not _applies(actions)


def test_first_pass_makes_the_password_secret_and_the_children() -> None:
    actions = poolers.plan_poolers(_inputs(pooler_raw(), {}), lambda: PASSWORD)
    assert _applies(actions) == [
        ("Secret", "db-pooler"), ("ConfigMap", "pgb-pgbouncer"), ("Secret", "pgb-tls"),
        ("Service", "pgb"), ("Deployment", "pgb"),
    ]  # fmt: skip
    assert _sql(actions) == []  # the password is used once the Secret is stored
    assert _reason(actions) == "AuthenticationNotReady"


@pytest.mark.parametrize(
    ("seen", "sql", "reason"),
    [
        (SEEN_OK, [], "PodsNotReady"),
        (PoolerSeen(databases=ALL_DBS), [("postgres", "CREATE ROLE "), ("app", "CREATE SCHEM"),
         ("postgres", "CREATE SCHEM"), ("template1", "CREATE SCHEM")], "AuthenticationNotReady"),
        (replace(SEEN_OK, role_verifier=poolers.scram_verifier("old", b"s")),
         [("postgres", "ALTER ROLE \"")], "PodsNotReady"),
        (replace(SEEN_OK, role_attributes_ok=False), [("postgres", "ALTER ROLE \"")],
         "AuthenticationNotReady"),
        (replace(SEEN_OK, functions_ok=frozenset({"app"})),
         [("postgres", "CREATE SCHEM"), ("template1", "CREATE SCHEM")], "AuthenticationNotReady"),
        (PoolerSeen(error="unreachable: timeout"), [], "AuthenticationNotReady"),
    ],
)  # fmt: skip
def test_the_role_and_function_are_kept(seen: PoolerSeen, sql: list[Any], reason: str) -> None:
    raw = pooler_raw()
    actions = poolers.plan_poolers(_inputs(raw, _live(raw), seen=seen), lambda: "unused")
    assert _sql(actions) == sql
    assert _applies(actions) == []
    assert _reason(actions) == reason


def test_the_role_password_is_sent_as_a_verifier_never_shown() -> None:
    raw = pooler_raw()
    actions = poolers.plan_poolers(_inputs(raw, _live(raw), seen=PoolerSeen()), lambda: "x")
    create = next(a for a in actions if isinstance(a, RunSql) and a.database == "postgres")
    shown = create.statements[0].shown()
    assert PASSWORD not in shown and "'***'" in shown and "NOSUPERUSER" in shown
    secret_lit = create.statements[0].args[1]
    assert poolers.scram_matches(secret_lit.value, PASSWORD)  # type: ignore[union-attr,arg-type]


def test_the_function_refuses_superusers_and_pins_its_search_path() -> None:
    text = " ".join(s.shown() for s in poolers.function_statements())
    assert "SECURITY DEFINER SET search_path = pg_catalog, pg_temp" in text
    assert "NOT s.usesuper" in text and "NOT IN ('postgres', 'replicator', 'pgherd')" in text
    assert "!~ '^(pg_|pgherd_)'" in text  # pgherd_pooler itself among them
    assert 'REVOKE ALL ON FUNCTION "pgherd"."pooler_auth"(text) FROM PUBLIC' in text
    assert 'GRANT EXECUTE ON FUNCTION "pgherd"."pooler_auth"(text) TO "pgherd_pooler"' in text


def test_ready_and_steady_writes_nothing() -> None:
    raw = pooler_raw()
    children = _live(raw, ready=1)
    actions = poolers.plan_poolers(_inputs(raw, children), lambda: "unused")
    assert _applies(actions) == [] and _reason(actions) == "Ready"
    patch = next(a for a in actions if isinstance(a, Patch))
    settled = pooler_raw(status=patch.body["status"])
    assert poolers.plan_poolers(_inputs(settled, children), lambda: "unused") == []


def test_an_unreachable_primary_does_not_undo_confirmed_authentication() -> None:
    raw = pooler_raw()
    children = _live(raw, ready=1)
    ready = next(a for a in poolers.plan_poolers(_inputs(raw, children), lambda: "unused")
                 if isinstance(a, Patch))  # fmt: skip
    settled = pooler_raw(status=ready.body["status"])
    for seen in (PoolerSeen(error="unreachable: failover"), None):
        inputs = _inputs(settled, children, seen=seen, target=None)
        assert poolers.plan_poolers(inputs, lambda: "unused") == []
    # What the primary says when it can be read still counts.
    missing = replace(SEEN_OK, functions_ok=frozenset())
    actions = poolers.plan_poolers(_inputs(settled, children, seen=missing), lambda: "unused")
    assert _reason(actions) == "AuthenticationNotReady"


def test_a_parameter_change_reapplies_the_configmap_only() -> None:
    raw = pooler_raw()
    children = _live(raw, ready=1)
    changed = pooler_raw({"parameters": {"default_pool_size": "5"}, "paused": True})
    actions = poolers.plan_poolers(_inputs(changed, children), lambda: "unused")
    assert _applies(actions) == [("ConfigMap", "pgb-pgbouncer")]


@pytest.mark.parametrize(
    ("change", "reason", "deployment"),
    [
        ({"tls": None}, "TLSNotReady", False),
        ({"tls": certificates.Outcome()}, "TLSNotReady", False),
        ({"image": None}, "NoImage", False),
        # PgBouncer may start before its role exists: it retries the login.
        ({"target": None, "seen": None}, "AuthenticationNotReady", True),
        ({"cluster_problem": ("ClusterInvalid", "bad")}, "ClusterInvalid", False),
    ],
)
def test_what_holds_a_pooler_back_is_its_condition(
    change: dict[str, Any], reason: str, deployment: bool
) -> None:
    raw = pooler_raw()
    children = {("Secret", "db-pooler"): _auth_secret()}
    actions = poolers.plan_poolers(_inputs(raw, children, **change), lambda: PASSWORD)
    assert _reason(actions) == reason
    assert (("Deployment", "pgb") in _applies(actions)) is deployment


def test_a_neighbours_object_is_left_alone() -> None:
    neighbour = {"kind": "Service", "metadata": {"name": "pgb", "resourceVersion": "1"}}
    actions = poolers.plan_poolers(_inputs(pooler_raw(), {("Service", "pgb"): neighbour}),
                                   lambda: PASSWORD)  # fmt: skip
    assert _reason(actions) == "ChildNameConflict"
    assert ("Service", "pgb") not in _applies(actions)
    assert ("Deployment", "pgb") not in _applies(actions)


def test_a_pooler_never_takes_a_name_of_the_clusters_objects() -> None:
    raw = pooler_raw(name="db-rw")
    actions = poolers.plan_poolers(_inputs(raw, {}), lambda: PASSWORD)
    assert _reason(actions) == "ChildNameConflict"
    assert _applies(actions) == [("Secret", "db-pooler")]


def test_the_certificate_names_the_service_and_is_kept() -> None:
    raw = pooler_raw()
    children = _live(raw, ready=1)
    data = certificates.decode(children[("Secret", "pgb-tls")])
    from pgherd import pki  # noqa: PLC0415

    info = pki.inspect(data["tls.crt"])
    assert not pki.missing_names(info, render.service_names("pgb", "prod"))
    assert pki.signed_by(data["tls.crt"], data["ca.crt"])
    assert data[contract.POOLER_SERVER_CA] == _TLS.server_trust


# ---- the pod's files --------------------------------------------------------------------
def test_the_pod_writes_the_whole_ini(tmp_path: Path) -> None:
    env = {"PGHERD_ROOT": str(tmp_path), contract.POOLER_HOST_ENV: "db-rw",
           contract.POOLER_TARGET_PORT_ENV: "5432"}  # fmt: skip
    paths = operand.Paths(env)
    text = operand.ini(render.ini_text(render.settings(pooler())), env, paths)
    assert text.startswith("[databases]\n* = host=db-rw port=5432\n\n[pgbouncer]\n")
    assert f"auth_file = {tmp_path}/run/pgbouncer/userlist.txt\n" in text
    assert f"server_tls_ca_file = {tmp_path}/etc/pgherd-pooler-tls/server-ca.crt\n" in text
    assert "listen_port = 5432\n" in text and "unix_socket_dir = \n" in text
    assert operand.userlist('pa"ss') == '"pgherd_pooler" "pa""ss"\n'


def test_the_secret_holds_the_password_for_the_pods() -> None:
    secret = render.render_auth_secret(CLUSTER, PASSWORD)
    assert base64.b64decode(secret["data"]["password"]).decode() == PASSWORD
    assert secret["metadata"]["ownerReferences"][0]["kind"] == "PostgresCluster"


# ---- Events on the pooler itself ---------------------------------------------------------
def _pass(raw: dict[str, Any], situation: str) -> tuple[list[Action], dict[str, Any]]:
    """One pass in a named situation: its actions, and the pooler as stored after them."""
    children = _live(pooler_raw(), ready=1)
    kw: dict[str, Any] = {
        "ready": {},
        "no pods": {"children": _live(pooler_raw(), ready=0)},
        "first": {"children": {}},
        "no cluster": {"cluster": None},
        "conflict": {"children": {**children, ("Service", "pgb"): {
            "kind": "Service", "metadata": {"name": "pgb", "resourceVersion": "1"}}}},
    }[situation]  # fmt: skip
    inputs = _inputs(raw, **({"children": children} | kw))
    actions = poolers.plan_poolers(inputs, lambda: PASSWORD)
    patch = next((a for a in actions if isinstance(a, Patch)), None)
    return actions, raw if patch is None else pooler_raw(status=patch.body["status"])


EVENT_CASES = [
    ("new, no such cluster: one warning", [], "no cluster", [("Warning", "ClusterNotFound")]),
    ("new, coming up: normal steps", [], "first", []),
    ("pods on their way: a normal step", ["first"], "no pods", []),
    ("ready after its steps: normal", ["first", "no pods"], "ready", [("Normal", "Ready")]),
    ("ready and steady: nothing", ["ready"], "ready", []),
    ("ready, then its pods are not: warning", ["ready"], "no pods",
     [("Warning", "PodsNotReady")]),
    ("ready, then the cluster goes", ["ready"], "no cluster", [("Warning", "ClusterNotFound")]),
    ("the same failure again: nothing", ["no cluster"], "no cluster", []),
    ("another failure: a new warning", ["no cluster"], "conflict",
     [("Warning", "ChildNameConflict")]),
    ("fixed: normal", ["conflict"], "ready", [("Normal", "Ready")]),
]  # fmt: skip


@pytest.mark.parametrize(("why", "before", "now", "expected"), EVENT_CASES,
                         ids=[c[0] for c in EVENT_CASES])  # fmt: skip
def test_events_on_the_pooler(why: str, before: list[str], now: str,
                              expected: list[tuple[str, str]]) -> None:  # fmt: skip
    raw = pooler_raw()
    for situation in before:
        _, raw = _pass(raw, situation)
    actions, _ = _pass(raw, now)
    events = [a for a in actions if isinstance(a, Event) and a.involved is not None]
    assert [(e.type, e.reason) for e in events] == expected
    for e in events:
        assert e.involved == Involved("PostgresPooler", "pgb", POOLER_UID)
        assert e.message == _message(actions)


def _message(actions: list[Action]) -> str:
    patch = next(a for a in actions if isinstance(a, Patch))
    return str(patch.body["status"]["conditions"][0]["message"])
