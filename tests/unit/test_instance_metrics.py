"""The instance's exporter without PostgreSQL: user query files parsed and validated, and the
metric families made from canned query rows, as Prometheus would read them.

The queries themselves run on real primaries and replicas in
tests/cluster/test_instance_metrics.py.
"""

from __future__ import annotations

import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

from pgherd import contract
from pgherd.operand import agent, metrics
from pgherd.operand.metrics import (
    CustomQuery,
    Observation,
    QueryError,
    QueryFiles,
    custom_families,
    families,
    merge_queries,
    parse_queries,
)
from pgherd_dev.processes import free_port

QUERIES = """
pg_locks_held:
  query: "SELECT mode, count(*) AS n, 3 AS waits FROM pg_locks GROUP BY mode"
  master: true
  metrics:
    - mode: {usage: LABEL, description: Lock mode}
    - n: {usage: GAUGE, description: Locks held}
    - waits: {usage: COUNTER, description: Lock waits}
slots:
  query: SELECT slot_name, active FROM pg_replication_slots
  metrics:
    - slot_name: {usage: LABEL}
    - active: {usage: GAUGE}
    - ignored: {usage: DISCARD}
"""


class _Families(Collector):
    def __init__(self, found: list[Metric]) -> None:
        self.found = found

    def collect(self) -> Iterator[Metric]:
        yield from self.found


