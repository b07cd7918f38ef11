"""Fixtures and helpers of the Patroni fault matrix (tests/faults/test_patroni_faults.py and
`make bench` section `faults`, which reuses them).

A fault runs against a 3-instance cluster of one synchronous mode with the tests' short
Patroni timings, while an AckedWriter records every commit PostgreSQL acknowledged. Each
fault function below disrupts the cluster, waits for it to recover, and returns a
FaultResult: kills, commits acknowledged meanwhile, acknowledged rows missing from the
primary afterwards, the write outage, and `violations` (what must never happen in that
mode). They record rather than assert, so the bench can run the whole grid; the tests assert
on the record. Recovery after each fault (`settle`) means: writes accepted again, every
instance ready (and a synchronous standby, in the synchronous modes), and exactly one
instance that is not in recovery and accepts a write while the others refuse it.

The faults reach the pods' processes the way the test kubelet runs them
(pgherd_dev.kubelet): each pod is an `unshare` process (its pid in the pod's directory) whose
PID namespace holds Patroni and PostgreSQL. Patroni starts PostgreSQL in a session of its
own, so a signal to the pod's process group reaches Patroni but not PostgreSQL: a frozen
pod is frozen by signalling every process of it (as the cgroup freezer would).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
import pytest
from kubernetes import client
from psycopg import sql

from pgherd.controller.client import Client as Kube
from pgherd_dev.controlplane import ControlPlane
from pgherd_dev.kubelet import HOLD_ANNOTATION
from tests.acked_writes import AckedWriter, primary_of, stored_ids
from tests.conftest import new_namespace
from tests.operator_harness import Cluster, Operator, _epoch, wait_for

MODES = ("on", "strict", "off")
# The tests' short Patroni timings (as the failover test's): a leader key lives 20 s.
TIMINGS = {"ttl": 20, "loopWait": 2, "retryTimeout": 5}
PROBE_TABLE = sql.Identifier("fault_probe")
# Patroni's default maximum_lag_on_failover (the API's default): a replica further behind
# the last position the leader published does not take part in the leader race.
MAXIMUM_LAG = 1048576


@dataclass
class FaultResult:
    """What one fault did (the matrix's cell, one repetition)."""

    mode: str
    fault: str
    kills: int = 0
    acknowledged: int = 0
    lost: list[int] = field(default_factory=list)
    outages: list[float] = field(default_factory=list)
    # Acknowledged by the old primary through a connection kept to it (freeze), not found
    # on the new one: counted apart, their ids are those of another table.
    lost_through_old_primary: int = 0
    violations: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        outage = ", ".join(f"{o:.1f}s" for o in self.outages)
        return (
            f"[{self.mode}] {self.fault}: {self.kills} kill(s), {self.acknowledged} acknowledged, "
            f"{len(self.lost) + self.lost_through_old_primary} lost, outage {outage}"
            + "".join(f"\n  note: {n}" for n in self.notes)
            + "".join(f"\n  VIOLATION: {v}" for v in self.violations)
        )


@dataclass
class Faulted:
    """A cluster under faults, its mode, and the writer recording acknowledged commits."""

    cluster: Cluster
    cp: ControlPlane
    mode: str
    writer: AckedWriter
    reported_lost: set[int] = field(default_factory=set)

    @property
    def synchronous(self) -> bool:
        return self.mode != "off"


# ---- clusters -------------------------------------------------------------------------------
def create_fault_clusters(kube: Kube, namespace: str, modes: tuple[str, ...]) -> dict[str, Cluster]:
    """One 3-instance cluster per mode, created together (they bootstrap in parallel)."""
    clusters = {m: Cluster(kube, namespace, f"fault-{m}") for m in modes}
    for mode, cluster in clusters.items():
        cluster.create(
            {"instances": 3, "synchronousMode": mode, "patroni": dict(TIMINGS)}
        )  # fmt: skip
    for mode, cluster in clusters.items():
        wait_for(f"{cluster.name} ready", lambda c=cluster, m=mode: all_ready(c, m), timeout=420)
    return clusters


def start_writing(cluster: Cluster, cp: ControlPlane, mode: str) -> Faulted:
    """The writer, flowing, and the probe table one_primary_accepts_writes inserts into."""
    # A table per writer: a second writer on the same cluster starts from id 1 again.
    writer = AckedWriter(primary_of(cluster), table=f"acked_{uuid.uuid4().hex[:6]}")
    writer.create_table()
    with primary_of(cluster)() as conn:
        conn.execute(
            sql.SQL("CREATE TABLE IF NOT EXISTS {} (at timestamptz, pod text)").format(PROBE_TABLE)
        )
    writer.start()
    writer.flowing(50, timeout=60)
    return Faulted(cluster, cp, mode, writer)


def sync_key(cluster: Cluster) -> dict[str, str]:
    """Patroni's /sync key (ConfigMap <cluster>-sync): leader, sync_standby."""
    cm = cluster.kube.get("ConfigMap", cluster.namespace, f"{cluster.name}-sync")
    return dict(((cm or {}).get("metadata") or {}).get("annotations") or {})


def all_ready(cluster: Cluster, mode: str) -> bool:
    """Every instance ready and Healthy in status; in the synchronous modes a synchronous
    standby too (Patroni's /sync key names one, and status shows it)."""
    s = cluster.status()
    instances = s.get("instancesStatus") or []
    ok = (
        s.get("phase") == "Healthy"
        and s.get("readyInstances") == 3
        and len(instances) == 3
        and all(i.get("ready") for i in instances)
        and len(cluster.pods()) == 3
    )
    if ok and mode != "off":
        ok = any(i.get("role") == "sync_standby" for i in instances) and synchronous_standby(
            cluster
        )
    return ok


def synchronous_standby(cluster: Cluster) -> bool:
    """Patroni's /sync key names a synchronous standby, and the primary it names streams to
    that standby synchronously. Until then (after each promotion, for a loop or two) Patroni
    promotes no replica in the synchronous modes: a primary lost then leaves the cluster
    without one until it returns."""
    key = sync_key(cluster)
    leader, standby = key.get("leader"), key.get("sync_standby")
    if not leader or not standby:
        return False
    try:
        with cluster.connect_superuser(leader, autocommit=True, connect_timeout="2") as conn:
            rows = conn.execute(
                "SELECT application_name FROM pg_stat_replication"
                " WHERE sync_state IN ('sync', 'quorum')"
            ).fetchall()
    except (psycopg.Error, AssertionError, KeyError, OSError):
        return False
    return standby in {r[0] for r in rows}


def instance_names(cluster: Cluster) -> list[str]:
    return sorted(p["metadata"]["name"] for p in cluster.pods())


def in_recovery(cluster: Cluster, pod: str) -> bool | None:
    """pg_is_in_recovery() of one instance; None if it does not answer."""
    try:
        with cluster.connect(pod, autocommit=True, connect_timeout="2") as conn:
            row = conn.execute("SELECT pg_is_in_recovery()").fetchone()
            return bool(row[0]) if row else None
    except (psycopg.Error, AssertionError, KeyError, OSError):
        return None


def accepts_write(cluster: Cluster, pod: str, timeout: float = 5.0) -> bool:
    """An INSERT committed and acknowledged by this instance within `timeout`. A commit that
    returns only because its wait for a synchronous standby was cancelled (PostgreSQL's
    WARNING "canceling wait for synchronous replication") was not acknowledged by the
    cluster: it counts as refused."""
    notices: list[str] = []
    try:
        with cluster.connect(pod, autocommit=True, connect_timeout="2") as conn:
            conn.add_notice_handler(lambda d: notices.append(str(d.message_primary)))
            conn.execute(f"SET statement_timeout = {int(timeout * 1000)}")
            conn.execute(sql.SQL("INSERT INTO {} VALUES (now(), %s)").format(PROBE_TABLE), (pod,))
    except (psycopg.Error, AssertionError, KeyError, OSError):
        return False
    return not any("synchronous replication" in n for n in notices)


def primaries_accepting_writes(cluster: Cluster) -> list[str]:
    """The instances that are not in recovery AND accept a write."""
    return [
        pod
        for pod in instance_names(cluster)
        if in_recovery(cluster, pod) is False and accepts_write(cluster, pod)
    ]


def one_primary_accepts_writes(cluster: Cluster, timeout: float = 60.0) -> str:
    """Waits until exactly one instance is a primary that accepts a write and every other
    refuses one; returns it. Two that accept, for as long as the timeout, fail it."""
    seen: list[list[str]] = []

    def exactly_one() -> str | None:
        accepting = primaries_accepting_writes(cluster)
        seen.append(accepting)
        return accepting[0] if len(accepting) == 1 else None

    try:
        return str(wait_for("exactly one primary accepting writes", exactly_one, timeout, 2))
    except AssertionError as e:
        raise AssertionError(f"{e}; instances accepting writes, each probe: {seen}") from None


def new_primary(cluster: Cluster, besides: set[str], timeout: float = 120.0) -> tuple[str, float]:
    """Waits for an instance not in `besides` to be out of recovery: (its name, when seen)."""

    def promoted() -> str | None:
        return next(
            (p for p in instance_names(cluster) if p not in besides and in_recovery(cluster, p)
             is False),
            None,
        )  # fmt: skip

    name = wait_for(f"a primary other than {sorted(besides)}", promoted, timeout, 0.5)
    return str(name), time.monotonic()


def acked_missing(cluster: Cluster, writer: AckedWriter) -> list[int]:
    """Acknowledged ids of `writer` missing from the current primary's table. The ids are
    taken before the table is read: a commit acknowledged after the read is not missing."""
    acked = writer.ids
    with primary_of(cluster)() as conn:
        have = stored_ids(conn, writer.table)
    return [n for n in acked if n not in have]


def leader_history(cp: ControlPlane, cluster: Cluster, since: float) -> list[tuple[float, str]]:
    """(epoch, leader) of every write of Patroni's leader key (ConfigMap <cluster>-leader)
    since `since` (epoch seconds), from the API server's audit log."""
    out = []
    for line in cp.audit_log.read_text().splitlines():
        e = json.loads(line)
        ref = e.get("objectRef") or {}
        if (
            e.get("stage") != "ResponseComplete"
            or ref.get("resource") != "configmaps"
            or ref.get("namespace") != cluster.namespace
            or ref.get("name") != f"{cluster.name}-leader"
            or (e.get("responseStatus") or {}).get("code", 200) >= 300
        ):
            continue
        notes = ((e.get("requestObject") or {}).get("metadata") or {}).get("annotations") or {}
        if notes.get("leader") and _epoch(e) >= since:
            out.append((_epoch(e), str(notes["leader"])))
    return out


def hold(cluster: Cluster, pod: str) -> None:
    """The test kubelet's hold: once the pod's processes die they are not restarted."""
    cluster.kube.patch(
        "Pod", cluster.namespace, pod, {"metadata": {"annotations": {HOLD_ANNOTATION: "true"}}}
    )


# ---- processes of a pod ---------------------------------------------------------------------
def pod_root_pid(cp: ControlPlane, cluster: Cluster, pod: str) -> int:
    path = cp.workdir / "pods" / cluster.namespace / pod / "current" / "pid"
    return int(path.read_text())


def pod_pids(cp: ControlPlane, cluster: Cluster, pod: str) -> list[int]:
    """Every process of the pod: the test kubelet's `unshare` and all its descendants."""
    root = pod_root_pid(cp, cluster, pod)
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, ValueError, IndexError):
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, []))
    return out


