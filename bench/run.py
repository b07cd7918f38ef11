"""`make bench`: pgherd's speed and memory, measured on the real local control plane with the
real operator (as its ServiceAccount) and, where it matters, real PostgreSQL and Patroni.

Writes bench-results/bench.json. Not a test: it asserts nothing, it measures.
  - create-to-children-applied latency (p50, p99) for 1 and for N clusters created at once;
  - API writes per no-op resync, and operator RSS idle and with N clusters;
  - failover time (primary killed to writes accepted again), default and tuned Patroni timings;
  - switchover write outage;
  - backup and restore time of a database of PGHERD_BENCH_BACKUP_MIB (default 1024) MiB;
  - TLS: connection set-up with verify-full vs plain TCP, and the write outage while the
    server certificate is replaced;
  - WAL archive lag under a steady insert load of PGHERD_BENCH_WAL_ROWS rows/s (default
    5000) for PGHERD_BENCH_WAL_SECONDS (default 60) seconds, archiving to moto;
  - the operator's own metrics: its RSS and CPU with N clusters, metrics on vs off, and the
    time and size of a /metrics scrape;
  - the pooler: pgbench through a PostgresPooler vs direct at 10, 100 and 500 clients (TPS,
    connection set-up time) and the write outage through it during a failover (bench.pooler);
  - the Patroni fault matrix: synchronous mode x fault -> kills, acknowledged writes, lost,
    write outage p50/max (bench.faults; PGHERD_BENCH_FAULT_REPEATS, default 3);
  - an API-server outage longer than Patroni's TTL, failsafe mode on and off: the write gap,
    the primaries seen, losses, how soon the operator acts after (bench.api_outage);
  - Patroni timing profiles: default, tuned and fast (operator-assisted leader release), each
    primary killed several times in synchronous mode on: p50/max of writes back (bench.failover);
  - the major upgrade 15 -> 18 of a ~1 GiB database: `pgherd upgrade run` per method (link,
    copy, clone where reflinks exist), pg_upgrade alone, the preflight, analyze (bench.upgrade);
    and the operator's whole upgrade of a one-instance cluster in the operand images, link vs
    copy, with the write outage it measures (bench.upgrade_cluster).
PGHERD_BENCH_ONLY=latency,ha,...,upgrade_cluster (the SECTIONS below) runs some
sections only (default: all), writing bench-results/bench-<sections>.json instead.
Clusters in the latency runs park their pods off every node (nodeSelector), so only the
operator's work is timed and 600 PostgreSQL servers are not needed.

Issue 15, section `image`: the operand images (build, unpack, sizes) and a cluster's start in
the test kubelet's image mode vs host mode (bench.image_mode).
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import psycopg
from tests.operator_harness import (
    OPERATOR_ACCOUNT,
    OPERATOR_NAMESPACE,
    Cluster,
    Operator,
    _epoch,
    audit_requests,
    audit_writes,
    install_crds_and_rbac,
    operator_kubeconfig,
    settle_writes,
    wait_for,
)

from pgherd.controller.client import Client as Kube
from pgherd_dev.controlplane import ControlPlane

RESYNC = 10
PARKED = {"scheduling": {"nodeSelector": {"pgherd.io/bench": "parked"}}}
USER = f"system:serviceaccount:{OPERATOR_NAMESPACE}:{OPERATOR_ACCOUNT}"


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 3)


def _rss_mib(pid: int) -> dict[str, float]:
    fields = dict(
        line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
    )
    return {k: round(int(fields[k].split()[0]) / 1024, 1) for k in ("VmRSS", "VmHWM")}


def _ns(kube: Kube, name: str) -> str:
    kube.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
    return name


def latency(kube: Kube, namespace: str, count: int) -> list[float]:
    """Seconds from create to the last child (the PodDisruptionBudget) existing, per cluster.

    A watch opened before the first create times each PDB as it appears, while the later
    clusters are still being created: a list after the creation loop would add the loop's
    own duration to the first clusters' latency.
    """
    created: dict[str, float] = {}
    seen: dict[str, float] = {}
    done = threading.Event()
    since = kube.listing("PodDisruptionBudget", namespace).resource_version

    def watch() -> None:
        while not done.is_set():
            for event in kube.watch(
                "PodDisruptionBudget", namespace, selector="", resource_version=since,
                timeout_seconds=30,
            ):  # fmt: skip
                if event["type"] == "ADDED":
                    seen.setdefault(event["object"]["metadata"]["name"], time.monotonic())
                if len(seen) >= count or done.is_set():
                    return

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    for i in range(count):
        name = f"c{i}"
        Cluster(kube, namespace, name).create({"instances": 3, **PARKED})
        created[name] = time.monotonic()
    watcher.join(timeout=600)
    done.set()
    return [seen[n] - created[n] for n in created if n in seen]


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = int(fields[11]) + int(fields[12])  # utime + stime
    return ticks / os.sysconf("SC_CLK_TCK")


def _by_request(events: list[dict[str, Any]]) -> dict[str, int]:
    return dict(
        Counter(
            " ".join(
                filter(
                    None,
                    [e["verb"], e["objectRef"].get("resource"), e["objectRef"].get("subresource")],
                )
            )
            for e in events
        )
    )


def noop_resync(cp: ControlPlane, op: Operator, clusters: int, periods: int = 3) -> dict[str, Any]:
    """What a resync costs once nothing changes: writes, reads (GETs; the watches feeding the
    caches are not per pass), CPU seconds and passes made, per resync period.

    After a burst of creations the clusters' statuses still move for a while (pods appear,
    a pass over hundreds of clusters takes longer than one resync period), and those are
    real changes. Settled means two resync periods in a row without a write; the counts are
    taken over the periods after that.
    """
    assert op.proc is not None  # noqa: S101 - started
    started = time.time()
    quiet = settle_writes(cp, USER, RESYNC)
    settled = time.time()
    cpu, passes = _cpu_seconds(op.proc.pid), _passes(op)
    time.sleep(periods * RESYNC)
    cpu, passes = _cpu_seconds(op.proc.pid) - cpu, _passes(op) - passes
    writes = audit_writes(cp, USER, settled)
    reads = [
        e
        for e in audit_requests(cp, USER, settled, verbs=frozenset({"get", "list"}))
        # a watch's own list (the informers relist only after an error) is not a pass's read
        if e["verb"] == "get"
    ]
    return {
        "writes_per_resync": round(len(writes) / periods, 2),
        "writes_by_request": _by_request(writes),
        "reads_per_resync": round(len(reads) / periods, 2),
        "reads_per_cluster_per_resync": round(len(reads) / periods / max(1, clusters), 3),
        "reads_by_request": _by_request(reads),
        "cpu_seconds_per_resync": round(cpu / periods, 3),
        "passes_per_resync": round(passes / periods, 1),
        "settled": quiet is not None,
        "settle_seconds": round(settled - started, 1),
    }


def _passes(op: Operator) -> int:
    return int(((op.health() or {}).get("controller") or {}).get("passes", 0))


class Writer(threading.Thread):
    """Writes a row every few milliseconds to whichever instance is primary."""

    def __init__(self, cluster: Cluster) -> None:
        super().__init__(daemon=True)
        self.cluster, self.stop = cluster, threading.Event()
        self.ok: list[float] = []
        self.failed: list[float] = []

    def run(self) -> None:
        conn = None
        while not self.stop.is_set():
            try:
                if conn is None:
                    conn = self._primary()
                conn.execute("INSERT INTO beat VALUES (now())")
                self.ok.append(time.monotonic())
            except psycopg.Error:
                self.failed.append(time.monotonic())
                conn = None
                time.sleep(0.05)

    def _primary(self) -> psycopg.Connection[Any]:
        for pod in self.cluster.pods():
            try:
                conn = self.cluster.connect(pod["metadata"]["name"], autocommit=True)
            except psycopg.Error:
                continue
            if conn.execute("SELECT pg_is_in_recovery()").fetchone() == (False,):
                return conn
            conn.close()
        raise psycopg.OperationalError("no primary")


def _writing_cluster(kube: Kube, ns: str, name: str, patroni: dict[str, int] | None) -> Cluster:
    cluster = Cluster(kube, ns, name)
    cluster.create({"instances": 3, **({"patroni": patroni} if patroni else {})})
    cluster.wait_healthy(3, timeout=300)
    with cluster.connect(cluster.primary(), autocommit=True) as conn:
        conn.execute("CREATE TABLE beat (t timestamptz)")
    return cluster


def _audit(cp: ControlPlane, since: float) -> list[dict[str, Any]]:
    events = [json.loads(line) for line in cp.audit_log.read_text().splitlines()]
    return [e for e in events if e.get("stage") == "ResponseComplete" and _epoch(e) >= since]


def _leader_changes(cp: ControlPlane, ns: str, name: str, since: float) -> list[tuple[float, str]]:
    """When Patroni wrote a new leader into <name>-leader, and who."""
    out = []
    for e in _audit(cp, since):
        ref = e.get("objectRef", {})
        if (ref.get("namespace"), ref.get("resource"), ref.get("name")) != (
            ns,
            "configmaps",
            f"{name}-leader",
        ):
            continue
        leader = ((e.get("requestObject") or {}).get("metadata") or {}).get("annotations", {})
        if leader.get("leader"):
            out.append((_epoch(e), leader["leader"]))
    return out


def _status_primaries(
    cp: ControlPlane, ns: str, name: str, since: float
) -> list[tuple[float, str]]:
    """When the operator wrote a new status.currentPrimary, and which."""
    out = []
    for e in _audit(cp, since):
        ref = e.get("objectRef", {})
        if e.get("user", {}).get("username") != USER or (
            ref.get("namespace"),
            ref.get("name"),
            ref.get("subresource"),
        ) != (ns, name, "status"):
            continue
        primary = ((e.get("requestObject") or {}).get("status") or {}).get("currentPrimary")
        if primary:
            out.append((_epoch(e), primary))
    return out


def failover_seconds(
    kube: Kube, cp: ControlPlane, ns: str, name: str, patroni: dict[str, int] | None
) -> dict[str, float]:
    cluster = _writing_cluster(kube, ns, name, patroni)
    writer = Writer(cluster)
    writer.start()
    wait_for("writes", lambda: len(writer.ok) > 20, 30)
    old = cluster.primary()
    killed, killed_at = time.monotonic(), time.time()
    cluster.kill(old, cp, hold=True)
    # Writes fail once the kill lands; failover ends at the first write accepted after that.
    broken = wait_for(
        "writes to fail", lambda: next((t for t in writer.failed if t > killed), None), 30, 0.05
    )
    wait_for("writes after failover", lambda: writer.ok[-1] > broken, 300, 0.1)
    new = wait_for("status to name the new primary", lambda: cluster.primary() != old
                   and cluster.primary(), 60)  # fmt: skip
    writer.stop.set()
    first = next(t for t in writer.ok if t > broken)
    promoted = next(t for t, who in _leader_changes(cp, ns, name, killed_at) if who == new)
    reported = next(t for t, who in _status_primaries(cp, ns, name, killed_at) if who == new)
    kube.delete("PostgresCluster", ns, name)
    return {
        "writes_back_seconds": round(first - killed, 2),
        # from Patroni writing the new leader to status.currentPrimary naming it
        "status_follows_leader_seconds": round(reported - promoted, 2),
    }


def rolling_restart(kube: Kube, cp: ControlPlane, ns: str) -> dict[str, Any]:
    """A rolling update of 3 instances (a pod template change): from each pod back Ready to
    the operator's next step (the next pod deleted), as the audit log shows them."""
    cluster = Cluster(kube, ns, "roll")
    cluster.create({"instances": 3})
    cluster.wait_healthy(3, timeout=300)
    since = time.time()
    cluster.patch_spec({"resources": {"requests": {"cpu": "200m", "memory": "500Mi"}}})
    wait_for("the rollout", lambda: cluster.status().get("phase") == "Updating", 60)
    cluster.wait_healthy(3, timeout=600)
    events = [e for e in _audit(cp, since) if e.get("objectRef", {}).get("namespace") == ns]
    deletes = [
        (_epoch(e), e["objectRef"]["name"])
        for e in events
        if e.get("user", {}).get("username") == USER
        and e["verb"] == "delete"
        and e["objectRef"].get("resource") == "pods"
        and (e.get("responseStatus") or {}).get("code", 0) < 300
    ]
    ready: list[tuple[float, str, bool]] = []  # (when, pod, Ready) of each status write
    for e in events:
        ref = e.get("objectRef", {})
        if ref.get("resource") != "pods" or ref.get("subresource") != "status":
            continue
        conds = ((e.get("requestObject") or {}).get("status") or {}).get("conditions") or []
        for c in conds:
            if c.get("type") == "Ready":
                ready.append((_epoch(e), ref["name"], c.get("status") == "True"))
    # From the re-created pod (the one deleted last) being Ready to the next pod's deletion.
    # Before the old primary's deletion comes a switchover, inside that step's time. kwok
    # marks a new pod Ready before the test kubelet's probes say False: Ready counts once it
    # follows a False.
    steps: dict[str, float] = {}
    early: list[str] = []
    for (deleted_at, name), (next_at, after) in itertools.pairwise(deletes):
        flips = [(t, up) for t, pod, up in ready if pod == name and deleted_at < t]
        down = next((t for t, up in flips if not up), None)
        back = next((t for t, up in flips if up and down is not None and t > down), None)
        if back is not None and back < next_at:
            steps[f"{name} ready -> {after} deleted"] = round(next_at - back, 2)
        else:  # one step on top of another: two instances down at once
            early.append(f"{after} deleted before {name} was ready again")
    kube.delete("PostgresCluster", ns, "roll")
    gaps = list(steps.values())
    return {
        "pods_rolled": [name for _, name in deletes],
        "ready_to_next_step_seconds": steps,
        "steps_started_too_early": early,
        "p50": _pct(gaps, 0.5) if gaps else None,
    }


