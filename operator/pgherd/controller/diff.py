"""Whether a live object already is what a rendered one asks for, so that a reconcile that
changes nothing writes nothing.

Each applied object carries the hash of what was applied (annotation pgherd.io/applied-hash):
a field the operator stopped setting changes the hash, so the object is applied again even
though every remaining field matches. Quantities compare by value (1Gi == 1024Mi).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from kubernetes.utils import parse_quantity

APPLIED_HASH = "pgherd.io/applied-hash"
Manifest = dict[str, Any]
_QUANTITY_KEYS = {"cpu", "memory", "storage", "ephemeral-storage"}


def applied_hash(desired: Manifest) -> str:
    canonical = json.dumps(desired, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def stamped(desired: Manifest) -> Manifest:
    """desired with its applied-hash annotation (a new dict; desired is not changed)."""
    meta = desired["metadata"]
    return {
        **desired,
        "metadata": {
            **meta,
            "annotations": {**meta.get("annotations", {}), APPLIED_HASH: applied_hash(desired)},
        },
    }


def contains(live: Any, want: Any, key: str = "") -> bool:
    """Whether live already holds every field of want with the same value."""
    if isinstance(want, dict):
        return isinstance(live, dict) and all(
            k in live and contains(live[k], v, k) for k, v in want.items()
        )
    if isinstance(want, list):
        return (
            isinstance(live, list)
            and len(live) == len(want)
            and all(contains(lv, wv) for lv, wv in zip(live, want, strict=True))
        )
    if live == want:
        return True
    if key in _QUANTITY_KEYS and isinstance(live, str | int) and isinstance(want, str | int):
        try:
            return bool(parse_quantity(live) == parse_quantity(want))
        except ValueError:
            return False
    return False


def merge_patch(current: dict[str, Any], desired: dict[str, Any]) -> dict[str, Any]:
    """The RFC 7386 merge patch that turns current into desired (None deletes a key)."""
    patch: dict[str, Any] = {}
    for key in current.keys() - desired.keys():
        patch[key] = None
    for key, want in desired.items():
        have = current.get(key)
        if isinstance(want, dict) and isinstance(have, dict):
            sub = merge_patch(have, want)
            if sub:
                patch[key] = sub
        elif have != want:
            patch[key] = want
    return patch
