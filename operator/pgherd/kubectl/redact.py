"""What the support report may contain, pure: Secrets reduced to their names and keys, values
that look like passwords replaced, and the cluster's actual secret values scrubbed from any
text (a password that leaked into an event message or a log line included)."""

from __future__ import annotations

import base64
import re
from collections.abc import Iterable
from typing import Any

Obj = dict[str, Any]
REDACTED = "REDACTED"
# Names of environment variables, keys and annotations whose values are credentials.
SENSITIVE_NAME = re.compile(r"pass(word|wd|phrase)?|secret|token|credential|private|api_?key",
                            re.IGNORECASE)  # fmt: skip
# password: x / password=x / "password": "x" inside free text (YAML, conninfo, JSON).
_INLINE = re.compile(
    r"""(?P<key>["']?\b\w*(?:password|passwd|secret|token)\w*["']?\s*[:=]\s*)"""
    r"""(?:(?P<quote>["'])[^"'\n]*(?P=quote)|[^\s"',;}&]+)""",
    re.IGNORECASE,
)
# postgresql://user:password@host, and any other scheme with userinfo.
_USERINFO = re.compile(r"(?P<prefix>[a-z][a-z0-9+.-]*://[^:/@\s]+:)(?P<password>[^@\s]+)(?=@)",
                       re.IGNORECASE)  # fmt: skip
# Names that mention a credential yet hold where it is, not what it is (secretName: x-tls,
# PGHERD_SUPERUSER_PASSWORD_FILE: /etc/...).
_REFERENCE_NAME = re.compile(r"(name|ref|path|file|dir|mount|kind|type)$", re.IGNORECASE)
# Keys of the cluster's Secrets that hold no secret: scrubbing a user name such as "postgres"
# would blank it out of every manifest and log line. Certificates (*.crt) are public too.
PUBLIC_KEYS = frozenset({"username", "user", "dbname", "host", "port", "sslmode"})
# Shorter values (a user name such as "app", "5432") would scrub ordinary words.
MIN_SCRUB_LENGTH = 8


def sensitive(name: str) -> bool:
    """Whether a key or variable of this name holds a credential."""
    return bool(SENSITIVE_NAME.search(name)) and not _REFERENCE_NAME.search(name)


def redact_text(text: str) -> str:
    """Passwords written inline or in URIs replaced."""
    text = _USERINFO.sub(lambda m: m["prefix"] + REDACTED, text)
    return _INLINE.sub(lambda m: m["key"] + (m["quote"] or "") + REDACTED + (m["quote"] or ""),
                       text)  # fmt: skip


def secret_summary(secret: Obj) -> Obj:
    """A Secret as the report shows it: identity, type and key names, never data."""
    meta = secret.get("metadata") or {}
    keys = sorted({*(secret.get("data") or {}), *(secret.get("stringData") or {})})
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            k: meta[k]
            for k in ("name", "namespace", "uid", "labels", "creationTimestamp", "ownerReferences")
            if k in meta
        },
        "type": secret.get("type"),
        "keys": keys,
    }


def _public(key: str) -> bool:
    return key in PUBLIC_KEYS or key.endswith(".crt")


def secret_values(secrets: Iterable[Obj]) -> set[str]:
    """The decoded values of Secrets to scrub: all but those of public keys (user names,
    where to connect, certificates), and long enough to scrub safely."""
    out: set[str] = set()
    for secret in secrets:
        pairs = [(k, v) for k, v in (secret.get("stringData") or {}).items()]
        for key, raw in (secret.get("data") or {}).items():
            try:
                pairs.append((key, base64.b64decode(raw).decode()))
            except (ValueError, UnicodeDecodeError):
                continue
        for key, value in pairs:
            if _public(key):
                continue
            for piece in (value, value.strip()):
                if len(piece) >= MIN_SCRUB_LENGTH:
                    out.add(piece)
    return out


def scrub(text: str, values: Iterable[str]) -> str:
    """text with every occurrence of the given values replaced (longest first, so that a
    value containing another is replaced whole)."""
    for value in sorted(values, key=len, reverse=True):
        text = text.replace(value, REDACTED)
    return text


def redact(obj: Any) -> Any:
    """A copy of an object (a Kubernetes manifest, or any JSON) with credentials replaced:
    Secrets summarized, env entries and keys with sensitive names, passwords inside text."""
    if isinstance(obj, dict):
        if obj.get("kind") == "Secret" and obj.get("apiVersion") == "v1":
            return secret_summary(obj)
        out: Obj = {}
        for key, value in obj.items():
            if key == "last-applied-configuration" or key.endswith("/last-applied-configuration"):
                # The whole object as last applied: a Secret's data when it was one.
                out[key] = REDACTED
            elif isinstance(value, str) and sensitive(str(key)):
                out[key] = REDACTED
            else:
                out[key] = redact(value)
        # An env entry {name, value}: its name says whether the value is a credential.
        name, value = obj.get("name"), obj.get("value")
        if isinstance(name, str) and isinstance(value, str) and sensitive(name):
            out["value"] = REDACTED
        return out
    if isinstance(obj, list):
        return [redact(x) for x in obj]
    if isinstance(obj, str):
        return redact_text(obj)
    return obj
