"""StatefulSet `<cluster>`: the instance pods, their volumes and the pod security settings.

updateStrategy is OnDelete because the operator rolls pods itself, in the order Patroni
needs (replicas first, then a switchover, then the old primary); a RollingUpdate would
restart the primary whenever its ordinal came up.
"""

from __future__ import annotations

from typing import Any

from pgherd import contract
from pgherd.api.v1alpha1 import DEFAULT_IMAGE, RESTARTED_AT_ANNOTATION, PostgresCluster
from pgherd.render import backup as backup_render
from pgherd.render import labels, names
from pgherd.render.names import SecretKind
from pgherd.render.ownership import Manifest, child_metadata
from pgherd.render.patroni_config import (
    CONFIG_HASH_ANNOTATION,
    config_hash,
)
from pgherd.render.scheduling import pod_scheduling

# Room for a fast shutdown with its final checkpoint before the kubelet kills postgres.
TERMINATION_GRACE_SECONDS = 60


def _field_env(name: str, field_path: str) -> dict[str, Any]:
    return {"name": name, "valueFrom": {"fieldRef": {"fieldPath": field_path}}}


def secret_env(name: str, cluster: str, kind: SecretKind, key: str) -> dict[str, Any]:
    """An environment variable from one key of the cluster's Secret of this kind."""
    return {
        "name": name,
        "valueFrom": {"secretKeyRef": {"name": names.secret(cluster, kind), "key": key}},
    }


def _env(cluster: PostgresCluster) -> list[dict[str, Any]]:
    # `pgherd instance` turns these into Patroni's per-pod PATRONI_* settings (name, listen
    # and connect addresses, data directory); credentials go to Patroni as they are.
    name = cluster.metadata.name
    return [
        _field_env("POD_NAME", "metadata.name"),
        _field_env("POD_NAMESPACE", "metadata.namespace"),
        _field_env("POD_IP", "status.podIP"),
        {"name": "PGHERD_CLUSTER", "value": name},
        # Which of the image's majors to run (pgherd.operand.instance.find_bin_dir).
        {"name": contract.POSTGRES_MAJOR_ENV, "value": str(cluster.spec.postgres_version)},
        {"name": "PGHERD_PG_PORT", "value": str(contract.POSTGRES_PORT)},
        {"name": "PGHERD_API_PORT", "value": str(contract.PATRONI_PORT)},
        {"name": contract.METRICS_PORT_ENV, "value": str(contract.METRICS_PORT)},
        {"name": contract.METRICS_QUERIES_ENV, "value": contract.METRICS_QUERIES_DIR},
        {"name": "PGDATA", "value": contract.PGDATA},
        {"name": "PGHERD_CONFIG", "value": contract.CONFIG_FILE},
        secret_env("PATRONI_SUPERUSER_USERNAME", name, "superuser", "username"),
        # The password is a file (see contract.SUPERUSER_MOUNT): rotations reach it live.
        {"name": "PGHERD_SUPERUSER_PASSWORD_FILE", "value": contract.SUPERUSER_PASSWORD_FILE},
        secret_env("PATRONI_REPLICATION_USERNAME", name, "replication", "username"),
        secret_env("PATRONI_REPLICATION_PASSWORD", name, "replication", "password"),
        # Without these Patroni's unsafe endpoints (switchover, restart, config) are open to
        # anything that reaches the pod.
        secret_env("PATRONI_RESTAPI_USERNAME", name, "restapi", "username"),
        secret_env("PATRONI_RESTAPI_PASSWORD", name, "restapi", "password"),
        {"name": "PGHERD_APP_DATABASE", "value": cluster.spec.bootstrap.database},
        secret_env("PGHERD_APP_USER", name, "app", "username"),
        secret_env("PGHERD_APP_PASSWORD", name, "app", "password"),
        # Backups: object store location and credentials (from the user's Secrets).
        *backup_render.env(cluster),
    ]


def _http_probe(path: str, *, period: int, failures: int) -> dict[str, Any]:
    return {
        # Patroni serves its REST API over TLS; kubelets do not verify probe certificates.
        "httpGet": {"path": path, "port": contract.PATRONI_PORT_NAME, "scheme": "HTTPS"},
        "periodSeconds": period,
        "timeoutSeconds": 5,
        "failureThreshold": failures,
    }