def switchover_outage(kube: Kube, ns: str) -> float:
    cluster = _writing_cluster(kube, ns, "switch", None)
    writer = Writer(cluster)
    writer.start()
    wait_for("writes", lambda: len(writer.ok) > 20, 30)
    old = cluster.primary()
    target = next(p["metadata"]["name"] for p in cluster.pods() if p["metadata"]["name"] != old)
    cluster.patch_spec({"switchover": {"targetInstance": target}})
    wait_for("the switchover", lambda: cluster.primary() == target, 120)
    time.sleep(3)
    writer.stop.set()
    gaps = [b - a for a, b in zip(writer.ok, writer.ok[1:], strict=False)]
    kube.delete("PostgresCluster", ns, "switch")
    return round(max(gaps), 2)


def _latency_and_memory(
    kube: Kube, cp: ControlPlane, op: Operator, n: int, results: dict[str, Any]
) -> None:
    assert op.proc is not None  # noqa: S101 - main checked it
    one = latency(kube, _ns(kube, "bench-one"), 1) + [
        x for i in range(9) for x in latency(kube, _ns(kube, f"bench-one-{i}"), 1)
    ]
    results["create_to_children_seconds_1"] = {"p50": _pct(one, 0.5), "p99": _pct(one, 0.99)}
    many = latency(kube, _ns(kube, "bench-many"), n)
    results[f"create_to_children_seconds_{n}"] = {
        "p50": _pct(many, 0.5),
        "p99": _pct(many, 0.99),
        "applied": len(many),
    }
    results["noop_resync"] = noop_resync(cp, op, n + 10)
    results[f"operator_rss_with_{n}_clusters_mib"] = _rss_mib(op.proc.pid)
    for ns in ["bench-many", "bench-one", *[f"bench-one-{i}" for i in range(9)]]:
        kube.delete("Namespace", None, ns)


