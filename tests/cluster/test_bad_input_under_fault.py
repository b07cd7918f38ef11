"""Bad input under fault, on real Patroni, in one 2-instance cluster: Patroni's configuration
edited by hand and the StatefulSet scaled to 0 by hand are set back, each with an Event; a
switchover asked for to an instance that is down is refused (Degraded SwitchoverRefused,
one Event) and carried out once the instance is back and caught up."""

from __future__ import annotations

import json
from typing import Any

import pytest

from pgherd.controller.client import Client as Kube
from pgherd_dev.controlplane import ControlPlane
from tests.operator_harness import Cluster, Operator, wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.slow]


def _events(kube: Kube, namespace: str, reason: str) -> list[dict[str, Any]]:
    return [e for e in kube.list("Event", namespace) if e.get("reason") == reason]


def _dcs_config(kube: Kube, namespace: str) -> dict[str, Any]:
    cm = kube.get("ConfigMap", namespace, "hand-config")
    assert cm is not None
    return dict(json.loads(cm["metadata"]["annotations"]["config"]))


def test_hand_edits_are_set_back_and_a_switchover_to_a_down_instance_is_refused(
    operator: Operator, kube: Kube, namespace: str, control_plane: ControlPlane
) -> None:
    cluster = Cluster(kube, namespace, "hand")
    cluster.create({"instances": 2, "patroni": {"ttl": 20, "loopWait": 2, "retryTimeout": 5}})
    cluster.wait_healthy(2)

    # Patroni's DCS ConfigMap edited by hand: ttl and a parameter.
    edited = _dcs_config(kube, namespace)
    edited["ttl"] = 99
    edited["postgresql"]["parameters"]["work_mem"] = "77MB"
    kube.patch("ConfigMap", namespace, "hand-config",
               {"metadata": {"annotations": {"config": json.dumps(edited)}}})  # fmt: skip
    wait_for(
        "Patroni's configuration set back",
        lambda: (
            (cfg := _dcs_config(kube, namespace))["ttl"] == 20
            and "work_mem" not in cfg["postgresql"]["parameters"]
        ),
        timeout=60,
    )
    (event,) = _events(kube, namespace, "PatroniConfigEditedByHand")
    assert "postgresql.parameters.work_mem" in event["message"] and "ttl" in event["message"]

    # The StatefulSet scaled to 0 by hand.
    kube.patch("StatefulSet", namespace, "hand", {"spec": {"replicas": 0}})
    wait_for(
        "the StatefulSet set back to 2",
        lambda: (kube.get("StatefulSet", namespace, "hand") or {})["spec"]["replicas"] == 2,
        timeout=60,
    )
    (event,) = _events(kube, namespace, "StatefulSetScaledByHand")
    assert "scaled to 0 by hand; set back to 2" in event["message"]
    cluster.wait_healthy(2, timeout=240)

    # A switchover to an instance that is down: refused, then carried out once it is back.
    primary = cluster.primary()
    down = next(p["metadata"]["name"] for p in cluster.pods() if p["metadata"]["name"] != primary)
    cluster.kill(down, control_plane, hold=True)
    wait_for(
        f"{down} not ready",
        lambda: any(
            i["name"] == down and not i["ready"] for i in cluster.status()["instancesStatus"]
        ),
        timeout=60,
    )
    cluster.patch_spec({"switchover": {"targetInstance": down}})
    degraded = wait_for(
        "the switchover refused",
        lambda: (d := cluster.condition("Degraded")).get("reason") == "SwitchoverRefused" and d,
        timeout=60,
    )
    assert f"targetInstance {down} is not ready" in degraded["message"]
    assert cluster.primary() == primary
    assert len(_events(kube, namespace, "SwitchoverRefused")) == 1
    cluster.release(down)
    wait_for(f"the switchover to {down}", lambda: cluster.primary() == down, timeout=120)
    wait_for(
        "Degraded cleared",
        lambda: cluster.condition("Degraded").get("status") == "False",
        timeout=60,
    )
    assert len(_events(kube, namespace, "SwitchoverRefused")) == 1  # one Event, not one a pass
    cluster.wait_healthy(2)