def signal_pod(cp: ControlPlane, cluster: Cluster, pod: str, sig: signal.Signals) -> int:
    """Sends sig to every process of the pod, twice over (a process forked while the first
    sweep ran is caught by the second); returns how many processes there were."""
    seen: set[int] = set()
    for _ in range(2):
        for pid in pod_pids(cp, cluster, pod):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
            seen.add(pid)
    return len(seen)


def host_pid(cp: ControlPlane, cluster: Cluster, pod: str, namespaced: int) -> int:
    """The pid on this machine of the pod's process whose pid in the pod is `namespaced`
    (what pg_stat_* views show)."""
    for pid in pod_pids(cp, cluster, pod):
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("NSpid:") and int(line.split()[-1]) == namespaced:
                    return pid
    raise AssertionError(f"no process {namespaced} in {pod}")


# ---- settling after a fault -----------------------------------------------------------------
def settle(f: Faulted, result: FaultResult, since: float, timeout: float = 240.0) -> str:
    """After a fault begun at `since`: writes flowing, every instance ready, exactly one
    primary accepting writes, and the acknowledged rows checked on it. Records the outage,
    the commits acknowledged since `since` and the acknowledged rows lost; returns the
    primary."""
    f.writer.flowing(20, timeout=timeout)
    wait_for(f"{f.cluster.name} all ready", lambda: all_ready(f.cluster, f.mode), timeout)
    primary = one_primary_accepts_writes(f.cluster)
    result.outages.append(round(f.writer.resumed(since)[0], 2))
    result.acknowledged += sum(1 for t in f.writer.committed if t >= since)
    missing = acked_missing(f.cluster, f.writer)
    new = [n for n in missing if n not in f.reported_lost]
    f.reported_lost.update(new)
    result.lost.extend(new)
    if new and f.synchronous:
        result.violations.append(f"{len(new)} acknowledged rows lost: {new[:20]}")
    elif new:
        result.notes.append(
            f"{len(new)} acknowledged rows lost (asynchronous; on failover the bound is "
            f"maximum_lag_on_failover, {MAXIMUM_LAG} bytes of WAL: docs/faults.md)"
        )
    return primary


