"""The work queue: which cluster to reconcile next, never the same one twice at once.

A change adds its cluster's key with a short delay (debounce), so that a burst of events
makes one pass; a key added while its cluster is being reconciled runs again right after.
A pass that fails is retried with exponential back-off. Workers from a bounded pool take keys
in the order they are due, so one slow cluster holds up one worker, never the others.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from pgherd.controller.metrics import OperatorMetrics

log = logging.getLogger(__name__)

ClusterKey = tuple[str, str]  # (namespace, name)
BACKOFF_BASE = 1.0
BACKOFF_MAX = 60.0


class WorkQueue:
    """Keys due at a time; each key at most once queued and at most once in progress."""

    def __init__(
        self,
        clock: Callable[[], float] = time.monotonic,
        metrics: OperatorMetrics | None = None,
    ) -> None:
        self._clock = clock
        self._metrics = metrics or OperatorMetrics.disabled()
        self._cond = threading.Condition()
        self._heap: list[tuple[float, int, ClusterKey]] = []
        self._due: dict[ClusterKey, float] = {}
        self._added: dict[ClusterKey, float] = {}
        self._active: set[ClusterKey] = set()
        self._again: dict[ClusterKey, float] = {}
        self._failures: dict[ClusterKey, int] = {}
        self._seq = itertools.count()
        self._closed = False
        self.waits: list[float] = []  # seconds from due to taken, for the bench

    def add(self, key: ClusterKey, delay: float = 0.0) -> None:
        """Reconcile key after delay; an earlier pending time wins (a burst coalesces)."""
        with self._cond:
            due = self._clock() + delay
            if key in self._active:
                self._again[key] = min(due, self._again.get(key, due))
                return
            if key in self._due and self._due[key] <= due:
                return
            self._push(key, due)

    def _push(self, key: ClusterKey, due: float) -> None:
        self._due[key] = due
        self._added.setdefault(key, due)
        heapq.heappush(self._heap, (due, next(self._seq), key))
        self._cond.notify()

    def get(self, timeout: float | None = None) -> ClusterKey | None:
        """The next due key (now in progress), or None when closed or on timeout."""
        end = None if timeout is None else self._clock() + timeout
        with self._cond:
            while not self._closed:
                now = self._clock()
                while self._heap and self._due.get(self._heap[0][2]) != self._heap[0][0]:
                    heapq.heappop(self._heap)  # superseded by an earlier time
                if self._heap and self._heap[0][0] <= now:
                    due, _, key = heapq.heappop(self._heap)
                    del self._due[key]
                    self._added.pop(key, None)
                    self._active.add(key)
                    self.waits.append(max(0.0, now - due))
                    self._metrics.queue_waited(self.waits[-1])
                    del self.waits[:-10000]
                    return key
                wait = self._heap[0][0] - now if self._heap else None
                if end is not None:
                    left = end - now
                    if left <= 0:
                        return None
                    wait = left if wait is None else min(wait, left)
                self._cond.wait(wait)
        return None

    def done(self, key: ClusterKey, *, failed: bool = False) -> None:
        """A pass over key ended; a failed one is retried with back-off."""
        with self._cond:
            self._active.discard(key)
            again = self._again.pop(key, None)
            if failed:
                n = self._failures.get(key, 0) + 1
                self._metrics.retried()
                self._failures[key] = n
                retry = self._clock() + min(BACKOFF_MAX, BACKOFF_BASE * 2 ** (n - 1))
                again = retry if again is None else min(again, retry)
            else:
                self._failures.pop(key, None)
            if again is not None and (key not in self._due or self._due[key] > again):
                self._push(key, again)

    def depth(self) -> int:
        with self._cond:
            return len(self._due)

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()


def run_workers(
    queue: WorkQueue, workers: int, work: Callable[[ClusterKey], bool]
) -> ThreadPoolExecutor:
    """Start `workers` threads taking keys from queue; work returns False to retry later."""
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="reconcile")

    def loop() -> None:
        while (key := queue.get()) is not None:
            ok = False
            try:
                ok = work(key)
            except Exception:  # one cluster's failure never stops a worker
                log.exception("reconcile of %s/%s failed", *key)
            finally:
                queue.done(key, failed=not ok)

    for _ in range(workers):
        pool.submit(loop)
    return pool
