"""`kubectl pgherd switchover`: which instance to promote, pure. Works on the members of a
summary (pgherd.kubectl.summary.instances)."""

from __future__ import annotations

from typing import Any

Obj = dict[str, Any]


class NoTarget(Exception):
    """No instance can be promoted; the message says why."""


def _is_replica(m: Obj) -> bool:
    return str(m.get("role", "")).startswith("replica")


def best_replica(members: list[Obj]) -> str:
    """The ready replica with the least lag (unknown lag last; by name among equals)."""
    candidates = [m for m in members if _is_replica(m) and m["ready"] and not m["terminating"]]
    if not candidates:
        replicas = [m["name"] for m in members if _is_replica(m)]
        raise NoTarget(
            "no ready replica to switch over to"
            + (f" (replicas: {', '.join(replicas)}, none ready)" if replicas else " (no replica)")
        )
    unknown = float("inf")
    best = min(
        candidates,
        key=lambda m: (m["lagBytes"] if m["lagBytes"] is not None else unknown, m["name"]),
    )
    return str(best["name"])


def check_target(members: list[Obj], target: str) -> str:
    """target itself when it can be promoted; NoTarget saying why not otherwise."""
    found = next((m for m in members if m["name"] == target), None)
    if found is None:
        known = ", ".join(m["name"] for m in members) or "none"
        raise NoTarget(f"{target} is not an instance of this cluster (instances: {known})")
    if found["role"] == "primary":
        raise NoTarget(f"{target} is already the primary")
    if not found["ready"] or found["terminating"]:
        raise NoTarget(
            f"{target} is not ready (state {found['state'] or 'unknown'}, pod "
            f"{'ready' if found['podReady'] else 'not ready'}); pick a ready replica"
        )
    return target
