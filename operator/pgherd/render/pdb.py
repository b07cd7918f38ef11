"""PodDisruptionBudget `<cluster>`: voluntary evictions (node drains) take one instance at a time.

maxUnavailable is 1 whatever the size. With several instances that keeps a quorum of
Patroni members and a promotable replica through a drain. With a single instance there is no
replica to fail over to, and a budget of 0 would block every node drain forever; the cluster
is not highly available anyway, so the drain goes ahead and the instance restarts elsewhere.
Unhealthy pods may always be evicted, so a crash-looping replica cannot block a drain either.
"""

from __future__ import annotations

from pgherd.api.v1alpha1 import PostgresCluster
from pgherd.render import labels, names
from pgherd.render.ownership import Manifest, child_metadata


def render_pdb(cluster: PostgresCluster) -> Manifest:
    """PodDisruptionBudget `<cluster>` over the instance pods."""
    name = cluster.metadata.name
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": child_metadata(cluster, names.pdb(name)),
        "spec": {
            "maxUnavailable": 1,
            "selector": {"matchLabels": labels.selector_labels(name)},
            "unhealthyPodEvictionPolicy": "AlwaysAllow",
        },
    }
