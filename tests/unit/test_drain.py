"""Drain-aware switchover (pgherd.controller.drain): the decision, table-driven, and what a
pass plans from it (the switchover, the primary's PodDisruptionBudget)."""

from __future__ import annotations

from typing import Any

import pytest

from pgherd.controller import conditions as c
from pgherd.controller import drain
from pgherd.controller.actions import Apply, Switchover
from pgherd.controller.cache import trim
from pgherd.controller.drain import Decision, Instance
from pgherd.controller.plan import plan
from tests.unit.snapshots import SETTINGS, config_of, pod, snapshot

MiB = 1024 * 1024
P = Instance("db-0", "n0", ready=True, lag=0)


def r(name: str, node: str | None, *, ready: bool = True, lag: int | None = 0,
      terminating: bool = False, unready: float | None = None,
      sync: bool = False) -> Instance:  # fmt: skip
    return Instance(name, node, ready=ready, lag=lag, terminating=terminating,
                    unready_seconds=unready, synchronous=sync)  # fmt: skip


@pytest.mark.parametrize(
    ("instances", "primary", "replicas", "draining", "expected"),
    [
        # Nothing drains: nothing to do, the primary's eviction waits for a switchover.
        (2, P, (r("db-1", "n1"),), frozenset(), Decision()),
        # A replica's node drains: the replicas' budget handles it.
        (2, P, (r("db-1", "n1"),), frozenset({"n1"}), Decision()),
        # The primary's node drains: switch to the ready, caught-up replica.
        (2, P, (r("db-1", "n1"),), frozenset({"n0"}), Decision(switch_to="db-1")),
        # ... the least lagging one, never one on a draining node.
        (3, P, (r("db-1", "n1", lag=MiB), r("db-2", "n2", lag=10)), frozenset({"n0"}),
         Decision(switch_to="db-2")),
        (3, P, (r("db-1", "n0"), r("db-2", "n2", lag=10)), frozenset({"n0"}),
         Decision(switch_to="db-2")),
        # ... but Patroni's synchronous standby first, the only one it lets take over.
        (3, P, (r("db-1", "n1", lag=0), r("db-2", "n2", lag=10, sync=True)), frozenset({"n0"}),
         Decision(switch_to="db-2")),
        # ... unless it cannot (its node drains too): then the best of the others.
        (3, P, (r("db-1", "n1", lag=10), r("db-2", "n0", sync=True)), frozenset({"n0"}),
         Decision(switch_to="db-1")),
        # A replica not ready for a moment (just demoted, restarting): wait for it a while.
        (2, P, (r("db-1", "n1", ready=False, unready=5),), frozenset({"n0"}), Decision()),
        # ... but not forever, and never for one on a draining node.
        (2, P, (r("db-1", "n1", ready=False, unready=300),), frozenset({"n0"}),
         Decision(allow_eviction=True)),
        (2, P, (r("db-1", "n0", ready=False, unready=5),), frozenset({"n0"}),
         Decision(allow_eviction=True)),
        # No replica can take over: the eviction goes ahead (never blocked forever).
        (2, P, (r("db-1", "n1", ready=False),), frozenset({"n0"}), Decision(allow_eviction=True)),
        (2, P, (r("db-1", "n1", lag=2 * MiB),), frozenset({"n0"}), Decision(allow_eviction=True)),
        (2, P, (r("db-1", "n1", lag=None),), frozenset({"n0"}), Decision(allow_eviction=True)),
        (2, P, (r("db-1", "n0"),), frozenset({"n0"}), Decision(allow_eviction=True)),
        (2, P, (r("db-1", "n1", terminating=True),), frozenset({"n0"}),
         Decision(allow_eviction=True)),
        (2, P, (), frozenset({"n0"}), Decision(allow_eviction=True)),
        # A single instance never holds a drain, drained or not.
        (1, P, (), frozenset(), Decision(allow_eviction=True)),
        (1, P, (), frozenset({"n0"}), Decision(allow_eviction=True)),
        # No primary (or not scheduled yet): nothing to switch from.
        (2, None, (r("db-1", "n1"),), frozenset({"n0"}), Decision()),
        (2, r("db-0", None), (r("db-1", "n1"),), frozenset({"n0"}), Decision()),
    ],
)  # fmt: skip
def test_decide(
    instances: int,
    primary: Instance | None,
    replicas: tuple[Instance, ...],
    draining: frozenset[str],
    expected: Decision,
) -> None:
    got = drain.decide(primary, replicas, draining, instances=instances, max_lag=MiB)
    assert (got.switch_to, got.allow_eviction) == (expected.switch_to, expected.allow_eviction)
    # Whenever the primary's node drains, Progressing says what happens.
    primary_drains = primary is not None and primary.node in draining and instances > 1
    assert (got.message is not None) == primary_drains