# ---- the faults -----------------------------------------------------------------------------
def kill_primary(f: Faulted, *, hold: bool) -> FaultResult:
    """kill -9 of the primary's pod. hold=False: a crashed container the kubelet restarts
    (Patroni may come back before its leader key expires and keep the lead); hold=True: a
    lost node, released once a replica is promoted."""
    result = FaultResult(f.mode, "kill primary" + (" (node lost)" if hold else " (crash)"))
    old = f.cluster.primary()
    since = time.monotonic()
    f.cluster.kill(old, f.cp, hold=hold)
    result.kills += 1
    if hold:
        try:
            new_primary(f.cluster, {old})
            f.writer.flowing(10, timeout=120)
        finally:  # a failed fault must not leave the next one a cluster short of a pod
            f.cluster.release(old)
    primary = settle(f, result, since)
    result.notes.append(f"{old} killed; primary after: {primary}")
    return result


def kill_primary_and_sync_standby(f: Faulted) -> FaultResult:
    """The primary and its synchronous standby killed together (lost nodes) for longer than
    the leader key lives; then both come back. In the synchronous modes the remaining
    asynchronous replica must never be promoted and no commit may be acknowledged meanwhile
    (strict: there is no synchronous standby; on: the only candidates are down)."""
    result = FaultResult(f.mode, "kill primary + sync standby")
    old = f.cluster.primary()
    standby = sync_key(f.cluster).get("sync_standby") or next(
        p for p in instance_names(f.cluster) if p != old
    )
    rest = next(p for p in instance_names(f.cluster) if p not in (old, standby))
    since, since_epoch = time.monotonic(), time.time()
    # Both held first, then both killed within microseconds of each other: "together".
    for pod in (old, standby):
        hold(f.cluster, pod)
    for pod in (old, standby):
        f.cluster.kill(pod, f.cp, hold=False)
    killed = time.monotonic()
    result.kills += 2
    # Past the leader key's life and a few of Patroni's loops: time for a wrong promotion.
    hold_until = since + TIMINGS["ttl"] + 5 * TIMINGS["loopWait"] + 5
    promoted_rest = False
    try:
        while time.monotonic() < hold_until:
            promoted_rest = promoted_rest or in_recovery(f.cluster, rest) is False
            time.sleep(1)
    finally:
        released = time.monotonic()
        for pod in (old, standby):
            f.cluster.release(pod)
    # A commit whose acknowledgement was on its way when the kill landed is recorded a
    # moment later: a second's grace (PostgreSQL is gone by then, a new primary is not).
    acked_meanwhile = [
        (round(t - killed, 2), n) for t, n in f.writer.acked if killed + 1.0 <= t < released
    ]
    leaders = {who for _, who in leader_history(f.cp, f.cluster, since_epoch)}
    if f.synchronous:
        if acked_meanwhile:
            result.violations.append(
                f"{len(acked_meanwhile)} commits acknowledged with the primary and its "
                f"synchronous standby down ((seconds after the kill, id)): {acked_meanwhile[:10]}"
            )
        if promoted_rest or rest in leaders:
            result.violations.append(f"the asynchronous replica {rest} was promoted")
    else:
        result.notes.append(
            f"{rest} promoted: {promoted_rest or rest in leaders}; "
            f"{len(acked_meanwhile)} commits acknowledged while two instances were down"
        )
    settle(f, result, since)
    return result


