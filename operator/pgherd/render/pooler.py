"""What a PostgresPooler owns: the PgBouncer Deployment, its Service, its configuration
(ConfigMap) and certificates (Secret); and the cluster's `<cluster>-pooler` Secret, the
password of the role PgBouncer's auth_query logs in as.

The pooler's children carry the cluster label, so the watches that feed a cluster's pass
(selected by that label) hold them and a change to one queues the cluster, whose pass decides
for its poolers as it does for its PostgresBackups. Their controller is the PostgresPooler, so
deleting it collects them. The pods are selected by their own labels (name pgbouncer), never by
the cluster's instance selector, so no instance Service ever routes to a pooler.

The ConfigMap holds the [pgbouncer] settings the operator decides (pool mode, authentication
by auth_query, TLS modes) and the user's parameters, plus the pause switch; the pod re-reads it
while running (pgherd.operand.pooler), so a change reloads PgBouncer rather than rolling the
pods. Paths, the listening port and the server's address are added by the pod itself.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from typing import Any

from pgherd import contract
from pgherd.api.v1alpha1 import (
    POOLER_KIND,
    POOLER_USERNAME,
    PostgresCluster,
    PostgresPooler,
)
from pgherd.render import labels, names, ownership
from pgherd.render.ownership import Manifest, child_metadata
from pgherd.render.statefulset import restricted_container

COMPONENT = "pooler"
POOLER_LABEL = "pgherd.io/pooler"
# Defaults the operator sets beside what it owns; spec.parameters overrides them. JDBC and
# some drivers send extra_float_digits, which PgBouncer would otherwise refuse. After a failed
# server login (the primary gone, the Service without a ready pod) PgBouncer refuses clients
# and waits server_login_retry before trying again: its default, 15 s, would be added to every
# failover's outage (the bench: the longest time without a commit through the pooler, Patroni
# ttl 20 s, went from 30.5 s to 22.7 s); with 1 s it reaches the new primary within a second.
DEFAULT_PARAMETERS = {
    "ignore_startup_parameters": "extra_float_digits",
    "server_login_retry": "1",
}


def encoded(value: str) -> str:
    return base64.b64encode(value.encode()).decode("ascii")


# ---- names ------------------------------------------------------------------------------
def auth_secret(cluster: str) -> str:
    """The password of the pooler role, one per cluster (every pooler of it logs in as it)."""
    return f"{cluster}-pooler"


def config_map(pooler: str) -> str:
    return f"{pooler}-pgbouncer"


def tls_secret(pooler: str) -> str:
    return f"{pooler}-tls"


def target_service(pooler: PostgresPooler) -> str:
    cluster = pooler.spec.cluster
    return names.service_rw(cluster) if pooler.spec.type == "rw" else names.service_ro(cluster)


def service_names(pooler: str, namespace: str) -> list[str]:
    """The names a client reaches the pooler's Service by (its certificate covers them)."""
    return names.dns_names(pooler, namespace)


def children_keys(pooler: str) -> list[tuple[str, str]]:
    """(kind, name) of everything a pooler owns."""
    return [
        ("ConfigMap", config_map(pooler)),
        ("Secret", tls_secret(pooler)),
        ("Service", pooler),
        ("Deployment", pooler),
    ]


# ---- labels and metadata ----------------------------------------------------------------
def selector_labels(pooler: PostgresPooler) -> dict[str, str]:
    """Selects a pooler's pods. Never changes (a Deployment's selector is immutable)."""
    return {labels.NAME: "pgbouncer", labels.INSTANCE: pooler.metadata.name}


def pooler_labels(pooler: PostgresPooler) -> dict[str, str]:
    return {
        **selector_labels(pooler),
        labels.CLUSTER: pooler.spec.cluster,
        labels.MANAGED_BY: "pgherd",
        labels.COMPONENT: COMPONENT,
        POOLER_LABEL: pooler.metadata.name,
    }


def pod_labels(pooler: PostgresPooler) -> dict[str, str]:
    return {k: v for k, v in pooler_labels(pooler).items() if k != labels.CLUSTER}


def owner_reference(pooler: PostgresPooler) -> dict[str, Any]:
    return ownership.controller_reference(POOLER_KIND, pooler.metadata.name, pooler.metadata.uid)


def _metadata(pooler: PostgresPooler, name: str) -> dict[str, Any]:
    return {
        "name": name,
        "namespace": pooler.metadata.namespace,
        "labels": pooler_labels(pooler),
        "ownerReferences": [owner_reference(pooler)],
    }


# ---- configuration ----------------------------------------------------------------------
def settings(pooler: PostgresPooler) -> dict[str, str]:
    """The [pgbouncer] settings of the ConfigMap, the operator's last (they win)."""
    spec = pooler.spec
    owned = {
        "pool_mode": spec.pool_mode,
        # The client's password is checked against the SCRAM verifier auth_query returns; the
        # server login then reuses the client's SCRAM proof, so no password is stored here.
        "auth_type": "scram-sha-256",
        "auth_user": POOLER_USERNAME,
        "auth_query": contract.POOLER_AUTH_QUERY,
        # Clients must use TLS; the pooler's certificate names its Service.
        "client_tls_sslmode": "require",
        # verify-ca, not verify-full: PgBouncer reaches the server through the <cluster>-rw
        # (or -ro) Service, by whatever address a setup routes it (a test's local forward, a
        # mesh, an IP); the CA is the cluster's own private CA, which signs nothing but this
        # cluster's servers, so a certificate it signed is this cluster's server.
        "server_tls_sslmode": "verify-ca",
    }
    return {**DEFAULT_PARAMETERS, **dict(sorted(spec.parameters.items())), **owned}


