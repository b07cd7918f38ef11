"""Where instance pods run: the spec's placement, or spreading over nodes and zones by default.

A user-given affinity or topologySpreadConstraints replaces the matching default as a whole,
because merging a default into a hand-written affinity would silently change its meaning.
"""

from __future__ import annotations

from typing import Any

from pgherd.api.v1alpha1 import PostgresCluster
from pgherd.render.labels import selector_labels

HOSTNAME_TOPOLOGY = "kubernetes.io/hostname"
ZONE_TOPOLOGY = "topology.kubernetes.io/zone"


def default_affinity(cluster: PostgresCluster) -> dict[str, Any]:
    """Pod anti-affinity that keeps the cluster's instances on distinct nodes."""
    term = {
        "labelSelector": {"matchLabels": selector_labels(cluster.metadata.name)},
        "topologyKey": HOSTNAME_TOPOLOGY,
    }
    if cluster.spec.scheduling.anti_affinity == "required":
        return {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [term]}}
    return {
        "podAntiAffinity": {
            "preferredDuringSchedulingIgnoredDuringExecution": [
                {"weight": 100, "podAffinityTerm": term}
            ]
        }
    }


def default_topology_spread(cluster: PostgresCluster) -> list[dict[str, Any]]:
    """Best-effort spread over zones; ScheduleAnyway so single-zone clusters still schedule."""
    return [
        {
            "maxSkew": 1,
            "topologyKey": ZONE_TOPOLOGY,
            "whenUnsatisfiable": "ScheduleAnyway",
            "labelSelector": {"matchLabels": selector_labels(cluster.metadata.name)},
        }
    ]


def pod_scheduling(cluster: PostgresCluster) -> dict[str, Any]:
    """The pod-spec fields that place instances (only those with a value)."""
    scheduling = cluster.spec.scheduling
    placement: dict[str, Any] = {
        "affinity": scheduling.affinity
        if scheduling.affinity is not None
        else default_affinity(cluster),
    }
    spread = (
        scheduling.topology_spread_constraints
        if scheduling.topology_spread_constraints is not None
        else default_topology_spread(cluster)
    )
    if spread:
        placement["topologySpreadConstraints"] = spread
    return {**placement, **_nodes(cluster)}


def node_placement(cluster: PostgresCluster) -> dict[str, Any]:
    """The pod-spec fields that say which nodes the cluster's pods may run on: the node
    affinity of a user-given affinity, nodeSelector and tolerations. Not the instances'
    spreading and anti-affinity: a pod that is no instance (the major upgrade's) must not be
    kept away from them, or a preflight could not start beside a cluster that fills its
    nodes."""
    node_affinity = (cluster.spec.scheduling.affinity or {}).get("nodeAffinity")
    placement = {"affinity": {"nodeAffinity": node_affinity}} if node_affinity else {}
    return {**placement, **_nodes(cluster)}


def _nodes(cluster: PostgresCluster) -> dict[str, Any]:
    scheduling = cluster.spec.scheduling
    placement: dict[str, Any] = {}
    if scheduling.node_selector:
        placement["nodeSelector"] = dict(scheduling.node_selector)
    if scheduling.tolerations:
        placement["tolerations"] = [
            t.model_dump(by_alias=True, exclude_none=True) for t in scheduling.tolerations
        ]
    return placement
