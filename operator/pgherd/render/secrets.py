"""Credential Secrets of a cluster, from passwords passed in (never generated here).

All four are `kubernetes.io/basic-auth` Secrets (keys `username` and `password`): the
PostgreSQL superuser, replication and application roles, and the account of Patroni's REST
API. The app Secret adds what a client needs to connect: host, port, dbname, user and a URI. Data is
base64-encoded in `data`, not `stringData`, so that server-side apply sees a stable value.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from urllib.parse import quote

from pgherd.api.v1alpha1 import REPLICATION_USERNAME, SUPERUSER_USERNAME, PostgresCluster
from pgherd.contract import POSTGRES_PORT
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


def _app_connection(cluster: PostgresCluster, username: str, password: str) -> dict[str, str]:
    host = names.service_host(names.service_rw(cluster.metadata.name), cluster.metadata.namespace)
    dbname = cluster.spec.bootstrap.database
    userinfo = f"{quote(username, safe='')}:{quote(password, safe='')}"
    return {
        "host": host,
        "port": str(POSTGRES_PORT),
        "dbname": dbname,
        "user": username,
        "uri": f"postgresql://{userinfo}@{host}:{POSTGRES_PORT}/{quote(dbname, safe='')}",
    }


def render_secret(
    cluster: PostgresCluster, kind: SecretKind, username: str, password: str
) -> Manifest:
    """Secret `<cluster>-<kind>` holding `username` and `password`."""
    if kind not in SECRET_KINDS:
        raise ValueError(f"unknown secret kind {kind!r}")
    if not username or not password:
        raise ValueError(f"{kind} secret needs a username and a password")
    values = {"username": username, "password": password}
    if kind == "app":
        values |= _app_connection(cluster, username, password)
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


def render_vault(cluster: PostgresCluster, passwords: Mapping[SecretKind, str]) -> Manifest:
    """Secret `<cluster>-vault`: the operator's own copy of every password (pgherd.passwords),
    which the published Secrets are rendered from. Not for clients."""
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": _credential_metadata(cluster, names.vault(cluster.metadata.name)),
        "type": "Opaque",
        "data": {
            kind: base64.b64encode(passwords[kind].encode()).decode("ascii")
            for kind in SECRET_KINDS
        },
    }


def render_secrets(cluster: PostgresCluster, passwords: Mapping[SecretKind, str]) -> list[Manifest]:
    """The vault, then one Secret per kind in SECRET_KINDS; `passwords` must hold them all."""
    missing = [kind for kind in SECRET_KINDS if kind not in passwords]
    if missing:
        raise ValueError(f"passwords missing for {', '.join(missing)}")
    return [
        render_vault(cluster, passwords),
        *(
            render_secret(cluster, kind, username_for(cluster, kind), passwords[kind])
            for kind in SECRET_KINDS
        ),
    ]
