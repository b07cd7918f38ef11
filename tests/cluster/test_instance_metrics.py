"""Each instance's Prometheus exporter on a real two-instance cluster: roles and lag as
the primary and the replica see them, counters that follow writes, sizes, and user queries
from ConfigMaps (one broken, one ConfigMap missing) next to the built-in metrics.

The tests share one cluster and run in file order. Scrape times are printed (-s shows them).
"""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Iterator

import pytest
from prometheus_client.parser import text_string_to_metric_families

from pgherd.controller.client import ApiError
from pgherd.controller.client import Client as Kube
from pgherd_dev.kubelet import PORTS_ANNOTATION
from tests.operator_harness import Cluster, Operator, wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

GOOD = """
test_answer:
  query: "SELECT 'deep thought' AS source, 42 AS answer, 7 AS questions"
  metrics:
    - source: {usage: LABEL, description: Who answered}
    - answer: {usage: GAUGE, description: The answer}
    - questions: {usage: COUNTER, description: Questions asked}
test_primary_only:
  query: "SELECT 1 AS one"
  master: true
  metrics:
    - one: {usage: GAUGE, description: Present on the primary only}
"""
BROKEN = """
test_broken:
  query: "SELECT 1/0 AS x"
  metrics:
    - x: {usage: GAUGE}
"""

Samples = dict[str, dict[tuple[tuple[str, str], ...], float]]
SCRAPE_TIMES: dict[str, list[float]] = {}


