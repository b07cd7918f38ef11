"""PostgresPooler on real PostgreSQL, Patroni and PgBouncer: a transaction-mode pooler in front
of a 2-instance cluster. A client through the pooler (TLS, authenticated by auth_query as the
application's user) keeps writing across a failover through the same PgBouncer process; a
changed setting reloads PgBouncer without dropping an open connection; pause holds queries
until resume; the API refuses a setting that is not allowed."""

from __future__ import annotations

import threading
import time
from typing import Any

import psycopg
import pytest

from pgherd.controller.client import Client as Kube
from pgherd_dev.controlplane import ControlPlane
from tests.acked_writes import AckedWriter, stored_ids, wait_synchronous
from tests.operator_harness import Cluster, Operator, PoolerClient, refused, wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

POOLER = "pgb"


def _pooler(namespace: str, name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "pgherd.io/v1alpha1",
        "kind": "PostgresPooler",
        "metadata": {"name": name, "namespace": namespace},
        "spec": spec,
    }


def _ready(kube: Kube, namespace: str) -> dict[str, Any] | None:
    got = kube.get("PostgresPooler", namespace, POOLER) or {}
    status = got.get("status") or {}
    ready = next((c for c in status.get("conditions", []) if c["type"] == "Ready"), {})
    return status if ready.get("status") == "True" else None


def _events(kube: Kube, namespace: str, reason: str) -> list[dict[str, Any]]:
    """The Events on the pooler with reason."""
    return [e for e in kube.list("Event", namespace)
            if e["involvedObject"].get("kind") == "PostgresPooler"
            and e["involvedObject"]["name"] == POOLER and e["reason"] == reason]  # fmt: skip