def _ha(kube: Kube, cp: ControlPlane, results: dict[str, Any]) -> None:
    ns = _ns(kube, "bench-ha")
    results["failover_default_timings"] = failover_seconds(kube, cp, ns, "fo-default", None)
    results["failover_tuned_timings"] = failover_seconds(
        kube, cp, ns, "fo-tuned", {"ttl": 20, "loopWait": 2, "retryTimeout": 5}
    )
    results["switchover_write_outage_seconds"] = switchover_outage(kube, ns)
    results["rolling_restart_3_instances"] = rolling_restart(kube, cp, ns)


def _backups(kube: Kube, tmp: Path, sections: set[str], results: dict[str, Any]) -> None:
    from tests import s3_server  # noqa: PLC0415 - only with backups measured
    from tests.backup_bench import (  # noqa: PLC0415
        measure_backup_restore,
        measure_wal_archive_lag,
    )

    backup_mib = int(os.environ.get("PGHERD_BENCH_BACKUP_MIB", "1024"))
    wal_seconds = float(os.environ.get("PGHERD_BENCH_WAL_SECONDS", "60"))
    wal_rows = int(os.environ.get("PGHERD_BENCH_WAL_ROWS", "5000"))
    s3 = s3_server.start(tmp / "s3.log")
    try:
        if "backup" in sections and backup_mib > 0:
            t = measure_backup_restore(kube, _ns(kube, "bench-backup"), s3, backup_mib)
            results["backup"] = t.__dict__
        if "wal" in sections and wal_seconds > 0:
            results["wal_archive_lag"] = measure_wal_archive_lag(
                kube, _ns(kube, "bench-wal"), s3, wal_seconds, wal_rows
            )
    finally:
        s3.stop()


