"""`make bench` section `pooler`: pgbench through a PostgresPooler (PgBouncer, transaction
mode) against pgbench straight to the primary, and the write outage through the pooler when
the primary dies.

Both paths use TLS verified against the cluster's CA (the pooler's client side and its
server side too), the same database, user and pgbench scripts, so the difference is the pooler.
For each of 10, 100 and 500 clients: select-only TPS over persistent connections (100,000
transactions shared by the clients), and with a new connection per transaction (--connect,
2,000 transactions) both the TPS and pgbench's average connection time, which is what an
application without a pool of its own pays. The cluster allows 600 connections so
that 500 direct clients are possible at all; the pooler keeps 20 server connections.
"""

from __future__ import annotations

import os
import re
import subprocess
import threading
import time
from collections import Counter
from typing import Any

import psycopg
from tests.operator_harness import Cluster, PoolerClient, wait_for

from pgherd.controller.client import Client as Kube
from pgherd_dev.controlplane import ControlPlane

CLIENTS = (10, 100, 500)
POOLER = "bench-pgb"
SCALE = 10
# Transactions per run, over all clients: over persistent connections, and with a new
# connection for each (a TLS handshake and a SCRAM exchange each: far fewer).
PERSISTENT = 100_000
RECONNECTING = 2_000


def _pgbench(env: dict[str, str], *args: str) -> dict[str, Any]:
    """Run pgbench; its TPS, average connection time and failed transactions."""
    done = subprocess.run(
        ["pgbench", "--no-vacuum", "--jobs=2", "--protocol=simple", *args],
        env={**os.environ, **env}, capture_output=True, text=True, check=False, timeout=900,
    )  # fmt: skip
    out = done.stdout + done.stderr

    def number(pattern: str) -> float | None:
        m = re.search(pattern, out)
        return float(m.group(1)) if m else None

    found: dict[str, Any] = {
        # pgbench says "(without initial connection time)", or with --connect "(including
        # reconnection times)".
        "tps": number(r"tps = ([\d.]+) \((?:without initial connection|including reconnection)"),
        "connection_ms": number(r"average connection time = ([\d.]+) ms"),
        "failed": number(r"number of failed transactions: (\d+)"),
        "exit": float(done.returncode),
    }
    if found["tps"] is None:
        found["output"] = out.strip()[-600:]
    return found


def _env(host: str, port: int, ca: str, login: tuple[str, str, str]) -> dict[str, str]:
    user, password, dbname = login
    return {
        "PGHOST": host, "PGHOSTADDR": "127.0.0.1", "PGPORT": str(port), "PGSSLMODE": "verify-full",
        "PGSSLROOTCERT": ca, "PGUSER": user, "PGPASSWORD": password, "PGDATABASE": dbname,
    }  # fmt: skip


def _throughput(direct: dict[str, str], pooled: dict[str, str]) -> dict[str, Any]:
    """A fixed number of transactions per run, shared by the clients, rather than a duration:
    500 clients' TLS and SCRAM logins alone can outlast a short duration."""
    table: dict[str, Any] = {}
    for clients in CLIENTS:
        row: dict[str, Any] = {}
        for path, env in (("direct", direct), ("pooler", pooled)):
            common = (f"--client={clients}", "--select-only")
            row[path] = {
                "persistent": _pgbench(
                    env, *common, f"--transactions={max(20, PERSISTENT // clients)}"
                ),
                "connect_per_transaction": _pgbench(
                    env, *common, f"--transactions={max(2, RECONNECTING // clients)}", "--connect"
                ),
            }
        table[str(clients)] = row
    return table


