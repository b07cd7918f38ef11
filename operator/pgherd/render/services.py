"""Services of a cluster: read-write, read-only, any instance, and the headless one.

The client Services select on the role label Patroni keeps on each pod, so they follow
failovers without the operator touching them. The headless Service gives every pod a DNS
name, also before it is ready (a replica must be reachable while it catches up).
"""

from __future__ import annotations

from typing import Any

from pgherd import contract
from pgherd.api.v1alpha1 import PostgresCluster
from pgherd.render import labels, names
from pgherd.render.ownership import Manifest, child_metadata

_POSTGRES_PORT = {
    "name": contract.POSTGRES_PORT_NAME,
    "port": contract.POSTGRES_PORT,
    "targetPort": contract.POSTGRES_PORT_NAME,
    "protocol": "TCP",
}
_PATRONI_PORT = {
    "name": contract.PATRONI_PORT_NAME,
    "port": contract.PATRONI_PORT,
    "targetPort": contract.PATRONI_PORT_NAME,
    "protocol": "TCP",
}


def _client_service(cluster: PostgresCluster, name: str, selector: dict[str, str]) -> Manifest:
    service = cluster.spec.service
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": child_metadata(cluster, name, annotations=service.annotations),
        "spec": {
            "type": service.type,
            "selector": selector,
            "ports": [dict(_POSTGRES_PORT)],
        },
    }


def _headless_service(cluster: PostgresCluster) -> Manifest:
    name = cluster.metadata.name
    spec: dict[str, Any] = {
        "clusterIP": "None",
        "publishNotReadyAddresses": True,
        "selector": labels.selector_labels(name),
        "ports": [dict(_POSTGRES_PORT), dict(_PATRONI_PORT)],
    }
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": child_metadata(cluster, names.service_headless(name)),
        "spec": spec,
    }


def render_services(cluster: PostgresCluster) -> list[Manifest]:
    """`<cluster>-headless`, `-rw` (primary), `-ro` (replicas) and `-r` (any instance)."""
    name = cluster.metadata.name
    primary = labels.role_selector(name, labels.ROLE_PRIMARY)
    replicas = labels.role_selector(name, labels.ROLE_REPLICA)
    return [
        _headless_service(cluster),
        _client_service(cluster, names.service_rw(name), primary),
        _client_service(cluster, names.service_ro(name), replicas),
        _client_service(cluster, names.service_any(name), labels.selector_labels(name)),
    ]