def ini_text(values: Mapping[str, str]) -> str:
    """A [pgbouncer] section (values were refused by the API if they held a line break)."""
    return "[pgbouncer]\n" + "".join(f"{k} = {v}\n" for k, v in values.items())


def render_config(pooler: PostgresPooler) -> Manifest:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _metadata(pooler, config_map(pooler.metadata.name)),
        "data": {
            contract.POOLER_INI_KEY: ini_text(settings(pooler)),
            contract.POOLER_PAUSED_KEY: "true" if pooler.spec.paused else "false",
        },
    }


def render_tls(pooler: PostgresPooler, data: Mapping[str, str]) -> Manifest:
    """The pooler's certificate and key, the CA clients verify it with (ca.crt) and the one
    it verifies the server with."""
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": _metadata(pooler, tls_secret(pooler.metadata.name)),
        "type": "Opaque",
        "data": {k: encoded(v) for k, v in sorted(data.items())},
    }


def render_auth_secret(cluster: PostgresCluster, password: str) -> Manifest:
    """The cluster's pooler role password: the operator's (the pods read it), never a user's."""
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": child_metadata(cluster, auth_secret(cluster.metadata.name)),
        "type": "kubernetes.io/basic-auth",
        "data": {"username": encoded(POOLER_USERNAME), "password": encoded(password)},
    }


# ---- workload ---------------------------------------------------------------------------
def render_service(pooler: PostgresPooler) -> Manifest:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(pooler, pooler.metadata.name),
        "spec": {
            "type": "ClusterIP",
            "selector": selector_labels(pooler),
            "ports": [
                {
                    "name": contract.POOLER_PORT_NAME,
                    "port": contract.POOLER_PORT,
                    "targetPort": contract.POOLER_PORT_NAME,
                    "protocol": "TCP",
                }
            ],
        },
    }


def _resources(pooler: PostgresPooler) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if pooler.spec.resources.requests:
        out["requests"] = dict(pooler.spec.resources.requests)
    if pooler.spec.resources.limits:
        out["limits"] = dict(pooler.spec.resources.limits)
    return out


def _container(pooler: PostgresPooler, image: str) -> dict[str, Any]:
    env = [
        {"name": contract.POOLER_HOST_ENV, "value": target_service(pooler)},
        {"name": contract.POOLER_TARGET_PORT_ENV, "value": str(contract.POSTGRES_PORT)},
        {"name": contract.POOLER_LISTEN_PORT_ENV, "value": str(contract.POOLER_PORT)},
        {
            "name": contract.POOLER_PASSWORD_ENV,
            "valueFrom": {
                "secretKeyRef": {"name": auth_secret(pooler.spec.cluster), "key": "password"}
            },
        },
    ]
    probe_port = {"port": contract.POOLER_PORT_NAME}
    return {
        "name": contract.POOLER_CONTAINER,
        "image": image,
        "imagePullPolicy": "IfNotPresent",
        "command": list(contract.POOLER_COMMAND),
        "env": env,
        "ports": [
            {
                "name": contract.POOLER_PORT_NAME,
                "containerPort": contract.POOLER_PORT,
                "protocol": "TCP",
            }
        ],
        "readinessProbe": {"tcpSocket": probe_port, "periodSeconds": 2, "failureThreshold": 3},
        "livenessProbe": {"tcpSocket": probe_port, "periodSeconds": 10, "failureThreshold": 6},
        "resources": _resources(pooler),
        "securityContext": restricted_container(),
        "volumeMounts": [
            {"name": "config", "mountPath": contract.POOLER_CONFIG_DIR, "readOnly": True},
            {"name": "tls", "mountPath": contract.POOLER_TLS_DIR, "readOnly": True},
            {"name": "run", "mountPath": contract.POOLER_RUN_DIR},
        ],
    }


def render_deployment(pooler: PostgresPooler, image: str) -> Manifest:
    name = pooler.metadata.name
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _metadata(pooler, name),
        "spec": {
            "replicas": pooler.spec.instances,
            "selector": {"matchLabels": selector_labels(pooler)},
            "template": {
                # Not the cluster label: the pods are no instances of the cluster (whatever
                # lists a cluster's pods by it finds its PostgreSQL pods only); the
                # Deployment's status says how many are ready.
                "metadata": {"labels": pod_labels(pooler)},
                "spec": {
                    # PgBouncer needs no API access.
                    "automountServiceAccountToken": False,
                    "enableServiceLinks": False,
                    "terminationGracePeriodSeconds": 30,
                    # Meets the `restricted` Pod Security Standard.
                    "securityContext": {
                        "runAsNonRoot": True,
                        "runAsUser": contract.POSTGRES_UID,
                        "runAsGroup": contract.POSTGRES_GID,
                        "fsGroup": contract.POSTGRES_GID,
                        "seccompProfile": {"type": "RuntimeDefault"},
                    },
                    "containers": [_container(pooler, image)],
                    "volumes": [
                        {"name": "config", "configMap": {"name": config_map(name)}},
                        {
                            "name": "tls",
                            "secret": {"secretName": tls_secret(name), "defaultMode": 0o440},
                        },
                        {"name": "run", "emptyDir": {"medium": "Memory", "sizeLimit": "8Mi"}},
                    ],
                },
            },
        },
    }


def render_pooler(
    pooler: PostgresPooler, image: str | None, tls: Mapping[str, str] | None
) -> list[Manifest]:
    """The pooler's children, in the order they are best applied (the Deployment last, and
    only with an image and its certificates)."""
    out = [render_config(pooler)]
    if tls is not None:
        out.append(render_tls(pooler, tls))
    out.append(render_service(pooler))
    if image is not None and tls is not None:
        out.append(render_deployment(pooler, image))
    return out
