"""PodMonitor `<cluster>`: the Prometheus Operator scrapes each instance's exporter.

Rendered only when the cluster asks for it (spec.monitoring.enablePodMonitor) and the
PodMonitor CRD exists (the controller decides). The relabelling gives every series the
labels pgherd's alerting rules and dashboard group by (docs/monitoring.md): job
`pgherd-instances`, namespace, cluster, pod; the same a static scrape configuration sets.
"""

from __future__ import annotations

from pgherd import contract
from pgherd.api.v1alpha1 import PostgresCluster
from pgherd.render import labels, names
from pgherd.render.ownership import Manifest, child_metadata

MONITORING_API_VERSION = "monitoring.coreos.com/v1"
INSTANCES_JOB = "pgherd-instances"


def render_pod_monitor(cluster: PostgresCluster) -> Manifest:
    """PodMonitor `<cluster>` over the instance pods' metrics port."""
    name = cluster.metadata.name
    return {
        "apiVersion": MONITORING_API_VERSION,
        "kind": "PodMonitor",
        "metadata": child_metadata(cluster, names.pod_monitor(name)),
        "spec": {
            "selector": {"matchLabels": labels.selector_labels(name)},
            "podMetricsEndpoints": [
                {
                    "port": contract.METRICS_PORT_NAME,
                    "path": contract.METRICS_PATH,
                    "relabelings": [
                        {"targetLabel": "job", "replacement": INSTANCES_JOB},
                        {"targetLabel": "cluster", "replacement": name},
                        {
                            "sourceLabels": ["__meta_kubernetes_namespace"],
                            "targetLabel": "namespace",
                        },
                        {"sourceLabels": ["__meta_kubernetes_pod_name"], "targetLabel": "pod"},
                    ],
                }
            ],
        },
    }
