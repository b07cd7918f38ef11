"""The running controller: caches fed by watches, the work queue and its workers, the timed
resync; and `pgherd operator`'s start-up, which builds the settings and the metrics once and
hands them over.

kopf watches the custom resources (PostgresCluster, PostgresBackup) and calls the handlers
(pgherd.controller.handlers), which feed their caches and queue the clusters; pgherd's own
informers watch the children, selected by pgherd's labels, and the cluster-scoped
StorageClasses and Nodes (a cordoned node queues the clusters with an instance on it).

kopf has no lease-based leader election: with PGHERD_LEADER_ELECTION=1 (the Deployment runs
two replicas) the controller starts only once this replica holds the Lease
(pgherd.controller.leader); a standby keeps kopf's watch of the custom resources (its handlers
only fill caches and queue keys nobody takes) and writes nothing. On SIGTERM the operator stops
taking work, lets a pass under way end for a moment, releases the Lease and exits at once
(`Controller.terminate`): kopf's own graceful exit and the non-daemon worker threads would
keep it alive past the pod's grace period.
"""

from __future__ import annotations

import fnmatch
import logging
import os
import secrets
import signal
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from pgherd.api.v1alpha1 import BACKUP_KIND, DATABASE_KIND, KIND, POOLER_KIND, ObjectMeta
from pgherd.controller import drain, leader
from pgherd.controller.cache import Cache, Informer, trim
from pgherd.controller.client import ApiError, Client, Manifest
from pgherd.controller.metrics import OperatorMetrics
from pgherd.controller.queue import ClusterKey, WorkQueue, run_workers
from pgherd.controller.reconciler import Reconciler
from pgherd.controller.references import USE_LABEL
from pgherd.render.labels import CLUSTER
from pgherd.render.rehearsal import rehearsal_owner
from pgherd.settings import Settings

log = logging.getLogger(__name__)
# The type kopf gives the objects of its initial list (it gives None).
LISTED = "LISTED"

# What the informers watch: kind, label selector. The cluster label selects every object a
# cluster owns (children, pods, claims) and Patroni's DCS ConfigMaps; Secrets also by the
# opt-in label, the only other Secrets pgherd may read. Never a namespace's every Secret.
WATCHED: tuple[tuple[str, str], ...] = (
    ("Pod", CLUSTER),
    ("PersistentVolumeClaim", CLUSTER),
    ("StatefulSet", CLUSTER),
    ("Service", CLUSTER),
    ("ServiceAccount", CLUSTER),
    ("Role", CLUSTER),
    ("RoleBinding", CLUSTER),
    ("PodDisruptionBudget", CLUSTER),
    ("ConfigMap", CLUSTER),
    ("Secret", CLUSTER),
    ("Secret", f"{USE_LABEL}=true"),
    # PostgresPooler: the PgBouncer Deployments (labelled for their cluster).
    ("Deployment", CLUSTER),
    # The major upgrade's Jobs (their pods are the cluster's Pods above).
    ("Job", CLUSTER),
)
# Kinds of CRDs that may be missing (the Prometheus Operator's): watched once the API serves
# them, looked for at start and at every resync, so installing the CRD later needs no restart.
OPTIONAL: tuple[tuple[str, str], ...] = (("PodMonitor", CLUSTER),)
# Cluster-scoped kinds, watched whole: StorageClasses (does a cluster's exist) and Nodes
# (drain-aware switchover: is an instance's node cordoned).
CLUSTER_SCOPED: tuple[tuple[str, str], ...] = (("StorageClass", ""), ("Node", ""))
# Kinds only one feature needs (poolers' Deployments, drain-aware switchover's Nodes, the
# major upgrade's Jobs): the workers wait for them a moment, not forever. An operator whose
# RBAC does not cover them yet
# (an older release's, during an upgrade; an administrator's trimmed Role) still reconciles
# every cluster; their informers keep retrying, and until they list, a pooler's Deployment
# create is refused by the API (reported), no node counts as draining and no upgrade starts.
FEATURE_KINDS = frozenset({"Deployment", "Node", "Job"})
FEATURE_WAIT_SECONDS = 15.0


def _globbed(patterns: tuple[str, ...]) -> bool:
    return any(ch in p for p in patterns for ch in "*?[")


