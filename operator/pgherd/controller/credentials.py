"""Credentials of a cluster: generated once, kept true.

The passwords live in the database (as SCRAM verifiers, which cannot be turned back into
passwords) and in the Secrets clients and pods read. If a published Secret is deleted, a new
password would not be the one the database has: logins and Patroni's REST API would break.
So the operator keeps its own copy, the `<cluster>-vault` Secret, and renders the published
Secrets from it: a deleted or hand-edited `<cluster>-app` comes back with the password the
database has. Each copy restores the other: a deleted vault is rebuilt from the published
Secrets (and is built that way for clusters from before it existed).

New passwords come from the operating system's CSPRNG (the `secrets` module), or, once at
creation, from a Secret the spec names (spec.bootstrap.secret / superuserSecret). Never logged.

Rotation (spec.credentials.rotate, a counter per password) goes through the vault too, so that
a crash at any point loses nothing: the new password is first kept in the vault as
`<kind>.next`; then it is set in PostgreSQL, and only after that the vault's `<kind>` and the
published Secret take it, with `<kind>.rotation` (the counter carried out) and
`<kind>.rotated-at`. A pass that finds `<kind>.next` sets the same password again
(idempotent) before finishing, so the database and the Secrets never disagree for longer
than a rotation takes.
"""

from __future__ import annotations

import base64
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from pgherd.render.names import SECRET_KINDS, SecretKind

Manifest = dict[str, Any]
PASSWORD_BYTES = 24


def generate() -> str:
    # URL-safe so it survives connection URIs and shell quoting unescaped.
    return secrets.token_urlsafe(PASSWORD_BYTES)


def _value(secret: Manifest | None, key: str) -> str | None:
    raw = ((secret or {}).get("data") or {}).get(key)
    return base64.b64decode(raw).decode() if raw else None


def kept(vault: Manifest | None, published: Manifest | None, kind: SecretKind) -> str | None:
    """The password the cluster already has for `kind`, if any copy holds it."""
    return _value(vault, kind) or _value(published, "password")


@dataclass(frozen=True)
class Credentials:
    """Each kind's password, and what resolving them found."""

    passwords: dict[SecretKind, str]
    # Kinds whose password was made up although the cluster already had data: every copy was
    # gone, so the database may still hold the old one.
    regenerated: list[SecretKind] = field(default_factory=list)
    # Kinds whose adopted Secret (spec.bootstrap.*) now holds another password than the
    # cluster uses.
    adopted_changed: list[SecretKind] = field(default_factory=list)


def resolve(
    vault: Manifest | None,
    published: Mapping[SecretKind, Manifest | None],
    adopted: Mapping[SecretKind, str],
    *,
    has_data: bool,
    generator: Callable[[], str] = generate,
) -> Credentials:
    """The password of each kind: the vault's; else an adopted Secret's (at creation); else
    the published Secret's (a cluster from before the vault); else a new one.

    `published` must hold only Secrets the cluster owns: a foreign Secret with a child's name
    is never a source of credentials.
    """
    out: dict[SecretKind, str] = {}
    regenerated: list[SecretKind] = []
    changed: list[SecretKind] = []
    for kind in SECRET_KINDS:
        have = kept(vault, published.get(kind), kind)
        if have is not None:
            out[kind] = have
            if kind in adopted and adopted[kind] != have:
                changed.append(kind)
        elif kind in adopted:
            out[kind] = adopted[kind]
        else:
            out[kind] = generator()
            if has_data:
                regenerated.append(kind)
    return Credentials(out, regenerated, changed)


@dataclass(frozen=True)
class Rotation:
    """Where the rotation of one password stands, as the vault records it."""

    done: int = 0  # the spec.credentials.rotate counter last carried out
    rotated_at: datetime | None = None
    pending: str | None = field(default=None, repr=False)  # the next password, once chosen


def pending_key(kind: SecretKind) -> str:
    return f"{kind}.next"


def rotation_keys(kind: SecretKind) -> tuple[str, str]:
    return f"{kind}.rotation", f"{kind}.rotated-at"


def rotation(vault: Manifest | None, kind: SecretKind) -> Rotation:
    counter_key, at_key = rotation_keys(kind)
    counter, at = _value(vault, counter_key), _value(vault, at_key)
    return Rotation(
        done=int(counter) if counter and counter.isdigit() else 0,
        rotated_at=datetime.fromisoformat(at) if at else None,
        pending=_value(vault, pending_key(kind)),
    )


def rotation_record(kind: SecretKind, state: Rotation) -> dict[str, str]:
    """The vault keys (beside the passwords) that keep a rotation's state."""
    counter_key, at_key = rotation_keys(kind)
    out: dict[str, str] = {}
    if state.done:
        out[counter_key] = str(state.done)
    if state.rotated_at is not None:
        out[at_key] = state.rotated_at.isoformat()
    if state.pending is not None:
        out[pending_key(kind)] = state.pending
    return out
