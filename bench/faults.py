"""`make bench` section `faults` (PGHERD_BENCH_ONLY=faults): the Patroni fault matrix, every
synchronous mode by every fault, PGHERD_BENCH_FAULT_REPEATS times each (default 3).

The faults, the recovery checks and the acknowledged-write accounting are the tests' own
(tests/faults/conftest.py); here they are repeated and summed up instead of asserted: per
mode and fault, kills, commits acknowledged during the faults, acknowledged rows lost, the
write outage (p50 and max over the repetitions) and whatever must never happen in that mode
(violations). A fault that does not recover is recorded with its error, and the mode's
remaining faults are skipped (its cluster is in an unknown state).
"""

from __future__ import annotations

import os
import statistics
import time
from typing import Any

from tests.faults.conftest import (
    FAULTS,
    MODES,
    TIMINGS,
    FaultResult,
    create_fault_clusters,
    start_writing,
)

from pgherd.controller.client import Client as Kube
from pgherd_dev.controlplane import ControlPlane


def _cell(results: list[FaultResult]) -> dict[str, Any]:
    outages = [o for r in results for o in r.outages]
    return {
        "repetitions": len(results),
        "kills": sum(r.kills for r in results),
        "acknowledged": sum(r.acknowledged for r in results),
        "lost": sum(len(r.lost) + r.lost_through_old_primary for r in results),
        "outage_seconds": {
            "p50": round(statistics.median(outages), 2) if outages else None,
            "max": round(max(outages), 2) if outages else None,
        },
        "violations": [v for r in results for v in r.violations],
        "notes": [n for r in results for n in r.notes],
    }


def fault_matrix(kube: Kube, cp: ControlPlane, namespace: str) -> dict[str, Any]:
    """{mode: {fault: cell}} plus the settings it ran with."""
    repeats = int(os.environ.get("PGHERD_BENCH_FAULT_REPEATS", "3"))
    modes = tuple(
        m for m in os.environ.get("PGHERD_BENCH_FAULT_MODES", ",".join(MODES)).split(",") if m
    )
    started = time.monotonic()
    clusters = create_fault_clusters(kube, namespace, modes)
    matrix: dict[str, Any] = {}
    for mode in modes:
        f = start_writing(clusters[mode], cp, mode)
        cells: dict[str, Any] = {}
        broken = None
        for fault, run in FAULTS.items():
            if broken:
                cells[fault] = {"skipped": f"after {broken}"}
                continue
            results: list[FaultResult] = []
            for _ in range(repeats):
                try:
                    results.append(run(f))
                except AssertionError as e:  # did not recover: the rest would be meaningless
                    broken = f"{fault}: {e}"
                    break
                print(results[-1].summary(), flush=True)
            cells[fault] = _cell(results) | ({"error": broken} if broken else {})
        f.writer.finish()
        matrix[mode] = cells
        kube.delete("PostgresCluster", namespace, clusters[mode].name)
    return {
        "repetitions": repeats,
        "patroni": dict(TIMINGS),
        "seconds": round(time.monotonic() - started, 1),
        "matrix": matrix,
    }
