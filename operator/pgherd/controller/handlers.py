"""The kopf handlers: thin. Each parses what it is given into a typed model and delegates to
the controller (pgherd.controller.runner), which caches the object and queues its cluster.

Only event handlers: kopf then stores nothing on the objects (no progress annotations, no
finalizers), so deleting a cluster is plain garbage collection and never waits for the
operator, and a reconcile that changes nothing writes nothing.
"""

from __future__ import annotations

import logging
from typing import Any

import kopf

from pgherd.api.v1alpha1 import (
    BACKUP_PLURAL,
    DATABASE_PLURAL,
    GROUP,
    PLURAL,
    POOLER_PLURAL,
    VERSION,
    ObjectMeta,
)
from pgherd.controller.runner import Controller


def _controller(memo: kopf.Memo) -> Controller:
    controller: Controller = memo["controller"]
    return controller


@kopf.on.startup()
def _configure(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    # Handler chatter stays in the log; only pgherd's own transitions become Events.
    settings.posting.level = logging.WARNING
    # Idle watch connections can stall silently; make both ends time out and reconnect.
    settings.watching.server_timeout = 120
    settings.watching.client_timeout = 150
    settings.watching.connect_timeout = 30
    _controller(memo).start()


@kopf.on.cleanup()
def _stop(memo: kopf.Memo, **_: Any) -> None:
    _controller(memo).stop()


@kopf.on.event(GROUP, VERSION, PLURAL)
def cluster_event(event: kopf.RawEvent, memo: kopf.Memo, **_: Any) -> None:
    # The metadata always parses; the spec is parsed by the reconcile, which reports a spec
    # that does not as Degraded instead of failing here.
    raw = dict(event["object"])
    meta = ObjectMeta.model_validate(raw["metadata"])
    _controller(memo).on_cluster(event.get("type"), meta, raw)


@kopf.on.event(GROUP, VERSION, BACKUP_PLURAL)
def backup_event(event: kopf.RawEvent, memo: kopf.Memo, **_: Any) -> None:
    raw = dict(event["object"])
    meta = ObjectMeta.model_validate(raw["metadata"])
    _controller(memo).on_backup(event.get("type"), meta, raw)


@kopf.on.event(GROUP, VERSION, POOLER_PLURAL)
def pooler_event(event: kopf.RawEvent, memo: kopf.Memo, **_: Any) -> None:
    raw = dict(event["object"])
    meta = ObjectMeta.model_validate(raw["metadata"])
    _controller(memo).on_pooler(event.get("type"), meta, raw)


@kopf.on.event(GROUP, VERSION, DATABASE_PLURAL)
def database_event(event: kopf.RawEvent, memo: kopf.Memo, **_: Any) -> None:
    raw = dict(event["object"])
    meta = ObjectMeta.model_validate(raw["metadata"])
    _controller(memo).on_database(event.get("type"), meta, raw)


@kopf.on.probe(id="controller")
def health(memo: kopf.Memo, **_: Any) -> dict[str, Any]:
    return _controller(memo).health()
