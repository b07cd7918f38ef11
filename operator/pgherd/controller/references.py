"""Secrets a PostgresCluster's spec names, and whether the cluster may use them.

The operator can read every Secret in the namespaces it serves; a user who may only edit
PostgresClusters must not borrow that to read a Secret they cannot (a confused deputy):
naming `team-secret` as backup credentials with an endpoint of their own would send its
value to them. So a Secret the spec references must opt in, which only someone who may
change that Secret can do:

- label `pgherd.io/use: "true"`: any PostgresCluster in the namespace may use it;
- with annotation `pgherd.io/allowed-clusters: "a,b"` as well: only those clusters.

Anything else is refused with a condition naming the Secret and what to add, and no pod
is given it. Endpoints stay the user's to choose; the opt-in is what protects. Only Secrets
that opted in are ever read (the operator caches them by that label); of any other, the
snapshot knows only whether it exists. Pure.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Any

from pgherd.api.v1alpha1 import SUPERUSER_USERNAME, ObjectStoreSpec, PostgresCluster
from pgherd.controller import conditions as c
from pgherd.controller.conditions import Problem

Manifest = dict[str, Any]
USE_LABEL = "pgherd.io/use"
ALLOWED_ANNOTATION = "pgherd.io/allowed-clusters"
BASIC_AUTH = "kubernetes.io/basic-auth"


@dataclass(frozen=True)
class Reference:
    """One Secret the spec names, the keys it must hold, and from which field."""

    field: str
    secret: str
    keys: tuple[str, ...]
    # For credentials adopted at bootstrap: a basic-auth Secret of exactly this user.
    username: str | None = None


def _store_refs(field: str, store: ObjectStoreSpec) -> list[Reference]:
    creds = store.credentials
    refs = [
        Reference(f"{field}.credentials.accessKeyId", creds.access_key_id.name,
                  (creds.access_key_id.key,)),
        Reference(f"{field}.credentials.secretAccessKey", creds.secret_access_key.name,
                  (creds.secret_access_key.key,)),
    ]  # fmt: skip
    if creds.session_token is not None:
        refs.append(
            Reference(
                f"{field}.credentials.sessionToken",
                creds.session_token.name,
                (creds.session_token.key,),
            )
        )
    if store.ca_secret is not None:
        refs.append(Reference(f"{field}.caSecret", store.ca_secret.name, (store.ca_secret.key,)))
    return refs


def references(
    cluster: PostgresCluster, *, restore_store: ObjectStoreSpec | None = None
) -> list[Reference]:
    """Every Secret the spec names; restore_store: the store a restore reads (the source
    cluster's, for a restore from a PostgresBackup), when known."""
    spec = cluster.spec
    refs: list[Reference] = []
    if spec.backup is not None:
        refs += _store_refs("spec.backup.objectStore", spec.backup.object_store)
    recovery = spec.bootstrap.recovery
    source = restore_store or (recovery.source.object_store if recovery else None)
    if source is not None:
        refs += _store_refs("spec.bootstrap.recovery.source.objectStore", source)
    if spec.tls.server_secret is not None:
        refs.append(
            Reference("spec.tls.serverSecret", spec.tls.server_secret.name, ("tls.crt", "tls.key"))
        )
    if spec.tls.ca_secret is not None:
        refs.append(Reference("spec.tls.caSecret", spec.tls.ca_secret.name, ("ca.crt",)))
    adopted = (
        ("spec.bootstrap.secret", spec.bootstrap.secret, spec.bootstrap.owner),
        ("spec.bootstrap.superuserSecret", spec.bootstrap.superuser_secret, SUPERUSER_USERNAME),
    )
    refs += [
        Reference(field, ref.name, ("username", "password"), username=username)
        for field, ref, username in adopted
        if ref is not None
    ]
    return refs


def permitted(cluster_name: str, secret: Manifest) -> bool:
    """Whether a Secret opted in to being used by this cluster."""
    meta = secret.get("metadata") or {}
    if (meta.get("labels") or {}).get(USE_LABEL) != "true":
        return False
    allowed = (meta.get("annotations") or {}).get(ALLOWED_ANNOTATION)
    if allowed is None:
        return True
    names = {n.strip() for n in allowed.split(",")}
    return "*" in names or cluster_name in names


def decoded(secret: Manifest, key: str) -> str | None:
    raw = (secret.get("data") or {}).get(key)
    return base64.b64decode(raw).decode(errors="replace") if raw else None


def check(
    cluster_name: str, ref: Reference, secret: Manifest | None, *, exists: bool = False
) -> Problem | None:
    """Why the cluster may not use the referenced Secret, or None when it may. `secret` is
    the opted-in Secret of that name if there is one; exists: a Secret of that name that
    has not opted in exists (only its metadata was read)."""
    if secret is None and not exists:
        return Problem(
            c.SECRET_NOT_FOUND,
            f"{ref.field}: Secret {ref.secret!r} does not exist; create it (with label "
            f'{USE_LABEL}: "true")',
        )
    if secret is None or not permitted(cluster_name, secret):
        return Problem(
            c.SECRET_NOT_PERMITTED,
            f"{ref.field}: Secret {ref.secret!r} has not opted in to this cluster: whoever "
            f'owns it must label it {USE_LABEL}: "true" (and list {cluster_name} in the '
            f"annotation {ALLOWED_ANNOTATION} if that is set); pgherd does not use it until "
            "then",
        )
    missing = [k for k in ref.keys if not decoded(secret, k)]
    if missing:
        return Problem(
            c.SECRET_INVALID,
            f"{ref.field}: Secret {ref.secret!r} has no (or an empty) {', '.join(missing)}",
        )
    if ref.username is not None:
        if secret.get("type") != BASIC_AUTH:
            return Problem(
                c.SECRET_INVALID,
                f"{ref.field}: Secret {ref.secret!r} must be of type {BASIC_AUTH}",
            )
        if decoded(secret, "username") != ref.username:
            return Problem(
                c.SECRET_INVALID,
                f"{ref.field}: Secret {ref.secret!r} must have username {ref.username!r}",
            )
    return None
