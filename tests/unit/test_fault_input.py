"""Bad input under fault, decided: a switchover asked for to an instance that may not take
over is refused with a reason; a StatefulSet scaled by hand and Patroni's configuration
edited by hand are set back, and an Event says so."""

from __future__ import annotations

import copy
from datetime import timedelta
from typing import Any

import pytest

from pgherd.api.v1alpha1 import PostgresCluster
from pgherd.controller import conditions as c
from pgherd.controller import status
from pgherd.controller.actions import Apply, PatroniConfig, Switchover
from pgherd.controller.plan import plan
from pgherd.controller.snapshot import Snapshot
from tests.unit.snapshots import (
    SETTINGS,
    cluster_raw,
    config_of,
    dcs,
    healthy,
    live_children,
    pod,
    snapshot,
)

MiB = 1024 * 1024
STUCK_AFTER = timedelta(seconds=SETTINGS.stuck_after_seconds)
SETTLED = {"phase": "Healthy", "observedGeneration": 1, "currentPrimary": "db-0"}


def _running(spec: dict[str, Any], pods: list[dict[str, Any]], **kw: Any) -> Snapshot:
    kw.setdefault("dcs_config", config_of(spec))
    kw.setdefault("status", dict(SETTLED))
    return snapshot(spec, pods=pods, leader="db-0", **kw)


SYNC_ON_DB_2 = [dcs("sync", {"leader": "db-0", "sync_standby": "db-2"})]


@pytest.mark.parametrize(
    ("replica", "refused", "switch", "extra"),
    [
        (pod(1), None, True, []),  # ready and caught up: carried out
        (pod(1, lsn=100_000_000 - MiB // 2), None, True, []),  # within maximumLagOnFailover
        (pod(1, lsn=100_000_000 - 2 * MiB), "lags 2097152 bytes", False, []),
        (pod(1, ready=False, state="starting"), "is not ready (Patroni state starting)", False,
         []),
        (pod(1, state="stopped"), "is not ready (Patroni state stopped)", False, []),
        # Synchronous mode: Patroni lets only its synchronous standby take over.
        (pod(1), "is not the synchronous standby (db-2)", False, SYNC_ON_DB_2),
        (pod(1), None, True, [dcs("sync", {"leader": "db-0", "sync_standby": "db-1"})]),
    ],
)  # fmt: skip
def test_a_switchover_to_an_instance_that_may_not_take_over_is_refused(
    replica: dict[str, Any], refused: str | None, switch: bool, extra: list[dict[str, Any]]
) -> None:
    spec = {"instances": 3, "switchover": {"targetInstance": "db-1"}}
    s = _running(spec, [pod(0, role="primary"), replica, pod(2)], extra=extra)
    decided = plan(s, SETTINGS)
    switches = [a for a in decided.actions if isinstance(a, Switchover)]
    assert bool(switches) is switch
    problems = [x for x in decided.problems if x.reason == c.SWITCHOVER_REFUSED]
    if refused is None:
        assert problems == []
        return
    (problem,) = problems
    assert refused in problem.message and "remove spec.switchover" in problem.message
    # Degraded says so, and its change is one Event.
    new = status.compute(s, decided, stuck_after=STUCK_AFTER)
    assert new is not None
    degraded = next(x for x in new.conditions or [] if x.type == "Degraded")
    assert (degraded.status, degraded.reason) == ("True", c.SWITCHOVER_REFUSED)
    events = status.transitions(s.cluster.status if s.cluster else None, new)
    assert [e.reason for e in events if e.type == "Warning"] == [c.SWITCHOVER_REFUSED]


def test_a_switchover_to_an_instance_not_created_yet_waits_without_a_refusal() -> None:
    spec = {"instances": 3, "switchover": {"targetInstance": "db-2"}}
    decided = plan(_running(spec, healthy(2)), SETTINGS)
    assert not [a for a in decided.actions if isinstance(a, Switchover)]
    assert not [x for x in decided.problems if x.reason == c.SWITCHOVER_REFUSED]


def _scaled(children: dict[Any, Any], replicas: int) -> dict[Any, Any]:
    out = copy.deepcopy(children)
    out[("StatefulSet", "db")]["spec"]["replicas"] = replicas
    return out


@pytest.mark.parametrize(
    ("spec", "live_replicas", "event"),
    [
        ({"instances": 3}, 0, True),  # kubectl scale --replicas=0: set back, said
        ({"instances": 3}, 5, True),
        ({"instances": 3}, 3, False),  # as applied: nothing to do
    ],
)
def test_a_statefulset_scaled_by_hand_is_set_back(
    spec: dict[str, Any], live_replicas: int, event: bool
) -> None:
    cluster = PostgresCluster.model_validate(cluster_raw(spec))
    kids = _scaled(live_children(cluster), live_replicas)
    decided = plan(_running(spec, healthy(3), children=kids), SETTINGS)
    applied = [a for a in decided.actions if isinstance(a, Apply) and a.kind == "StatefulSet"]
    assert bool(applied) is event
    if applied:
        (apply,) = applied
        assert apply.manifest["spec"]["replicas"] == 3
        # Posted by act once the apply went through (a stale cache's apply is refused).
        assert apply.hand_edit is not None and apply.hand_edit.reason == c.SCALED_BY_HAND
        assert f"scaled to {live_replicas} by hand; set back to 3" in apply.hand_edit.message


def test_a_resize_by_spec_is_no_hand_edit() -> None:
    """spec.instances went from 2 to 3: the StatefulSet is applied, no Event."""
    old = PostgresCluster.model_validate(cluster_raw({"instances": 2}))
    decided = plan(_running({"instances": 3}, healthy(2), children=live_children(old)), SETTINGS)
    (apply,) = [a for a in decided.actions if isinstance(a, Apply) and a.kind == "StatefulSet"]
    assert apply.hand_edit is None


@pytest.mark.parametrize(
    ("edit", "keys", "generation", "event"),
    [
        ({"ttl": 5}, "ttl", 1, True),
        ({"postgresql": {"parameters": {"work_mem": "1GB"}}}, "postgresql.parameters.work_mem",
         1, True),
        # The spec changed since status saw it: the operator's own change, no Event.
        ({"ttl": 5}, "ttl", 2, False),
    ],
)  # fmt: skip
def test_patronis_configuration_edited_by_hand_is_set_back(
    edit: dict[str, Any], keys: str, generation: int, event: bool
) -> None:
    spec: dict[str, Any] = {"instances": 1}
    live = config_of(spec)
    for key, value in edit.items():
        if key == "postgresql":
            live["postgresql"]["parameters"] = {**live["postgresql"]["parameters"],
                                                **value["parameters"]}  # fmt: skip
        else:
            live[key] = value
    s = _running(spec, healthy(1), dcs_config=live, generation=generation)
    decided = plan(s, SETTINGS)
    (patched,) = [a for a in decided.actions if isinstance(a, PatroniConfig)]
    assert patched.member == "db-0"
    # The Event is posted by act once the patch went through (never at every retry).
    assert (patched.hand_edit is not None) is event
    if patched.hand_edit is not None:
        assert patched.hand_edit.reason == c.PATRONI_CONFIG_EDITED
        assert keys in patched.hand_edit.message and "db-config" in patched.hand_edit.message
