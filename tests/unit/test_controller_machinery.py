"""The controller's machinery without an API server: the work queue (debounce, one pass per
cluster at a time, back-off), the caches' stores and write-through, and the settings."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from pgherd.controller.act import Actor
from pgherd.controller.actions import Event, Involved
from pgherd.controller.cache import Cache, selects, trim
from pgherd.controller.queue import WorkQueue, run_workers
from pgherd.controller.snapshot import Snapshot
from pgherd.settings import Settings, SettingsError
from tests.unit.snapshots import NOW, cluster_raw


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# ---- the work queue -------------------------------------------------------------------
def test_a_burst_of_changes_makes_one_pass() -> None:
    clock = Clock()
    q = WorkQueue(clock)
    for _ in range(50):
        q.add(("ns", "a"), delay=0.2)
    assert q.depth() == 1
    assert q.get(timeout=0) is None  # not due yet: the burst may go on
    clock.now += 0.2
    assert q.get(timeout=0) == ("ns", "a")
    assert q.get(timeout=0) is None


def test_an_earlier_time_wins() -> None:
    clock = Clock()
    q = WorkQueue(clock)
    q.add(("ns", "a"), delay=30)
    q.add(("ns", "a"), delay=0)
    assert q.get(timeout=0) == ("ns", "a")


def test_a_cluster_is_never_in_two_passes_at_once() -> None:
    clock = Clock()
    q = WorkQueue(clock)
    q.add(("ns", "a"))
    assert q.get(timeout=0) == ("ns", "a")
    q.add(("ns", "a"))  # a change while its pass runs
    assert q.get(timeout=0) is None  # not handed to a second worker
    q.done(("ns", "a"))
    assert q.get(timeout=0) == ("ns", "a")  # ... but runs right after


def test_a_failed_pass_backs_off_exponentially() -> None:
    clock = Clock()
    q = WorkQueue(clock)
    key = ("ns", "a")
    q.add(key)
    for wait in (1.0, 2.0, 4.0):
        assert q.get(timeout=0) == key
        q.done(key, failed=True)
        clock.now += wait - 0.01
        assert q.get(timeout=0) is None
        clock.now += 0.01
    assert q.get(timeout=0) == key
    q.done(key)  # a success forgets the failures
    q.add(key)
    assert q.get(timeout=0) == key


def test_workers_run_different_clusters_in_parallel() -> None:
    q = WorkQueue()
    # Three passes must be inside at the same time for any of them to get past this.
    together = threading.Barrier(3, timeout=10)
    seen: list[str] = []

    def work(key: tuple[str, str]) -> bool:
        together.wait()
        seen.append(key[1])
        return True

    pool = run_workers(q, 3, work)
    for name in "abc":
        q.add(("ns", name))
    try:
        for _ in range(100):
            if len(seen) == 3:
                break
            threading.Event().wait(0.05)
        assert sorted(seen) == ["a", "b", "c"]
    finally:
        q.close()
        pool.shutdown(wait=False)


# ---- the caches -------------------------------------------------------------------------
def _obj(name: str, rv: str, labels: dict[str, str] | None = None, kind: str = "Service") -> Any:
    return {
        "kind": kind,
        "metadata": {"name": name, "namespace": "ns", "resourceVersion": rv,
                     "labels": labels or {}, "managedFields": [{"big": "x"}]},
        "spec": {"x": 1},
    }  # fmt: skip


def test_trim_drops_what_no_decision_reads() -> None:
    pod = {**_obj("p", "1", kind="Pod"), "status": {"phase": "Running", "hostIP": "1.2.3.4"}}
    trimmed = trim("Pod", pod)
    assert "managedFields" not in trimmed["metadata"]
    assert "spec" not in trimmed
    assert trimmed["status"] == {"phase": "Running"}
    assert pod["metadata"]["managedFields"], "the original is not changed"


@pytest.mark.parametrize(
    ("selector", "labels", "expected"),
    [
        ("pgherd.io/cluster", {"pgherd.io/cluster": "db"}, True),
        ("pgherd.io/cluster", {}, False),
        ("pgherd.io/use=true", {"pgherd.io/use": "true"}, True),
        ("pgherd.io/use=true", {"pgherd.io/use": "false"}, False),
        ("a,b=1", {"a": "x", "b": "1"}, True),
    ],
)
def test_selectors(selector: str, labels: dict[str, str], expected: bool) -> None:
    assert selects(selector, labels) is expected


def test_stores_index_by_cluster_and_write_through_only_what_they_select() -> None:
    cache = Cache()
    owned = cache.store("Service", "pgherd.io/cluster")
    cache._replace(owned, [_obj("db-rw", "5", {"pgherd.io/cluster": "db"})])
    assert [o["metadata"]["name"] for o in cache.of_cluster("Service", "ns", "db")] == ["db-rw"]
    # What the operator writes is seen at once, never older than what the watch brought.
    cache.write_through(_obj("db-ro", "6", {"pgherd.io/cluster": "db"}))
    cache.write_through(_obj("db-rw", "4", {"pgherd.io/cluster": "db"}))
    cache.write_through(_obj("web", "7"))  # not selected: not held
    assert [o["metadata"]["name"] for o in cache.of_cluster("Service", "ns", "db")] == [
        "db-ro",
        "db-rw",
    ]
    assert cache.get("Service", "ns", "db-rw")["metadata"]["resourceVersion"] == "5"  # type: ignore[index]
    assert cache.get("Service", "ns", "web") is None


def test_a_relist_reports_what_changed_and_what_went() -> None:
    cache = Cache()
    store = cache.store("Service", "pgherd.io/cluster")
    a, b = _obj("a", "1", {"pgherd.io/cluster": "x"}), _obj("b", "1", {"pgherd.io/cluster": "x"})
    cache._replace(store, [a, b])
    changed = cache._replace(store, [_obj("a", "2", {"pgherd.io/cluster": "x"})])
    assert sorted((o["metadata"]["name"], o["metadata"]["resourceVersion"]) for o in changed) == [
        ("a", "2"),
        ("b", "1"),
    ]
    assert cache.get("Service", "ns", "b") is None


def test_a_listed_child_is_what_the_operator_renders() -> None:
    """Issue 16 (API-server outage): a list's items come without apiVersion and kind; held
    so, no listed child would contain its rendered self and every relist would re-apply every
    child."""
    from pgherd.controller.cache import Informer  # noqa: PLC0415
    from pgherd.controller.client import Listing  # noqa: PLC0415
    from pgherd.controller.diff import contains, stamped  # noqa: PLC0415

    rendered = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "metadata": {"name": "db-instance", "namespace": "ns",
                     "labels": {"pgherd.io/cluster": "db"}},
        "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get"]}],
    }  # fmt: skip
    live = stamped(rendered)
    listed = {k: v for k, v in live.items() if k not in ("apiVersion", "kind")}
    listed["metadata"] = {**live["metadata"], "resourceVersion": "7", "uid": "u"}

    class Lister:
        def listing(self, kind: str, namespace: str | None, selector: str = "") -> Listing:
            return Listing([listed], "7")

    cache = Cache()
    informer = Informer(Lister(), cache, "Role", "ns", "pgherd.io/cluster", lambda *_: None)  # type: ignore[arg-type]
    informer._relist("initial")
    held = cache.get("Role", "ns", "db-instance")
    assert held is not None and contains(held, stamped(rendered))


# ---- settings ---------------------------------------------------------------------------
def test_settings_from_the_environment() -> None:
    s = Settings.from_env(
        {
            "WATCH_NAMESPACE": "a, b",
            "PGHERD_RESYNC_SECONDS": "5",
            "PGHERD_WORKERS": "3",
            "RELATED_IMAGE_POSTGRES": "mirror/pg@sha256:1",
            "RELATED_IMAGE_POSTGRES_16": "mirror/pg16@sha256:2",
            "PGHERD_LOG_FORMAT": "JSON",
        }
    )
    assert s.namespaces == ("a", "b")
    assert (s.resync_seconds, s.workers, s.log_format) == (5.0, 3, "json")
    assert s.image_for(15) == "mirror/pg@sha256:1"
    assert s.image_for(16) == "mirror/pg16@sha256:2"
    assert s.image_for(17) is None
    assert Settings.from_env({"WATCH_NAMESPACE": "a"}, namespaces=["z"]).namespaces == ("z",)


@pytest.mark.parametrize(
    ("env", "words"),
    [
        ({"PGHERD_RESYNC_SECONDS": "soon"}, "PGHERD_RESYNC_SECONDS='soon' is not a number"),
        ({"PGHERD_WORKERS": "0"}, "PGHERD_WORKERS='0' must be at least 1"),
        ({"PGHERD_LOG_FORMAT": "xml"}, "must be plain or json"),
    ],
)
def test_bad_settings_name_the_variable(env: dict[str, str], words: str) -> None:
    with pytest.raises(SettingsError, match=words.replace("(", r"\(").replace(")", r"\)")):
        Settings.from_env(env)


def test_independent_applies_go_out_together_and_the_workload_after_them() -> None:
    from pgherd.controller.act import _batches  # noqa: PLC0415
    from pgherd.controller.actions import Apply, Delete  # noqa: PLC0415

    def apply(name: str, requires: frozenset[tuple[str, str]] = frozenset()) -> Apply:
        return Apply("x", manifest={"kind": "K", "metadata": {"name": name}}, requires=requires)

    a, b, sts, c = apply("a"), apply("b"), apply("sts", frozenset({("K", "a")})), apply("c")
    delete = Delete("x", kind="Pod", name="p")
    assert _batches([a, b, sts, c, delete, a]) == [[a, b], [sts], [c], [delete], [a]]


# ---- observe: the only reader -----------------------------------------------------------
def _filled_cache(with_statefulset: bool) -> Cache:
    from pgherd.api.v1alpha1 import PostgresCluster  # noqa: PLC0415
    from tests.unit.snapshots import cluster_raw, live_children  # noqa: PLC0415

    cache = Cache()
    clusters = cache.store("PostgresCluster")
    cache.put(clusters, cluster_raw())
    by_kind: dict[str, Any] = {}
    for (kind, _name), obj in live_children(PostgresCluster.model_validate(cluster_raw())).items():
        if kind == "StatefulSet" and not with_statefulset:
            continue
        store = by_kind.setdefault(kind, cache.store(kind, "pgherd.io/cluster"))
        cache._put(store, obj)  # filling the cache as an informer would
    return cache


def _observe(cache: Cache, **kw: Any) -> tuple[Any, list[tuple[str, str]]]:
    from pgherd.controller.observe import observe  # noqa: PLC0415
    from tests.unit.snapshots import NOW  # noqa: PLC0415

    probed: list[tuple[str, str]] = []
    found = kw.pop("found", {})

    def probe(kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        probed.append((kind, name))
        return found.get((kind, name))

    return observe(cache, probe, "prod", "db", NOW, **kw), probed


def test_a_cluster_whose_children_are_cached_is_observed_without_a_call() -> None:
    snapshot, probed = _observe(_filled_cache(with_statefulset=True))
    assert probed == []
    assert snapshot.statefulset is not None and snapshot.foreign == frozenset()


def test_before_the_first_instance_patronis_names_are_looked_at() -> None:
    _, probed = _observe(_filled_cache(with_statefulset=False))
    assert probed == [("ConfigMap", f"db-{s}") for s in ("config", "leader", "failover", "sync")]


def test_a_name_a_create_was_refused_for_is_looked_at_and_classified() -> None:
    neighbour = {"metadata": {"name": "db-rw", "labels": {"app": "web"}}}
    ours = {
        "metadata": {
            "name": "db-ro",
            "labels": {"pgherd.io/cluster": "db", "app.kubernetes.io/managed-by": "pgherd"},
            "ownerReferences": [
                {"uid": "0f6d2a3e-6b1c-4f7e-9a51-2c9d8e7f1a01", "controller": True}
            ],
        }
    }
    cache = _filled_cache(with_statefulset=True)
    for name in ("db-rw", "db-ro"):
        for store in cache._stores["Service"]:  # as if not cached yet
            store.remove(("prod", name))
    snapshot, probed = _observe(
        cache,
        recheck=frozenset({("Service", "db-rw"), ("Service", "db-ro")}),
        found={("Service", "db-rw"): neighbour, ("Service", "db-ro"): ours},
    )
    assert sorted(probed) == [("Service", "db-ro"), ("Service", "db-rw")]
    assert snapshot.foreign == {("Service", "db-rw")}
    assert snapshot.unsynced == {("Service", "db-ro")}


def _cache_with_pods(*pods: dict[str, Any]) -> Cache:
    cache = _filled_cache(with_statefulset=True)
    store = cache.store("Pod", "pgherd.io/cluster")
    for p in pods:
        cache._put(store, p)  # as an informer would
    return cache


@pytest.mark.parametrize(
    ("pod_ready", "annotated", "live", "asked", "ready"),
    [
        # the kubelet (Patroni's /readiness) is ahead of the annotation: Patroni is asked
        (True, "starting", "running", True, True),
        (True, "starting", "starting", True, False),
        (True, "starting", None, True, False),  # Patroni does not answer: not ready yet
        # the two agree: nobody is asked
        (True, "running", "running", False, True),
        (False, "starting", "running", False, False),
        (False, "running", "running", False, False),
    ],
)
def test_patroni_is_asked_only_while_the_kubelet_is_ahead_of_its_annotation(
    pod_ready: bool, annotated: str, live: str | None, asked: bool, ready: bool
) -> None:
    from tests.unit.snapshots import pod  # noqa: PLC0415

    calls: list[str] = []

    def live_state(api_url: str, cadata: str | None) -> str | None:
        calls.append(api_url)
        return live

    cache = _cache_with_pods(pod(0, role="primary"), pod(1, state=annotated, ready=pod_ready))
    snapshot, _ = _observe(cache, live_state=live_state)
    member = next(m for m in snapshot.members if m.name == "db-1")
    assert calls == (["http://10.0.0.1:8008/patroni"] if asked else [])
    assert member.ready is ready


def test_a_terminating_pod_is_not_asked_about() -> None:
    from tests.unit.snapshots import pod  # noqa: PLC0415

    cache = _cache_with_pods(pod(1, state="starting", deleting=True))
    snapshot, _ = _observe(cache, live_state=lambda url, _ca: pytest.fail(f"asked {url}"))
    assert [m.ready for m in snapshot.members] == [False]


# ---- Events ---------------------------------------------------------------------------------
class _Recorder:
    def __init__(self) -> None:
        self.created: list[dict[str, Any]] = []

    def create(self, body: dict[str, Any]) -> dict[str, Any]:
        self.created.append(body)
        return body


def test_an_event_is_on_the_cluster_unless_it_names_another_object() -> None:
    kube = _Recorder()
    actor = Actor(kube, Cache(), patroni_timeout=1)  # type: ignore[arg-type]
    snapshot = Snapshot("prod", "db", NOW, raw=cluster_raw())
    actor.post(snapshot, Event("Switchover", message="m"))
    on = Involved("PostgresDatabase", "app", "uid-app")
    actor.post(snapshot, Event("RoleNotFound", type="Warning", message="no alice", involved=on))
    cluster, database = (e["involvedObject"] for e in kube.created)
    assert cluster == {"apiVersion": "pgherd.io/v1alpha1", "kind": "PostgresCluster",
                       "name": "db", "namespace": "prod",
                       "uid": cluster_raw()["metadata"].get("uid")}  # fmt: skip
    assert database == {"apiVersion": "pgherd.io/v1alpha1", "kind": "PostgresDatabase",
                        "name": "app", "namespace": "prod", "uid": "uid-app"}  # fmt: skip
    assert kube.created[1]["metadata"]["name"].startswith("app.")
    assert (kube.created[1]["type"], kube.created[1]["reason"]) == ("Warning", "RoleNotFound")
