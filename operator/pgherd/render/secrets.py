"""Credential and TLS Secrets of a cluster, from passwords and certificates passed in (never
made here).

The four credential Secrets are `kubernetes.io/basic-auth` (keys `username` and `password`):
the PostgreSQL superuser, replication and application roles, and the account of Patroni's
REST API. The app Secret adds what a client needs to connect, verifying the server: host,
port, dbname, user, sslmode (verify-full), the CA bundle (ca.crt) and a URI that asks for
verify-full (point sslrootcert / PGSSLROOTCERT at the mounted ca.crt). `<cluster>-ca` holds
the cluster's CA (operator only) and `<cluster>-tls` (kubernetes.io/tls) what the instances
mount. Data is base64-encoded in `data`, not `stringData`, so that server-side apply sees a
stable value.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from urllib.parse import quote

from pgherd.api.v1alpha1 import REPLICATION_USERNAME, SUPERUSER_USERNAME, PostgresCluster
from pgherd.contract import POSTGRES_PORT, TLS_CA
from pgherd.render import names
from pgherd.render.names import SECRET_KINDS, SecretKind
from pgherd.render.ownership import Manifest, child_metadata


def username_for(cluster: PostgresCluster, kind: SecretKind) -> str:
    """The PostgreSQL role (or REST API account) a Secret holds the credentials of."""
    if kind == "restapi":
        return names.RESTAPI_USERNAME
    if kind == "superuser":
        return SUPERUSER_USERNAME
    if kind == "replication":
        return REPLICATION_USERNAME
    return cluster.spec.bootstrap.owner


SSLMODE = "verify-full"


def _app_connection(
    cluster: PostgresCluster, username: str, password: str, server_trust: str | None
) -> dict[str, str]:
    host = names.service_host(names.service_rw(cluster.metadata.name), cluster.metadata.namespace)
    dbname = cluster.spec.bootstrap.database
    userinfo = f"{quote(username, safe='')}:{quote(password, safe='')}"
    uri = f"postgresql://{userinfo}@{host}:{POSTGRES_PORT}/{quote(dbname, safe='')}"
    out = {"host": host, "port": str(POSTGRES_PORT), "dbname": dbname, "user": username}
    if server_trust is None:
        return out | {"uri": uri}
    return out | {"uri": f"{uri}?sslmode={SSLMODE}", "sslmode": SSLMODE, TLS_CA: server_trust}


def render_secret(
    cluster: PostgresCluster,
    kind: SecretKind,
    username: str,
    password: str,
    server_trust: str | None = None,
) -> Manifest:
    """Secret `<cluster>-<kind>` holding `username` and `password` (and, for the app Secret,
    how to connect; server_trust: the CA bundle clients verify the server with)."""
    if kind not in SECRET_KINDS:
        raise ValueError(f"unknown secret kind {kind!r}")
    if not username or not password:
        raise ValueError(f"{kind} secret needs a username and a password")
    values = {"username": username, "password": password}
    if kind == "app":
        values |= _app_connection(cluster, username, password, server_trust)
    metadata = _credential_metadata(cluster, names.secret(cluster.metadata.name, kind))
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": metadata,
        "type": "kubernetes.io/basic-auth",
        "data": {k: base64.b64encode(v.encode()).decode("ascii") for k, v in values.items()},
    }


def _credential_metadata(cluster: PostgresCluster, name: str) -> dict[str, object]:
    metadata = child_metadata(cluster, name)
    if cluster.spec.storage.reclaim_policy == "Retain":
        # Retained volumes hold these roles' password hashes; the credentials must outlive
        # the cluster with them, so that a cluster re-created on those volumes can log in.
        del metadata["ownerReferences"]
    return metadata


def render_vault(
    cluster: PostgresCluster,
    passwords: Mapping[SecretKind, str],
    extra: Mapping[str, str] | None = None,
) -> Manifest:
    """Secret `<cluster>-vault`: the operator's own copy of every password, which the
    published Secrets are rendered from, and (extra) the state of password rotations
    (pgherd.controller.credentials). Not for clients."""
    values = {kind: passwords[kind] for kind in SECRET_KINDS} | dict(extra or {})
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": _credential_metadata(cluster, names.vault(cluster.metadata.name)),
        "type": "Opaque",
        "data": {k: base64.b64encode(v.encode()).decode("ascii") for k, v in values.items()},
    }


def render_secrets(
    cluster: PostgresCluster,
    passwords: Mapping[SecretKind, str],
    server_trust: str | None = None,
    vault_extra: Mapping[str, str] | None = None,
) -> list[Manifest]:
    """The vault, then one Secret per kind in SECRET_KINDS; `passwords` must hold them all."""
    missing = [kind for kind in SECRET_KINDS if kind not in passwords]
    if missing:
        raise ValueError(f"passwords missing for {', '.join(missing)}")
    return [
        render_vault(cluster, passwords, vault_extra),
        *(
            render_secret(cluster, kind, username_for(cluster, kind), passwords[kind], server_trust)
            for kind in SECRET_KINDS
        ),
    ]


def _encoded(values: Mapping[str, str]) -> dict[str, str]:
    return {k: base64.b64encode(v.encode()).decode("ascii") for k, v in sorted(values.items())}


def render_tls_secrets(
    cluster: PostgresCluster, ca: Mapping[str, str], tls: Mapping[str, str]
) -> list[Manifest]:
    """`<cluster>-ca` (the CA with its key, for the operator) and `<cluster>-tls` (what the
    instances mount: certificates, their keys, the CA bundles)."""
    name = cluster.metadata.name
    return [
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": child_metadata(cluster, names.ca_secret(name)),
            "type": "Opaque",
            "data": _encoded(ca),
        },
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": child_metadata(cluster, names.tls_secret(name)),
            "type": "kubernetes.io/tls",
            "data": _encoded(tls),
        },
    ]