@pytest.mark.parametrize(
    ("node", "draining"),
    [
        (None, False),
        ({"spec": {}}, False),
        ({"spec": {"unschedulable": True}}, True),
        ({"spec": {"taints": [{"key": "ToBeDeletedByClusterAutoscaler"}]}}, True),
        ({"spec": {"taints": [{"key": "dedicated", "effect": "NoSchedule"}]}}, False),
    ],
)
def test_draining(node: dict[str, Any] | None, draining: bool) -> None:
    assert drain.draining(node) is draining


def test_the_caches_keep_a_pods_node_and_only_whether_a_node_drains() -> None:
    kept = trim("Pod", {"metadata": {"name": "p"}, "spec": {"nodeName": "n0", "containers": []}})
    assert kept["spec"] == {"nodeName": "n0"}
    node = trim(
        "Node",
        {
            "metadata": {"name": "n0", "resourceVersion": "5", "labels": {"a": "b"}},
            "spec": {"unschedulable": True, "podCIDR": "10.0.0.0/24"},
            "status": {"images": ["big"]},
        },
    )
    assert node == {
        "metadata": {"name": "n0", "resourceVersion": "5"},
        "spec": {"unschedulable": True},
        "kind": "Node",
    }


def _on(p: dict[str, Any], node: str) -> dict[str, Any]:
    return {**p, "spec": {"nodeName": node}}


def _pdb(actions: tuple[Any, ...]) -> int | None:
    applied = [a for a in actions if isinstance(a, Apply) and a.name == "db-primary"]
    return int(applied[0].manifest["spec"]["minAvailable"]) if applied else None


@pytest.mark.parametrize(
    ("replica_ready", "draining", "switch", "pdb"),
    [
        (True, frozenset(), None, None),  # nothing drains: nothing changes
        (True, frozenset({"n0"}), "db-0->db-1", None),  # switch over; the budget still holds
        (False, frozenset({"n0"}), None, 0),  # nobody can take over: the budget lets it go
    ],
)
def test_a_pass_switches_over_before_the_drain_evicts_the_primary(
    replica_ready: bool, draining: frozenset[str], switch: str | None, pdb: int | None
) -> None:
    spec = {"instances": 2}
    pods = [_on(pod(0, role="primary"), "n0"), _on(pod(1, ready=replica_ready), "n1")]
    s = snapshot(spec, dcs_config=config_of(spec), status={"phase": "Healthy"}, pods=pods,
                 leader="db-0", draining_nodes=draining)  # fmt: skip
    decided = plan(s, SETTINGS)
    switches = [f"{a.primary}->{a.candidate}" for a in decided.actions if isinstance(a, Switchover)]
    assert switches == ([switch] if switch else [])
    assert _pdb(decided.actions) == pdb
    if draining:
        assert decided.activity is not None and decided.activity.reason == c.NODE_DRAINING


def test_only_a_change_of_whether_a_node_drains_queues_its_clusters() -> None:
    from pgherd.controller.runner import Controller  # noqa: PLC0415
    from pgherd.settings import Settings  # noqa: PLC0415

    controller = Controller(Settings(), None)  # type: ignore[arg-type]
    pods = controller.cache.store("Pod", "pgherd.io/cluster")
    for name, node in (("db-0", "n0"), ("db-1", "n1")):
        controller.cache._put(pods, trim("Pod", _on(pod(int(name[-1])), node)))
    node = {"metadata": {"name": "n0", "resourceVersion": "1"}, "spec": {}}
    controller.on_child("Node", node)  # listed: not draining, nothing to do
    assert controller.queue.depth() == 0
    cordoned = {**node, "spec": {"unschedulable": True}}
    controller.on_child("Node", cordoned)
    assert controller.queue.get(timeout=0) == ("prod", "db")
    controller.on_child("Node", {**cordoned, "metadata": {"name": "n0", "resourceVersion": "2"}})
    assert controller.queue.depth() == 0  # a heartbeat of a node still cordoned: no news
    controller.on_child("Node", {"metadata": {"name": "n2"}, "spec": {"unschedulable": True}})
    assert controller.queue.depth() == 0  # no instance there
