"""The kopf handlers: thin. Each parses the body into the typed model and delegates.

Change handlers react at once; the timer resyncs every cluster on a period so that drift
(a child edited or deleted by hand, a failover) is repaired without any event.
"""

from __future__ import annotations

import os
from typing import Any

import kopf

from pgherd import reconcile
from pgherd.api.v1alpha1 import GROUP, PLURAL, VERSION, PostgresCluster
from pgherd.context import kube

RESYNC_SECONDS = float(os.environ.get("PGHERD_RESYNC_SECONDS", "30"))


def _run(body: kopf.Body, logger: kopf.Logger) -> dict[str, Any]:
    cluster = PostgresCluster.model_validate(dict(body))

    def emit(type_: str, reason: str, message: str) -> None:
        kopf.event(body, type=type_, reason=reason, message=message)

    outcome = reconcile.reconcile(kube(), cluster, emit)
    return {"actions": len(outcome.actions)}


@kopf.on.resume(GROUP, VERSION, PLURAL)
@kopf.on.create(GROUP, VERSION, PLURAL)
@kopf.on.update(GROUP, VERSION, PLURAL, field="spec")
def on_change(body: kopf.Body, logger: kopf.Logger, **_: Any) -> None:
    _run(body, logger)


@kopf.timer(GROUP, VERSION, PLURAL, interval=RESYNC_SECONDS, sharp=False)
def resync(body: kopf.Body, logger: kopf.Logger, **_: Any) -> None:
    _run(body, logger)