SECTIONS: tuple[str, ...] = ("latency", "ha", "backup", "wal", "tls", "metrics", "pooler")
# Issue 16's fault matrix (bench.faults) and API-server outage (bench.api_outage).
SECTIONS += ("faults", "outage")
# Patroni timing profiles (issue 16, failover speed): bench.failover.
SECTIONS += ("failover",)
# Major upgrade outage, 15 -> 18 (issue 15): bench.upgrade, local data directories only.
SECTIONS += ("upgrade",)
# Issue 15: the operand images in the test kubelet's image mode (bench.image_mode).
SECTIONS += ("image",)
# Issue 15: the operator's major upgrade of ~1 GiB, link vs copy (bench.upgrade_cluster).
SECTIONS += ("upgrade_cluster",)


def _connect_ms(cluster: Cluster, pod: str, count: int, **kw: Any) -> dict[str, float]:
    """Only the connection is timed: everything it needs is read from the API beforehand."""
    user, password, dbname = cluster.app_credentials()
    conninfo = cluster.tls(pod) | {"port": str(cluster.port(pod)), "user": user,
                                   "password": password, "dbname": dbname} | kw  # fmt: skip
    times = []
    for _ in range(count):
        started = time.perf_counter()
        with psycopg.connect(**conninfo) as conn:
            conn.execute("SELECT 1")
        times.append((time.perf_counter() - started) * 1000)
    return {"p50": round(_pct(times, 0.5), 2), "p99": round(_pct(times, 0.99), 2)}


