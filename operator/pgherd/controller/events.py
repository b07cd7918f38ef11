"""Kubernetes Events about a PostgresCluster, or about a resource that points at one (a
PostgresDatabase, a PostgresPooler), in core v1 as kubectl describe shows them.

Which Events to post is decided elsewhere (status transitions, plan actions,
actions.ready_events); this renders one and posts it. A failure to post is logged and never
fails a pass.
"""

from __future__ import annotations

import logging
import secrets
from datetime import datetime
from typing import Any

from pgherd.api.v1alpha1 import API_VERSION, KIND
from pgherd.controller.client import ApiError, Client

log = logging.getLogger(__name__)
COMPONENT = "pgherd-operator"


def render_event(
    namespace: str,
    name: str,
    *,
    uid: str | None,
    type_: str,
    reason: str,
    message: str,
    now: datetime,
    kind: str = KIND,
) -> dict[str, Any]:
    """An Event on the object kind namespace/name (a PostgresCluster unless told)."""
    stamp = now.strftime("%Y-%m-%dT%H:%M:%SZ")
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {
            # Unique like kubectl's own event names: <object>.<random hex>.
            "name": f"{name}.{secrets.token_hex(8)}",
            "namespace": namespace,
        },
        "involvedObject": {
            "apiVersion": API_VERSION,
            "kind": kind,
            "name": name,
            "namespace": namespace,
            "uid": uid,
        },
        "type": type_,
        "reason": reason,
        "message": message[:1024],
        "source": {"component": COMPONENT},
        "reportingComponent": COMPONENT,
        "firstTimestamp": stamp,
        "lastTimestamp": stamp,
        "count": 1,
    }


def post(client: Client, event: dict[str, Any]) -> None:
    try:
        client.create(event)
    except ApiError as e:
        involved = event["involvedObject"]
        log.warning(
            "could not post event %s on %s/%s: %s",
            event["reason"],
            involved["namespace"],
            involved["name"],
            e.reason,
        )