def scraped(found: list[Metric]) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """What a scraper reads from these families: sample name -> labels -> value."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Families(found))
    out: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        for s in family.samples:
            out.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return out


def only(samples: dict[tuple[tuple[str, str], ...], float]) -> float:
    assert len(samples) == 1, samples
    return next(iter(samples.values()))


# ---- query files ----------------------------------------------------------------------------
def test_a_queries_file_in_postgres_exporter_format_is_read() -> None:
    queries, problems = parse_queries(QUERIES, "cm-queries.yaml")
    assert problems == []
    locks, slots = queries
    assert (locks.name, locks.master, locks.labels) == ("pg_locks_held", True, ["mode"])
    assert [(c.name, c.usage) for c in locks.values] == [("n", "GAUGE"), ("waits", "COUNTER")]
    assert locks.family_names() == ["pg_locks_held_n", "pg_locks_held_waits_total"]
    assert (slots.master, slots.family_names()) == (False, ["slots_active"])
    assert slots.source == "cm-queries.yaml"


@pytest.mark.parametrize(
    ("entry", "why"),
    [
        ("9bad: {query: SELECT 1 AS x, metrics: [{x: {usage: GAUGE}}]}", "not a valid metric"),
        ("a-b: {query: SELECT 1 AS x, metrics: [{x: {usage: GAUGE}}]}", "not a valid metric"),
        ("pgherd_x: {query: SELECT 1 AS x, metrics: [{x: {usage: GAUGE}}]}", "reserved"),
        ("q: {metrics: [{x: {usage: GAUGE}}]}", "query is missing"),
        ("q: {query: ' ', metrics: [{x: {usage: GAUGE}}]}", "query is missing"),
        ("q: {query: SELECT 1, master: 'yes', metrics: [{x: {usage: GAUGE}}]}", "master"),
        ("q: {query: SELECT 1}", "metrics must be"),
        ("q: {query: SELECT 1, metrics: [{x: {usage: HISTOGRAM}}]}", "usage 'HISTOGRAM'"),
        ("q: {query: SELECT 1, metrics: [{x-y: {usage: GAUGE}}]}", "column 'x-y'"),
        ("q: {query: SELECT 1, metrics: [{__x: {usage: GAUGE}}]}", "column '__x'"),
        ("q: {query: SELECT 1, metrics: [{x: {usage: LABEL}}]}", "no GAUGE or COUNTER"),
        ("q: {query: SELECT 1, metrics: [{x: {usage: GAUGE}}, {x: {usage: LABEL}}]}", "twice"),
        ("q: {query: SELECT 1, metrics: [{x: {usage: GAUGE}, y: {usage: GAUGE}}]}", "one-key"),
        ("q: {query: SELECT 1, metrics: [{x: GAUGE}]}", "expected {usage"),
        ("q: [SELECT 1]", "expected a mapping"),
    ],
)
def test_a_bad_entry_is_refused_by_name_and_the_others_stay(entry: str, why: str) -> None:
    good = "fine: {query: SELECT 1 AS x, metrics: [{x: {usage: GAUGE}}]}"
    queries, problems = parse_queries(f"{good}\n{entry}\n", "f.yaml")
    assert [q.name for q in queries] == ["fine"]
    assert len(problems) == 1
    assert why in problems[0].message, problems[0].message
    assert problems[0].message.startswith("f.yaml: ")
    assert problems[0].key == entry.split(":", 1)[0]


@pytest.mark.parametrize(
    ("text", "why"),
    [("a: [unclosed", "not valid YAML"), ("- a\n- b\n", "expected a mapping of query names")],
)
def test_a_file_that_is_no_queries_file_gives_nothing_and_says_why(text: str, why: str) -> None:
    queries, problems = parse_queries(text, "f.yaml")
    assert queries == []
    assert [p.key for p in problems] == ["f.yaml"]
    assert why in problems[0].message


def test_an_empty_file_is_no_problem() -> None:
    assert parse_queries("", "f.yaml") == ([], [])


def test_a_metric_defined_twice_keeps_the_first_file_s() -> None:
    first = parse_queries("q: {query: SELECT 1 AS x, metrics: [{x: {usage: GAUGE}}]}", "a.yaml")
    # q_x again, as a counter's name (q_x_total) and a gauge's clash in what is exposed.
    second = parse_queries(
        "q: {query: SELECT 2 AS x, metrics: [{x: {usage: GAUGE}}]}\n"
        "r: {query: SELECT 1 AS y, metrics: [{y: {usage: GAUGE}}]}",
        "b.yaml",
    )
    queries, problems = merge_queries([first, second])
    assert [(q.source, q.name) for q in queries] == [("a.yaml", "q"), ("b.yaml", "r")]
    assert [(p.key, p.message) for p in problems] == [("q", "b.yaml: q: q_x already defined")]


def test_query_files_are_read_again_only_when_they_change(tmp_path: Path) -> None:
    files = QueryFiles(tmp_path / "missing")
    files.refresh()
    assert (files.queries, files.problems) == ([], [])
    files = QueryFiles(tmp_path)
    (tmp_path / "a-queries.yaml").write_text(QUERIES)
    (tmp_path / "notes.txt").write_text("not a queries file")
    files.refresh()
    assert [q.name for q in files.queries] == ["pg_locks_held", "slots"]
    before = files.queries
    files.refresh()
    assert files.queries is before
    (tmp_path / "b-broken.yaml").write_text("x: {query: SELECT 1}")
    files.refresh()
    assert [q.name for q in files.queries] == ["pg_locks_held", "slots"]
    assert [p.key for p in files.problems] == ["x"]


# ---- user query results -----------------------------------------------------------------------
def _locks() -> CustomQuery:
    return parse_queries(QUERIES, "q.yaml")[0][0]


def test_a_user_query_s_rows_become_its_metrics() -> None:
    rows = [("AccessShareLock", 3, 7), ("ExclusiveLock", 1, None)]
    got = scraped(custom_families(_locks(), ["mode", "n", "waits"], rows))
    assert got["pg_locks_held_n"] == {
        (("mode", "AccessShareLock"),): 3.0,
        (("mode", "ExclusiveLock"),): 1.0,
    }
    # NULL: no sample for that row rather than a made-up value.
    assert got["pg_locks_held_waits_total"] == {(("mode", "AccessShareLock"),): 7.0}


def test_values_are_numbers_booleans_or_times() -> None:
    from datetime import UTC, datetime  # noqa: PLC0415
    from decimal import Decimal  # noqa: PLC0415

    stamp = datetime(2025, 1, 2, tzinfo=UTC)
    rows = [("a", Decimal("1.5"), 0), ("b", True, 0), ("c", stamp, 0), ("d", "2.5", 0)]
    got = scraped(custom_families(_locks(), ["mode", "n", "waits"], rows))["pg_locks_held_n"]
    assert list(got.values()) == [1.5, 1.0, stamp.timestamp(), 2.5]


@pytest.mark.parametrize(
    ("columns", "rows", "why"),
    [
        (["mode", "n"], [("a", 1)], "no column waits"),
        (["mode", "n", "waits"], [("a", "many", 1)], "'many' is not a number"),
        (["mode", "n", "waits"], [("a", 1, 1), ("a", 2, 2)], "same labels"),
        (["mode", "n", "waits"], [(str(i), 1, 1) for i in range(1001)], "more than 1000"),
    ],
)
def test_a_result_that_does_not_fit_its_declaration_is_an_error(
    columns: list[str], rows: list[tuple[Any, ...]], why: str
) -> None:
    with pytest.raises(QueryError, match=why):
        custom_families(_locks(), columns, rows)


# ---- built-in metrics -------------------------------------------------------------------------
PRIMARY_ROW = {
    "is_primary": True,
    "timeline": 3,
    "wal_bytes": 50331648,
    "replica_lag_bytes": None,
    "replica_lag_seconds": None,
    "replay_paused": None,
    "max_connections": 100,
    "oldest_transaction_seconds": 12.5,
    "long_running_transactions": 0,
}
REPLICA_ROW = PRIMARY_ROW | {
    "is_primary": False,
    "replica_lag_bytes": 8192,
    "replica_lag_seconds": 1.25,
    "replay_paused": False,
}
ARCHIVER_NEVER = {
    "archived_count": 0,
    "failed_count": 2,
    "last_archived_time": None,
    "last_failed_time": 1700000000.5,
    "last_archived_age": None,
}
DATABASES = [
    {"datname": "postgres", "xact_commit": 10, "xact_rollback": 1, "deadlocks": 0},
    {"datname": "app", "xact_commit": 99, "xact_rollback": 0, "deadlocks": 2},
]

ALWAYS = {
    "pgherd_up",
    "pgherd_volume_size_bytes",
    "pgherd_volume_available_bytes",
    "pgherd_backup_last_success_timestamp_seconds",
}
COMMON = ALWAYS | {
    "pgherd_instance_is_primary",
    "pgherd_instance_timeline",
    "pgherd_wal_bytes_total",
    "pgherd_max_connections",
    "pgherd_oldest_transaction_age_seconds",
    "pgherd_long_running_transactions",
    "pgherd_archiver_archived_total",
    "pgherd_archiver_failed_total",
    "pgherd_archiver_last_archived_timestamp_seconds",
    "pgherd_archiver_last_failed_timestamp_seconds",
    "pgherd_connections",
    "pgherd_transactions_committed_total",
    "pgherd_transactions_rolled_back_total",
    "pgherd_deadlocks_total",
    "pgherd_database_size_bytes",
    "pgherd_wal_directory_bytes",
}


def _observation(instance: dict[str, Any], **kwargs: Any) -> Observation:
    return Observation(
        up=True,
        instance=instance,
        archiver=ARCHIVER_NEVER,
        connections=[{"state": "active", "n": 2}, {"state": "idle in transaction", "n": 1}],
        databases=DATABASES,
        database_sizes={"postgres": 7e6, "app": 8e6},
        wal_directory_bytes=16777216,
        volume=(10e9, 4e9),
        backup_time=1700000100.0,
        **kwargs,
    )


def test_a_primary_reports_itself_and_each_standby() -> None:
    standbys = [
        {"application_name": "c-1", "lag_bytes": 4096, "lag_seconds": 0.5},
        {"application_name": "c-2", "lag_bytes": None, "lag_seconds": None},
    ]
    got = scraped(families(_observation(PRIMARY_ROW, standbys=standbys)))
    assert set(got) == COMMON | {
        "pgherd_replication_lag_bytes",
        "pgherd_replication_lag_seconds",
    }
    assert only(got["pgherd_up"]) == 1.0
    assert only(got["pgherd_instance_is_primary"]) == 1.0
    assert only(got["pgherd_instance_timeline"]) == 3.0
    assert only(got["pgherd_wal_bytes_total"]) == 50331648.0
    assert got["pgherd_replication_lag_bytes"] == {(("application_name", "c-1"),): 4096.0}
    assert got["pgherd_replication_lag_seconds"] == {
        (("application_name", "c-1"),): 0.5,
        (("application_name", "c-2"),): 0.0,
    }
    # Never archived: timestamps 0, no age (an age of 0 would say "just archived").
    assert only(got["pgherd_archiver_last_archived_timestamp_seconds"]) == 0.0
    assert only(got["pgherd_archiver_last_failed_timestamp_seconds"]) == 1700000000.5
    assert only(got["pgherd_archiver_failed_total"]) == 2.0
    connections = got["pgherd_connections"]
    assert connections[(("state", "active"),)] == 2.0
    assert connections[(("state", "idle"),)] == 0.0  # a series even when none
    assert set(dict(k)["state"] for k in connections) >= set(metrics.CONNECTION_STATES)
    assert got["pgherd_transactions_committed_total"][(("datname", "app"),)] == 99.0
    assert got["pgherd_deadlocks_total"][(("datname", "app"),)] == 2.0
    assert got["pgherd_database_size_bytes"][(("datname", "postgres"),)] == 7e6
    assert got["pgherd_volume_size_bytes"] == {(("volume", "data"),): 10e9}
    assert got["pgherd_volume_available_bytes"] == {(("volume", "data"),): 4e9}
    assert only(got["pgherd_backup_last_success_timestamp_seconds"]) == 1700000100.0


def test_a_replica_reports_its_own_lag_and_no_standbys() -> None:
    archived = ARCHIVER_NEVER | {"last_archived_time": 1.7e9, "last_archived_age": 30.0}
    obs = _observation(REPLICA_ROW, standbys=[{"application_name": "x", "lag_bytes": 1}])
    obs.archiver = archived
    got = scraped(families(obs))
    assert set(got) == COMMON | {
        "pgherd_replica_lag_bytes",
        "pgherd_replica_lag_seconds",
        "pgherd_replica_replay_paused",
        "pgherd_archiver_last_archived_age_seconds",
    }
    assert only(got["pgherd_instance_is_primary"]) == 0.0
    assert only(got["pgherd_replica_lag_bytes"]) == 8192.0
    assert only(got["pgherd_replica_lag_seconds"]) == 1.25
    assert only(got["pgherd_replica_replay_paused"]) == 0.0
    assert only(got["pgherd_archiver_last_archived_age_seconds"]) == 30.0


def test_an_unreachable_postgresql_leaves_up_zero_and_what_the_pod_sees() -> None:
    got = scraped(families(Observation(volume=(1e9, 5e8))))
    assert set(got) == ALWAYS - {"pgherd_backup_last_success_timestamp_seconds"}
    assert only(got["pgherd_up"]) == 0.0


def test_the_backup_time_is_the_agent_s_newest_successful_backup(tmp_path: Path) -> None:
    env = {"PGHERD_ROOT": str(tmp_path)}
    path = tmp_path / contract.BACKUP_SUMMARY_FILE.lstrip("/")
    path.parent.mkdir(parents=True)
    assert metrics.read_backup_time(path) is None
    agent.write_summary_file(env, agent.store_summary([]))
    assert metrics.read_backup_time(path) is None
    found = agent.store_summary(
        [
            {"backup_id": "20250101T000000", "status": "DONE", "end_time": "2025-01-01 00:10:00"},
            {"backup_id": "20250102T000000", "status": "DONE", "end_time": "2025-01-02 00:10:00"},
            {"backup_id": "20250103T000000", "status": "FAILED"},
        ]
    )
    agent.write_summary_file(env, found)
    assert metrics.read_backup_time(path) == 1735776600.0  # 2025-01-02T00:10:00Z


def _env(tmp_path: Path) -> dict[str, str]:
    data = tmp_path / contract.DATA_MOUNT.lstrip("/")
    data.mkdir(parents=True)
    # Nothing listens there: the exporter must say so, not fail.
    return {"PGHERD_ROOT": str(tmp_path), "PGHERD_PG_PORT": str(free_port())}


def test_without_postgresql_a_scrape_answers_and_counts_the_failure(tmp_path: Path) -> None:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(metrics.InstanceCollector(_env(tmp_path)))
    for _ in range(2):
        text = generate_latest(registry).decode()
    got = {s.name: s for f in text_string_to_metric_families(text) for s in f.samples}
    assert got["pgherd_up"].value == 0.0
    assert got["pgherd_volume_size_bytes"].value > 0
    assert got["pgherd_exporter_errors_total"].labels == {"query": "connection"}
    assert got["pgherd_exporter_errors_total"].value == 2.0
    assert got["pgherd_exporter_scrape_duration_seconds"].value >= 0


def test_the_exporter_serves_over_http_and_a_taken_port_does_not_raise(tmp_path: Path) -> None:
    env = _env(tmp_path) | {contract.METRICS_PORT_ENV: str(free_port())}
    assert metrics.serve(env)
    url = f"http://127.0.0.1:{env[contract.METRICS_PORT_ENV]}{contract.METRICS_PATH}"
    with urllib.request.urlopen(url, timeout=10) as response:
        assert b"pgherd_up 0.0" in response.read()
    assert not metrics.serve(env)  # the port is taken now