def _failover(cluster: Cluster, through: PoolerClient, cp: ControlPlane) -> dict[str, Any]:
    """One row per transaction through the pooler while the primary is killed (held down,
    as a lost node): failed transactions and the longest time without a commit."""
    with through.connect() as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS bench_beat (t timestamptz)")
    committed: list[float] = []
    failed: list[float] = []
    errors: Counter[str] = Counter()
    stop = threading.Event()

    def write() -> None:
        conn: psycopg.Connection[Any] | None = None
        while not stop.is_set():
            try:
                conn = conn or through.connect()
                conn.execute("INSERT INTO bench_beat VALUES (now())")
                committed.append(time.monotonic())
                time.sleep(0.01)
            except psycopg.Error as e:
                failed.append(time.monotonic())
                errors[(str(e).strip().splitlines() or [type(e).__name__])[0][:120]] += 1
                if conn is not None:
                    conn.close()
                conn = None
                time.sleep(0.1)

    writer = threading.Thread(target=write, daemon=True)
    writer.start()
    wait_for("writes through the pooler", lambda: len(committed) > 50, 30)
    old, pid = cluster.primary(), through.pid()
    killed = time.monotonic()
    cluster.kill(old, cp, hold=True)
    wait_for("a replica promoted", lambda: (p := cluster.primary()) != old and p, 120)
    count = len(committed)
    wait_for("writes again", lambda: len(committed) > count + 50, 60)
    stop.set()
    writer.join(10)
    after = [t for t in committed if t >= killed]
    before = max(t for t in committed if t < killed)
    gaps = [b - a for a, b in zip([before, *after], after, strict=False)]
    cluster.release(old)
    return {
        "patroni": {"ttl": 20, "loopWait": 2, "retryTimeout": 5},
        "failed_transactions": len(failed),
        "longest_without_commit_seconds": round(max(gaps), 2),
        "pooler_restarted": through.pid() != pid,
        "errors": dict(errors.most_common(5)),
    }


def pooler_costs(kube: Kube, cp: ControlPlane, ns: str) -> dict[str, Any]:
    cluster = Cluster(kube, ns, "bench-pool")
    cluster.create({
        "instances": 2,
        "patroni": {"ttl": 20, "loopWait": 2, "retryTimeout": 5},
        "postgresql": {"parameters": {"max_connections": "600"}},
    })  # fmt: skip
    cluster.wait_healthy(2, timeout=300)
    kube.create({
        "apiVersion": "pgherd.io/v1alpha1", "kind": "PostgresPooler",
        "metadata": {"name": POOLER, "namespace": ns},
        "spec": {"cluster": "bench-pool", "poolMode": "transaction", "parameters": {
            "max_client_conn": "1000", "default_pool_size": "20"}},
    })  # fmt: skip

    def ready() -> bool:
        status = (kube.get("PostgresPooler", ns, POOLER) or {}).get("status") or {}
        return any(c["type"] == "Ready" and c["status"] == "True"
                   for c in status.get("conditions", []))  # fmt: skip

    wait_for("the pooler Ready", ready, 180)
    through = PoolerClient(kube, cluster, cp, POOLER)
    login = cluster.app_credentials()
    primary = cluster.primary()
    tls = cluster.tls(primary)
    direct = _env(tls["host"], cluster.port(primary), tls["sslrootcert"], login)
    pooled = _env(f"{POOLER}.{ns}.svc", through.port, str(through.ca), login)
    init = subprocess.run(
        ["pgbench", "--initialize", f"--scale={SCALE}", "--quiet"],
        env={**os.environ, **direct}, capture_output=True, text=True, check=False, timeout=600,
    )  # fmt: skip
    if init.returncode != 0:
        raise RuntimeError(f"pgbench --initialize failed: {init.stderr[-500:]}")
    setup = {
        "scale": SCALE, "transactions": PERSISTENT, "reconnecting": RECONNECTING,
        "script": "select-only", "pool_mode": "transaction", "default_pool_size": 20,
    }  # fmt: skip
    out: dict[str, Any] = {"pgbench": setup, "clients": _throughput(direct, pooled)}
    out["failover_through_pooler"] = _failover(cluster, through, cp)
    kube.delete("PostgresCluster", ns, "bench-pool")
    return out
