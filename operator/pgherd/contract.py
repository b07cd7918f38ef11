"""The names both sides of the pod protocol use: what the operator renders and reads, and
what the operand (`pgherd instance`, its agent and WAL commands) provides and publishes.

Ports, paths, the user and the command of the instance container; the environment variables
that carry an object store's location; the pod annotations the instance writes and the
operator reads. The operator (pgherd.render, pgherd.controller) and the operand
(pgherd.operand) import this module and never each other.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from pgherd.api.v1alpha1 import ObjectStoreSpec

CONTAINER = "postgres"
COMMAND = ["pgherd", "instance"]

POSTGRES_PORT = 5432
POSTGRES_PORT_NAME = "postgresql"
PATRONI_PORT = 8008
PATRONI_PORT_NAME = "patroni"
# Each instance's Prometheus exporter (pgherd.operand.metrics), served by `pgherd instance`
# over plain HTTP: metrics carry no secret, and a scraper needs no CA (as postgres_exporter's
# default port, so dashboards and network policies written for it fit).
METRICS_PORT = 9187
METRICS_PORT_NAME = "metrics"
METRICS_PATH = "/metrics"
METRICS_PORT_ENV = "PGHERD_METRICS_PORT"
# The cluster's PostgreSQL major (spec.postgresVersion): `pgherd instance` runs the binaries
# of that major (/usr/lib/postgresql/<major>/bin in the image), never merely the newest.
POSTGRES_MAJOR_ENV = "PGHERD_POSTGRES_MAJOR"
# Where the operand image keeps each major's installation: <root>/<major>/bin, lib (and, in a
# relocatable build, share; Debian's packages put share under /usr/share/postgresql/<major>).
POSTGRES_INSTALL_ROOT = "/usr/lib/postgresql"


def image_bindir(major: int) -> str:
    """A major's binaries in the operand image."""
    return f"{POSTGRES_INSTALL_ROOT}/{major}/bin"


# User-defined queries (spec.monitoring.customQueries): each ConfigMap key is a file here, in
# postgres_exporter's queries.yaml format; the exporter reads every *.yaml of the directory.
METRICS_QUERIES_DIR = "/etc/pgherd-metrics"
METRICS_QUERIES_ENV = "PGHERD_METRICS_QUERIES_DIR"
METRICS_QUERIES_VOLUME = "metrics-queries"

# The data volume is mounted one level above PGDATA: a fresh filesystem's root holds
# lost+found, and initdb refuses a non-empty directory.
DATA_VOLUME = "pgdata"
DATA_MOUNT = "/var/lib/postgresql/data"
PGDATA = f"{DATA_MOUNT}/pgdata"

CONFIG_DIR = "/etc/pgherd"
CONFIG_KEY = "patroni.yaml"
CONFIG_FILE = f"{CONFIG_DIR}/{CONFIG_KEY}"

# Writable scratch space: the root filesystem is read-only.
TMP_DIR = "/tmp"  # noqa: S108 - an emptyDir private to the pod, not a shared /tmp
SOCKET_DIR = "/run/postgresql"
SHM_DIR = "/dev/shm"  # noqa: S108 - a memory emptyDir mounted over it


def rooted(root: str, path: str) -> str:
    """A pod path as seen from the process: under root (PGHERD_ROOT, which the test
    kubelet sets; "/" in a real pod)."""
    return str(Path(root) / path.lstrip("/")) if root not in ("", "/") else path


PGPASS = f"{TMP_DIR}/pgpass"
# The backup agent's last view of the store's backups (agent.store_summary, JSON), for the
# exporter in the same container: the agent lists the store on the primary only, every few
# minutes, and a listing is far too slow for a scrape. On the pod's tmp emptyDir, so that it
# outlives a container restart; absent until the agent's first listing.
BACKUP_SUMMARY_FILE = f"{TMP_DIR}/pgherd-backups.json"

