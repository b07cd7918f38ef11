"""The operator's own metrics, read as Prometheus reads them (the text exposition, parsed):
the real work queue, reconciler, informer, Patroni client and controller, driven with fake
API clients, each counting what it did; the settings that turn metrics on and off."""

from __future__ import annotations

import http.server
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from pgherd.api.v1alpha1 import ObjectMeta
from pgherd.controller import patroni
from pgherd.controller.cache import Cache, Informer
from pgherd.controller.client import ApiError, Gone, Listing
from pgherd.controller.metrics import OperatorMetrics
from pgherd.controller.queue import WorkQueue
from pgherd.controller.reconciler import Reconciler
from pgherd.controller.runner import Controller
from pgherd.settings import Settings, SettingsError
from pgherd_dev.processes import free_port
from tests.unit.snapshots import NOW, cluster_raw


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def samples(metrics: OperatorMetrics) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of the exposition: (name, labels) -> value."""
    text = metrics.exposition().decode()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(metrics: OperatorMetrics, name: str, **labels: str) -> float | None:
    return samples(metrics).get((name, frozenset(labels.items())))


def total(metrics: OperatorMetrics, name: str, **labels: str) -> float:
    """The sum over every series of name whose labels include labels."""
    wanted = set(labels.items())
    return sum(v for (n, ls), v in samples(metrics).items() if n == name and wanted <= ls)


@pytest.fixture
def metrics() -> OperatorMetrics:
    return OperatorMetrics(version="9.9.9")


class FakeKube:
    """The API server as act and observe see it: every write accepted, unless refused."""

    def __init__(self, *, fail_status: int = 0) -> None:
        self.fail_status = fail_status  # how many status writes fail (RuntimeError)
        self.writes: list[str] = []

    def get_metadata(self, kind: str, namespace: str | None, name: str) -> None:
        return None

    def apply(self, desired: dict[str, Any]) -> dict[str, Any]:
        self.writes.append(f"apply {desired['kind']}")
        meta = {**desired["metadata"], "resourceVersion": "1", "uid": "u"}
        return {**desired, "metadata": meta}

    def create(self, body: dict[str, Any]) -> dict[str, Any]:
        self.writes.append(f"create {body['kind']}")
        return body

    def patch(self, kind: str, namespace: str, name: str, body: Any, **_: Any) -> dict[str, Any]:
        if self.fail_status and kind == "PostgresCluster":
            self.fail_status -= 1
            raise RuntimeError("boom")
        self.writes.append(f"patch {kind}")
        return {"kind": kind, "metadata": {"name": name, "namespace": namespace}}

    def delete(self, *args: Any, **kwargs: Any) -> None:
        self.writes.append("delete")


def _reconciler(kube: FakeKube, metrics: OperatorMetrics) -> tuple[Reconciler, Cache]:
    cache = Cache()
    cache.put(cache.store("PostgresCluster"), cluster_raw({"instances": 2}))
    settings = Settings(workers=1)
    return Reconciler(cache, kube, settings, clock=lambda: NOW, metrics=metrics), cache  # type: ignore[arg-type]


# ---- passes and actions -------------------------------------------------------------------
def test_a_pass_is_timed_and_its_actions_counted(metrics: OperatorMetrics) -> None:
    kube = FakeKube()
    reconciler, _ = _reconciler(kube, metrics)
    result = reconciler.reconcile("prod", "db")
    assert result.error is None
    outcome = "requeue" if result.retry else "success"
    assert value(metrics, "pgherd_reconcile_duration_seconds_count",
                 kind="PostgresCluster", result=outcome) == 1  # fmt: skip
    applied = sum(1 for w in kube.writes if w.startswith("apply"))
    assert applied > 5  # a new cluster's children
    assert value(metrics, "pgherd_actions_total", action="apply", outcome="done") == applied
    assert total(metrics, "pgherd_reconcile_errors_total") == 0


@pytest.mark.parametrize("failures", [1, 2])
def test_a_failed_pass_counts_an_error_for_its_cluster_until_the_cluster_goes(
    metrics: OperatorMetrics, failures: int
) -> None:
    # 1: the pass fails and reports Degraded; 2: reporting it fails too, the worker sees it.
    kube = FakeKube(fail_status=failures)
    controller = Controller(Settings(workers=1), kube, metrics)  # type: ignore[arg-type]
    controller.cache.put(controller.clusters, cluster_raw({"instances": 1}))
    if failures == 1:
        result = controller.reconciler.reconcile("prod", "db")
        assert result.error == "RuntimeError" and result.retry
    else:
        with pytest.raises(RuntimeError):
            controller.reconciler.reconcile("prod", "db")
    assert value(metrics, "pgherd_reconcile_errors_total",
                 namespace="prod", cluster="db", reason="RuntimeError") == 1  # fmt: skip
    assert value(metrics, "pgherd_reconcile_duration_seconds_count",
                 kind="PostgresCluster", result="error") == 1  # fmt: skip
    meta = ObjectMeta.model_validate(cluster_raw()["metadata"])
    controller.on_cluster("DELETED", meta, cluster_raw())
    assert total(metrics, "pgherd_reconcile_errors_total") == 0, "a deleted cluster's series stay"


def test_a_write_the_api_server_refuses_is_an_error_and_a_refused_action(
    metrics: OperatorMetrics,
) -> None:
    class Refusing(FakeKube):
        def apply(self, desired: dict[str, Any]) -> dict[str, Any]:
            if desired["kind"] == "Service":
                raise ApiError(422, "Invalid", "no")
            return super().apply(desired)

    reconciler, _ = _reconciler(Refusing(), metrics)
    assert reconciler.reconcile("prod", "db").error == "Refused"
    assert value(metrics, "pgherd_actions_total", action="apply", outcome="refused")
    assert value(metrics, "pgherd_reconcile_errors_total",
                 namespace="prod", cluster="db", reason="Refused") == 1  # fmt: skip


# ---- the work queue -----------------------------------------------------------------------
def test_the_queue_reports_its_depth_wait_and_retries(metrics: OperatorMetrics) -> None:
    clock = Clock()
    q = WorkQueue(clock, metrics=metrics)
    metrics.observe(phases=list, queue_depth=q.depth, synced=dict)
    q.add(("ns", "a"))
    q.add(("ns", "b"), delay=5)
    assert value(metrics, "pgherd_workqueue_depth") == 2
    clock.now += 0.3  # a is due since 0.3 s
    assert q.get(timeout=0) == ("ns", "a")
    assert value(metrics, "pgherd_workqueue_depth") == 1
    assert value(metrics, "pgherd_workqueue_wait_duration_seconds_sum") == pytest.approx(0.3)
    assert value(metrics, "pgherd_workqueue_wait_duration_seconds_bucket", le="0.25") == 0
    assert value(metrics, "pgherd_workqueue_wait_duration_seconds_bucket", le="0.5") == 1
    q.done(("ns", "a"), failed=True)
    assert value(metrics, "pgherd_workqueue_retries_total") == 1


# ---- clusters by phase --------------------------------------------------------------------
def test_clusters_are_counted_by_phase_from_the_cache(metrics: OperatorMetrics) -> None:
    controller = Controller(Settings(), FakeKube(), metrics)  # type: ignore[arg-type]
    for name, phase in (("a", "Healthy"), ("b", "Healthy"), ("c", "Degraded"), ("d", None)):
        status = {"phase": phase} if phase else None
        controller.on_cluster("ADDED", ObjectMeta(name=name, namespace="ns"),
                              cluster_raw(name=name, namespace="ns", status=status))  # fmt: skip
    assert value(metrics, "pgherd_clusters", phase="Healthy") == 2
    assert value(metrics, "pgherd_clusters", phase="Degraded") == 1
    assert value(metrics, "pgherd_clusters", phase="Unknown") == 1
    assert value(metrics, "pgherd_clusters", phase="Creating") == 0  # every phase, always
    controller.on_cluster("DELETED", ObjectMeta(name="a", namespace="ns"), cluster_raw(name="a"))
    assert value(metrics, "pgherd_clusters", phase="Healthy") == 1
    assert value(metrics, "pgherd_watch_events_total", kind="PostgresCluster", type="ADDED") == 4
    assert value(metrics, "pgherd_watch_events_total", kind="PostgresCluster", type="DELETED") == 1


# ---- watches --------------------------------------------------------------------------------
def _service(name: str, rv: str) -> dict[str, Any]:
    return {"kind": "Service", "metadata": {"name": name, "namespace": "ns",
                                            "resourceVersion": rv,
                                            "labels": {"pgherd.io/cluster": "db"}}}  # fmt: skip


def test_an_informer_counts_events_lists_and_whether_it_synced(metrics: OperatorMetrics) -> None:
    informers: list[Informer] = []

    class Watching:
        watches = 0

        def listing(self, kind: str, namespace: str | None, selector: str = "") -> Listing:
            return Listing([_service("a", "1")], "1")

        def watch(self, *args: Any, **kwargs: Any) -> Iterator[dict[str, Any]]:
            self.watches += 1
            if self.watches == 1:
                yield {"type": "ADDED", "object": _service("b", "2")}
                yield {"type": "MODIFIED", "object": _service("b", "3")}
                yield {"type": "BOOKMARK", "object": {"metadata": {"resourceVersion": "4"}}}
                raise Gone(410, "Expired", "too old")
            yield {"type": "DELETED", "object": _service("a", "5")}
            informers[0].stop()

    cache = Cache()
    informer = Informer(Watching(), cache, "Service", "ns", "pgherd.io/cluster",  # type: ignore[arg-type]
                        lambda kind, obj: None, metrics=metrics)  # fmt: skip
    informers.append(informer)
    metrics.observe(phases=list, queue_depth=lambda: 0,
                    synced=lambda: {i.kind: i.synced.is_set() for i in informers})  # fmt: skip
    assert value(metrics, "pgherd_informer_synced", kind="Service") == 0
    informer._run()  # until the second watch stops it
    assert value(metrics, "pgherd_informer_synced", kind="Service") == 1
    for type_, n in (("ADDED", 1), ("MODIFIED", 1), ("DELETED", 1), ("BOOKMARK", None)):
        assert value(metrics, "pgherd_watch_events_total", kind="Service", type=type_) == n
    assert value(metrics, "pgherd_informer_lists_total", kind="Service", reason="initial") == 1
    assert value(metrics, "pgherd_informer_lists_total", kind="Service", reason="expired") == 1


# ---- Patroni ------------------------------------------------------------------------------
@pytest.fixture
def fake_patroni() -> Iterator[str]:
    """A Patroni REST API that reports itself running and refuses every change (HTTP 503)."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self._answer(200, b'{"state": "running"}')

        def do_PATCH(self) -> None:
            self._answer(503, b"no")

        def _answer(self, code: int, body: bytes) -> None:
            self.send_response(code)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/patroni"
    server.shutdown()
    server.server_close()


