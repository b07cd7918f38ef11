"""Starts the operator: kopf with pgherd's settings, the watched namespaces and a liveness
endpoint.

kopf has no lease-based leader election, so exactly one replica runs (Deployment strategy
Recreate) in standalone mode: no peering objects.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import kopf

from pgherd import context


def watched_namespaces(cli: list[str] | None, env: dict[str, str]) -> list[str]:
    """--namespace flags win; else WATCH_NAMESPACE (comma-separated, as OLM sets it);
    empty means every namespace."""
    if cli:
        return cli
    return [n.strip() for n in env.get("WATCH_NAMESPACE", "").split(",") if n.strip()]


@kopf.on.startup()
def _configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    # Handler chatter stays in the log; only pgherd's own transitions become Events.
    settings.posting.level = logging.WARNING
    # Idle watch connections can stall silently; make both ends time out and reconnect.
    settings.watching.server_timeout = 120
    settings.watching.client_timeout = 150
    settings.watching.connect_timeout = 30
    settings.execution.max_workers = int(os.environ.get("PGHERD_WORKERS", "16"))


def main(namespaces: list[str] | None, health_port: int) -> int:
    ns = watched_namespaces(namespaces, dict(os.environ))
    json_logs = os.environ.get("PGHERD_LOG_FORMAT", "").lower() == "json"
    kopf.configure(
        verbose=os.environ.get("PGHERD_DEBUG") == "1",
        log_format=kopf.LogFormat.JSON if json_logs else kopf.LogFormat.PLAIN,
    )
    context.init()
    context.set_watched_namespaces(ns)
    from pgherd import handlers  # noqa: F401, PLC0415 - registers the handlers

    host = os.environ.get("PGHERD_HEALTH_HOST", "0.0.0.0")  # noqa: S104 - probes reach the pod IP
    kopf.run(
        standalone=True,
        clusterwide=not ns,
        namespaces=ns,
        liveness_endpoint=f"http://{host}:{health_port}/healthz" if health_port else None,
    )
    return 0