def freeze_primary(f: Faulted) -> FaultResult:
    """Every process of the primary's pod stopped (SIGSTOP) until its leader key expired and
    a replica was promoted, then continued (SIGCONT). A second writer keeps its connection
    to the old primary and goes on writing through it: in the synchronous modes nothing it
    had acknowledged, before or after the promotion, may be missing from the new primary;
    the old primary must rejoin as a replica."""
    result = FaultResult(f.mode, "freeze primary")
    old = f.cluster.primary()
    stale = AckedWriter(lambda: f.cluster.connect(old, autocommit=True), table="acked_stale")
    stale.create_table()
    stale.start()
    stale.flowing(10, timeout=60)
    log = f.cluster.instance_log(old, f.cp)
    log_from = log.stat().st_size
    since = time.monotonic()
    frozen = signal_pod(f.cp, f.cluster, old, signal.SIGSTOP)
    result.kills += 1
    try:
        new, promoted = new_primary(f.cluster, {old})
    finally:
        signal_pod(f.cp, f.cluster, old, signal.SIGCONT)
    thawed = time.monotonic()
    result.notes.append(
        f"{frozen} processes frozen {thawed - since:.1f}s; {new} promoted "
        f"{promoted - since:.1f}s after the freeze"
    )
    settle(f, result, since)
    stale.finish()
    # Fencing: a commit the old primary acknowledged after the promotion must be one the
    # new primary has, i.e. whose commit record reached the synchronous standby before it
    # was promoted (the freeze only delayed the acknowledgement: the standby's reply sat
    # unread in the frozen primary's socket). One the new primary lacks is a write the old
    # primary accepted on its own: split brain.
    stale_lost = acked_missing(f.cluster, stale)
    result.lost_through_old_primary = len(stale_lost)
    after = [n for t, n in stale.acked if t >= promoted]
    accepted_alone = [n for n in after if n in stale_lost]
    if stale_lost and f.synchronous:
        result.violations.append(
            f"{len(stale_lost)} commits the old primary acknowledged are lost "
            f"({len(accepted_alone)} of them after {new} was promoted): {stale_lost[:10]}"
        )
    elif accepted_alone:
        result.notes.append(
            f"the old primary acknowledged {len(accepted_alone)} commits after {new} was "
            "promoted, lost (split brain until Patroni demoted it)"
        )
    if durable := len(after) - len(accepted_alone):
        result.notes.append(
            f"{durable} commits acknowledged by the old primary after the promotion are on "
            f"{new}: their acknowledgement was held up by the freeze, not their replication"
        )
    with log.open("rb") as out:
        out.seek(log_from)
        rewound = b"running pg_rewind from" in out.read()
    result.notes.append(f"{old} rejoined as a replica; pg_rewind ran: {rewound}")
    return result