@pytest.fixture(scope="module")
def monitored(operator: Operator, kube: Kube) -> Iterator[Cluster]:
    ns = "t-metrics"
    kube.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
    kube.apply(
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "queries", "namespace": ns},
            "data": {"good.yaml": GOOD, "broken.yaml": BROKEN},
        }
    )
    cluster = Cluster(kube, ns, "mon")
    refs = [
        {"name": "queries", "key": "good.yaml"},
        {"name": "queries", "key": "broken.yaml"},
        # Missing: the instances start all the same (the volume source is optional).
        {"name": "not-there", "key": "queries.yaml"},
    ]
    cluster.create({"instances": 2, "monitoring": {"customQueries": refs}})
    cluster.wait_healthy(2)
    yield cluster
    for pod, times in sorted(SCRAPE_TIMES.items()):
        median = sorted(times)[len(times) // 2]
        print(
            f"\nscrape time {pod}: {len(times)} scrapes,"
            f" median {median:.3f}s, max {max(times):.3f}s"
        )
    kube.delete("Namespace", None, ns)


def scrape(cluster: Cluster, pod: str) -> Samples:
    """The pod's /metrics, parsed as Prometheus would: sample name -> labels -> value."""
    got = cluster.kube.get("Pod", cluster.namespace, pod)
    assert got is not None
    port = json.loads(got["metadata"]["annotations"][PORTS_ANNOTATION])["metrics"]
    began = time.monotonic()
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    SCRAPE_TIMES.setdefault(pod, []).append(time.monotonic() - began)
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return out


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[name][tuple(sorted(labels.items()))]


def roles(cluster: Cluster) -> tuple[str, str]:
    primary = cluster.primary()
    replica = next(
        p["metadata"]["name"] for p in cluster.pods() if p["metadata"]["name"] != primary
    )
    return primary, replica


def test_each_instance_reports_its_role_and_the_replication_lag(monitored: Cluster) -> None:
    primary, replica = roles(monitored)

    def lag_seen() -> tuple[Samples, Samples] | None:
        p, r = scrape(monitored, primary), scrape(monitored, replica)
        standby = p.get("pgherd_replication_lag_bytes", {})
        return (p, r) if (("application_name", replica),) in standby else None

    p, r = wait_for("the standby's lag on the primary", lag_seen, timeout=60)
    assert value(p, "pgherd_up") == value(r, "pgherd_up") == 1.0
    assert value(p, "pgherd_instance_is_primary") == 1.0
    assert value(r, "pgherd_instance_is_primary") == 0.0
    assert value(p, "pgherd_instance_timeline") == value(r, "pgherd_instance_timeline") >= 1
    assert value(p, "pgherd_replication_lag_bytes", application_name=replica) >= 0
    assert value(p, "pgherd_replication_lag_seconds", application_name=replica) >= 0
    assert "pgherd_replica_lag_bytes" not in p
    assert "pgherd_replication_lag_bytes" not in r
    assert value(r, "pgherd_replica_lag_bytes") >= 0
    assert value(r, "pgherd_replica_lag_seconds") >= 0
    assert value(r, "pgherd_replica_replay_paused") == 0.0
    for samples in (p, r):
        assert value(samples, "pgherd_volume_size_bytes", volume="data") > 0
        assert value(samples, "pgherd_volume_available_bytes", volume="data") > 0
        assert value(samples, "pgherd_wal_bytes_total") > 0
        assert value(samples, "pgherd_wal_directory_bytes") > 0
        assert value(samples, "pgherd_max_connections") > 0
        assert value(samples, "pgherd_connections", state="active") >= 1
        assert value(samples, "pgherd_oldest_transaction_age_seconds") >= 0
        assert value(samples, "pgherd_long_running_transactions") == 0
        assert value(samples, "pgherd_archiver_failed_total") == 0
        assert value(samples, "pgherd_exporter_scrape_duration_seconds") > 0
        # No spec.backup: the agent never wrote a summary, so no backup time is made up.
        assert "pgherd_backup_last_success_timestamp_seconds" not in samples


def test_writes_show_in_transactions_wal_and_database_size(monitored: Cluster) -> None:
    primary, replica = roles(monitored)
    before = scrape(monitored, primary)
    committed = value(before, "pgherd_transactions_committed_total", datname="app")
    with monitored.connect(primary, autocommit=True) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS m (v int)")
        for i in range(20):
            conn.execute("INSERT INTO m VALUES (%s)", (i,))

    def counted() -> Samples | None:
        after = scrape(monitored, primary)
        grown = value(after, "pgherd_transactions_committed_total", datname="app") >= committed + 20
        return after if grown else None

    after = wait_for("20 more commits in app", counted, timeout=30)
    assert value(after, "pgherd_wal_bytes_total") > value(before, "pgherd_wal_bytes_total")
    assert value(after, "pgherd_database_size_bytes", datname="app") > 1_000_000
    assert ("datname", "template1") not in {k for ks in after["pgherd_deadlocks_total"] for k in ks}
    # The replica receives what the primary wrote.
    wait_for(
        "the replica's received WAL to pass the writes",
        lambda: (
            value(scrape(monitored, replica), "pgherd_wal_bytes_total")
            >= value(after, "pgherd_wal_bytes_total")
        ),
        timeout=30,
    )


def test_custom_queries_beside_a_broken_one(monitored: Cluster) -> None:
    primary, replica = roles(monitored)
    p, r = scrape(monitored, primary), scrape(monitored, replica)
    for samples in (p, r):
        assert value(samples, "test_answer_answer", source="deep thought") == 42.0
        assert value(samples, "test_answer_questions_total", source="deep thought") == 7.0
        assert "test_broken_x" not in samples
        assert value(samples, "pgherd_up") == 1.0
    assert value(p, "test_primary_only_one") == 1.0
    assert "test_primary_only_one" not in r
    errors = value(p, "pgherd_exporter_errors_total", query="test_broken")
    again = scrape(monitored, primary)
    assert value(again, "pgherd_exporter_errors_total", query="test_broken") == errors + 1
    # Only the broken query fails: no built-in group, no other query.
    assert set(again["pgherd_exporter_errors_total"]) == {(("query", "test_broken"),)}


def test_two_queries_files_of_the_same_name_are_refused(monitored: Cluster, kube: Kube) -> None:
    refs = [{"name": "a-b", "key": "c.yaml"}, {"name": "a", "key": "b-c.yaml"}]
    with pytest.raises(ApiError) as refused:
        Cluster(kube, monitored.namespace, "clash").create({"monitoring": {"customQueries": refs}})
    assert refused.value.status == 422
    assert "spec.monitoring.customQueries" in refused.value.message
    assert "same file name" in refused.value.message