class Controller:
    """Everything that runs: caches, informers, queue, workers and the resync."""

    def __init__(
        self,
        settings: Settings,
        client: Client,
        metrics: OperatorMetrics | None = None,
        elector: leader.Elector | None = None,
    ) -> None:
        self.elector = elector
        self.settings = settings
        self.client = client
        self.metrics = metrics or OperatorMetrics.disabled()
        self.cache = Cache()
        # The custom resources' stores, fed by kopf's handlers.
        self.clusters = self.cache.store(KIND)
        self.backups = self.cache.store(BACKUP_KIND)
        self.databases = self.cache.store(DATABASE_KIND)
        self.poolers = self.cache.store(POOLER_KIND)
        self.queue = WorkQueue(metrics=self.metrics)
        self.reconciler = Reconciler(self.cache, client, settings, metrics=self.metrics)
        self.informers: list[Informer] = []
        self.metrics.observe(phases=self._phases, queue_depth=self.queue.depth, synced=self._synced)
        self.pool: ThreadPoolExecutor | None = None
        self.optional_watched: set[str] = set()
        self.passes = 0
        self._stop = threading.Event()
        self._terminating = threading.Event()
        self.metrics.leading(elector is None)
        # Node name -> whether it drains, as last seen: only a change of that is news (a
        # node's other updates are heartbeats).
        self._draining: dict[str, bool] = {}

    # ---- scope -------------------------------------------------------------------------
    def in_scope(self, namespace: str) -> bool:
        patterns = self.settings.namespaces
        return not patterns or any(fnmatch.fnmatchcase(namespace, p) for p in patterns)

    def _scopes(self) -> list[str | None]:
        """Plain namespaces are watched one by one (a namespaced Role suffices); globs, as
        kopf accepts them, need a cluster-wide watch kept to the matching namespaces."""
        patterns = self.settings.namespaces
        if not patterns or _globbed(patterns):
            return [None]
        return list(patterns)

    def _accept(self, obj: Manifest) -> bool:
        return self.in_scope(obj.get("metadata", {}).get("namespace") or "")

    # ---- changes -> keys ---------------------------------------------------------------
    def enqueue(self, key: ClusterKey, *, now: bool = False) -> None:
        self.queue.add(key, 0.0 if now else self.settings.debounce_seconds)

    def on_child(self, kind: str, obj: Manifest) -> None:
        meta = obj.get("metadata") or {}
        ns = meta.get("namespace") or ""
        if kind == "StorageClass":
            for cluster in self.cache.all(KIND):
                spec = cluster.get("spec") or {}
                if (spec.get("storage") or {}).get("storageClassName") == meta.get("name"):
                    self.enqueue(_key(cluster))
            return
        if kind == "Node":
            self.on_node(obj)
            return
        owner = (meta.get("labels") or {}).get(CLUSTER)
        if owner:
            self.enqueue((ns, str(owner)))
        if kind == "Secret" and (meta.get("labels") or {}).get(USE_LABEL) == "true":
            # A Secret that opted in (or stopped): the clusters of its namespace look again.
            for other in self.cache.all(KIND, ns):
                self.enqueue(_key(other))

    def on_node(self, node: Manifest) -> None:
        """A Node changed: when whether it drains changed, the clusters with an instance on
        it look again (pgherd.controller.drain)."""
        name = str((node.get("metadata") or {}).get("name") or "")
        now = drain.draining(node) and not (node.get("metadata") or {}).get("deletionTimestamp")
        if self._draining.get(name, False) == now:
            self._draining[name] = now
            return
        self._draining[name] = now
        clusters = {
            (pod["metadata"].get("namespace") or "", str(owner))
            for pod in self.cache.all("Pod")
            if (pod.get("spec") or {}).get("nodeName") == name
            and (owner := (pod["metadata"].get("labels") or {}).get(CLUSTER))
        }
        for key in sorted(clusters):
            self.enqueue(key, now=True)

    def on_cluster(self, event: str | None, meta: ObjectMeta, body: Manifest) -> None:
        self.metrics.watch_event(KIND, event or LISTED)
        # A major upgrade rehearsal's copy: the cluster it rehearses for follows its progress.
        if (rehearsing := rehearsal_owner(body)) is not None:
            self.enqueue((meta.namespace, rehearsing))
        if event == "DELETED":
            self.cache.remove(self.clusters, meta.namespace, meta.name)
            self.metrics.forget(meta.namespace, meta.name)
        elif not self.cache.put(self.clusters, trim(KIND, body)):
            return  # the status the operator just wrote: nothing new
        # A change of spec or status is looked at right away: it is deliberate, not a burst.
        self.enqueue((meta.namespace, meta.name), now=True)

    def on_backup(self, event: str | None, meta: ObjectMeta, body: Manifest) -> None:
        self.metrics.watch_event(BACKUP_KIND, event or LISTED)
        if event == "DELETED":
            self.cache.remove(self.backups, meta.namespace, meta.name)
        else:
            self.cache.put(self.backups, trim(BACKUP_KIND, body))
        cluster = (body.get("spec") or {}).get("cluster")
        if cluster:
            self.enqueue((meta.namespace, cluster))

    def on_pooler(self, event: str | None, meta: ObjectMeta, body: Manifest) -> None:
        """A PostgresPooler changed: its cluster's pass decides for it (as for backups)."""
        self.metrics.watch_event(POOLER_KIND, event or LISTED)
        old = self.cache.get(POOLER_KIND, meta.namespace, meta.name)
        if event == "DELETED":
            self.cache.remove(self.poolers, meta.namespace, meta.name)
        elif not self.cache.put(self.poolers, trim(POOLER_KIND, body)):
            return  # the status the operator just wrote: nothing new
        clusters = {
            (body.get("spec") or {}).get("cluster"),
            ((old or {}).get("spec") or {}).get("cluster"),
        }
        for cluster in sorted(c for c in clusters if c):
            self.enqueue((meta.namespace, str(cluster)), now=True)

    def on_database(self, event: str | None, meta: ObjectMeta, body: Manifest) -> None:
        self.metrics.watch_event(DATABASE_KIND, event or LISTED)
        if event == "DELETED":
            self.cache.remove(self.databases, meta.namespace, meta.name)
        elif not self.cache.put(self.databases, trim(DATABASE_KIND, body)):
            return  # the status or finalizer the operator just wrote: nothing new
        cluster = (body.get("spec") or {}).get("cluster")
        if cluster:
            self.enqueue((meta.namespace, cluster), now=True)

    # ---- running -----------------------------------------------------------------------
    def work(self, key: ClusterKey) -> bool:
        result = self.reconciler.reconcile(*key)
        self.passes += 1
        return not result.retry

    def start(self) -> None:
        if self.elector is not None and not self.elector.leading.is_set():
            # A standby starts nothing that writes; the elector calls start again once this
            # replica leads.
            self.elector.start(on_started=self.start, on_lost=self._lost_leadership)
            return
        self.metrics.leading(True)
        for scope in self._scopes():
            for kind, selector in WATCHED:
                self.informers.append(
                    Informer(self.client, self.cache, kind, scope, selector, self.on_child,
                             accept=self._accept, metrics=self.metrics)
                )  # fmt: skip
        for kind, selector in CLUSTER_SCOPED:
            self.informers.append(
                Informer(self.client, self.cache, kind, None, selector, self.on_child,
                         metrics=self.metrics)
            )  # fmt: skip
        for informer in self.informers:
            informer.start()
        self._watch_optional_kinds()
        threading.Thread(target=self._start_workers, name="start-workers", daemon=True).start()
        threading.Thread(target=self._resync, name="resync", daemon=True).start()

    def _start_workers(self) -> None:
        # A pass before the caches are filled would see children as missing.
        started = time.monotonic()
        for informer in self.informers:
            while not informer.synced.wait(5) and not self._stop.is_set():
                if (
                    informer.kind in FEATURE_KINDS
                    and time.monotonic() - started >= FEATURE_WAIT_SECONDS
                ):
                    log.warning("%r has not listed (forbidden?): starting without it", informer)
                    break
                log.info("waiting for %r to list", informer)
        if not self._stop.is_set():
            self.pool = run_workers(self.queue, self.settings.workers, self.work)

    def _resync(self) -> None:
        """Level-based safety net: every cluster is looked at again on a timer."""
        while not self._stop.wait(self.settings.resync_seconds):
            self._watch_optional_kinds()
            for cluster in self.cache.all(KIND):
                self.enqueue(_key(cluster))

    def _watch_optional_kinds(self) -> None:
        for kind, selector in OPTIONAL:
            if kind in self.optional_watched:
                continue
            try:
                served = self.client.serves(kind)
            except ApiError as e:
                log.warning("could not tell whether the API serves %s: %s", kind, e)
                continue
            if not served:
                continue
            log.info("the API serves %s: watching them", kind)
            self.optional_watched.add(kind)
            for scope in self._scopes():
                informer = Informer(self.client, self.cache, kind, scope, selector,
                                    self.on_child, accept=self._accept,
                                    metrics=self.metrics)  # fmt: skip
                self.informers.append(informer)
                informer.start()

    def stop(self) -> None:
        self._stop.set()
        self.queue.close()
        for informer in self.informers:
            informer.stop()

    # ---- leadership and exit ------------------------------------------------------------
    def _lost_leadership(self) -> None:
        """The lease was not renewed in time: another replica may take it any moment, so this
        one stops acting at once and exits (it restarts as a standby), as controller-runtime
        does. A pass cut short is redone by the next leader: every step is idempotent."""
        self.stop()
        _exit(1)

    def terminate(self, signum: int) -> None:
        """SIGTERM (or SIGINT): exit within TERMINATE_SECONDS, handing the lease over."""
        if self._terminating.is_set():
            return
        self._terminating.set()
        log.info("%s: stopping", signal.Signals(signum).name)
        # Whatever blocks below (an API call that hangs), the process exits in time.
        threading.Timer(TERMINATE_SECONDS, _exit, args=(0,)).start()
        threading.Thread(target=self._terminate, name="terminate", daemon=True).start()

    def _terminate(self) -> None:
        self.stop()
        pool = self.pool
        if pool is not None:
            # Passes under way finish their step, or are abandoned (and redone by the next
            # leader) when they take longer than the grace.
            ending = threading.Thread(target=pool.shutdown, name="workers-end", daemon=True)
            ending.start()
            ending.join(PASS_GRACE_SECONDS)
            if ending.is_alive():
                log.warning("a pass did not end within %gs: abandoned", PASS_GRACE_SECONDS)
        if self.elector is not None:
            self.elector.release()
        _exit(0)

    def _phases(self) -> list[str | None]:
        return [(c.get("status") or {}).get("phase") for c in self.cache.all(KIND)]

    def _synced(self) -> dict[str, bool]:
        kinds: dict[str, bool] = {}
        for i in list(self.informers):
            kinds[i.kind] = kinds.get(i.kind, True) and i.synced.is_set()
        return kinds

    def health(self) -> dict[str, Any]:
        """What the liveness probe reports: informers' sync and errors, queue depth."""
        return {
            "synced": all(i.synced.is_set() for i in self.informers),
            "informer_errors": sum(i.errors for i in self.informers),
            "relists": sum(i.relists for i in self.informers),
            "cached_objects": self.cache.count(),
            "queue_depth": self.queue.depth(),
            "passes": self.passes,
            **leader.status(self.elector),
        }