def lagging_replica(f: Faulted) -> FaultResult:
    """The primary dies while a replica is far behind: WAL receipt paused on it (its
    walreceiver stopped with SIGSTOP) and several MiB of WAL written. It must not be
    promoted over the caught-up replica (Patroni compares positions); in the synchronous
    modes an asynchronous replica is never promoted at all."""
    result = FaultResult(f.mode, "lagging replica")
    old = f.cluster.primary()
    sync = sync_key(f.cluster).get("sync_standby")
    lagging = next(p for p in instance_names(f.cluster) if p not in (old, sync))
    caught_up = next(p for p in instance_names(f.cluster) if p not in (old, lagging))
    with f.cluster.connect_superuser(lagging, autocommit=True) as conn:
        row = conn.execute("SELECT pid FROM pg_stat_wal_receiver").fetchone()
    assert row is not None, f"{lagging} has no walreceiver"
    receiver = host_pid(f.cp, f.cluster, lagging, int(row[0]))
    os.kill(receiver, signal.SIGSTOP)
    try:
        with primary_of(f.cluster)() as conn:
            conn.execute("CREATE TABLE IF NOT EXISTS filler (id int, pad text)")
            conn.execute("INSERT INTO filler SELECT g, repeat('x', 1000) FROM "
                         "generate_series(1, 8000) g")  # fmt: skip
            primary_lsn = str(conn.execute("SELECT pg_current_wal_lsn()").fetchone()[0])  # type: ignore[index]
        with f.cluster.connect_superuser(lagging, autocommit=True) as conn:
            behind = conn.execute(
                "SELECT pg_wal_lsn_diff(%s::pg_lsn, pg_last_wal_receive_lsn())", (primary_lsn,)
            ).fetchone()
        lag = int(behind[0]) if behind and behind[0] is not None else -1
        result.notes.append(f"{lagging} {lag / 1048576:.1f} MiB behind when the primary died")
        if lag <= MAXIMUM_LAG:
            result.violations.append(f"{lagging} only {lag} bytes behind: no lag to test")
        # The leader publishes its position every loop: let it publish the filler's.
        time.sleep(2 * TIMINGS["loopWait"] + 1)
        since, since_epoch = time.monotonic(), time.time()
        f.cluster.kill(old, f.cp, hold=True)
        result.kills += 1
        new, _ = new_primary(f.cluster, {old})
        time.sleep(2 * TIMINGS["loopWait"])  # a second, wrong, promotion would show by now
        leaders = {who for _, who in leader_history(f.cp, f.cluster, since_epoch)}
        if new == lagging or lagging in leaders or in_recovery(f.cluster, lagging) is False:
            result.violations.append(f"the lagging replica {lagging} was promoted")
        if new != caught_up:
            result.notes.append(f"{new} promoted, not the caught-up {caught_up}")
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(receiver, signal.SIGCONT)
        f.cluster.release(old)
    settle(f, result, since)
    return result


