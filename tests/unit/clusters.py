"""PostgresCluster scenarios shared by the render tests (and named after their golden files)."""

from __future__ import annotations

import copy
from typing import Any

from pgherd.api.v1alpha1 import PostgresCluster
from pgherd.render.names import SecretKind

UID = "0f6d2a3e-6b1c-4f7e-9a51-2c9d8e7f1a01"

PASSWORDS: dict[SecretKind, str] = {
    "superuser": "su-Pa55word",
    "replication": "repl-Pa55word",
    "app": "app p@ss/word:1",
    "restapi": "api-Pa55word",
}

# The data of <cluster>-ca and <cluster>-tls as the operator's pass would hand it to the
# renderers (which only place it): stand-ins, since rendering never reads certificates.
TLS: tuple[dict[str, str], dict[str, str]] = (
    {"ca.crt": "<CA certificate>", "ca.key": "<CA key>", "trust.crt": "<CA bundle>"},
    {
        "tls.crt": "<server certificate>",
        "tls.key": "<server key>",
        "ca.crt": "<CA bundle>",
        "client-ca.crt": "<CA bundle>",
        "replication.crt": "<replication certificate>",
        "replication.key": "<replication key>",
    },
)

SCENARIOS: dict[str, dict[str, Any]] = {
    "default": {},
    "customised": {
        "instances": 5,
        "postgresVersion": 16,
        "image": "registry.example/pgherd/postgres:16-0.1.0",
        "storage": {"size": "20Gi", "storageClassName": "fast-ssd", "reclaimPolicy": "Delete"},
        "resources": {"requests": {"cpu": 1, "memory": "2Gi"}, "limits": {"memory": "4Gi"}},
        "postgresql": {
            "parameters": {"max_connections": "200", "shared_buffers": "1GB"},
            "pgHba": ["host all all 10.0.0.0/8 scram-sha-256"],
        },
        "bootstrap": {"database": "orders", "owner": "orders_owner"},
        "patroni": {"ttl": 40, "loopWait": 10, "retryTimeout": 15},
        "synchronousMode": "strict",
        "tls": {"minProtocolVersion": "TLSv1.3", "allowPlainText": True},
        "scheduling": {
            "antiAffinity": "required",
            "nodeSelector": {"node-role.example/db": "true"},
            "tolerations": [
                {"key": "dedicated", "operator": "Equal", "value": "db", "effect": "NoSchedule"}
            ],
        },
        "service": {
            "type": "LoadBalancer",
            "annotations": {"service.beta.kubernetes.io/aws-load-balancer-internal": "true"},
        },
        "monitoring": {
            "customQueries": [
                {"name": "orders-metrics", "key": "queries.yaml"},
                {"name": "orders-metrics", "key": "locks.yaml"},
                {"name": "team-metrics", "key": "queries.yaml"},
            ]
        },
    },
    "single-instance": {"instances": 1},
}


def make_cluster(
    spec: dict[str, Any] | None = None, *, name: str = "db", namespace: str = "prod"
) -> PostgresCluster:
    return PostgresCluster.model_validate(
        {
            "apiVersion": "pgherd.io/v1alpha1",
            "kind": "PostgresCluster",
            "metadata": {"name": name, "namespace": namespace, "uid": UID, "generation": 1},
            "spec": copy.deepcopy(spec or {}),
        }
    )
