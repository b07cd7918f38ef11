"""Each instance's Prometheus exporter, served by `pgherd instance` (contract.METRICS_PORT).

Why built into the instance process rather than Debian's postgres_exporter beside it: the
metrics that matter most are ones only the pod sees (how full the data volume is, from
statvfs; the backup agent's newest successful base backup; the role and timeline of this
instance), it is one process fewer per pod, and it reaches PostgreSQL the way the backup
agent does (Unix socket, superuser; pgherd.operand.localdb), so TLS and pg_hba are unchanged.
Served over plain HTTP: no metric carries a secret.

On each scrape a custom collector (its own CollectorRegistry) runs a few read-only queries
on one connection it keeps between scrapes (a new one after a failure), in a read-only
session with a statement timeout of STATEMENT_TIMEOUT_MS, on primaries and replicas of
PostgreSQL 15 and later. What it yields (families(), a pure function of the query results):

- pgherd_up (0: PostgreSQL unreachable; then only the volume, backup and exporter metrics),
  pgherd_instance_is_primary, pgherd_instance_timeline (the primary's current WAL timeline;
  on a replica the one it receives, else that of its last restartpoint);
- primary, per standby: pgherd_replication_lag_bytes / _seconds{application_name};
  replica: pgherd_replica_lag_bytes, pgherd_replica_lag_seconds, pgherd_replica_replay_paused;
- pgherd_wal_bytes_total (WAL position as bytes since 0/0: rate() is WAL throughput);
- pg_stat_archiver: pgherd_archiver_archived_total, _failed_total,
  _last_archived_timestamp_seconds, _last_failed_timestamp_seconds (0: never),
  _last_archived_age_seconds (absent: never);
- pgherd_backup_last_success_timestamp_seconds (from contract.BACKUP_SUMMARY_FILE; absent
  while unknown);
- pgherd_connections{state} (client backends), pgherd_max_connections;
- per database (templates and databases that refuse connections skipped):
  pgherd_transactions_committed_total, _rolled_back_total, pgherd_deadlocks_total,
  pgherd_database_size_bytes{datname};
- pgherd_oldest_transaction_age_seconds, pgherd_long_running_transactions (open for more
  than LONG_RUNNING_SECONDS);
- pgherd_volume_size_bytes / _available_bytes{volume="data"}, pgherd_wal_directory_bytes;
- pgherd_exporter_scrape_duration_seconds, pgherd_exporter_errors_total{query}: per scrape,
  each query (built-in group, user query, or query file) that failed.

Sizes (pg_database_size, pg_ls_waldir) walk directories; they are measured at most every
SIZES_EVERY seconds and repeated in between, so a scrape stays a handful of catalog reads.

User-defined queries: every *.yaml file of $PGHERD_METRICS_QUERIES_DIR, in postgres_exporter's
queries.yaml format: `name: {query, master, metrics: [{column: {usage, description}}]}`, usage
LABEL, GAUGE, COUNTER or DISCARD; each GAUGE column becomes the metric name_column, each
COUNTER column name_column_total (prometheus_client gives every counter that suffix);
`master: true` runs only on the primary. They run in the postgres database as the superuser,
one statement each (extended protocol), in a READ ONLY transaction: whoever may write those
ConfigMaps may read any data, which is why they must be the cluster's namespace's. Files are
read again when they change. A bad file, a bad query or a failing one costs only its own
metrics: it is counted in pgherd_exporter_errors_total and logged once per change.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import re
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
import yaml
from prometheus_client import start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry
from psycopg.rows import dict_row, tuple_row

from pgherd import contract
from pgherd.operand import localdb

log = logging.getLogger("pgherd.operand.metrics")

STATEMENT_TIMEOUT_MS = 3000
CONNECT_TIMEOUT = 3
# A transaction open this long is reported in pgherd_long_running_transactions: it holds
# back vacuum on every table and, on a replica with hot_standby_feedback, on the primary.
LONG_RUNNING_SECONDS = 300
SIZES_EVERY = 30.0
# More series than this from one user query is a cardinality accident, not a metric.
MAX_CUSTOM_ROWS = 1000
# Every state a client backend reports, so that a count of 0 is a series, not a gap.
CONNECTION_STATES = (
    "active",
    "idle",
    "idle in transaction",
    "idle in transaction (aborted)",
    "fastpath function call",
    "disabled",
)
USAGES = ("LABEL", "GAUGE", "COUNTER", "DISCARD")
METRIC_NAME = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
LABEL_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
RESERVED_PREFIX = "pgherd_"

# One round trip for what decides the rest. CASE keeps each function to the role it is
# allowed in (pg_current_wal_lsn fails during recovery).
INSTANCE_SQL = """
SELECT NOT pg_is_in_recovery() AS is_primary,
  CASE WHEN pg_is_in_recovery()
    THEN coalesce((SELECT received_tli FROM pg_stat_wal_receiver),
                  (pg_control_checkpoint()).timeline_id)
    ELSE ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int
  END AS timeline,
  CASE WHEN pg_is_in_recovery()
    THEN pg_wal_lsn_diff(coalesce(pg_last_wal_receive_lsn(), pg_last_wal_replay_lsn()), '0/0')
    ELSE pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')
  END AS wal_bytes,
  CASE WHEN pg_is_in_recovery()
    THEN pg_wal_lsn_diff(pg_last_wal_receive_lsn(), pg_last_wal_replay_lsn())
  END AS replica_lag_bytes,
  CASE WHEN NOT pg_is_in_recovery() THEN NULL
    WHEN pg_last_wal_receive_lsn() = pg_last_wal_replay_lsn() THEN 0
    ELSE greatest(0, extract(epoch FROM now() - pg_last_xact_replay_timestamp()))
  END AS replica_lag_seconds,
  CASE WHEN pg_is_in_recovery() THEN pg_is_wal_replay_paused() END AS replay_paused,
  current_setting('max_connections')::int AS max_connections,
  a.oldest AS oldest_transaction_seconds, a.long_running AS long_running_transactions
