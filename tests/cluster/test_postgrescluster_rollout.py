"""A rolling update driven by an image change: replicas first, then a switchover, then the
old primary; the operator killed in the middle finishes it after a restart."""

from __future__ import annotations

import signal
import time

import pytest

from pgherd.controller.client import Client as Kube
from tests.operator_harness import Cluster, Operator, wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.slow]


def test_operator_restarted_mid_rollout_finishes_it(
    operator: Operator, kube: Kube, namespace: str
) -> None:
    cluster = Cluster(kube, namespace, "roll")
    cluster.create({"instances": 3})
    cluster.wait_healthy(3)
    old_primary = cluster.primary()
    uids = {p["metadata"]["name"]: p["metadata"]["uid"] for p in cluster.pods()}
    cluster.patch_spec({"image": "pgherd/postgres:15-0.1.1"})

    def replaced() -> set[str]:
        return {
            p["metadata"]["name"]
            for p in cluster.pods()
            if uids.get(p["metadata"]["name"]) != p["metadata"]["uid"]
        }

    wait_for("the first replica to be replaced", replaced, timeout=120)
    first = replaced()
    assert old_primary not in first, "a replica goes first"
    operator.stop(signal.SIGKILL)
    time.sleep(3)
    operator.start()

    wait_for("every pod replaced", lambda: len(replaced()) == 3, timeout=300)
    status = cluster.wait_healthy(3, timeout=180)
    assert status["currentPrimary"] != old_primary, "switched over before the old primary went"
    sts = kube.get("StatefulSet", namespace, "roll")
    assert sts is not None
    images = {c["image"] for p in cluster.pods() for c in p["spec"]["containers"]}
    assert images == {"pgherd/postgres:15-0.1.1"}