def container_resources(cluster: PostgresCluster) -> dict[str, Any]:
    """spec.resources as a container's resources (also the upgrade Jobs')."""
    resources = cluster.spec.resources
    out: dict[str, Any] = {}
    if resources.requests:
        out["requests"] = dict(resources.requests)
    if resources.limits:
        out["limits"] = dict(resources.limits)
    return out


def restricted_container() -> dict[str, Any]:
    """A container's securityContext under the `restricted` Pod Security Standard, with a
    read-only root filesystem (also the PgBouncer pods', pgherd.render.pooler)."""
    return {
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
    }


def _container(cluster: PostgresCluster, image: str) -> dict[str, Any]:
    return {
        "name": contract.CONTAINER,
        "image": image,
        "imagePullPolicy": "IfNotPresent",
        "command": list(contract.COMMAND),
        "env": _env(cluster),
        "ports": [
            {
                "name": contract.POSTGRES_PORT_NAME,
                "containerPort": contract.POSTGRES_PORT,
                "protocol": "TCP",
            },
            {
                "name": contract.PATRONI_PORT_NAME,
                "containerPort": contract.PATRONI_PORT,
                "protocol": "TCP",
            },
            {
                "name": contract.METRICS_PORT_NAME,
                "containerPort": contract.METRICS_PORT,
                "protocol": "TCP",
            },
        ],
        "readinessProbe": _http_probe("/readiness", period=5, failures=3),
        "livenessProbe": _http_probe("/liveness", period=10, failures=6),
        # initdb or a base backup of a large primary takes a while before Patroni's loop runs.
        "startupProbe": _http_probe("/liveness", period=5, failures=120),
        "resources": container_resources(cluster),
        "securityContext": restricted_container(),
        "volumeMounts": [
            {"name": contract.DATA_VOLUME, "mountPath": contract.DATA_MOUNT},
            {"name": "config", "mountPath": contract.CONFIG_DIR, "readOnly": True},
            {"name": contract.TLS_VOLUME, "mountPath": contract.TLS_MOUNT, "readOnly": True},
            {"name": contract.TLS_PRIVATE_VOLUME, "mountPath": contract.TLS_DIR},
            {
                "name": contract.SUPERUSER_VOLUME,
                "mountPath": contract.SUPERUSER_MOUNT,
                "readOnly": True,
            },
            {"name": "tmp", "mountPath": contract.TMP_DIR},
            {"name": "run", "mountPath": contract.SOCKET_DIR},
            {"name": "shm", "mountPath": contract.SHM_DIR},
            # Backups: CA bundles of the object stores, when given.
            *backup_render.volumes(cluster)[1],
            *_metrics_queries(cluster)[1],
        ],
    }


