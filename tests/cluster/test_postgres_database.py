"""PostgresDatabase on real PostgreSQL and Patroni, one 1-instance cluster: a database with
its owner, encoding and locale, extensions (one installed at an older version, then updated)
and schemas with owners, under hostile names; drift set back; an extension the image lacks
reported while the rest is applied; two resources claiming one database; a database owned by
a managed role declared with it (both made by one pass); ensure: absent;
reclaim delete drops the database (and waits while a client is connected) while retain keeps
it; a database declared before its cluster exists (an error, then applied once the cluster
is up); and the cluster deleted first releases the finalizer.

The tests share the cluster and run in file order.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from pgherd.controller.client import Client as Kube
from pgherd.controller.databases import FINALIZER
from tests.operator_harness import Cluster, Operator, refused, wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

# Names that need quoting, with a quote, a semicolon and non-ASCII letters.
DB = 'inv"; DROP TABLE x; --ü'
OWNER = "owner_a"
SCHEMA_OWNER = 'schéma "owner"'
SCHEMA = "app data; x"


@pytest.fixture(scope="module")
def cluster(operator: Operator, kube: Kube) -> Iterator[Cluster]:
    ns = f"t-db-{uuid.uuid4().hex[:6]}"
    kube.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
    cluster = Cluster(kube, ns, "dbs")
    # A database declared before its cluster exists: an error until the cluster appears.
    _create(cluster, "early", {"name": "early", "owner": "app"})
    status = _wait(cluster, "early", "the error", lambda s: s if s.get("error") else None)
    EARLY.update(status)
    cluster.create({"instances": 1})
    cluster.wait_healthy(1)
    # The owners exist first (managed roles are another feature).
    with cluster.connect_superuser(autocommit=True) as conn:
        for role in (OWNER, SCHEMA_OWNER):
            conn.execute(psycopg.sql.SQL("CREATE ROLE {}").format(psycopg.sql.Identifier(role)))
    yield cluster
    kube.delete("Namespace", None, ns)


# The early database's status before its cluster existed.
EARLY: dict[str, Any] = {}


def _create(cluster: Cluster, name: str, spec: dict[str, Any]) -> None:
    cluster.kube.create(
        {
            "apiVersion": "pgherd.io/v1alpha1",
            "kind": "PostgresDatabase",
            "metadata": {"name": name, "namespace": cluster.namespace},
            "spec": {"cluster": cluster.name, **spec},
        }
    )


def _get(cluster: Cluster, name: str) -> dict[str, Any] | None:
    return cluster.kube.get("PostgresDatabase", cluster.namespace, name)


def _status(cluster: Cluster, name: str) -> dict[str, Any]:
    return dict((_get(cluster, name) or {}).get("status") or {})


def _wait(cluster: Cluster, name: str, what: str, check: Any, timeout: float = 60) -> Any:
    return wait_for(f"{name}: {what}", lambda: check(_status(cluster, name)), timeout)


def _applied(cluster: Cluster, name: str) -> dict[str, Any]:
    def ok(s: dict[str, Any]) -> dict[str, Any] | None:
        gen = (_get(cluster, name) or {}).get("metadata", {}).get("generation")
        done = s.get("applied") is True and s.get("observedGeneration") == gen
        return s if done and s.get("message") == "database in place" else None

    result: dict[str, Any] = _wait(cluster, name, "applied", ok)
    return result


def _query(cluster: Cluster, sql: str, *args: Any, dbname: str = "postgres") -> list[Any]:
    with cluster.connect_superuser(dbname=dbname) as conn:
        return list(conn.execute(sql, args).fetchall())


def test_the_api_refuses_bad_names(cluster: Cluster) -> None:
    for name, message in (
        ("template1", "must not be one of PostgreSQL's own databases"),
        ("é" * 32, "at most 63 bytes"),
    ):
        got = refused(lambda n=name: _create(cluster, "bad", {"name": n, "owner": OWNER}))
        assert message in got
    got = refused(lambda: _create(cluster, "bad", {"name": "x", "owner": OWNER,
                                                   "schemas": [{"name": "pg_mine"}]}))  # fmt: skip
    assert "reserved by PostgreSQL" in got
    got = refused(lambda: _create(cluster, "bad", {"name": "x", "owner": OWNER, "locale": "C",
                                                   "lcCtype": "C"}))  # fmt: skip
    assert "either locale or lcCollate/lcCtype" in got
    got = refused(
        lambda: _create(
            cluster,
            "bad",
            {"name": "x", "owner": OWNER, "extensions": [{"name": "a"}, {"name": "a"}]},
        )
    )
    assert "extension names must be unique" in got


def test_a_database_with_owner_locale_extensions_and_schemas(cluster: Cluster) -> None:
    _create(
        cluster,
        "inventory",
        {
            "name": DB,
            "owner": OWNER,
            "encoding": "UTF8",
            "locale": "C",
            "extensions": [
                {"name": "citext", "schema": SCHEMA},
                {"name": "hstore", "version": "1.7"},
            ],
            "schemas": [{"name": SCHEMA, "owner": SCHEMA_OWNER}, {"name": "reports"}],
            "reclaimPolicy": "delete",
        },
    )
    status = _applied(cluster, "inventory")
    assert status.get("error") is None
    assert [c["reason"] for c in status["conditions"] if c["type"] == "Ready"] == ["Applied"]
    assert FINALIZER in (_get(cluster, "inventory") or {})["metadata"]["finalizers"]
    row = _query(
        cluster,
        "SELECT pg_get_userbyid(datdba), pg_encoding_to_char(encoding), datcollate, datctype "
        "FROM pg_database WHERE datname = %s",
        DB,
    )
    assert row == [(OWNER, "UTF8", "C", "C")]
    assert _query(cluster, "SELECT e.extname, e.extversion, n.nspname FROM pg_extension e "
                  "JOIN pg_namespace n ON n.oid = e.extnamespace WHERE extname <> 'plpgsql' "
                  "ORDER BY 1", dbname=DB) == [("citext", _default(cluster, "citext"), SCHEMA),
                                               ("hstore", "1.7", "public")]  # fmt: skip
    assert _schemas(cluster) == {SCHEMA: SCHEMA_OWNER, "reports": OWNER}
    # The name is immutable, the creation-only settings too.
    with pytest.raises(Exception, match="immutable"):
        cluster.kube.patch("PostgresDatabase", cluster.namespace, "inventory",
                           {"spec": {"name": "other", "encoding": "SQL_ASCII"}})  # fmt: skip


def _default(cluster: Cluster, extension: str) -> str:
    return str(_query(cluster, "SELECT default_version FROM pg_available_extensions "
                      "WHERE name = %s", extension)[0][0])  # fmt: skip


def _schemas(cluster: Cluster) -> dict[str, str]:
    rows = _query(cluster, "SELECT nspname, pg_get_userbyid(nspowner) FROM pg_namespace "
                  "WHERE nspname = ANY(%s)", [SCHEMA, "reports", "later"], dbname=DB)  # fmt: skip
    return dict(rows)


def test_drift_is_set_back_and_an_extension_is_updated(cluster: Cluster) -> None:
    with cluster.connect_superuser(dbname=DB, autocommit=True) as conn:
        conn.execute("DROP SCHEMA reports")
        conn.execute(psycopg.sql.SQL("ALTER DATABASE {} OWNER TO postgres").format(
            psycopg.sql.Identifier(DB)))  # fmt: skip
    wait_for("reports back", lambda: _schemas(cluster).get("reports") == OWNER, 30)
    wait_for("owner back", lambda: _query(
        cluster, "SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = %s", DB
    ) == [(OWNER,)], 30)  # fmt: skip
    # No version: the image's default, by ALTER EXTENSION ... UPDATE TO.
    cluster.kube.patch("PostgresDatabase", cluster.namespace, "inventory", {"spec": {
        "extensions": [{"name": "citext", "schema": SCHEMA}, {"name": "hstore"}]}})  # fmt: skip
    _applied(cluster, "inventory")
    assert _query(cluster, "SELECT extversion FROM pg_extension WHERE extname = 'hstore'",
                  dbname=DB) == [(_default(cluster, "hstore"),)]  # fmt: skip


def test_an_extension_the_image_lacks_is_an_error_and_the_rest_applies(cluster: Cluster) -> None:
    cluster.kube.patch("PostgresDatabase", cluster.namespace, "inventory", {"spec": {
        "extensions": [{"name": "citext", "schema": SCHEMA}, {"name": "hstore"},
                       {"name": "no_such_extension"}],
        "schemas": [{"name": SCHEMA, "owner": SCHEMA_OWNER}, {"name": "reports"},
                    {"name": "later"}]}})  # fmt: skip
    status = _wait(
        cluster,
        "inventory",
        "the error",
        lambda s: s if "no_such_extension" in (s.get("error") or "") else None,
    )
    assert "not available in the image" in status["error"]
    assert status["applied"] is False
    # One Warning on the PostgresDatabase itself (not the cluster), however many passes.
    wait_for("the Warning", lambda: _events(cluster, "inventory", "ExtensionNotAvailable"), 30)
    wait_for("the other schema", lambda: _schemas(cluster).get("later") == OWNER, 30)
    # The cluster itself is not held up.
    assert cluster.status()["phase"] == "Healthy"
    applied_before = len(_events(cluster, "inventory", "Applied"))
    cluster.kube.patch("PostgresDatabase", cluster.namespace, "inventory", {"spec": {
        "extensions": [{"name": "citext", "schema": SCHEMA}, {"name": "hstore"}]}})  # fmt: skip
    _applied(cluster, "inventory")
    wait_for("the Normal Event", lambda: len(_events(cluster, "inventory", "Applied"))
             > applied_before, 30)  # fmt: skip
    (warning,) = _events(cluster, "inventory", "ExtensionNotAvailable")
    assert warning["type"] == "Warning" and "no_such_extension" in warning["message"]
    assert warning["involvedObject"]["uid"] == (_get(cluster, "inventory") or {})["metadata"]["uid"]


def _events(cluster: Cluster, name: str, reason: str) -> list[dict[str, Any]]:
    """The Events on PostgresDatabase name with reason."""
    return [e for e in cluster.kube.list("Event", cluster.namespace)
            if e["involvedObject"].get("kind") == "PostgresDatabase"
            and e["involvedObject"]["name"] == name and e["reason"] == reason]  # fmt: skip


def test_the_older_resource_owns_a_database(cluster: Cluster) -> None:
    _create(cluster, "inventory-again", {"name": DB, "owner": "postgres"})
    status = _wait(cluster, "inventory-again", "the error",
                   lambda s: s if s.get("error") else None)  # fmt: skip
    assert "managed by the older PostgresDatabase inventory" in status["error"]
    # Retain: no finalizer, deleting it is immediate and leaves the database as it is.
    cluster.kube.delete("PostgresDatabase", cluster.namespace, "inventory-again")
    wait_for("gone", lambda: _get(cluster, "inventory-again") is None, 10)
    assert _query(cluster, "SELECT pg_get_userbyid(datdba) FROM pg_database "
                  "WHERE datname = %s", DB) == [(OWNER,)]  # fmt: skip


def test_a_managed_role_owns_a_database_declared_with_it(cluster: Cluster) -> None:
    # The role and the database in one go: the role's SQL runs first in the same pass.
    cluster.patch_spec({"managed": {"roles": [{"name": "ledger_owner"}]}})
    _create(cluster, "ledger", {"name": "ledger", "owner": "ledger_owner"})
    _applied(cluster, "ledger")
    assert _query(cluster, "SELECT pg_get_userbyid(datdba) FROM pg_database "
                  "WHERE datname = 'ledger'") == [("ledger_owner",)]  # fmt: skip


def test_ensure_absent_and_reclaim_policies(cluster: Cluster) -> None:
    _create(cluster, "kept", {"name": "kept", "owner": OWNER})
    _applied(cluster, "kept")
    assert "finalizers" not in (_get(cluster, "kept") or {})["metadata"]
    cluster.kube.delete("PostgresDatabase", cluster.namespace, "kept")
    wait_for("kept gone", lambda: _get(cluster, "kept") is None, 10)
    assert _query(cluster, "SELECT 1 FROM pg_database WHERE datname = 'kept'") == [(1,)]
    # ensure: absent drops it.
    _create(cluster, "kept-absent", {"name": "kept", "owner": OWNER, "ensure": "absent"})
    wait_for(
        "kept dropped",
        lambda: not _query(cluster, "SELECT 1 FROM pg_database WHERE datname = 'kept'"),
        30,
    )
    _wait(cluster, "kept-absent", "applied", lambda s: s.get("applied") is True)
    # reclaim delete: a plain DROP DATABASE, which waits while a client is connected.
    with cluster.connect_superuser(dbname=DB):
        cluster.kube.delete("PostgresDatabase", cluster.namespace, "inventory")
        _wait(cluster, "inventory", "the error", lambda s: s if "being accessed" in
                       (s.get("error") or "") else None)  # fmt: skip
        assert _get(cluster, "inventory") is not None
    wait_for("inventory gone", lambda: _get(cluster, "inventory") is None, 30)
    assert not _query(cluster, "SELECT 1 FROM pg_database WHERE datname = %s", DB)


def test_a_database_of_a_cluster_that_does_not_exist(cluster: Cluster) -> None:
    assert EARLY["error"] == f"PostgresCluster dbs does not exist in namespace {cluster.namespace}"
    assert EARLY["conditions"][0]["reason"] == "ClusterNotFound"
    # Looked at again once the cluster exists.
    _applied(cluster, "early")
    assert _query(cluster, "SELECT pg_get_userbyid(datdba) FROM pg_database "
                  "WHERE datname = 'early'") == [("app",)]  # fmt: skip


def test_deleting_the_cluster_first_releases_the_finalizer(cluster: Cluster) -> None:
    _create(cluster, "last", {"name": "last", "owner": OWNER, "reclaimPolicy": "delete"})
    _applied(cluster, "last")
    assert FINALIZER in (_get(cluster, "last") or {})["metadata"]["finalizers"]
    cluster.kube.delete("PostgresCluster", cluster.namespace, cluster.name)
    status = _wait(
        cluster,
        "last",
        "the cluster's absence",
        lambda s: s if "does not exist" in (s.get("error") or "") else None,
    )
    assert status["applied"] is False
    assert FINALIZER not in ((_get(cluster, "last") or {})["metadata"].get("finalizers") or [])
    cluster.kube.delete("PostgresDatabase", cluster.namespace, "last")
    wait_for("last gone", lambda: _get(cluster, "last") is None, 10)