# TLS: the <cluster>-tls Secret is mounted at TLS_MOUNT (beside /etc/pgherd, not inside its
# read-only ConfigMap mount, where a runtime could not create the mount point). `pgherd
# instance` copies it to TLS_DIR, mode 0600 and owned by the server's user as PostgreSQL and
# libpq demand of keys, and copies again, then reloads, whenever the kubelet updates it.
TLS_VOLUME = "tls"
TLS_MOUNT = "/etc/pgherd-tls"
TLS_DIR = "/run/pgherd-tls"  # a memory emptyDir: private keys never reach the node's disk
TLS_PRIVATE_VOLUME = "tls-private"
TLS_CERT = "tls.crt"  # the server certificate (also Patroni's REST API's)
TLS_KEY = "tls.key"
TLS_CA = "ca.crt"  # what clients verify the server with
TLS_CLIENT_CA = "client-ca.crt"  # what the server verifies client certificates with
TLS_REPLICATION_CERT = "replication.crt"  # the replication role's client certificate
TLS_REPLICATION_KEY = "replication.key"
TLS_FILES = (TLS_CERT, TLS_KEY, TLS_CA, TLS_CLIENT_CA, TLS_REPLICATION_CERT, TLS_REPLICATION_KEY)
# How often the instance looks for renewed files (the kubelet itself refreshes Secret
# volumes about once a minute).
TLS_POLL_SECONDS = 5.0


# The superuser's password reaches the instance as a mounted Secret, not an environment
# variable, so that a rotation reaches the running Patroni (a reload) and the backup agent
# without a restart.
SUPERUSER_MOUNT = "/etc/pgherd-superuser"
SUPERUSER_PASSWORD_FILE = f"{SUPERUSER_MOUNT}/password"
SUPERUSER_VOLUME = "superuser"


def read_superuser_password(env: Mapping[str, str]) -> str:
    """The superuser's password as the mounted Secret holds it now ("" when unreadable)."""
    path = rooted(env.get("PGHERD_ROOT", "/"), env.get("PGHERD_SUPERUSER_PASSWORD_FILE",
                                                          SUPERUSER_PASSWORD_FILE))  # fmt: skip
    try:
        return Path(path).read_text().strip()
    except OSError:
        return ""


def tls_path(name: str) -> str:
    """Where the instance's processes read a TLS file (the private copy)."""
    return f"{TLS_DIR}/{name}"


# uid/gid 999 is `postgres` in Debian's postgresql packages and the official postgres image,
# which the operand image builds on; files on the data volume stay owned consistently.
POSTGRES_UID = 999
POSTGRES_GID = 999

# What an instance publishes about itself (the `pgherd instance` supervisor writes it on its
# own pod; the operator reads it): JSON with the keys below.
INSTANCE_ANNOTATION = "pgherd.io/instance"
REPORT_MAJOR = "postgresMajor"  # int: the major version of the image's PostgreSQL
REPORT_LIBRARIES = "libraries"  # list[str]: loadable libraries in the image ($libdir)
REPORT_ERROR = "error"  # str | None: why PostgreSQL does not run, in its own words
REPORT_IGNORED = "ignoredParameters"  # dict[str, str]: parameter -> why Patroni drops it
# dict: sizeBytes, usedBytes, availableBytes of the data volume, walBytes of pg_wal
REPORT_VOLUME = "volume"
# dict | None: the last major upgrade this volume finished after its server ran (fromMajor,
# toMajor, method, analyzeSeconds, at), from pgherd.operand.upgrade_followup
REPORT_UPGRADED = "upgraded"

# The backup agent's annotations on its pod (pgherd.operand.agent): pg_stat_archiver and the
# last archive error, the store's backup summary, and a heartbeat while a backup runs.
ARCHIVER_ANNOTATION = "pgherd.io/archiver"
BACKUPS_ANNOTATION = "pgherd.io/backups"
HEARTBEAT_ANNOTATION = "pgherd.io/backup-heartbeat"
HEARTBEAT_EVERY = 10.0

# An object store location as environment variables: the archive's (PGHERD_BACKUP_*, with the
# standard AWS_* credentials) and a restore source's (PGHERD_RESTORE_*, credentials prefixed
# the same way), written by pgherd.render.backup and read by pgherd.operand.store.
ARCHIVE_PREFIX = "PGHERD_BACKUP_"
RESTORE_PREFIX = "PGHERD_RESTORE_"
# Where a CA bundle Secret is mounted (per prefix), inside the pod.
CA_DIR = {ARCHIVE_PREFIX: "/etc/pgherd/backup-ca", RESTORE_PREFIX: "/etc/pgherd/restore-ca"}
CA_FILE_NAME = "ca.crt"
AWS_KEYS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")


def destination_url(store: ObjectStoreSpec) -> str:
    """s3://bucket[/path], barman's destination URL."""
    return f"s3://{store.bucket}" + (f"/{store.path.strip('/')}" if store.path else "")