def test_patroni_calls_are_counted_by_operation_and_outcome(
    metrics: OperatorMetrics, fake_patroni: str
) -> None:
    record = metrics.patroni_call
    assert patroni.member_state(fake_patroni, timeout=2, cadata=None, record=record) == "running"
    closed = f"http://127.0.0.1:{free_port()}/patroni"
    assert patroni.member_state(closed, timeout=2, cadata=None, record=record) is None
    https = fake_patroni.replace("http:", "https:")
    assert patroni.member_state(https, timeout=2, cadata=None, record=record) is None
    rest = patroni.Client("u", "p", timeout=2, cadata=None, record=record)
    with pytest.raises(patroni.PatroniError):
        rest.patch_config(fake_patroni, {"ttl": 30})
    calls = "pgherd_patroni_requests_total"
    assert value(metrics, calls, operation="state", outcome="success") == 1
    assert value(metrics, calls, operation="state", outcome="unreachable") == 1
    assert value(metrics, calls, operation="state", outcome="ca_error") == 1
    assert value(metrics, calls, operation="patch_config", outcome="http_error") == 1
    seconds = "pgherd_patroni_request_duration_seconds_count"
    assert value(metrics, seconds, operation="state") == 3


# ---- the registry and its endpoint --------------------------------------------------------
def test_build_info_and_the_process_metrics_are_served_on_metrics(
    metrics: OperatorMetrics,
) -> None:
    port = free_port()
    stop = metrics.serve("127.0.0.1", port)
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
            text = r.read().decode()
    finally:
        stop()
    names = {f.name for f in text_string_to_metric_families(text)}
    assert {"process_resident_memory_bytes", "process_cpu_seconds", "python_info"} <= names
    assert 'pgherd_operator_build_info{version="9.9.9"} 1.0' in text
    # Nothing of another registry (the library's global one has the same process metrics).
    assert text.count("\nprocess_resident_memory_bytes ") == 1


