"""The operator's own Prometheus metrics: how its passes, work queue, watches and calls to
Patroni fare, served on /metrics (PGHERD_METRICS_PORT).

One OperatorMetrics is built at start (pgherd.controller.runner) with a registry of its own
and handed to what it measures; nothing is registered at import. Labels stay few and
bounded: kinds, results, actions, operations; namespace and cluster only on the errors
counter, whose series go with the cluster. What the caches already hold (clusters by phase,
queue depth, informers synced) is computed at scrape time, so a deleted cluster is never
counted.

With the port 0 the object is disabled: every method returns at once and prometheus_client
is never imported, so metrics cost nothing when they are off.
"""

from __future__ import annotations

import collections
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import TYPE_CHECKING

from pgherd.controller import conditions as c

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry
    from prometheus_client.metrics_core import Metric

PREFIX = "pgherd"
# Passes are mostly milliseconds; one that waits on the API or Patroni takes seconds.
SECONDS_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
PHASES = (
    c.PHASE_CREATING,
    c.PHASE_HEALTHY,
    c.PHASE_UPDATING,
    c.PHASE_DEGRADED,
    c.PHASE_UNAVAILABLE,
)
# A cluster whose status has no phase yet (its first pass has not written one).
NO_PHASE = "Unknown"

Phases = Callable[[], Iterable[str | None]]
Depth = Callable[[], int]
Synced = Callable[[], Mapping[str, bool]]