def test_pooler_follows_failover_reloads_and_pauses(
    operator: Operator, kube: Kube, namespace: str, control_plane: ControlPlane
) -> None:
    started = time.monotonic()
    # Bad input first: the API refuses what the pooler may not set, saying which and why.
    unknown = refused(lambda: kube.create(_pooler(namespace, "bad", {
        "cluster": "pool", "parameters": {"bogus_setting": "1"}})))  # fmt: skip
    assert "bogus_setting is not a PgBouncer setting a PostgresPooler may set" in unknown
    owned = refused(lambda: kube.create(_pooler(namespace, "bad", {
        "cluster": "pool", "parameters": {"listen_port": "1"}})))  # fmt: skip
    assert "listen_port is managed by pgherd" in owned

    # A pooler for a cluster that does not exist (yet) says so.
    kube.create(_pooler(namespace, POOLER, {"cluster": "pool", "poolMode": "transaction"}))
    wait_for(
        "ClusterNotFound",
        lambda: any(
            c.get("reason") == "ClusterNotFound"
            for c in (
                (kube.get("PostgresPooler", namespace, POOLER) or {}).get("status") or {}
            ).get("conditions", [])
        ),
        timeout=30,
    )
    cluster = Cluster(kube, namespace, "pool")
    # Synchronous: with asynchronous replication a failover may lose the last acknowledged
    # commits (maximum_lag_on_failover), and the test asserts none is lost.
    cluster.create({"instances": 2, "synchronousMode": "on",
                    "patroni": {"ttl": 20, "loopWait": 2, "retryTimeout": 5}})  # fmt: skip
    cluster.wait_healthy(2)
    status = wait_for("the pooler Ready", lambda: _ready(kube, namespace), timeout=120)
    assert status["readyInstances"] == 1 and status["service"] == POOLER
    # One Warning on the pooler itself for the missing cluster, one Normal once Ready.
    wait_for("the Normal Event", lambda: _events(kube, namespace, "Ready"), timeout=30)
    (warning,) = _events(kube, namespace, "ClusterNotFound")
    assert warning["type"] == "Warning" and "'pool' does not exist" in warning["message"]
    print(f"cluster and pooler ready in {time.monotonic() - started:.1f}s")

    through = PoolerClient(kube, cluster, control_plane, POOLER)
    with through.connect() as conn:
        assert conn.info.parameter_status("server_version")
        assert conn.pgconn.ssl_in_use
        conn.execute("CREATE TABLE through_pooler (id int PRIMARY KEY)")
    # auth_query refuses the superuser: it never logs in through the pooler.
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(
            host=f"{POOLER}.{namespace}.svc", hostaddr="127.0.0.1", port=str(through.port),
            sslmode="verify-full", sslrootcert=str(through.ca), user="postgres",
            password=cluster.superuser_password(), dbname="postgres", connect_timeout="5",
        ).close()  # fmt: skip
    pid = through.pid()

    # ---- failover: the same PgBouncer process reaches the new primary -----------------
    writer = AckedWriter(through.connect, table="through_pooler", pause=0.02)
    writer.start()
    writer.flowing(50, timeout=30)
    # Patroni names its synchronous standby a loop or two after the bootstrap; a primary
    # lost before that leaves no replica it may promote (docs/faults.md), which is not what
    # this test is about.
    wait_synchronous(cluster, 2)
    old = cluster.primary()
    killed_at = time.monotonic()
    cluster.kill(old, control_plane, hold=True)
    wait_for("a replica promoted", lambda: (p := cluster.primary()) != old and p, timeout=90)
    writer.flowing(50, timeout=60)
    writer.finish()
    # The outage: the longest time without a commit from the kill on (a transaction that
    # waited in PgBouncer's queue meanwhile, then committed, is not a failed one).
    outage, resumed_at = writer.resumed(killed_at)
    print(
        f"failover through the pooler: {len(writer.failures)} failed transactions, longest "
        f"time without a commit {outage:.1f}s, {len(writer.acked)} committed; errors: "
        f"{writer.errors()[:3]}"
    )
    # While no server is there, PgBouncer fails what it cannot send ("server conn crashed?",
    # then "server login has been failing" until it logs in to the new primary): how many
    # depends on how fast the client retries, so what is asserted is that the failures end
    # with the outage and the outage is the failover's (Patroni ttl 20 s), not more.
    late = [t - resumed_at for t, _ in writer.failures if t > resumed_at]
    assert not late, f"transactions failed after writes resumed: {late} {writer.errors()}"
    assert outage < 45, f"{outage:.1f}s without a commit through the pooler"
    assert through.pid() == pid, "the pooler's process was restarted"
    again = kube.get("Pod", namespace, through.pod["metadata"]["name"])
    assert again is not None and again["metadata"]["uid"] == through.pod["metadata"]["uid"]
    with cluster.connect(cluster.primary()) as conn:
        assert writer.lost(stored_ids(conn, "through_pooler")) == []
    cluster.release(old)

    # ---- reload: a setting changes, an open connection stays --------------------------
    held = through.connect()
    assert " - " not in str(held.execute("SHOW application_name").fetchone()[0])
    kube.patch("PostgresPooler", namespace, POOLER, {"spec": {"parameters": {
        "application_name_add_host": "1", "default_pool_size": "10"}}})  # fmt: skip

    def reloaded() -> bool:
        with through.connect() as fresh:
            return " - 127.0.0.1:" in str(fresh.execute("SHOW application_name").fetchone()[0])

    wait_for("pgbouncer to reload the new setting", reloaded, timeout=60, interval=1)
    assert held.execute("SELECT 1").fetchone() == (1,), "the open connection was dropped"
    assert through.pid() == pid, "a reload must not restart PgBouncer"

    # ---- pause and resume -------------------------------------------------------------
    kube.patch("PostgresPooler", namespace, POOLER, {"spec": {"paused": True}})
    wait_for(
        "status.paused",
        lambda: ((kube.get("PostgresPooler", namespace, POOLER) or {}).get("status") or {}).get(
            "paused"
        ),
        timeout=30,
    )
    time.sleep(8)  # the pod sees its mounted ConfigMap within the kubelet's refresh period
    done = threading.Event()

    def query() -> None:
        held.execute("SELECT 1")
        done.set()

    waiting = threading.Thread(target=query, daemon=True)
    waiting.start()
    assert not done.wait(4), "a query ran while the pool was paused"
    resumed_at = time.monotonic()
    kube.patch("PostgresPooler", namespace, POOLER, {"spec": {"paused": False}})
    assert done.wait(30), "the query did not complete after resume"
    print(f"paused query completed {time.monotonic() - resumed_at:.1f}s after resume")
    held.close()
    assert through.pid() == pid

    # ---- the last pooler deleted: its role, function and password go with it ----------
    kube.delete("PostgresPooler", namespace, POOLER)
    wait_for("the pooler role's Secret to be deleted",
             lambda: kube.get("Secret", namespace, "pool-pooler") is None, timeout=90)  # fmt: skip
    with cluster.connect_superuser(dbname=cluster.app_credentials()[2]) as conn:
        role = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = 'pgherd_pooler'").fetchall()
        function = conn.execute("SELECT to_regprocedure('pgherd.pooler_auth(text)')").fetchone()
    assert role == [] and function == (None,), (role, function)