def same_location(a: ObjectStoreSpec, a_server: str, b: ObjectStoreSpec, b_server: str) -> bool:
    """Whether two (store, server name) pairs are the same folder of the same service."""
    endpoint_a = (a.endpoint_url or "").rstrip("/")
    endpoint_b = (b.endpoint_url or "").rstrip("/")
    return (endpoint_a, destination_url(a), a_server) == (
        endpoint_b,
        destination_url(b),
        b_server,
    )


# ---- The major upgrade (`pgherd upgrade`, pgherd.operand.upgrade) -----------------------
# Its pods' command line and results: the operator renders the Jobs that run it
# (pgherd.render.upgrade_jobs) and reads their exit code and the JSON summary written to the
# termination message (pgherd.controller.upgrade_outcome).
UPGRADE_METHODS = ("link", "clone", "copy")
UPGRADE_EXIT_OK = 0  # done; the preflight found nothing
UPGRADE_EXIT_ERROR = 2  # the tool could not do its work: the summary's `error` says why
UPGRADE_EXIT_PROBLEMS = 3  # the preflight found problems: the summary's `problems`


# WAL file names, as both sides order them: the agent reports the newest file it archived,
# and the operator never moves status.backup.lastArchivedWal backwards.
def wal_position(name: str | None) -> tuple[int, int, int, int] | None:
    """Where a file archive_command archives sits in WAL order: (log, segment, timeline,
    1 for a whole segment or 0 for a .partial or .backup file); None for a history file or
    anything else, which says nothing about how far archiving got."""
    if not name or len(name) < 24:
        return None
    try:
        tli, log, seg = int(name[:8], 16), int(name[8:16], 16), int(name[16:24], 16)
    except ValueError:
        return None
    return log, seg, tli, 0 if name[24:] else 1


def newer(a: str | None, b: str | None) -> str | None:
    """The later of two archived file names in WAL order (a when they are equal)."""
    pa, pb = wal_position(a), wal_position(b)
    if pa is None and pb is None:
        return a or b
    if pa is None or (pb is not None and pb > pa):
        return b
    return a


# ---- PostgresPooler (PgBouncer) ---------------------------------------------------------
# The pooler container (`pgherd pooler`, pgherd.operand.pooler) and what it mounts: the
# operator's part of pgbouncer.ini and the pause switch (a ConfigMap, re-read while running:
# a change is a reload, never a restart), the TLS files (a Secret) and a private scratch dir
# for the files it writes (the full pgbouncer.ini, the auth file, the pid file).
POOLER_CONTAINER = "pgbouncer"
POOLER_COMMAND = ["pgherd", "pooler"]
POOLER_PORT = 5432
POOLER_PORT_NAME = "pgbouncer"
POOLER_CONFIG_DIR = "/etc/pgherd-pooler"
POOLER_INI_KEY = "pgbouncer.ini"
POOLER_PAUSED_KEY = "paused"
POOLER_TLS_DIR = "/etc/pgherd-pooler-tls"
POOLER_SERVER_CA = "server-ca.crt"  # what PgBouncer verifies the PostgreSQL server with
POOLER_RUN_DIR = "/run/pgbouncer"
# Environment of the pooler container: the Service PgBouncer connects to (the test kubelet
# rewrites these to its local stand-in for kube-proxy), the address it listens on, and the
# auth_user's password (from the cluster's `<cluster>-pooler` Secret).
POOLER_HOST_ENV = "PGHERD_POOLER_HOST"
POOLER_TARGET_PORT_ENV = "PGHERD_POOLER_TARGET_PORT"
POOLER_LISTEN_ADDR_ENV = "PGHERD_POOLER_LISTEN_ADDR"
POOLER_LISTEN_PORT_ENV = "PGHERD_POOLER_LISTEN_PORT"
POOLER_PASSWORD_ENV = "PGHERD_POOLER_AUTH_PASSWORD"  # noqa: S105 - a variable's name
# The SECURITY DEFINER function auth_query calls, in schema pgherd of each database.
POOLER_AUTH_SCHEMA = "pgherd"
POOLER_AUTH_FUNCTION = "pooler_auth"
POOLER_AUTH_QUERY = f"SELECT usename, passwd FROM {POOLER_AUTH_SCHEMA}.{POOLER_AUTH_FUNCTION}($1)"  # noqa: S608 - constants only