def tls_costs(kube: Kube, ns: str, count: int = 300) -> dict[str, Any]:
    """Connection set-up (connect, SELECT 1, close) with verify-full TLS vs plain TCP, and the
    write outage while the server certificate is replaced (its Secret deleted: the operator
    issues a new one, the instances reload it)."""
    cluster = Cluster(kube, ns, "tls")
    cluster.create({"instances": 1, "tls": {"allowPlainText": True}})
    cluster.wait_healthy(1, timeout=300)
    with cluster.connect(cluster.primary(), autocommit=True) as conn:
        conn.execute("CREATE TABLE beat (t timestamptz)")
    pod = cluster.primary()
    out: dict[str, Any] = {
        "connect_ms_tls_verify_full": _connect_ms(cluster, pod, count),
        "connect_ms_plain": _connect_ms(cluster, pod, count, sslmode="disable"),
    }
    writer = Writer(cluster)
    writer.start()
    wait_for("writes", lambda: len(writer.ok) > 20, 30)
    before = kube.get("Secret", ns, "tls-tls")
    kube.delete("Secret", ns, "tls-tls")
    wait_for(
        "a new certificate",
        lambda: (
            (s := kube.get("Secret", ns, "tls-tls")) is not None
            and s["data"]["tls.crt"] != (before or {}).get("data", {}).get("tls.crt")
        ),
        60,
    )
    # The kubelet and the instance pick it up within ~10 s; keep writing through that.
    time.sleep(20)
    writer.stop.set()
    writer.join()
    gaps = [b - a for a, b in zip(writer.ok, writer.ok[1:], strict=False)]
    out["renewal_failed_writes"] = len(writer.failed)
    out["renewal_max_write_gap_seconds"] = round(max(gaps), 3)
    kube.delete("PostgresCluster", ns, "tls")
    return out


