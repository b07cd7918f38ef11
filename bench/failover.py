"""`make bench` section `failover`: Patroni timing profiles compared (issue 16, failover speed).

For each profile a 3-instance cluster in synchronous mode on, an acknowledged-writes recorder
running, and its primary killed (SIGKILL of the pod's processes, held down as a lost node,
released once a replica took over, then a steady state awaited) several times back to back:
- default: spec.patroni left alone (ttl 30, loopWait 10, retryTimeout 10);
- tuned: ttl 20, loopWait 2, retryTimeout 5 set by hand (the shortest ttl Patroni accepts);
- fast: spec.patroni.profile fast (the same ttl, and the operator releases the dead primary's
  leader key when the kubelet reports its container dead).
Per profile: each kill's time from the kill to the first acknowledged write after it, their
p50 and max, how many of those kills the operator released the key for (PrimaryReleased
Events), and the acknowledged writes lost (none is expected in synchronous mode on).
PGHERD_BENCH_FAILOVER_KILLS (default 7) sets the fast profile's kills; the slower profiles
get 3 each (a kill costs them a ttl). PGHERD_BENCH_FAILOVER_PROFILES=fast,... measures some
profiles only. Each kill also records when the kubelet's report of the dead container reached
the API and when the leader key stopped naming the killed pod (phases_seconds).
"""

from __future__ import annotations

import os
import statistics
import threading
import time
from typing import Any

from tests.acked_writes import AckedWriter, primary_of, stored_ids, wait_synchronous
from tests.operator_harness import Cluster, wait_for

from pgherd.controller.client import Client as Kube
from pgherd_dev.controlplane import ControlPlane

PROFILES: dict[str, dict[str, Any]] = {
    "default": {},
    "tuned": {"ttl": 20, "loopWait": 2, "retryTimeout": 5},
    "fast": {"profile": "fast"},
}
SLOW_KILLS = 3


class Phases(threading.Thread):
    """After a kill, polls (every 0.1 s) when the kubelet's report of the dead container
    reached the API, and when the leader key stopped naming the killed pod (released by the
    operator, or expired and taken): which part of a failover took the time."""

    def __init__(self, kube: Kube, ns: str, cluster: str, pod: str, since: float) -> None:
        super().__init__(daemon=True)
        self.kube, self.ns, self.cluster, self.pod, self.since = kube, ns, cluster, pod, since
        self.reported: float | None = None
        self.key_moved: float | None = None
        self.stop = threading.Event()

    def _dead(self) -> bool:
        got = self.kube.get("Pod", self.ns, self.pod) or {}
        statuses = (got.get("status") or {}).get("containerStatuses") or []
        return any("terminated" in (c.get("state") or {}) for c in statuses)

    def _moved(self) -> bool:
        got = self.kube.get("ConfigMap", self.ns, f"{self.cluster}-leader") or {}
        return (got.get("metadata", {}).get("annotations") or {}).get("leader") != self.pod

    def run(self) -> None:
        while not self.stop.is_set() and (self.reported is None or self.key_moved is None):
            now = time.monotonic() - self.since
            if self.reported is None and self._dead():
                self.reported = round(now, 2)
            if self.key_moved is None and self._moved():
                self.key_moved = round(now, 2)
            time.sleep(0.1)


def _profile(
    kube: Kube, cp: ControlPlane, ns: str, name: str, patroni: dict[str, Any], *, kills: int
) -> dict[str, Any]:
    cluster = Cluster(kube, ns, f"fo-{name}")
    cluster.create({"instances": 3, "synchronousMode": "on", "patroni": patroni})
    wait_synchronous(cluster, 3)
    writer = AckedWriter(primary_of(cluster))
    writer.create_table()
    writer.start()
    writer.flowing(50, timeout=60)
    times = []
    phases: list[dict[str, float | None]] = []
    for _ in range(kills):
        old = cluster.primary()
        killed_at = time.monotonic()
        cluster.kill(old, cp, hold=True)
        phase = Phases(kube, ns, cluster.name, old, killed_at)
        phase.start()
        wait_for("a replica to be promoted", lambda o=old: cluster.primary() not in (o, None),
                 timeout=180)  # fmt: skip
        writer.flowing(20, timeout=120)
        _, back = writer.resumed(killed_at)
        times.append(round(back - killed_at, 2))
        phase.stop.set()
        phase.join()
        phases.append({"kubelet_reported": phase.reported, "key_moved": phase.key_moved})
        print(
            f"failover {name}: {old} killed -> writes accepted again in {times[-1]:.1f}s "
            f"(container reported dead {phase.reported}s, key moved {phase.key_moved}s)"
        )
        cluster.release(old)
        wait_synchronous(cluster, 3)
    writer.flowing(20, timeout=120)
    writer.finish()
    with cluster.connect(cluster.primary()) as conn:
        lost = writer.lost(stored_ids(conn))
    released = sum(
        int(e.get("count") or 1)
        for e in kube.list("Event", ns)
        if e.get("reason") == "PrimaryReleased"
        and (e.get("involvedObject") or {}).get("name") == cluster.name
    )
    kube.delete("PostgresCluster", ns, cluster.name)
    return {
        "patroni": patroni,
        "kills": kills,
        "writes_back_seconds": times,
        # Per kill, seconds from the kill: the kubelet's report of the dead container in the
        # API, the leader key no longer naming the killed pod (polled every 0.1 s).
        "phases_seconds": phases,
        "writes_back_p50_seconds": round(statistics.median(times), 2),
        "writes_back_max_seconds": max(times),
        "leader_released_by_operator": released,
        "acknowledged_writes": len(writer.acked),
        "acknowledged_lost": len(lost),
    }


def failover_profiles(kube: Kube, cp: ControlPlane, ns: str) -> dict[str, Any]:
    """Each profile's failover times (see the module docstring)."""
    fast_kills = int(os.environ.get("PGHERD_BENCH_FAILOVER_KILLS", "7"))
    only = os.environ.get("PGHERD_BENCH_FAILOVER_PROFILES", "")
    wanted = {p.strip() for p in only.split(",") if p.strip()} or set(PROFILES)
    return {
        name: _profile(
            kube, cp, ns, name, patroni, kills=fast_kills if name == "fast" else SLOW_KILLS
        )
        for name, patroni in PROFILES.items()
        if name in wanted
    }
