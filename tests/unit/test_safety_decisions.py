"""The safety decisions, table-driven and without I/O: whose an object is, which Secrets a
cluster may use, where passwords come from, which parameters are held back, and how status
counts an instance that never gets ready."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from pgherd import contract
from pgherd.controller import conditions as c
from pgherd.controller import credentials as passwords
from pgherd.controller import references, status
from pgherd.controller.conditions import Problem
from pgherd.controller.plan import Plan, held_back_parameters
from pgherd.controller.snapshot import InstanceReport, Member, Snapshot
from pgherd.render import ownership
from pgherd.render.children import desired_children
from tests.unit.clusters import PASSWORDS, UID, make_cluster

NOW = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
CLUSTER = make_cluster(name="db")
OURS = {
    "app.kubernetes.io/name": "postgresql",
    "app.kubernetes.io/instance": "db",
    "pgherd.io/cluster": "db",
    "app.kubernetes.io/managed-by": "pgherd",
}
CONTROLLER = [{"kind": "PostgresCluster", "name": "db", "uid": UID, "controller": True}]
OTHER = [{"kind": "Deployment", "name": "web", "uid": "other-uid", "controller": True}]


def _obj(labels: dict[str, str] | None = None, owners: Any = None) -> dict[str, Any]:
    return {"metadata": {"name": "x", "labels": labels or {}, "ownerReferences": owners or []}}


KINDS = sorted({child["kind"] for child in desired_children(CLUSTER, PASSWORDS)})


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(
    ("labels", "owners", "secret_ok", "other_ok"),
    [
        (OURS, CONTROLLER, True, True),  # rendered by this cluster
        ({}, [], False, False),  # a neighbour's object, no labels
        (OURS, OTHER, False, False),  # our labels, someone else's controller
        ({"pgherd.io/cluster": "db"}, CONTROLLER, False, False),  # not managed-by pgherd
        ({**OURS, "pgherd.io/cluster": "other"}, CONTROLLER, False, False),
        # A retained credential Secret has no owner on purpose; nothing else may lack one.
        (OURS, [], True, False),
    ],
)
def test_ownership_of_every_child_kind(
    kind: str, labels: dict[str, str], owners: Any, secret_ok: bool, other_ok: bool
) -> None:
    expected = secret_ok if kind == "Secret" else other_ok
    assert ownership.owns(CLUSTER, kind, _obj(labels, owners)) is expected


@pytest.mark.parametrize(
    ("labels", "expected"),
    [
        ({k: v for k, v in OURS.items() if k != "app.kubernetes.io/managed-by"}, True),
        ({}, False),
        ({"pgherd.io/cluster": "db"}, False),
        ({**OURS, "pgherd.io/cluster": "other"}, False),
    ],
)
def test_patroni_dcs_configmaps_are_ours_only_with_patronis_labels(
    labels: dict[str, str], expected: bool
) -> None:
    assert ownership.owns_dcs("db", _obj(labels)) is expected


@pytest.mark.parametrize(
    ("kind", "owners", "expected"),
    [
        ("Pod", [{"uid": "sts-uid", "controller": True}], True),
        ("Pod", [{"uid": "another", "controller": True}], False),
        ("Pod", [], False),
        ("PersistentVolumeClaim", [], True),
        ("PersistentVolumeClaim", [{"uid": "sts-uid", "controller": True}], True),
        ("PersistentVolumeClaim", [{"uid": "another", "controller": True}], False),
    ],
)
def test_pods_and_claims_belong_to_the_clusters_statefulset(
    kind: str, owners: Any, expected: bool
) -> None:
    labels = {k: v for k, v in OURS.items() if k != "app.kubernetes.io/managed-by"}
    assert ownership.owns_instance_object("db", "sts-uid", kind, _obj(labels, owners)) is expected


def _secret(
    data: dict[str, str],
    *,
    labels: dict[str, str] | None = None,
    annotations: dict[str, str] | None = None,
    type_: str = "Opaque",
) -> dict[str, Any]:
    return {
        "metadata": {"name": "s", "labels": labels or {}, "annotations": annotations or {}},
        "type": type_,
        "data": {k: base64.b64encode(v.encode()).decode() for k, v in data.items()},
    }


KEY_REF = references.Reference("spec.backup.x", "s", ("token",))
USER_REF = references.Reference("spec.bootstrap.superuserSecret", "s", ("username", "password"),
                                username="postgres")  # fmt: skip
OPTED_IN = {"pgherd.io/use": "true"}


@pytest.mark.parametrize(
    ("ref", "secret", "reason"),
    [
        (KEY_REF, None, c.SECRET_NOT_FOUND),
        (KEY_REF, _secret({"token": "t"}), c.SECRET_NOT_PERMITTED),
        (KEY_REF, _secret({"token": "t"}, labels={"pgherd.io/use": "yes"}), c.SECRET_NOT_PERMITTED),
        (KEY_REF, _secret({"token": "t"}, labels=OPTED_IN), None),
        (
            KEY_REF,
            _secret({"token": "t"}, labels=OPTED_IN,
                    annotations={"pgherd.io/allowed-clusters": "a, db"}),
            None,
        ),
        (
            KEY_REF,
            _secret({"token": "t"}, labels=OPTED_IN,
                    annotations={"pgherd.io/allowed-clusters": "payments"}),
            c.SECRET_NOT_PERMITTED,
        ),
        (
            KEY_REF,
            _secret({"token": "t"}, labels=OPTED_IN,
                    annotations={"pgherd.io/allowed-clusters": "*"}),
            None,
        ),
        (KEY_REF, _secret({"other": "t"}, labels=OPTED_IN), c.SECRET_INVALID),
        (USER_REF, _secret({"username": "postgres", "password": "p"}, labels=OPTED_IN),
         c.SECRET_INVALID),  # not basic-auth
        (USER_REF, _secret({"username": "admin", "password": "p"}, labels=OPTED_IN,
                           type_="kubernetes.io/basic-auth"), c.SECRET_INVALID),
        (USER_REF, _secret({"username": "postgres", "password": "p"}, labels=OPTED_IN,
                           type_="kubernetes.io/basic-auth"), None),
    ],
)  # fmt: skip
def test_which_secrets_a_cluster_may_use(
    ref: references.Reference, secret: dict[str, Any] | None, reason: str | None
) -> None:
    problem = references.check("db", ref, secret)
    assert (problem.reason if problem else None) == reason
    if problem is not None:
        assert "'s'" in problem.message  # names the Secret


def test_every_secret_the_spec_names_is_checked() -> None:
    ref = {"name": "creds", "key": "k"}
    cluster = make_cluster(
        {
            "backup": {
                "objectStore": {
                    "bucket": "bkt",
                    "credentials": {
                        "accessKeyId": ref,
                        "secretAccessKey": ref,
                        "sessionToken": ref,
                    },
                    "caSecret": {"name": "ca", "key": "ca.crt"},
                }
            },
            "bootstrap": {"secret": {"name": "own"}, "superuserSecret": {"name": "su"}},
        }
    )
    fields = {r.field: r.secret for r in references.references(cluster)}
    assert fields == {
        "spec.backup.objectStore.credentials.accessKeyId": "creds",
        "spec.backup.objectStore.credentials.secretAccessKey": "creds",
        "spec.backup.objectStore.credentials.sessionToken": "creds",
        "spec.backup.objectStore.caSecret": "ca",
        "spec.bootstrap.secret": "own",
        "spec.bootstrap.superuserSecret": "su",
    }


def _published(password: str) -> dict[str, Any]:
    return {"data": {"password": base64.b64encode(password.encode()).decode()}}


def _vault(**kinds: str) -> dict[str, Any]:
    return {"data": {k: base64.b64encode(v.encode()).decode() for k, v in kinds.items()}}


@pytest.mark.parametrize(
    ("vault", "published", "adopted", "has_data", "app", "regenerated", "changed"),
    [
        # A new cluster: generated.
        (None, {}, {}, False, "new", [], []),
        # The vault is the truth: a deleted or hand-edited app Secret comes back from it.
        (_vault(app="kept"), {}, {}, True, "kept", [], []),
        (_vault(app="kept"), {"app": _published("edited")}, {}, True, "kept", [], []),
        # A cluster from before the vault (or a deleted vault): from the published Secret.
        (None, {"app": _published("old")}, {}, True, "old", [], []),
        # Adopted at creation; later changes of the adopted Secret are reported, not applied.
        (None, {}, {"app": "chosen"}, False, "chosen", [], []),
        (_vault(app="chosen"), {}, {"app": "changed"}, True, "chosen", [], ["app"]),
        # Every copy gone while the database has data: a new password, reported.
        (None, {}, {}, True, "new", ["app"], []),
    ],
)
def test_where_passwords_come_from(
    vault: dict[str, Any] | None,
    published: dict[str, Any],
    adopted: dict[str, str],
    has_data: bool,
    app: str,
    regenerated: list[str],
    changed: list[str],
) -> None:
    got = passwords.resolve(vault, published, adopted, has_data=has_data, generator=lambda: "new")  # type: ignore[arg-type]
    assert got.passwords["app"] == app
    assert [k for k in got.regenerated if k == "app"] == regenerated
    assert got.adopted_changed == changed


def test_generated_passwords_come_from_the_csprng() -> None:
    a, b = passwords.generate(), passwords.generate()
    assert a != b and len(a) >= 32


def _member(
    name: str = "db-0",
    *,
    ready: bool = True,
    state: str = "running",
    created: datetime = NOW - timedelta(days=1),
    unready_since: datetime | None = None,
    report: InstanceReport | None = None,
    role: str = "primary",
) -> Member:
    return Member(
        name=name,
        ordinal=int(name.rsplit("-", 1)[1]),
        ready=ready,
        running=True,
        created=created,
        revision="r1",
        role=role,
        state=state,
        api_url="http://127.0.0.1:8008/patroni",
        lsn=100,
        pending_restart=False,
        unready_since=unready_since,
        report=report,
    )


LIBS = frozenset({"pg_stat_statements", "auto_explain", "plpgsql"})


@pytest.mark.parametrize(
    ("parameters", "held"),
    [
        ({"shared_preload_libraries": "pg_stat_statements"}, []),
        ({"shared_preload_libraries": "pg_stat_statements, auto_explain"}, []),
        ({"shared_preload_libraries": "'$libdir/auto_explain'"}, []),
        ({"shared_preload_libraries": "does_not_exist"}, ["shared_preload_libraries"]),
        ({"session_preload_libraries": "auto_explain,nope"}, ["session_preload_libraries"]),
        ({"work_mem": "does_not_exist"}, []),
    ],
)
def test_libraries_the_image_lacks_are_held_back(
    parameters: dict[str, str], held: list[str]
) -> None:
    cluster = make_cluster({"postgresql": {"parameters": parameters}})
    observed = _snapshot(cluster, [_member(report=InstanceReport(15, LIBS))])
    assert sorted(held_back_parameters(cluster, observed)) == held


def test_nothing_is_held_back_before_an_instance_reports_its_libraries() -> None:
    cluster = make_cluster({"postgresql": {"parameters": {"shared_preload_libraries": "x"}}})
    assert held_back_parameters(cluster, _snapshot(cluster, [_member()])) == {}


def _snapshot(cluster: Any, members: list[Member]) -> Snapshot:
    raw = {"metadata": {"name": "db", "namespace": "prod"}, "spec": {}}
    return Snapshot("prod", "db", NOW, raw=raw, cluster=cluster, members=tuple(members))


def _degraded(
    cluster: Any, members: list[Member], problems: tuple[Problem, ...] = ()
) -> tuple[str, str, str]:
    st = status.compute(
        _snapshot(cluster, members),
        Plan(problems=problems),
        stuck_after=timedelta(seconds=300),
    )
    assert st is not None
    cond = c.get(st.conditions, c.DEGRADED)
    assert cond is not None
    return cond.status, cond.reason, cond.message


@pytest.mark.parametrize(
    ("created", "unready_since", "stuck"),
    [
        # An old pod that turned unready a moment ago is not "never ready".
        (NOW - timedelta(days=1), NOW - timedelta(seconds=10), False),
        (NOW - timedelta(days=1), NOW - timedelta(seconds=301), True),
        (NOW - timedelta(seconds=10), NOW - timedelta(seconds=10), False),
    ],
)
def test_never_ready_counts_from_when_the_instance_became_unready(
    created: datetime, unready_since: datetime, stuck: bool
) -> None:
    member = _member(ready=False, state="starting", created=created, unready_since=unready_since)
    _, reason, _ = _degraded(make_cluster(), [member])
    assert (reason == c.INSTANCE_STUCK) is stuck


@pytest.mark.parametrize(
    ("members", "reason", "words"),
    [
        (
            [_member(state="start failed", report=InstanceReport(15, LIBS, "FATAL: no memory"))],
            c.POSTGRES_NOT_RUNNING,
            "db-0: FATAL: no memory",
        ),
        # A stale error of a server that runs again says nothing.
        ([_member(report=InstanceReport(15, LIBS, "FATAL: old"))], c.AS_EXPECTED, ""),
        ([_member(report=InstanceReport(16, LIBS))], c.VERSION_MISMATCH, "PostgreSQL 16"),
        # An image without the cluster's major: the instance stops and reports the major it
        # carries; the mismatch is the cause, not a parameter to fix.
        (
            [
                _member(
                    ready=False,
                    state="stopped",
                    report=InstanceReport(
                        18, LIBS, "FATAL: no PostgreSQL 15 binaries in /usr/lib/postgresql/15/bin"
                    ),
                )
            ],
            c.VERSION_MISMATCH,
            "runs PostgreSQL 18",
        ),
        (
            [_member(report=InstanceReport(15, LIBS, None, (("work_mem", "invalid value"),)))],
            c.PARAMETERS_IGNORED,
            "work_mem",
        ),
    ],
)
def test_what_the_instances_report_is_degraded(
    members: list[Member], reason: str, words: str
) -> None:
    cluster = make_cluster({"postgresql": {"parameters": {"work_mem": "lots"}}})
    _, got, message = _degraded(cluster, members)
    assert got == reason
    assert words in message


def test_every_problem_is_in_the_message_and_the_first_is_the_reason() -> None:
    problems = (Problem(c.CHILD_NAME_CONFLICT, "Service 'db-rw' ..."), Problem("B", "second"))
    st, reason, message = _degraded(make_cluster(), [_member()], problems)
    assert (st, reason) == ("True", c.CHILD_NAME_CONFLICT)
    assert "Service 'db-rw'" in message and "second" in message


def test_instance_report_parses_what_the_instance_publishes() -> None:
    raw = json.dumps(
        {
            contract.REPORT_MAJOR: 15,
            contract.REPORT_LIBRARIES: ["plpgsql"],
            contract.REPORT_ERROR: "FATAL: x",
            contract.REPORT_IGNORED: {"a": "b"},
        }
    )
    assert InstanceReport.from_annotation(raw) == InstanceReport(
        15, frozenset({"plpgsql"}), "FATAL: x", (("a", "b"),)
    )
    assert InstanceReport.from_annotation("not json") is None
    assert InstanceReport.from_annotation(None) is None
    upgraded = {contract.REPORT_UPGRADED: {"fromMajor": 15, "toMajor": 18}}
    assert InstanceReport.from_annotation(json.dumps(upgraded)) == InstanceReport(upgraded_to=18)
    odd = {contract.REPORT_UPGRADED: {"toMajor": "18"}}
    assert InstanceReport.from_annotation(json.dumps(odd)) == InstanceReport()