def _operator(
    cp: ControlPlane, tmp: Path, name: str, env: dict[str, str] | None = None
) -> Operator:
    op = Operator(
        operator_kubeconfig(cp, cp.api_client(), tmp / f"kc-{name}"),
        tmp / f"{name}.log",
        # Parked clusters must not turn Degraded in the middle of a measurement.
        extra_env={
            "PGHERD_RESYNC_SECONDS": str(RESYNC),
            "PGHERD_STUCK_AFTER_SECONDS": "86400",
            **(env or {}),
        },
    )
    op.start()
    if op.proc is None:
        raise RuntimeError("the operator did not start")
    return op


def _scrapes(op: Operator, count: int = 20) -> dict[str, Any]:
    """Time and size of a /metrics scrape (what Prometheus pays each interval)."""
    times, size = [], 0
    for _ in range(count):
        started = time.perf_counter()
        size = len(op.metrics().encode())
        times.append((time.perf_counter() - started) * 1000)
    return {"ms_p50": round(_pct(times, 0.5), 2), "ms_max": round(max(times), 2),
            "bytes": size}  # fmt: skip


def metrics_costs(kube: Kube, cp: ControlPlane, tmp: Path, n: int) -> dict[str, Any]:
    """The operator with its metrics off, then on: RSS idle and with n parked clusters, CPU
    to create them and per no-op resync; with them on, a scrape's time and size. Each run has
    an operator and a namespace of its own, gone before the next."""
    out: dict[str, Any] = {}
    for mode, port in (("off", "0"), ("on", None)):
        op = _operator(cp, tmp, f"metrics-{mode}", {"PGHERD_METRICS_PORT": "0"} if port else {})
        assert op.proc is not None  # noqa: S101 - _operator checked it
        time.sleep(5)
        run: dict[str, Any] = {"rss_idle_mib": _rss_mib(op.proc.pid)}
        ns = _ns(kube, f"bench-metrics-{mode}")
        cpu = _cpu_seconds(op.proc.pid)
        created = latency(kube, ns, n)
        run["create_cpu_seconds"] = round(_cpu_seconds(op.proc.pid) - cpu, 2)
        run["applied"] = len(created)
        run["noop_resync"] = noop_resync(cp, op, n)
        run[f"rss_with_{n}_clusters_mib"] = _rss_mib(op.proc.pid)
        run["cpu_seconds_total"] = round(_cpu_seconds(op.proc.pid), 2)
        if op.metrics_url:
            run["scrape"] = _scrapes(op)
        op.stop(signal.SIGTERM)
        kube.delete("Namespace", None, ns)
        wait_for(f"{ns} gone", lambda ns=ns: kube.get("Namespace", None, ns) is None, 600, 2)
        out[mode] = run
    return out


