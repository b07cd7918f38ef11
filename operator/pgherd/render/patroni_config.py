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
    ttl, loop_wait, retry_timeout = spec.patroni.timing  # the profile's, or set by hand
    config: dict[str, Any] = {
        "ttl": ttl,
        "loop_wait": loop_wait,
        "retry_timeout": retry_timeout,
        "maximum_lag_on_failover": spec.patroni.maximum_lag_on_failover,
        "synchronous_mode": spec.synchronous_mode != "off",
        "synchronous_mode_strict": spec.synchronous_mode == "strict",
        # The primary survives an API-server outage when every member answers it
        # (docs/api-outage.md).
        "failsafe_mode": spec.patroni.failsafe_mode,
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

    Replication comes first so a user rule cannot lock replicas out: over TLS, by the
    replication role's client certificate (no password to leak or rotate). Then, unless
    spec.tls.allowPlainText, every TCP connection without TLS is refused before any user rule
    is read. The final rule asks every other connection for a scram-sha-256 password, so
    nothing is ever let in without one unless a user rule says so.
    """
    tls = cluster.spec.tls
    return [
        "local all all scram-sha-256",
        f"hostssl replication {REPLICATION_USERNAME} all cert",
        *([] if tls.allow_plain_text else ["hostnossl all all all reject"]),
        *cluster.spec.postgresql.pg_hba,
        f"{'host' if tls.allow_plain_text else 'hostssl'} all all all scram-sha-256",
    ]


def tls_parameters(cluster: PostgresCluster) -> dict[str, str]:
    """PostgreSQL's TLS settings: the mounted server certificate, client certificates
    verified against the cluster's CA (replication), the oldest protocol allowed."""
    return {
        "ssl": "on",
        "ssl_cert_file": contract.tls_path(contract.TLS_CERT),
        "ssl_key_file": contract.tls_path(contract.TLS_KEY),
        "ssl_ca_file": contract.tls_path(contract.TLS_CLIENT_CA),
        "ssl_min_protocol_version": cluster.spec.tls.min_protocol_version,
    }


def _peer_tls(*, client_certificate: bool = False) -> dict[str, str]:
    # verify-ca, not verify-full: members reach each other by pod IP, which no cluster-wide
    # certificate can name; the cluster's own CA signs nothing but this cluster's
    # certificates, so a certificate it signed is an instance of this cluster.
    out = {"sslmode": "verify-ca", "sslrootcert": contract.tls_path(contract.TLS_CA)}
    if client_certificate:
        out["sslcert"] = contract.tls_path(contract.TLS_REPLICATION_CERT)
        out["sslkey"] = contract.tls_path(contract.TLS_REPLICATION_KEY)
    return out


def _restapi_files() -> dict[str, str]:
    return {
        "certfile": contract.tls_path(contract.TLS_CERT),
        "keyfile": contract.tls_path(contract.TLS_KEY),
    }


def _ctl_tls() -> dict[str, Any]:
    # Patroni's calls to other members (leader race, switchover checks) verify their
    # certificate against the CA; `insecure` with a client certificate skips only the host
    # name check, as verify-ca does (see _peer_tls).
    return {**_restapi_files(), "cacert": contract.tls_path(contract.TLS_CA), "insecure": True}


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
        "restapi": {
            "listen": f"0.0.0.0:{contract.PATRONI_PORT}",
            **_restapi_files(),
        },
        "ctl": _ctl_tls(),
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
                "superuser": {"username": SUPERUSER_USERNAME, **_peer_tls()},
                "replication": {
                    "username": REPLICATION_USERNAME,
                    **_peer_tls(client_certificate=True),
                },
            },
            "parameters": {
                "unix_socket_directories": contract.SOCKET_DIR,
                **tls_parameters(cluster),
            },
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
