"""In-memory caches of what a reconcile reads, fed by list+watch.

Each Informer lists one kind in one scope (a namespace, or all of them) with a label
selector, then watches from the list's resourceVersion; a watch that ends is resumed from the
last version seen (bookmarks keep it fresh), and one whose version is too old (410 Gone) is
replaced by a new list. Every change is passed to a callback, which maps it to the clusters to
reconcile. Only objects selected by pgherd's labels (or a Secret's opt-in label) are held, and
trimmed of what no decision reads (managedFields, a pod's spec), so memory stays bounded by
the clusters served. The custom resources themselves come from kopf's watch (handlers).

Objects in the cache are shared, never copied: nothing may change them.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from pgherd.controller.client import KINDS, ApiError, Client, Gone, Manifest
from pgherd.controller.metrics import OperatorMetrics
from pgherd.render.labels import CLUSTER

log = logging.getLogger(__name__)

Key = tuple[str, str]  # (namespace, name)
OnChange = Callable[[str, Manifest], None]  # (kind, object) of every add, change and delete
_DROPPED_ANNOTATIONS = ("kubectl.kubernetes.io/last-applied-configuration",)
WATCH_SECONDS = 300
BACKOFF_MAX = 30.0


# What of an object's status a decision reads, by kind (the rest is dropped).
_STATUS_KEPT = {
    "Pod": ("phase", "conditions", "podIP"),
    "StatefulSet": ("updateRevision", "currentRevision", "replicas"),
    "Job": ("active", "succeeded", "failed", "conditions"),
}
_CONTAINER_STATUS_KEPT = ("name", "state", "lastState", "restartCount")
# Strings this short recur across objects (keys, labels, kinds): held once.
_INTERN_UP_TO = 64


def _interned(value: Any) -> Any:
    if isinstance(value, dict):
        return {sys.intern(k): _interned(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_interned(v) for v in value]
    if isinstance(value, str) and len(value) <= _INTERN_UP_TO:
        return sys.intern(value)
    return value


def trim(kind: str, obj: Manifest) -> Manifest:
    """What the controller reads of an object: no managedFields, no client-side apply copy,
    of a Pod only its metadata, status and node, of a Node only whether it drains, of a
    status only what decisions read; recurring strings held once. Thousands of objects are
    cached: this is most of the memory."""
    meta = dict(obj.get("metadata") or {})
    meta.pop("managedFields", None)
    annotations = meta.get("annotations")
    if annotations and any(a in annotations for a in _DROPPED_ANNOTATIONS):
        meta["annotations"] = {
            k: v for k, v in annotations.items() if k not in _DROPPED_ANNOTATIONS
        }
    out = {**obj, "metadata": meta}
    if kind == "Pod":
        # Of the spec only the node (drain-aware switchover).
        node = (obj.get("spec") or {}).get("nodeName")
        out = {"metadata": meta, "status": obj.get("status") or {}}
        if node:
            out["spec"] = {"nodeName": node}
    if kind == "Job":
        # Created once, never applied again: its pod template is not read back.
        out = {"metadata": meta, "status": obj.get("status") or {}}
    if kind == "Node":
        # Whether it drains (cordon, removal taints) is all a decision reads of a Node; its
        # status (heartbeats, images) is most of its size.
        spec = obj.get("spec") or {}
        keep = {"name": meta.get("name"), "resourceVersion": meta.get("resourceVersion")}
        out = {
            "metadata": {k: v for k, v in keep.items() if v is not None},
            "spec": {k: spec[k] for k in ("unschedulable", "taints") if k in spec},
        }
    if kind in _STATUS_KEPT:
        status = out.get("status") or {}
        out["status"] = {k: status[k] for k in _STATUS_KEPT[kind] if k in status}
    if kind == "Pod" and (containers := (obj.get("status") or {}).get("containerStatuses")):
        # The kubelet's report of each container's state (operator-assisted leader release,
        # pgherd.controller.leader_release); not its image and ids.
        out["status"]["containerStatuses"] = [
            {k: c[k] for k in _CONTAINER_STATUS_KEPT if k in c} for c in containers
        ]
    out.setdefault("kind", kind)
    trimmed: Manifest = _interned(out)
    return trimmed


def _key(obj: Manifest) -> Key:
    meta = obj["metadata"]
    return str(meta.get("namespace") or ""), str(meta["name"])


def selects(selector: str, labels: dict[str, str]) -> bool:
    """Whether labels match a selector of the forms the informers use: `key`, `key=value`,
    comma-separated."""
    for term in filter(None, (t.strip() for t in selector.split(","))):
        key, _, value = term.partition("=")
        if key not in labels or (value and labels[key] != value):
            return False
    return True


def _same_version(a: Manifest, b: Manifest) -> bool:
    return bool(a["metadata"].get("resourceVersion") == b["metadata"].get("resourceVersion"))


def _newer(a: Manifest, b: Manifest | None) -> bool:
    """Whether a is at least as new as b (resourceVersions are etcd revisions here; when they
    are not numbers, the latest write wins)."""
    if b is None:
        return True
    va, vb = a["metadata"].get("resourceVersion", ""), b["metadata"].get("resourceVersion", "")
    return not (va.isdigit() and vb.isdigit()) or int(va) >= int(vb)


@dataclass
class Store:
    """The objects of one informer, with an index by the cluster label."""

    kind: str
    selector: str | None = None  # None: fed by something else (kopf), holds what it is given
    objects: dict[Key, Manifest] = field(default_factory=dict)
    by_cluster: dict[Key, dict[str, Manifest]] = field(default_factory=dict)
    listed: bool = False  # its informer has listed once: an empty store means "none exist"

    def _index(self, obj: Manifest, add: bool) -> None:
        cluster = ((obj["metadata"].get("labels") or {}).get(CLUSTER)) or None
        if cluster is None:
            return
        ns, name = _key(obj)
        bucket = self.by_cluster.setdefault((ns, cluster), {})
        if add:
            bucket[name] = obj
        else:
            bucket.pop(name, None)
            if not bucket:
                del self.by_cluster[(ns, cluster)]

    def put(self, obj: Manifest) -> Manifest | None:
        key = _key(obj)
        old = self.objects.get(key)
        if old is not None:
            self._index(old, add=False)
        self.objects[key] = obj
        self._index(obj, add=True)
        return old

    def remove(self, key: Key) -> Manifest | None:
        old = self.objects.pop(key, None)
        if old is not None:
            self._index(old, add=False)
        return old


class Cache:
    """Every informer's store, read under one lock: by name, or by kind and cluster."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._stores: dict[str, list[Store]] = {}

    def store(self, kind: str, selector: str | None = None) -> Store:
        with self._lock:
            store = Store(kind, selector)
            self._stores.setdefault(kind, []).append(store)
            return store

    def put(self, store: Store, obj: Manifest) -> bool:
        """Hold obj in store (kopf's feed of the custom resources); False when that version
        was held already (the operator's own write) or a newer one is."""
        with self._lock:
            held = store.objects.get(_key(obj))
            if (held is not None and _same_version(held, obj)) or not _newer(obj, held):
                return False
            store.put(obj)
            return True

    def remove(self, store: Store, namespace: str, name: str) -> None:
        with self._lock:
            store.remove((namespace, name))

    def write_through(self, obj: Manifest) -> None:
        """What the operator just wrote, so the next pass sees it before the watch does:
        into every store that holds the object or would select it."""
        kind = obj.get("kind", "")
        trimmed = trim(kind, obj)
        labels = trimmed["metadata"].get("labels") or {}
        with self._lock:
            for store in self._stores.get(kind, ()):
                held = store.objects.get(_key(trimmed))
                wanted = store.selector is not None and selects(store.selector, labels)
                if (held is not None or wanted) and _newer(trimmed, held):
                    store.put(trimmed)

    def get(self, kind: str, namespace: str, name: str) -> Manifest | None:
        with self._lock:
            for store in self._stores.get(kind, ()):
                if (obj := store.objects.get((namespace, name))) is not None:
                    return obj
        return None

    def listed(self, kind: str) -> bool:
        """Whether the kind is watched and listed: an optional kind (a CRD that may not be
        installed, as PodMonitor) is only then known present or absent."""
        with self._lock:
            return any(s.listed for s in self._stores.get(kind, ()))

    def of_cluster(self, kind: str, namespace: str, cluster: str) -> list[Manifest]:
        """Objects of a kind labelled pgherd.io/cluster=<cluster> in the namespace."""
        with self._lock:
            found: dict[str, Manifest] = {}
            for store in self._stores.get(kind, ()):
                found.update(store.by_cluster.get((namespace, cluster), {}))
        return [found[n] for n in sorted(found)]

    def all(self, kind: str, namespace: str | None = None) -> list[Manifest]:
        with self._lock:
            found: dict[Key, Manifest] = {}
            for store in self._stores.get(kind, ()):
                found.update((k, v) for k, v in store.objects.items() if namespace in (None, k[0]))
        return [found[k] for k in sorted(found)]

    def count(self) -> int:
        with self._lock:
            return sum(len(s.objects) for stores in self._stores.values() for s in stores)

    # Mutations, by the informers only.
    def _put(self, store: Store, obj: Manifest) -> bool:
        """Hold obj; False when the store had this very version already (the operator's own
        write, seen through write-through first): not a change for anyone."""
        with self._lock:
            held = store.objects.get(_key(obj))
            if held is not None and _same_version(held, obj):
                return False
            store.put(obj)
            return True

    def _remove(self, store: Store, key: Key) -> Manifest | None:
        with self._lock:
            return store.remove(key)

    def _replace(self, store: Store, items: Iterable[Manifest]) -> list[Manifest]:
        """Make the store hold exactly items; returns what changed (gone ones included)."""
        with self._lock:
            store.listed = True
            fresh = {_key(o): o for o in items}
            changed = [old for key, old in list(store.objects.items()) if key not in fresh]
            for key in [k for k in store.objects if k not in fresh]:
                store.remove(key)
            for obj in fresh.values():
                old = store.put(obj)
                if old is None or old["metadata"].get("resourceVersion") != obj["metadata"].get(
                    "resourceVersion"
                ):
                    changed.append(obj)
            return changed