def test_each_operator_metrics_has_a_registry_of_its_own() -> None:
    a, b = OperatorMetrics(version="1"), OperatorMetrics(version="2")
    a.retried()
    assert value(a, "pgherd_workqueue_retries_total") == 1
    assert value(b, "pgherd_workqueue_retries_total") == 0


def test_disabled_metrics_do_nothing_and_never_load_the_library() -> None:
    off = OperatorMetrics.disabled()
    off.reconciled("PostgresCluster", "ns", "a", 1.0, error="X", retry=False)
    off.patroni_call("state", "success", 0.1)
    off.forget("ns", "a")
    assert off.exposition() == b""
    assert off.serve("127.0.0.1", 1)() is None
    # The whole controller with metrics off, in a fresh interpreter.
    code = (
        "import sys\n"
        "from pgherd.controller.runner import Controller\n"
        "from pgherd.settings import Settings\n"
        "c = Controller(Settings(metrics_port=0), None)\n"
        "c.queue.add(('ns', 'a'))\n"
        "assert c.queue.get(timeout=1) == ('ns', 'a')\n"
        "assert 'prometheus_client' not in sys.modules, 'loaded'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


# ---- settings -----------------------------------------------------------------------------
def test_metrics_settings() -> None:
    assert (Settings.from_env({}).metrics_port, Settings.from_env({}).metrics_host) == (
        8080, "0.0.0.0",  # noqa: S104
    )  # fmt: skip
    env = {"PGHERD_METRICS_PORT": "9100", "PGHERD_METRICS_HOST": "127.0.0.1"}
    assert Settings.from_env(env).metrics_port == 9100
    assert Settings.from_env(env).metrics_host == "127.0.0.1"
    assert Settings.from_env({"PGHERD_METRICS_PORT": "0"}).metrics_port == 0
    assert Settings.from_env(env, metrics_port=0).metrics_port == 0  # the flag wins
    for bad in ("http", "-1", "70000", "80.5"):
        with pytest.raises(SettingsError, match="PGHERD_METRICS_PORT"):
            Settings.from_env({"PGHERD_METRICS_PORT": bad})


def test_the_leader_gauge_says_whether_this_replica_acts(metrics: OperatorMetrics) -> None:
    metrics.leading(False)
    assert value(metrics, "pgherd_operator_leader") == 0
    metrics.leading(True)
    assert value(metrics, "pgherd_operator_leader") == 1