FAULTS: dict[str, Callable[[Faulted], FaultResult]] = {
    "kill primary (crash)": lambda f: kill_primary(f, hold=False),
    "kill primary (node lost)": lambda f: kill_primary(f, hold=True),
    "kill primary + sync standby": kill_primary_and_sync_standby,
    "freeze primary": freeze_primary,
    "lagging replica": lagging_replica,
}


# ---- fixtures -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def fault_namespace(api: client.ApiClient) -> Iterator[str]:
    """A namespace for the module's clusters."""
    with new_namespace(api) as name:
        yield name


@pytest.fixture(scope="module")
def fault_clusters(operator: Operator, kube: Kube, fault_namespace: str) -> dict[str, Cluster]:
    """A 3-instance cluster per synchronous mode, created at once so they bootstrap in
    parallel rather than one after the other."""
    return create_fault_clusters(kube, fault_namespace, MODES)


@pytest.fixture
def faulted(
    request: pytest.FixtureRequest, fault_clusters: dict[str, Cluster], control_plane: ControlPlane
) -> Iterator[Faulted]:
    """The cluster of the mode the test is parametrized with, with a writer running."""
    mode = str(request.param)
    f = start_writing(fault_clusters[mode], control_plane, mode)
    yield f
    f.writer.finish()
    print(f"[{mode}] writer: {len(f.writer.acked)} acknowledged, errors: {f.writer.errors()[:5]}")
