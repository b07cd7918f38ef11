"""Credentials of a cluster: kept from the existing Secrets, generated once when missing.

Generated from the operating system's CSPRNG (the `secrets` module). Never logged.
"""

from __future__ import annotations

import base64
import secrets

from pgherd.kube import Manifest
from pgherd.render.names import SECRET_KINDS, SecretKind

PASSWORD_BYTES = 24


def generate() -> str:
    # URL-safe so it survives connection URIs and shell quoting unescaped.
    return secrets.token_urlsafe(PASSWORD_BYTES)


def resolve(existing: dict[SecretKind, Manifest | None]) -> dict[SecretKind, str]:
    """The password of each kind: the live Secret's, or a new one when it has none."""
    out: dict[SecretKind, str] = {}
    for kind in SECRET_KINDS:
        secret = existing.get(kind)
        raw = (secret or {}).get("data", {}).get("password")
        out[kind] = base64.b64decode(raw).decode() if raw else generate()
    return out