class Informer:
    """List, then watch, one kind in one scope; keeps a Store of the Cache current."""

    def __init__(  # noqa: PLR0917 - one informer's whole scope
        self,
        client: Client,
        cache: Cache,
        kind: str,
        namespace: str | None,
        selector: str,
        on_change: OnChange,
        *,
        accept: Callable[[Manifest], bool] | None = None,
        metrics: OperatorMetrics | None = None,
    ) -> None:
        self.client = client
        self.metrics = metrics or OperatorMetrics.disabled()
        self.cache = cache
        self.kind = kind
        self.namespace = namespace
        self.selector = selector
        self.on_change = on_change
        # Namespace patterns (globs) watch every namespace and keep the matching ones.
        self.accept = accept or (lambda _: True)
        self.store = cache.store(kind, selector)
        self.synced = threading.Event()
        self.relists = 0
        self.events = 0
        self.errors = 0
        self.last_error: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name=f"informer-{kind}-{namespace or 'all'}", daemon=True
        )

    def __repr__(self) -> str:
        return f"Informer({self.kind}, {self.namespace or '*'}, {self.selector!r})"

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _notify(self, obj: Manifest) -> None:
        try:
            self.on_change(self.kind, obj)
        except Exception:  # a callback's failure must not end the watch
            log.exception("%r: change callback failed", self)

    def _relist(self, reason: str) -> str:
        listing = self.client.listing(self.kind, self.namespace, self.selector)
        # A list's items carry no apiVersion and kind (a watch event's object does): without
        # them no listed child would contain what the operator renders, and every relist (a
        # start, a takeover, a watch expired after an API-server outage) would re-apply every
        # child of every cluster at once.
        head = {"apiVersion": KINDS[self.kind].group_version, "kind": self.kind}
        items = [trim(self.kind, head | o) for o in listing.items if self.accept(o)]
        changed = self.cache._replace(self.store, items)
        self.relists += 1
        self.metrics.listed(self.kind, reason)
        self.synced.set()
        for obj in changed:
            self._notify(obj)
        return listing.resource_version

    def _watch(self, version: str) -> str:
        for event in self.client.watch(
            self.kind,
            self.namespace,
            selector=self.selector,
            resource_version=version,
            timeout_seconds=WATCH_SECONDS,
        ):
            if self._stop.is_set():
                break
            obj = event.get("object") or {}
            version = str(obj.get("metadata", {}).get("resourceVersion") or version)
            kind = event.get("type")
            if kind == "BOOKMARK" or not self.accept(obj):
                continue
            self.events += 1
            self.metrics.watch_event(self.kind, str(kind))
            trimmed = trim(self.kind, obj)
            if kind == "DELETED":
                self.cache._remove(self.store, _key(trimmed))
            elif not self.cache._put(self.store, trimmed):
                continue  # the operator's own write, seen already: nothing to look at again
            self._notify(trimmed)
        return version

    def _run(self) -> None:
        version: str | None = None
        why = "initial"  # why the next list is made
        backoff = 0.5
        while not self._stop.is_set():
            try:
                if version is None:
                    version = self._relist(why)
                version = self._watch(version)
                backoff = 0.5
            except Gone:
                version, why = None, "expired"  # too old to resume: list again
            except (ApiError, ValueError) as e:
                self.errors += 1
                self.metrics.watch_failed(self.kind)
                self.last_error = str(e)
                log.warning("%r: %s; retrying in %.1fs", self, e, backoff)
                if self._stop.wait(backoff):
                    break
                backoff = min(BACKOFF_MAX, backoff * 2)
            except Exception:
                self.errors += 1
                self.metrics.watch_failed(self.kind)
                log.exception("%r failed; listing again", self)
                version, why = None, "error"
                time.sleep(min(BACKOFF_MAX, backoff))