FROM (
  SELECT coalesce(max(extract(epoch FROM now() - xact_start)), 0) AS oldest,
         count(*) FILTER (WHERE now() - xact_start > make_interval(secs => %(long)s))
           AS long_running
  FROM pg_stat_activity
  WHERE backend_type = 'client backend' AND xact_start IS NOT NULL
    AND pid <> pg_backend_pid()
) a
"""
CONNECTIONS_SQL = """
SELECT coalesce(state, 'unknown') AS state, count(*) AS n FROM pg_stat_activity
WHERE backend_type = 'client backend' GROUP BY 1
"""
# Grouped: two walsenders may share an application_name, and a series must be unique.
REPLICATION_SQL = """
SELECT application_name,
  max(pg_wal_lsn_diff(pg_current_wal_lsn(), replay_lsn)) AS lag_bytes,
  max(coalesce(extract(epoch FROM replay_lag), 0)) AS lag_seconds
FROM pg_stat_replication WHERE replay_lsn IS NOT NULL GROUP BY application_name
"""
ARCHIVER_SQL = """
SELECT archived_count, failed_count,
  extract(epoch FROM last_archived_time) AS last_archived_time,
  extract(epoch FROM last_failed_time) AS last_failed_time,
  extract(epoch FROM now() - last_archived_time) AS last_archived_age
