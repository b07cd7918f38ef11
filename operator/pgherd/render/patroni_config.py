"""Patroni's configuration: the file in ConfigMap `<cluster>-patroni` and the dynamic (DCS) part.

The file is identical for every instance and holds no secret: per-pod values (name, addresses,
data directory) reach Patroni as PATRONI_* environment variables that `pgherd instance`
derives from the pod's environment, and passwords as PATRONI_* variables from the Secrets.

`dynamic_config` is what Patroni keeps in its DCS (the <cluster>-config ConfigMap); it seeds
`bootstrap.dcs`, and the operator diffs and patches it later through Patroni's REST API,
because Patroni ignores bootstrap.dcs once the cluster is initialised.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from pgherd import contract
from pgherd.api.v1alpha1 import REPLICATION_USERNAME, SUPERUSER_USERNAME, PostgresCluster
from pgherd.render import backup as backup_render
from pgherd.render import labels, names, yaml_text
from pgherd.render.ownership import Manifest, child_metadata

CONFIG_HASH_ANNOTATION = "pgherd.io/patroni-config-hash"


def dynamic_config(cluster: PostgresCluster) -> dict[str, Any]:
    """Patroni's dynamic configuration as the spec wants it."""
    spec = cluster.spec
    config: dict[str, Any] = {
        "ttl": spec.patroni.ttl,
        "loop_wait": spec.patroni.loop_wait,
        "retry_timeout": spec.patroni.retry_timeout,
        "maximum_lag_on_failover": spec.patroni.maximum_lag_on_failover,
        "synchronous_mode": spec.synchronous_mode != "off",
        "synchronous_mode_strict": spec.synchronous_mode == "strict",
        "postgresql": {
            "use_pg_rewind": True,
            "use_slots": True,
            # Backups: archive_mode/archive_command join the user's parameters.
            "parameters": backup_render.parameters(cluster),
        },
    }
    if (recovery_conf := backup_render.recovery_conf(cluster)) is not None:
        config["postgresql"]["recovery_conf"] = recovery_conf
    return config


def pg_hba(cluster: PostgresCluster) -> list[str]:
    """pg_hba.conf lines: the operator's rules around the user's.

    Replication comes first so a user rule cannot lock replicas out; the final rule asks every
    other connection for a scram-sha-256 password, so nothing is ever let in without one
    unless a user rule says so.
    """
    return [
        "local all all scram-sha-256",
        f"host replication {REPLICATION_USERNAME} all scram-sha-256",
        *cluster.spec.postgresql.pg_hba,
        "host all all all scram-sha-256",
    ]


def patroni_config(cluster: PostgresCluster) -> dict[str, Any]:
    """Contents of patroni.yaml."""
    name = cluster.metadata.name
    return {
        "scope": name,
        "kubernetes": {
            "namespace": cluster.metadata.namespace,
            "labels": labels.selector_labels(name),
            "scope_label": labels.CLUSTER,
            "role_label": labels.ROLE,
            "leader_label_value": labels.ROLE_PRIMARY,
            "follower_label_value": labels.ROLE_REPLICA,
            "standby_leader_label_value": labels.ROLE_PRIMARY,
            "use_endpoints": False,
            # Bypassing needs read access to Endpoints in `default`, outside the cluster's Role.
            "bypass_api_service": False,
        },
        "restapi": {"listen": f"0.0.0.0:{contract.PATRONI_PORT}"},
        "bootstrap": {
            "dcs": dynamic_config(cluster),
            "initdb": [{"encoding": "UTF8"}, "data-checksums"],
            # Backups: a restore replaces initdb with the pgherd_restore method.
            **backup_render.bootstrap(cluster),
        },
        "postgresql": {
            "listen": f"*:{contract.POSTGRES_PORT}",
            "use_unix_socket": True,
            "pgpass": contract.PGPASS,
            "authentication": {
                "superuser": {"username": SUPERUSER_USERNAME},
                "replication": {"username": REPLICATION_USERNAME},
            },
            "parameters": {"unix_socket_directories": contract.SOCKET_DIR},
            "pg_hba": pg_hba(cluster),
            "basebackup": [{"checkpoint": "fast"}],
        },
        # Containers have no /dev/watchdog; Patroni would only warn about it on every start.
        "watchdog": {"mode": "off"},
    }


def render_patroni_configmap(cluster: PostgresCluster) -> Manifest:
    """ConfigMap `<cluster>-patroni` with key patroni.yaml."""
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": child_metadata(cluster, names.patroni_configmap(cluster.metadata.name)),
        "data": {contract.CONFIG_KEY: yaml_text.dump(patroni_config(cluster))},
    }


def config_hash(cluster: PostgresCluster) -> str:
    """sha256 of the static part of patroni.yaml; put on the pod template so that a change
    Patroni reads only at start rolls the pods.

    bootstrap.dcs is left out: Patroni reads it only when the cluster is first created, and
    the operator applies later changes to the dynamic configuration through Patroni, with a
    reload or a restart as each parameter needs, so a parameter change never rolls pods.
    """
    static = {k: v for k, v in patroni_config(cluster).items() if k != "bootstrap"}
    canonical = json.dumps(static, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()
