"""`make bench`, section `outage` (issue 16): an API-server outage longer than Patroni's TTL,
with Patroni's failsafe mode on (pgherd's default) and off, PGHERD_BENCH_OUTAGE_RUNS times
each (default 1).

Per run: how long the API was down, the longest gap between acknowledged writes meanwhile,
whether the primary's Patroni reported failsafe mode active, which instances were seen as
primaries (during and after), acknowledged writes lost, and how soon after the API's return
the operator observed a spec change. Measures, asserts nothing
(tests/faults/test_api_outage.py asserts).
"""

from __future__ import annotations

import os
import statistics
import time
from typing import Any

from tests.acked_writes import stored_ids
from tests.api_outage import api_down, instances, recording, synchronous_cluster
from tests.operator_harness import wait_for

from pgherd.controller.client import Client as Kube
from pgherd_dev.controlplane import ControlPlane

TIMINGS = {"ttl": 20, "loopWait": 2, "retryTimeout": 5}
DOWN_SECONDS = TIMINGS["ttl"] + 10


def one_outage(kube: Kube, cp: ControlPlane, ns: str, name: str, failsafe: bool) -> dict[str, Any]:
    cluster = synchronous_cluster(kube, ns, name, {**TIMINGS, "failsafeMode": failsafe})
    members = instances(cluster)
    primary = cluster.primary()
    writer, prober = recording(members, primary)
    stopped, back, _ = api_down(cp, DOWN_SECONDS)
    generation = cluster.obj()["metadata"]["generation"] + 1
    cluster.patch_spec({"postgresql": {"parameters": {"work_mem": "5MB"}}})
    changed = time.monotonic()
    observed = wait_for(
        "the operator to observe the new generation",
        lambda: cluster.status().get("observedGeneration") == generation and time.monotonic(),
        timeout=180,
        interval=0.2,
    )
    cluster.wait_healthy(3, timeout=300)
    writer.flowing(20, timeout=120)
    prober.stop.set()
    prober.join(timeout=10)
    writer.finish()
    now_primary = cluster.primary()
    with next(m for m in members if m.name == now_primary).connect() as conn:
        lost = len(writer.lost(stored_ids(conn)))
    kube.delete("PostgresCluster", ns, name)
    return {
        "failsafe_mode": failsafe,
        "api_down_seconds": round(back - stopped, 1),
        "write_gap_while_down_seconds": round(writer.outage(stopped, back), 2),
        # The whole write outage the fault caused, also after the API's return.
        "write_outage_seconds": round(writer.resumed(stopped)[0], 2),
        "acknowledged": len(writer.acked),
        "lost": lost,
        "failsafe_active_seen": bool(prober.failsafe_active),
        "primaries_seen": sorted(prober.primaries()),
        "primary_changed": now_primary != primary,
        "primary_seen_in_recovery": bool(prober.demoted()),
        "operator_acted_seconds": round(observed - changed, 1),
    }


def api_outage(kube: Kube, cp: ControlPlane, ns: str) -> dict[str, Any]:
    """The outage with failsafe mode on and off, runs of each, and their summary."""
    runs = int(os.environ.get("PGHERD_BENCH_OUTAGE_RUNS", "1"))
    out: dict[str, Any] = {"timings": TIMINGS, "down_seconds_asked": DOWN_SECONDS}
    for failsafe in (True, False):
        results = [
            one_outage(kube, cp, ns, f"outage-{'on' if failsafe else 'off'}-{i}", failsafe)
            for i in range(runs)
        ]
        gaps = [r["write_gap_while_down_seconds"] for r in results]
        acted = [r["operator_acted_seconds"] for r in results]
        out["failsafe_on" if failsafe else "failsafe_off"] = {
            "runs": results,
            "write_gap_p50_seconds": round(statistics.median(gaps), 2),
            "write_gap_max_seconds": max(gaps),
            "operator_acted_p50_seconds": round(statistics.median(acted), 1),
            "lost": sum(r["lost"] for r in results),
            "primary_changed": sum(r["primary_changed"] for r in results),
        }
    return out