FROM pg_stat_archiver
"""
DATABASES_SQL = """
SELECT d.datname, s.xact_commit, s.xact_rollback, s.deadlocks
FROM pg_database d JOIN pg_stat_database s ON s.datid = d.oid
WHERE NOT d.datistemplate AND d.datallowconn
"""
SIZES_SQL = """
SELECT d.datname, pg_database_size(d.oid) AS size FROM pg_database d
WHERE NOT d.datistemplate AND d.datallowconn
"""
WAL_DIR_SQL = "SELECT coalesce(sum(size), 0) AS size FROM pg_ls_waldir()"


# ---- user-defined queries ----------------------------------------------------------------
class QueryError(Exception):
    """A user query (or its file) that cannot produce metrics; the message says why."""


@dataclass(frozen=True)
class Problem:
    """Why a queries file or one of its entries gives no metrics; key: the query's name, or
    the file's when the file itself is at fault (the errors metric's label)."""

    key: str
    message: str


@dataclass(frozen=True)
class Column:
    name: str
    usage: str
    description: str


@dataclass(frozen=True)
class CustomQuery:
    """One entry of a queries file."""

    name: str
    query: str
    master: bool
    columns: tuple[Column, ...]
    source: str

    @property
    def labels(self) -> list[str]:
        return [c.name for c in self.columns if c.usage == "LABEL"]

    @property
    def values(self) -> list[Column]:
        return [c for c in self.columns if c.usage in ("GAUGE", "COUNTER")]

    def family_names(self) -> list[str]:
        """The names the exposition shows (a counter's with _total)."""
        return [f"{self.name}_{c.name}" + ("_total" if c.usage == "COUNTER" else "")
                for c in self.values]  # fmt: skip


def _column(entry: Any, where: str) -> Column:
    if not isinstance(entry, dict) or len(entry) != 1:
        raise QueryError(f"{where}: each metrics entry is a one-key mapping column: {{usage}}")
    ((name, spec),) = entry.items()
    if not isinstance(name, str) or not LABEL_NAME.match(name) or name.startswith("__"):
        raise QueryError(f"{where}: column {name!r} is not a valid label or metric name part")
    if not isinstance(spec, dict):
        raise QueryError(f"{where}: column {name}: expected {{usage, description}}")
    usage = str(spec.get("usage", "")).upper()
    if usage not in USAGES:
        raise QueryError(
            f"{where}: column {name}: usage {spec.get('usage')!r} is not one of "
            + ", ".join(USAGES)
        )
    return Column(name, usage, str(spec.get("description") or f"{name} ({usage.lower()})"))


def _query(name: Any, spec: Any, source: str) -> CustomQuery:
    where = f"{source}: {name}"
    if not isinstance(name, str) or not METRIC_NAME.match(name):
        raise QueryError(f"{where}: not a valid metric name ([a-zA-Z_:][a-zA-Z0-9_:]*)")
    if name.startswith(RESERVED_PREFIX):
        raise QueryError(f"{where}: the prefix {RESERVED_PREFIX} is reserved for pgherd's own")
    if not isinstance(spec, dict):
        raise QueryError(f"{where}: expected a mapping with query and metrics")
    query = spec.get("query")
    if not isinstance(query, str) or not query.strip():
        raise QueryError(f"{where}: query is missing or empty")
    master = spec.get("master", False)
    if not isinstance(master, bool):
        raise QueryError(f"{where}: master must be true or false")
    metrics = spec.get("metrics")
    if not isinstance(metrics, list) or not metrics:
        raise QueryError(f"{where}: metrics must be a non-empty list")
    columns = tuple(_column(entry, where) for entry in metrics)
    names = [c.name for c in columns]
    if len(set(names)) != len(names):
        raise QueryError(f"{where}: a column is listed twice")
    parsed = CustomQuery(name, query, master, columns, source)
    if not parsed.values:
        raise QueryError(f"{where}: no GAUGE or COUNTER column")
    return parsed


Parsed = tuple[list[CustomQuery], list[Problem]]


def parse_queries(text: str, source: str) -> Parsed:
    """The valid queries of one file and why the others are not: one bad entry leaves the
    others of its file working; a file that is not YAML gives none."""
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as e:
        return [], [Problem(source, f"{source}: not valid YAML: {e}")]
    if doc is None:
        return [], []
    if not isinstance(doc, dict):
        return [], [Problem(source, f"{source}: expected a mapping of query names to queries")]
    queries, problems = [], []
    for name, spec in doc.items():
        try:
            queries.append(_query(name, spec, source))
        except QueryError as e:
            problems.append(Problem(str(name), str(e)))
    return queries, problems


def merge_queries(parsed: Sequence[Parsed]) -> Parsed:
    """All files' queries, without those whose metric names an earlier query (in file name
    order) already produces: a family twice would make Prometheus refuse the whole scrape."""
    seen: set[str] = set()
    queries: list[CustomQuery] = []
    problems: list[Problem] = []
    for file_queries, file_problems in parsed:
        problems += file_problems
        for q in file_queries:
            taken = [n for n in q.family_names() if n in seen]
            if taken:
                problems.append(
                    Problem(q.name, f"{q.source}: {q.name}: {', '.join(taken)} already defined")
                )
                continue
            seen.update(q.family_names())
            queries.append(q)
    return queries, problems


def _number(value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool):
        return 1.0 if value else 0.0
    if isinstance(value, int | float | Decimal):
        return float(value)
    if isinstance(value, datetime):
        return value.timestamp()
    try:
        return float(value)
    except (TypeError, ValueError):
        raise QueryError(f"value {str(value)[:40]!r} is not a number") from None


def custom_families(
    q: CustomQuery, columns: Sequence[str], rows: Sequence[Sequence[Any]]
) -> list[Metric]:
    """The metric families of one user query's result; QueryError when it does not fit the
    query's declaration (then it contributes nothing)."""
    missing = [c.name for c in q.columns if c.usage != "DISCARD" and c.name not in columns]
    if missing:
        raise QueryError(f"{q.name}: the result has no column {', '.join(missing)}")
    if len(rows) > MAX_CUSTOM_ROWS:
        raise QueryError(f"{q.name}: {len(rows)} rows, more than {MAX_CUSTOM_ROWS}")
    index = {name: i for i, name in enumerate(columns)}
    labels = q.labels
    out: list[Metric] = []
    for col in q.values:
        name = f"{q.name}_{col.name}"
        family: GaugeMetricFamily | CounterMetricFamily = (
            CounterMetricFamily(name, col.description, labels=labels)
            if col.usage == "COUNTER"
            else GaugeMetricFamily(name, col.description, labels=labels)
        )
        seen: set[tuple[str, ...]] = set()
        for row in rows:
            key = tuple("" if row[index[lb]] is None else str(row[index[lb]]) for lb in labels)
            if key in seen:
                raise QueryError(f"{q.name}: two rows with the same labels {key}")
            seen.add(key)
            value = _number(row[index[col.name]])
            if value is not None:
                family.add_metric(list(key), value)
        out.append(family)
    return out


class QueryFiles:
    """The queries directory, parsed again only when a file's size or mtime changes."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._stamp: tuple[tuple[str, int, int], ...] | None = None
        self.queries: list[CustomQuery] = []
        self.problems: list[Problem] = []

    def refresh(self) -> None:
        try:
            files = sorted(self.directory.glob("*.yaml"))
            stamp = tuple(
                (p.name, (st := p.stat()).st_mtime_ns, st.st_size) for p in files if p.is_file()
            )
        except OSError:
            files, stamp = [], ()
        if stamp == self._stamp:
            return
        parsed: list[Parsed] = []
        for path in files:
            try:
                parsed.append(parse_queries(path.read_text(), path.name))
            except (OSError, UnicodeDecodeError) as e:
                parsed.append(([], [Problem(path.name, f"{path.name}: unreadable: {e}")]))
        self.queries, self.problems = merge_queries(parsed)
        self._stamp = stamp
        log.info(
            "custom queries: %d from %d files in %s%s",
            len(self.queries),
            len(files),
            self.directory,
            "".join(f"; {p.message}" for p in self.problems),
        )


# ---- built-in metrics from query results ---------------------------------------------------
@dataclass
class Observation:
    """What one scrape found (rows as mappings of column name to value); None or empty:
    not known this time."""

    up: bool = False
    instance: Mapping[str, Any] | None = None
    standbys: Sequence[Mapping[str, Any]] = ()
    archiver: Mapping[str, Any] | None = None
    connections: Sequence[Mapping[str, Any]] = ()
    databases: Sequence[Mapping[str, Any]] = ()
    database_sizes: Mapping[str, float] = field(default_factory=dict)
    wal_directory_bytes: float | None = None
    volume: tuple[float, float] | None = None  # (size, available) in bytes
    backup_time: float | None = None


def _gauge(name: str, doc: str, value: float | None) -> list[Metric]:
    return [] if value is None else [GaugeMetricFamily(name, doc, value=value)]


def _counter(name: str, doc: str, value: float | None) -> list[Metric]:
    return [] if value is None else [CounterMetricFamily(name, doc, value=value)]


def _num(value: Any) -> float | None:
    return None if value is None else float(value)


def _instance_families(row: Mapping[str, Any]) -> list[Metric]:
    primary = bool(row["is_primary"])
    out = [
        *_gauge("pgherd_instance_is_primary", "1 on the primary (not in recovery).", primary),
        *_gauge("pgherd_instance_timeline", "WAL timeline of the instance.", _num(row["timeline"])),
        *_counter(
            "pgherd_wal_bytes",
            "WAL position in bytes since 0/0 (written on the primary, received on a replica).",
            _num(row["wal_bytes"]),
        ),
        *_gauge("pgherd_max_connections", "max_connections.", _num(row["max_connections"])),
        *_gauge(
            "pgherd_oldest_transaction_age_seconds",
            "Age of the oldest open transaction of a client (0: none).",
            _num(row["oldest_transaction_seconds"]),
        ),
        *_gauge(
            "pgherd_long_running_transactions",
            f"Client transactions open for more than {LONG_RUNNING_SECONDS} seconds.",
            _num(row["long_running_transactions"]),
        ),
    ]
    if not primary:
        out += [
            *_gauge(
                "pgherd_replica_lag_bytes",
                "WAL received but not yet replayed, in bytes.",
                _num(row["replica_lag_bytes"]),
            ),
            *_gauge(
                "pgherd_replica_lag_seconds",
                "Seconds since the last replayed transaction's commit (0: all received WAL "
                "is replayed).",
                _num(row["replica_lag_seconds"]),
            ),
            *_gauge(
                "pgherd_replica_replay_paused",
                "1 while WAL replay is paused.",
                _num(row["replay_paused"]),
            ),
        ]
    return out


def _standby_families(standbys: Sequence[Mapping[str, Any]]) -> list[Metric]:
    lag_bytes = GaugeMetricFamily(
        "pgherd_replication_lag_bytes",
        "Primary's WAL position minus the standby's replay position, in bytes.",
        labels=["application_name"],
    )
    lag_seconds = GaugeMetricFamily(
        "pgherd_replication_lag_seconds",
        "Standby's replay lag as the primary measures it (0 when idle).",
        labels=["application_name"],
    )
    for s in standbys:
        name = str(s["application_name"] or "")
        if s["lag_bytes"] is not None:
            lag_bytes.add_metric([name], float(s["lag_bytes"]))
        lag_seconds.add_metric([name], float(s["lag_seconds"] or 0))
    return [lag_bytes, lag_seconds]


def _archiver_families(row: Mapping[str, Any]) -> list[Metric]:
    return [
        *_counter(
            "pgherd_archiver_archived",
            "WAL files archived (pg_stat_archiver).",
            _num(row["archived_count"]),
        ),
        *_counter(
            "pgherd_archiver_failed",
            "Failed WAL archiving attempts (pg_stat_archiver).",
            _num(row["failed_count"]),
        ),
        *_gauge(
            "pgherd_archiver_last_archived_timestamp_seconds",
            "When the last WAL file was archived (0: never).",
            _num(row["last_archived_time"]) or 0.0,
        ),
        *_gauge(
            "pgherd_archiver_last_failed_timestamp_seconds",
            "When WAL archiving last failed (0: never).",
            _num(row["last_failed_time"]) or 0.0,
        ),
        *_gauge(
            "pgherd_archiver_last_archived_age_seconds",
            "Seconds since the last WAL file was archived (absent: never).",
            _num(row["last_archived_age"]),
        ),
    ]


def _connection_families(rows: Sequence[Mapping[str, Any]]) -> list[Metric]:
    counts = dict.fromkeys(CONNECTION_STATES, 0.0)
    counts |= {str(r["state"]): float(r["n"]) for r in rows}
    family = GaugeMetricFamily("pgherd_connections", "Client backends by state.", labels=["state"])
    for state, n in counts.items():
        family.add_metric([state], n)
    return [family]


def _database_families(
    rows: Sequence[Mapping[str, Any]], sizes: Mapping[str, float]
) -> list[Metric]:
    committed = CounterMetricFamily(
        "pgherd_transactions_committed", "Transactions committed.", labels=["datname"]
    )
    rolled_back = CounterMetricFamily(
        "pgherd_transactions_rolled_back", "Transactions rolled back.", labels=["datname"]
    )
    deadlocks = CounterMetricFamily("pgherd_deadlocks", "Deadlocks detected.", labels=["datname"])
    for r in rows:
        datname = [str(r["datname"])]
        committed.add_metric(datname, float(r["xact_commit"] or 0))
        rolled_back.add_metric(datname, float(r["xact_rollback"] or 0))
        deadlocks.add_metric(datname, float(r["deadlocks"] or 0))
    size = GaugeMetricFamily(
        "pgherd_database_size_bytes",
        f"Database size in bytes (measured at most every {SIZES_EVERY:.0f}s).",
        labels=["datname"],
    )
    for name, value in sizes.items():
        size.add_metric([name], value)
    return [committed, rolled_back, deadlocks, size]


def _volume_families(volume: tuple[float, float]) -> list[Metric]:
    size = GaugeMetricFamily(
        "pgherd_volume_size_bytes", "Size of the volume's filesystem.", labels=["volume"]
    )
    available = GaugeMetricFamily(
        "pgherd_volume_available_bytes",
        "Bytes available to PostgreSQL on the volume's filesystem.",
        labels=["volume"],
    )
    size.add_metric(["data"], volume[0])
    available.add_metric(["data"], volume[1])
    return [size, available]


def families(obs: Observation) -> list[Metric]:
    """The built-in metric families of one scrape (module docstring); pure."""
    out: list[Metric] = _gauge(
        "pgherd_up", "1 when the local PostgreSQL answered this scrape.", float(obs.up)
    )
    if obs.volume is not None:
        out += _volume_families(obs.volume)
    out += _gauge(
        "pgherd_backup_last_success_timestamp_seconds",
        "End time of the newest successful base backup in the object store.",
        obs.backup_time,
    )
    if not obs.up or obs.instance is None:
        return out
    out += _instance_families(obs.instance)
    if obs.instance["is_primary"]:
        out += _standby_families(obs.standbys)
    if obs.archiver is not None:
        out += _archiver_families(obs.archiver)
    if obs.connections:
        out += _connection_families(obs.connections)
    if obs.databases:
        out += _database_families(obs.databases, obs.database_sizes)
    out += _gauge(
        "pgherd_wal_directory_bytes",
        f"Size of pg_wal in bytes (measured at most every {SIZES_EVERY:.0f}s).",
        obs.wal_directory_bytes,
    )
    return out


def read_backup_time(path: Path) -> float | None:
    """lastBackupTime of the agent's summary file as epoch seconds (None: unknown)."""
    try:
        found = json.loads(path.read_text())
        return datetime.fromisoformat(found["lastBackupTime"]).timestamp()
    except (OSError, ValueError, KeyError, TypeError):
        return None


def volume_usage(path: Path) -> tuple[float, float] | None:
    try:
        st = os.statvfs(path)
    except OSError:
        return None
    return float(st.f_blocks * st.f_frsize), float(st.f_bavail * st.f_frsize)


# ---- the collector -------------------------------------------------------------------------
class InstanceCollector(Collector):
    """Collects on each scrape (module docstring); scrapes are serialised on its lock, as
    they share one connection."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self.env = dict(env)
        root = env.get("PGHERD_ROOT", "/")
        self.data = Path(contract.rooted(root, contract.DATA_MOUNT))
        self.backup_file = Path(contract.rooted(root, contract.BACKUP_SUMMARY_FILE))
        queries = env.get(contract.METRICS_QUERIES_ENV) or contract.METRICS_QUERIES_DIR
        self.queries = QueryFiles(Path(contract.rooted(root, queries)))
        self.lock = threading.Lock()
        self.conn: psycopg.Connection[dict[str, Any]] | None = None
        self.errors: dict[str, float] = {}
        self.sizes_at = -math.inf
        self.sizes: dict[str, float] = {}
        self.wal_dir: float | None = None
        self.reported: dict[str, str] = {}
        self.last_duration = 0.0

    def _report(self, key: str, problem: str | None) -> None:
        """Log a problem when it starts or changes, and its end: once per change."""
        before = self.reported.get(key)
        if problem == before:
            return
        if problem is None:
            log.info("%s: working again", key)
            del self.reported[key]
        else:
            log.warning("%s: %s", key, problem)
            self.reported[key] = problem

    def _failed(self, key: str, e: Exception) -> None:
        self.errors[key] = self.errors.get(key, 0.0) + 1
        self._report(key, str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__)

    def _connect(self) -> psycopg.Connection[dict[str, Any]]:
        if self.conn is not None and not self.conn.closed and not self.conn.broken:
            return self.conn
        self._close()
        info = localdb.conninfo(self.env, "pgherd.operand.metrics")
        info["connect_timeout"] = CONNECT_TIMEOUT
        self.conn = psycopg.connect(
            **info,
            autocommit=True,
            row_factory=dict_row,
            options=f"-c statement_timeout={STATEMENT_TIMEOUT_MS}"
            f" -c lock_timeout={STATEMENT_TIMEOUT_MS} -c default_transaction_read_only=on",
        )
        return self.conn

    def _close(self) -> None:
        if self.conn is not None:
            # A broken connection may fail to close; it is dropped all the same.
            with contextlib.suppress(Exception):
                self.conn.close()
        self.conn = None

    def _rows(self, key: str, sql: str) -> list[dict[str, Any]] | None:
        assert self.conn is not None  # noqa: S101 - observe() connected first
        try:
            rows = self.conn.execute(sql).fetchall()
        except psycopg.Error as e:
            self._failed(key, e)
            return None
        self._report(key, None)
        return rows

    def _instance(self) -> Mapping[str, Any] | None:
        """The instance row, on the kept connection or, when that one went stale (a restart
        of PostgreSQL, idle_session_timeout), on a new one."""
        for attempt in (1, 2):
            fresh = self.conn is None or self.conn.closed or self.conn.broken
            try:
                conn = self._connect()
                row = conn.execute(INSTANCE_SQL, {"long": LONG_RUNNING_SECONDS}).fetchone()
            except psycopg.Error as e:
                broken = self.conn is None or self.conn.closed or self.conn.broken
                if broken:
                    self._close()
                if broken and not fresh and attempt == 1:
                    continue
                self._failed("connection" if broken else "instance", e)
                return None
            self._report("connection", None)
            self._report("instance", None)
            return row
        return None

    def _refresh_sizes(self) -> None:
        if time.monotonic() - self.sizes_at < SIZES_EVERY:
            return
        rows = self._rows("database_size", SIZES_SQL)
        if rows is not None:
            self.sizes = {str(r["datname"]): float(r["size"]) for r in rows}
        wal = self._rows("wal_directory", WAL_DIR_SQL)
        self.wal_dir = float(wal[0]["size"]) if wal else None
        self.sizes_at = time.monotonic()

    def observe(self) -> tuple[Observation, list[Metric]]:
        """Everything one scrape reports but the exporter's own metrics."""
        obs = Observation(
            volume=volume_usage(self.data), backup_time=read_backup_time(self.backup_file)
        )
        obs.instance = self._instance()
        if obs.instance is None:
            return obs, []
        obs.up = True
        primary = bool(obs.instance["is_primary"])
        if primary:
            obs.standbys = self._rows("replication", REPLICATION_SQL) or []
        archiver = self._rows("archiver", ARCHIVER_SQL)
        obs.archiver = archiver[0] if archiver else None
        obs.connections = self._rows("connections", CONNECTIONS_SQL) or []
        obs.databases = self._rows("databases", DATABASES_SQL) or []
        self._refresh_sizes()
        obs.database_sizes, obs.wal_directory_bytes = self.sizes, self.wal_dir
        return obs, self._custom(primary)

    def _custom(self, primary: bool) -> list[Metric]:
        self.queries.refresh()
        for problem in self.queries.problems:
            # Counted at every scrape, as a failing query is; refresh() logged it already.
            self.errors[problem.key] = self.errors.get(problem.key, 0.0) + 1
        out: list[Metric] = []
        for q in self.queries.queries:
            if q.master and not primary:
                continue
            key = q.name
            try:
                out += self._run_custom(q)
            except (psycopg.Error, QueryError) as e:
                self._failed(key, e)
                if self.conn is None or self.conn.broken:
                    self._close()
                    break
                continue
            self._report(key, None)
        return out

    def _run_custom(self, q: CustomQuery) -> list[Metric]:
        assert self.conn is not None  # noqa: S101
        with self.conn.transaction(), self.conn.cursor(row_factory=tuple_row) as cur:
            # Explicit, whatever the query may have done to the session's default.
            cur.execute("SET TRANSACTION READ ONLY")
            # stream() speaks the extended protocol: one statement, no smuggled second one.
            rows = list(cur.stream(q.query))
            columns = [c.name for c in cur.description or []]
        return custom_families(q, columns, rows)

    def collect(self) -> Iterator[Metric]:
        with self.lock:
            began = time.monotonic()
            try:
                obs, custom = self.observe()
            except Exception as e:
                # Whatever went wrong, the scrape still answers (pgherd_up 0).
                self._failed("exporter", e)
                self._close()
                obs, custom = Observation(), []
            out = families(obs) + custom
            duration = time.monotonic() - began
            out += self._exporter_families(duration)
        yield from out

    def _exporter_families(self, duration: float) -> list[Metric]:
        errors = CounterMetricFamily(
            "pgherd_exporter_errors",
            "Failures per query (built-in group, user query or queries file), one per scrape.",
            labels=["query"],
        )
        for key, n in sorted(self.errors.items()):
            errors.add_metric([key], n)
        return [
            GaugeMetricFamily(
                "pgherd_exporter_scrape_duration_seconds",
                "How long this scrape's queries took.",
                value=duration,
            ),
            errors,
        ]


def serve(env: Mapping[str, str]) -> bool:
    """Serve the exporter on 0.0.0.0:$PGHERD_METRICS_PORT from a daemon thread; whether it
    started. Never raises: the database matters more than its metrics."""
    try:
        port = int(env.get(contract.METRICS_PORT_ENV) or contract.METRICS_PORT)
        registry = CollectorRegistry(auto_describe=False)
        registry.register(InstanceCollector(env))
        # All interfaces: Prometheus scrapes the pod IP, kubectl port-forward loopback.
        start_http_server(port, addr="0.0.0.0", registry=registry)  # noqa: S104
    except Exception as e:
        log.warning("metrics exporter not started: %s", e)
        return False
    log.info("metrics exporter on port %d", port)
    return True