# SIGTERM: a pass under way gets this long to end; the process is gone by TERMINATE_SECONDS.
PASS_GRACE_SECONDS = 2.0
TERMINATE_SECONDS = 4.5


def _exit(code: int) -> None:
    """Exit now: the log flushed, no thread joined (the workers, kopf's loop and executor)."""
    logging.shutdown()
    os._exit(code)


def _elector(settings: Settings, api: Any) -> leader.Elector | None:
    if not settings.leader_election:
        return None
    identity = f"{settings.pod_name or socket.gethostname()}_{secrets.token_hex(3)}"
    config = leader.LeaseConfig(
        namespace=settings.lease_namespace,
        name=settings.lease_name,
        identity=identity,
        duration_seconds=settings.lease_duration_seconds,
        renew_deadline_seconds=settings.renew_deadline_seconds,
        retry_period_seconds=settings.retry_period_seconds,
    )
    # Short timeouts of its own: a renewal that hangs must not outlast the renew deadline.
    retry = settings.retry_period_seconds
    return leader.Elector(Client(api, timeout=(retry, retry * 2)), config)


def _key(obj: Manifest) -> ClusterKey:
    return obj["metadata"]["namespace"], obj["metadata"]["name"]


def main(settings: Settings) -> int:
    """Run the operator with these settings until it is stopped."""
    import kopf  # noqa: PLC0415 - the operator's runtime only
    from kubernetes import client, config  # noqa: PLC0415

    kopf.configure(
        verbose=settings.debug,
        log_format=kopf.LogFormat.JSON if settings.log_format == "json" else kopf.LogFormat.PLAIN,
    )
    if not settings.debug:
        # One line per watch event ("Handler ... succeeded") says nothing; actions are logged.
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    try:
        config.load_incluster_config()
    except config.ConfigException:
        config.load_kube_config()
    metrics = OperatorMetrics(version=_version(), enabled=settings.metrics_port != 0)
    # Before the controller: a port taken makes start-up fail at once, not in a thread.
    stop_metrics = metrics.serve(settings.metrics_host, settings.metrics_port)
    api = client.ApiClient()
    elector = _elector(settings, api)
    # The replica's identity in the API server's audit log (which replica wrote what).
    api.user_agent = f"pgherd-operator/{_version()}" + (
        f" ({elector.config.identity})" if elector else ""
    )
    controller = Controller(settings, Client(api), metrics, elector)
    from pgherd.controller import handlers  # noqa: F401, PLC0415 - registers the handlers

    # kopf runs in a thread of its own, so that the signals are pgherd's (kopf installs its
    # handlers only in the main thread): its graceful exit waits on its tasks and threads,
    # where SIGTERM must hand the lease over and exit within seconds.
    kopf_thread = threading.Thread(
        target=kopf.run,
        kwargs={
            "standalone": True,
            "clusterwide": not settings.namespaces,
            "namespaces": list(settings.namespaces),
            "liveness_endpoint": (
                f"http://{settings.health_host}:{settings.health_port}/healthz"
                if settings.health_port
                else None
            ),
            "memo": kopf.Memo(controller=controller),
        },
        name="kopf",
        daemon=True,
    )
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda received, _frame: controller.terminate(received))
    kopf_thread.start()
    while kopf_thread.is_alive():
        kopf_thread.join(1.0)
    stop_metrics()
    return 0


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version  # noqa: PLC0415

    try:
        return version("pgherd")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown"