class OperatorMetrics:
    """The metrics of one operator process (see the module docstring)."""

    def __init__(self, *, version: str, enabled: bool = True) -> None:
        self.enabled = enabled
        self.version = version
        self._lock = threading.Lock()
        # The reasons each cluster's errors were counted under, to remove its series when
        # the cluster goes.
        self._error_reasons: dict[tuple[str, str], set[str]] = {}
        self._phases: Phases = list
        self._depth: Depth = lambda: 0
        self._synced: Synced = dict
        if enabled:
            self._build()

    @classmethod
    def disabled(cls) -> OperatorMetrics:
        return cls(version="", enabled=False)

    def _build(self) -> None:
        # Imported here: a disabled operator does not pay for the library.
        from prometheus_client import (  # noqa: PLC0415
            CollectorRegistry,
            Counter,
            Gauge,
            Histogram,
            PlatformCollector,
            ProcessCollector,
        )

        self.registry: CollectorRegistry = CollectorRegistry()
        r = self.registry
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        Gauge(f"{PREFIX}_operator_build_info", "The operator's version; always 1.",
              ["version"], registry=r).labels(self.version).set(1)  # fmt: skip
        self._reconcile_seconds = Histogram(
            f"{PREFIX}_reconcile_duration_seconds",
            "Duration of one reconcile pass, by the kind reconciled and its result "
            "(success, requeue: come back soon, error: failed or refused).",
            ["kind", "result"], buckets=SECONDS_BUCKETS, registry=r,
        )  # fmt: skip
        self._reconcile_errors = Counter(
            f"{PREFIX}_reconcile_errors_total",
            "Reconcile passes that failed or had a write refused, by cluster and reason "
            "(the exception's class, Refused or InvalidSpec).",
            ["namespace", "cluster", "reason"], registry=r,
        )  # fmt: skip
        self._actions = Counter(
            f"{PREFIX}_actions_total",
            "Actions a plan asked for and act carried out, by action and outcome "
            "(done, conflict: retried, refused: by the API server, failed: Patroni or "
            "PostgreSQL).",
            ["action", "outcome"], registry=r,
        )  # fmt: skip
        self._events = Counter(
            f"{PREFIX}_watch_events_total",
            "Watch events received, by resource kind and event type.",
            ["kind", "type"], registry=r,
        )  # fmt: skip
        self._lists = Counter(
            f"{PREFIX}_informer_lists_total",
            "Full lists made by the informers, by kind and why (initial; expired: the "
            "watch's version was too old, 410; error: after a failed watch).",
            ["kind", "reason"], registry=r,
        )  # fmt: skip
        self._watch_errors = Counter(
            f"{PREFIX}_informer_errors_total",
            "Lists and watches that failed (retried with back-off), by kind.",
            ["kind"], registry=r,
        )  # fmt: skip
        self._queue_wait = Histogram(
            f"{PREFIX}_workqueue_wait_duration_seconds",
            "Time a cluster's key waited in the work queue from due to taken by a worker.",
            buckets=SECONDS_BUCKETS, registry=r,
        )  # fmt: skip
        self._retries = Counter(
            f"{PREFIX}_workqueue_retries_total",
            "Keys put back with back-off after a failed pass.",
            registry=r,
        )
        self._patroni = Counter(
            f"{PREFIX}_patroni_requests_total",
            "Calls to Patroni's REST API, by operation and outcome (success, http_error, "
            "unreachable, ca_error).",
            ["operation", "outcome"], registry=r,
        )  # fmt: skip
        self._patroni_seconds = Histogram(
            f"{PREFIX}_patroni_request_duration_seconds",
            "Duration of calls to Patroni's REST API, by operation.",
            ["operation"], buckets=SECONDS_BUCKETS, registry=r,
        )  # fmt: skip
        self._leader = Gauge(
            f"{PREFIX}_operator_leader",
            "1 while this replica acts (it holds the leader election's Lease, or runs "
            "without leader election), 0 while it stands by.",
            registry=r,
        )
        # Its collect(): the gauges read from the caches at each scrape.
        r.register(self)

    # ---- what the caches hold, read at scrape time ---------------------------------------
    def observe(self, *, phases: Phases, queue_depth: Depth, synced: Synced) -> None:
        """Where the scrape reads clusters' phases, the queue's depth and which informers
        have listed (callables: read at each scrape, never kept stale)."""
        self._phases, self._depth, self._synced = phases, queue_depth, synced

    def collect(self) -> Iterator[Metric]:
        from prometheus_client.core import GaugeMetricFamily  # noqa: PLC0415

        counted = collections.Counter(p or NO_PHASE for p in self._phases())
        clusters = GaugeMetricFamily(
            f"{PREFIX}_clusters", "PostgresClusters by the phase of their status.",
            labels=["phase"],
        )  # fmt: skip
        for phase in sorted({*PHASES, NO_PHASE, *counted}):
            clusters.add_metric([phase], counted.get(phase, 0))
        yield clusters
        yield GaugeMetricFamily(
            f"{PREFIX}_workqueue_depth", "Clusters waiting in the work queue.",
            value=self._depth(),
        )  # fmt: skip
        synced = GaugeMetricFamily(
            f"{PREFIX}_informer_synced",
            "1 when every informer of the kind has listed (its cache is filled), else 0.",
            labels=["kind"],
        )
        for kind, ok in sorted(self._synced().items()):
            synced.add_metric([kind], 1 if ok else 0)
        yield synced

    # ---- instrumentation -----------------------------------------------------------------
    def reconciled(
        self, kind: str, namespace: str, name: str, seconds: float, *, error: str | None,
        retry: bool,
    ) -> None:  # fmt: skip
        """One pass ended: error is its short reason when it failed."""
        if not self.enabled:
            return
        result = "error" if error else "requeue" if retry else "success"
        self._reconcile_seconds.labels(kind, result).observe(seconds)
        if error:
            with self._lock:
                self._error_reasons.setdefault((namespace, name), set()).add(error)
            self._reconcile_errors.labels(namespace, name, error).inc()

    def forget(self, namespace: str, name: str) -> None:
        """A cluster was deleted: its series go with it."""
        if not self.enabled:
            return
        with self._lock:
            reasons = self._error_reasons.pop((namespace, name), set())
        for reason in reasons:
            self._reconcile_errors.remove(namespace, name, reason)

    def action(self, action: str, outcome: str) -> None:
        if self.enabled:
            self._actions.labels(action, outcome).inc()

    def watch_event(self, kind: str, type_: str) -> None:
        if self.enabled:
            self._events.labels(kind, type_).inc()

    def listed(self, kind: str, reason: str) -> None:
        if self.enabled:
            self._lists.labels(kind, reason).inc()

    def watch_failed(self, kind: str) -> None:
        if self.enabled:
            self._watch_errors.labels(kind).inc()

    def queue_waited(self, seconds: float) -> None:
        if self.enabled:
            self._queue_wait.observe(seconds)

    def retried(self) -> None:
        if self.enabled:
            self._retries.inc()

    def leading(self, acting: bool) -> None:
        """Whether this replica acts (leads) or stands by (pgherd.controller.leader)."""
        if self.enabled:
            self._leader.set(1 if acting else 0)

    def patroni_call(self, operation: str, outcome: str, seconds: float) -> None:
        if not self.enabled:
            return
        self._patroni.labels(operation, outcome).inc()
        self._patroni_seconds.labels(operation).observe(seconds)

    # ---- exposition ----------------------------------------------------------------------
    def exposition(self) -> bytes:
        """The registry in Prometheus' text format (what /metrics serves)."""
        if not self.enabled:
            return b""
        from prometheus_client import generate_latest  # noqa: PLC0415

        return bytes(generate_latest(self.registry))

    def serve(self, host: str, port: int) -> Callable[[], None]:
        """Serve /metrics on a thread of its own; returns what stops it."""
        if not self.enabled:
            return lambda: None
        from prometheus_client import start_http_server  # noqa: PLC0415

        server, thread = start_http_server(port, host, registry=self.registry)

        def stop() -> None:
            server.shutdown()
            server.server_close()
            thread.join(timeout=5)

        return stop
