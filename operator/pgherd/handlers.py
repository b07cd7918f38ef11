"""The kopf handlers: thin. Each parses the body into the typed model and delegates.

Change handlers react at once. Level-based resync is a loop of pgherd's own rather than a
kopf timer: kopf puts a finalizer on every object that has a timer, and a finalizer makes
deleting a cluster wait for the operator (stuck namespaces when it is gone). Without one,
deletion is plain garbage collection and never needs the operator.
"""

from __future__ import annotations

import asyncio
import fnmatch
import logging
import os
from typing import Any

import kopf

from pgherd import context, events, reconcile
from pgherd.api.v1alpha1 import GROUP, KIND, PLURAL, VERSION, ObjectMeta
from pgherd.backup import handlers as backup_handlers  # noqa: F401 - registers PostgresBackup's

RESYNC_SECONDS = float(os.environ.get("PGHERD_RESYNC_SECONDS", "30"))
log = logging.getLogger(__name__)


def _reconcile(meta: ObjectMeta) -> None:
    kube = context.kube()

    def emit(type_: str, reason: str, message: str) -> None:
        events.post(kube, meta, type_, reason, message)

    # The reconcile reads and parses the stored object itself: a spec that does not parse
    # must still get a status saying why.
    reconcile.reconcile(kube, meta, emit)


@kopf.on.resume(GROUP, VERSION, PLURAL)
@kopf.on.create(GROUP, VERSION, PLURAL)
@kopf.on.update(GROUP, VERSION, PLURAL, field="spec")
def on_change(body: kopf.Body, **_: Any) -> None:
    _reconcile(ObjectMeta.model_validate(dict(body["metadata"])))


def _in_scope(namespace: str, patterns: list[str]) -> bool:
    return not patterns or any(fnmatch.fnmatchcase(namespace, p) for p in patterns)


def _resync_all() -> int:
    kube = context.kube()
    patterns = context.watched_namespaces()
    # Plain names are listed one by one (a namespaced Role suffices); globs, as kopf
    # accepts them, need the cluster-wide list.
    globbed = any(ch in p for p in patterns for ch in "*?[")
    scopes: list[str | None] = [None] if globbed or not patterns else [*patterns]
    count = 0
    for ns in scopes:
        for item in kube.list(KIND, ns):
            if not _in_scope(item["metadata"]["namespace"], patterns):
                continue
            try:
                _reconcile(ObjectMeta.model_validate(item["metadata"]))
            except Exception:  # one broken cluster must not stop the others' resync
                log.exception(
                    "resync of %s/%s failed",
                    item["metadata"].get("namespace"),
                    item["metadata"].get("name"),
                )
            count += 1
    return count


async def _resync_loop() -> None:
    loop = asyncio.get_running_loop()
    while True:
        await asyncio.sleep(RESYNC_SECONDS)
        try:
            await loop.run_in_executor(None, _resync_all)
        except Exception:  # keep resyncing whatever one pass hit
            log.exception("resync pass failed")


@kopf.on.startup()
async def start_resync(memo: kopf.Memo, **_: Any) -> None:
    memo["resync"] = asyncio.create_task(_resync_loop())


@kopf.on.cleanup()
async def stop_resync(memo: kopf.Memo, **_: Any) -> None:
    task = memo.get("resync")
    if task is not None:
        task.cancel()
