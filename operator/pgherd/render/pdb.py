"""PodDisruptionBudgets `<cluster>` (the replicas) and `<cluster>-primary` (the primary).

Voluntary evictions (node drains) take one replica at a time: `<cluster>` selects the pods
Patroni labels replica and keeps all but one of them (minAvailable replicas - 1), which keeps a
quorum of Patroni members and a promotable replica through a drain. The primary has its own
budget, minAvailable 1, so that its eviction waits for the operator to switch over first
(pgherd.controller.drain); once Patroni relabels it a replica, the replicas' budget covers it
and the drain goes on. The two select by the role label, so no pod is ever selected by both
(the eviction API refuses a pod with more than one budget).

Both use minAvailable as a number, never maxUnavailable: with maxUnavailable the disruption
controller counts the expected pods from the StatefulSet's scale (all instances), not from the
pods the budget selects, so a budget over part of a StatefulSet's pods would never allow an
eviction of a healthy one.

A budget must never block a drain forever: with a single instance there is no replica to
switch to, and when the primary's node drains with no replica able to take over, the
operator renders the primary's budget with minAvailable 0 (allow_primary_eviction): the
drain goes ahead at the cost of a failover (or, with one instance, an outage until the pod
runs again). Unhealthy pods may always be evicted, so a crash-looping instance cannot block a
drain either.
"""

from __future__ import annotations

from pgherd.api.v1alpha1 import PostgresCluster
from pgherd.render import labels, names
from pgherd.render.ownership import Manifest, child_metadata


def _budget(cluster: PostgresCluster, name: str, role: str, min_available: int) -> Manifest:
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": child_metadata(cluster, name),
        "spec": {
            "minAvailable": min_available,
            "selector": {"matchLabels": labels.role_selector(cluster.metadata.name, role)},
            "unhealthyPodEvictionPolicy": "AlwaysAllow",
        },
    }


def render_pdb(cluster: PostgresCluster) -> Manifest:
    """PodDisruptionBudget `<cluster>` over the replicas: one at a time."""
    replicas = max(0, cluster.spec.instances - 1)
    return _budget(
        cluster, names.pdb(cluster.metadata.name), labels.ROLE_REPLICA, max(0, replicas - 1)
    )


def render_primary_pdb(cluster: PostgresCluster, *, allow_eviction: bool = False) -> Manifest:
    """PodDisruptionBudget `<cluster>-primary`: the primary's eviction waits for a switchover,
    unless allow_eviction or a single instance (nothing to switch to)."""
    allow = allow_eviction or cluster.spec.instances <= 1
    name = names.pdb_primary(cluster.metadata.name)
    return _budget(cluster, name, labels.ROLE_PRIMARY, 0 if allow else 1)