def _metrics_queries(
    cluster: PostgresCluster,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(volumes, volumeMounts): spec.monitoring.customQueries as files <configmap>-<key> in
    one directory, which a projected volume can make of several ConfigMaps."""
    monitoring = cluster.spec.monitoring
    refs = monitoring.custom_queries if monitoring is not None else []
    if not refs:
        return [], []
    sources = [
        {
            "configMap": {
                "name": ref.name,
                "items": [{"key": ref.key, "path": f"{ref.name}-{ref.key}"}],
                # Optional: a missing ConfigMap or key must not keep the database from
                # starting (a required one would hold the pod in ContainerCreating); only
                # those metrics are missing, and the file appears once the ConfigMap does.
                "optional": True,
            }
        }
        for ref in refs
    ]
    volume = {"name": contract.METRICS_QUERIES_VOLUME, "projected": {"sources": sources}}
    mount = {
        "name": contract.METRICS_QUERIES_VOLUME,
        "mountPath": contract.METRICS_QUERIES_DIR,
        "readOnly": True,
    }
    return [volume], [mount]


def _volumes(cluster: PostgresCluster) -> list[dict[str, Any]]:
    return [
        {
            "name": "config",
            "configMap": {"name": names.patroni_configmap(cluster.metadata.name)},
        },
        {
            "name": contract.TLS_VOLUME,
            # Readable by the pod's group only; `pgherd instance` makes private copies.
            "secret": {"secretName": names.tls_secret(cluster.metadata.name), "defaultMode": 0o440},
        },
        {"name": contract.TLS_PRIVATE_VOLUME, "emptyDir": {"medium": "Memory", "sizeLimit": "1Mi"}},
        {
            "name": contract.SUPERUSER_VOLUME,
            "secret": {
                "secretName": names.secret(cluster.metadata.name, "superuser"),
                "items": [{"key": "password", "path": "password"}],
                "defaultMode": 0o440,
            },
        },
        {"name": "tmp", "emptyDir": {}},
        {"name": "run", "emptyDir": {}},
        # The container runtime's 64Mi /dev/shm is too small for parallel query workers.
        {"name": "shm", "emptyDir": {"medium": "Memory"}},
        # Backups: CA bundles of the object stores, when given.
        *backup_render.volumes(cluster)[0],
        *_metrics_queries(cluster)[0],
    ]


def pod_security_context() -> dict[str, Any]:
    """The instance pods' securityContext (also the upgrade Jobs'): uid and gid 999, the
    volumes' group; meets the `restricted` Pod Security Standard."""
    return {
        "runAsNonRoot": True,
        "runAsUser": contract.POSTGRES_UID,
        "runAsGroup": contract.POSTGRES_GID,
        "fsGroup": contract.POSTGRES_GID,
        "fsGroupChangePolicy": "OnRootMismatch",
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def _pod_template(cluster: PostgresCluster, image: str) -> dict[str, Any]:
    name = cluster.metadata.name
    annotations = {CONFIG_HASH_ANNOTATION: config_hash(cluster)}
    restarted_at = cluster.metadata.annotations.get(RESTARTED_AT_ANNOTATION)
    if restarted_at:
        annotations[RESTARTED_AT_ANNOTATION] = restarted_at
    return {
        "metadata": {
            "labels": labels.common_labels(name),
            "annotations": annotations,
        },
        "spec": {
            "serviceAccountName": names.instance_account(name),
            "automountServiceAccountToken": True,
            # Service environment variables are useless here, and one named like a Patroni
            # setting (a cluster called "patroni" gives PATRONI_RW_PORT) would confuse it.
            "enableServiceLinks": False,
            "terminationGracePeriodSeconds": TERMINATION_GRACE_SECONDS,
            "securityContext": pod_security_context(),
            "containers": [_container(cluster, image)],
            "volumes": _volumes(cluster),
            **pod_scheduling(cluster),
        },
    }


def data_claim_spec(cluster: PostgresCluster, size: str | None = None) -> dict[str, Any]:
    """The spec of a claim like the data volumes' (their storage class; `size`, by default
    spec.storage.size): also the upgrade preflight's scratch volume."""
    storage = cluster.spec.storage
    spec: dict[str, Any] = {
        "accessModes": ["ReadWriteOnce"],
        "resources": {"requests": {"storage": size or storage.size}},
    }
    if storage.storage_class_name is not None:
        spec["storageClassName"] = storage.storage_class_name
    return spec


def _volume_claim_template(cluster: PostgresCluster) -> dict[str, Any]:
    metadata = {"name": contract.DATA_VOLUME, "labels": labels.common_labels(cluster.metadata.name)}
    return {"metadata": metadata, "spec": data_claim_spec(cluster)}


def _pvc_retention(cluster: PostgresCluster) -> dict[str, str]:
    # Scaling down always keeps the volume: scaling back up then reuses the replica's data.
    when_deleted = "Delete" if cluster.spec.storage.reclaim_policy == "Delete" else "Retain"
    return {"whenDeleted": when_deleted, "whenScaled": "Retain"}


def render_statefulset(
    cluster: PostgresCluster, *, image: str | None = None, replicas: int | None = None
) -> Manifest:
    """StatefulSet `<cluster>` running the instances (of `image`, by default spec.image or the
    built-in default; `replicas` pods, by default spec.instances)."""
    name = cluster.metadata.name
    image = image or cluster.spec.image or DEFAULT_IMAGE
    return {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": child_metadata(cluster, names.statefulset(name)),
        "spec": {
            "serviceName": names.service_headless(name),
            "replicas": cluster.spec.instances if replicas is None else replicas,
            "podManagementPolicy": "Parallel",
            "updateStrategy": {"type": "OnDelete"},
            "selector": {"matchLabels": labels.selector_labels(name)},
            "template": _pod_template(cluster, image),
            "volumeClaimTemplates": [_volume_claim_template(cluster)],
            "persistentVolumeClaimRetentionPolicy": _pvc_retention(cluster),
        },
    }