def main() -> int:  # noqa: PLR0912, PLR0915 - one branch per section
    n = int(os.environ.get("PGHERD_BENCH_CLUSTERS", "200"))
    only = os.environ.get("PGHERD_BENCH_ONLY", "")
    sections = {s.strip() for s in only.split(",") if s.strip()} or set(SECTIONS)
    if unknown := sections - set(SECTIONS):
        print(f"PGHERD_BENCH_ONLY: unknown sections {sorted(unknown)}; known: {SECTIONS}")
        return 2
    # A partial run must not overwrite the full results.
    default = "bench" + ("" if only == "" else "-" + "-".join(sorted(sections)))
    out = Path(os.environ.get("PGHERD_BENCH_OUT", f"bench-results/{default}.json"))
    results: dict[str, Any] = {"sections": sorted(sections), "resync_seconds": RESYNC}
    if sections & {"latency", "metrics"}:
        results["clusters"] = n
    with tempfile.TemporaryDirectory(prefix="pgherd-bench-") as tmp:
        cp = ControlPlane(Path(tmp) / "cp", die_with_parent=True)
        results["control_plane_start_seconds"] = round(cp.up(), 1)
        try:
            kube = Kube(cp.api_client())
            install_crds_and_rbac(kube)
            time.sleep(2)
            op = _operator(cp, Path(tmp), "op")
            assert op.proc is not None  # noqa: S101 - _operator checked it
            time.sleep(5)
            results["operator_rss_idle_mib"] = _rss_mib(op.proc.pid)
            if "latency" in sections:
                _latency_and_memory(kube, cp, op, n, results)
            if "ha" in sections:
                _ha(kube, cp, results)
            if sections & {"backup", "wal"}:
                _backups(kube, Path(tmp), sections, results)
            if "tls" in sections:
                results["tls"] = tls_costs(kube, _ns(kube, "bench-tls"))
            if "pooler" in sections:
                from bench.pooler import pooler_costs  # noqa: PLC0415 - that section only

                results["pooler"] = pooler_costs(kube, cp, _ns(kube, "bench-pooler"))
            if "faults" in sections:
                from bench.faults import fault_matrix  # noqa: PLC0415 - that section only

                results["faults"] = fault_matrix(kube, cp, _ns(kube, "bench-faults"))
            if "outage" in sections:  # issue 16: the API server stopped and started
                from bench.api_outage import api_outage  # noqa: PLC0415 - that section only

                results["api_outage"] = api_outage(kube, cp, _ns(kube, "bench-outage"))
            if "failover" in sections:
                from bench.failover import failover_profiles  # noqa: PLC0415 - that section only

                results["failover_profiles"] = failover_profiles(
                    kube, cp, _ns(kube, "bench-failover")
                )
            if "upgrade" in sections:  # issue 15: local data directories, no cluster
                from bench.upgrade import upgrade_outage  # noqa: PLC0415 - that section only

                results["upgrade"] = upgrade_outage(Path(tmp))
            if "image" in sections:  # issue 15: the operand images, run by the test kubelet
                from bench.image_mode import image_costs  # noqa: PLC0415 - that section only

                results["image_mode"] = image_costs(kube, cp, _ns(kube, "bench-image"))
            if "upgrade_cluster" in sections:  # issue 15: the operator's upgrade, image mode
                from bench.upgrade_cluster import upgrade_cluster_outage  # noqa: PLC0415

                results["upgrade_cluster"] = upgrade_cluster_outage(
                    kube, cp, _ns(kube, "bench-upgrade")
                )
            op.stop(signal.SIGTERM)
            if "metrics" in sections:  # with operators of its own, one at a time
                results[f"operator_metrics_{n}_clusters"] = metrics_costs(kube, cp, Path(tmp), n)
        finally:
            cp.down()
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
