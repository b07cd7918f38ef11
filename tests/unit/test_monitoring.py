"""The PodMonitor: rendered for the instances' metrics port with the labels the rules and the
dashboard use, created only when asked for and served by the API, deleted when turned off,
a neighbour's never touched; status says why none exists."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from pgherd import contract
from pgherd.api.v1alpha1 import PostgresCluster
from pgherd.controller import status
from pgherd.controller.diff import stamped
from pgherd.controller.plan import plan
from pgherd.render import labels
from pgherd.render.monitoring import render_pod_monitor
from pgherd.render.ownership import Manifest
from tests.unit.clusters import make_cluster
from tests.unit.snapshots import SETTINGS, cluster_raw, config_of, healthy, live_children, snapshot
from tests.unit.test_plan import what

ON = {"monitoring": {"enablePodMonitor": True}}


def test_pod_monitor_scrapes_the_metrics_port_with_the_rules_labels() -> None:
    monitor = render_pod_monitor(make_cluster(ON))
    assert monitor["kind"] == "PodMonitor"
    assert monitor["metadata"]["name"] == "db"
    assert monitor["metadata"]["ownerReferences"][0]["kind"] == "PostgresCluster"
    assert monitor["spec"]["selector"] == {"matchLabels": labels.selector_labels("db")}
    (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
    assert (endpoint["port"], endpoint["path"]) == (contract.METRICS_PORT_NAME, "/metrics")
    set_by = {
        r["targetLabel"]: r.get("replacement") or r["sourceLabels"][0]
        for r in endpoint["relabelings"]
    }
    assert set_by == {
        "job": "pgherd-instances",
        "cluster": "db",
        "namespace": "__meta_kubernetes_namespace",
        "pod": "__meta_kubernetes_pod_name",
    }


def _live_monitor(owner_uid: str | None) -> Manifest:
    live = copy.deepcopy(stamped(render_pod_monitor(make_cluster(ON))))
    live["metadata"].update({"uid": "pm-uid", "resourceVersion": "9"})
    if owner_uid is None:
        live["metadata"].pop("ownerReferences")
    else:
        live["metadata"]["ownerReferences"][0]["uid"] = owner_uid
    return live


def _running(spec: dict[str, Any], monitor: Manifest | None, served: bool) -> Any:
    cluster = PostgresCluster.model_validate(cluster_raw(spec))
    children = live_children(cluster)
    children.pop(("PodMonitor", "db"), None)
    if monitor is not None:
        children[("PodMonitor", "db")] = monitor
    return snapshot(
        spec,
        pods=healthy(),
        leader="db-0",
        dcs_config=config_of(spec),
        children=children,
        pod_monitors_served=served,
    )


@pytest.mark.parametrize(
    ("spec", "live", "served", "expected", "status_says"),
    [
        ({}, None, True, [], None),
        (ON, None, True, ["apply PodMonitor/db"], "being created"),
        (ON, None, False, [], "CRD (monitoring.coreos.com/v1) is not installed"),
        (ON, "ours", True, [], "db"),
        ({}, "ours", True, ["delete PodMonitor/db"], "db"),
        ({}, "neighbour", True, [], None),
    ],
    ids=[
        "off: nothing",
        "asked and served: created",
        "asked, CRD missing: nothing, status says why",
        "asked and present: nothing to do",
        "turned off: ours deleted",
        "a neighbour's of the same name: left alone",
    ],
)
def test_pod_monitor_decisions(
    spec: dict[str, Any],
    live: str | None,
    served: bool,
    expected: list[str],
    status_says: str | None,
) -> None:
    owner = {"ours": cluster_raw()["metadata"]["uid"], "neighbour": None}
    monitor = None if live is None else _live_monitor(owner[live])
    s = _running(spec, monitor, served)
    planned = plan(s, SETTINGS, new_password=lambda: "generated")
    assert [what(a) for a in planned.actions if "PodMonitor" in what(a)] == expected
    assert s.cluster is not None
    got = status.monitoring(s.cluster, s)
    if status_says is None:
        assert got is None
    else:
        assert got is not None
        assert status_says in (got.pod_monitor or got.message or "")
