"""The backup agent: a small loop beside Patroni in every instance with spec.backup set.

Why an agent in the instance: barman-cloud-backup reads the data directory's files, so it
must run where the volume is mounted, and the operator has no exec-less way to run a command
there (Patroni has no such endpoint; a Job could not mount a ReadWriteOnce volume on another
node). The agent talks only to the local PostgreSQL (Unix socket, superuser from the pod's
environment) and to the Kubernetes API as the instance's ServiceAccount:

- on the primary, it publishes pg_stat_archiver (and the last archive_command error) in the
  pod annotation `pgherd.io/archiver`, and the store's backup list summary (first
  recoverability point, newest backup) in `pgherd.io/backups`; the operator turns them into
  the cluster's ContinuousArchiving condition and status.backup. It writes only on change.
  The summary also goes to a file (contract.BACKUP_SUMMARY_FILE) that the instance's metrics
  exporter reads (pgherd.operand.metrics);
- it takes the base backups the operator assigned to its pod (PostgresBackup
  status.instance/instanceUid): claims one (Pending -> Running, guarded by resourceVersion),
  checks the bucket exists (pgherd.operand.bucket: pgherd never creates one), runs
  barman-cloud-backup, records the result (Completed with id, WAL, times and size, or
  Failed with barman's message). While it runs, it refreshes the pod annotation
  `pgherd.io/backup-heartbeat` every HEARTBEAT_EVERY seconds: when the agent dies with its
  node, nothing else would ever finish the backup, and the operator fails a Running backup
  whose heartbeat went stale (controller.reconcile_backup);
- on the primary, it applies the retention policy (barman-cloud-backup-delete
  --retention-policy "RECOVERY WINDOW OF ..."), after each backup and hourly: barman keeps
  every backup needed to recover to any point of the window.

When the instance restarts, backups it was running are marked Failed: they cannot resume.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pgherd import contract
from pgherd.api.v1alpha1 import BACKUP_PLURAL, GROUP, VERSION
from pgherd.contract import (
    ARCHIVE_PREFIX,
    ARCHIVER_ANNOTATION,
    BACKUPS_ANNOTATION,
    HEARTBEAT_ANNOTATION,
    HEARTBEAT_EVERY,
)
from pgherd.operand import bucket, localdb, wal
from pgherd.operand.restore import parse_barman_time
from pgherd.operand.store import Store
from pgherd.operand.wal import error_file, summary

SUMMARY_EVERY = 300.0
RETENTION_EVERY = 3600.0
# A call that hangs would stall the loop, and with it the archiver status everyone reads:
# every API call and every store command but the base backup itself has a deadline.
KUBE_TIMEOUT = (5.0, 30.0)
STORE_TIMEOUT = 300.0
# A loop pass slower than this is logged with the time each part took.
SLOW_STEP = 5.0

log = logging.getLogger("pgherd.operand.agent")


def retention_policy(value: str) -> str:
    """spec.backup.retentionPolicy (30d, 4w, 6m) in barman's words."""
    unit = {"d": "DAYS", "w": "WEEKS", "m": "MONTHS"}[value[-1]]
    return f"RECOVERY WINDOW OF {int(value[:-1])} {unit}"


def _iso(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat().replace("+00:00", "Z")
    return str(value)


def barman_time(value: str | None) -> str | None:
    parsed = parse_barman_time(value)
    if parsed is None:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return _iso(parsed)


def store_summary(backups: list[dict[str, Any]]) -> dict[str, Any]:
    """First recoverability point and newest backup, from barman-cloud-backup-list."""
    done = sorted(
        (b for b in backups if b.get("status") == "DONE"), key=lambda b: b.get("backup_id", "")
    )
    if not done:
        return {"backups": 0}
    return {
        "backups": len(done),
        "firstRecoverabilityPoint": barman_time(done[0].get("end_time")),
        "lastBackup": done[-1].get("backup_id"),
        "lastBackupTime": barman_time(done[-1].get("end_time")),
    }


def write_summary_file(env: Mapping[str, str], found: dict[str, Any]) -> None:
    """The store summary where the metrics exporter reads it (contract.BACKUP_SUMMARY_FILE),
    replaced whole so that a reader never sees half a file."""
    path = Path(contract.rooted(env.get("PGHERD_ROOT", "/"), contract.BACKUP_SUMMARY_FILE))
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(found, sort_keys=True))
    tmp.replace(path)


class Agent:
    """One instance's agent (see the module docstring)."""

    def __init__(self, env: Mapping[str, str]) -> None:
        from kubernetes import client, config  # noqa: PLC0415 - only the agent needs it

        self.env = dict(env)
        # Seconds between passes; read here, at start, like every setting of the agent.
        self.interval = float(env.get("PGHERD_BACKUP_AGENT_INTERVAL", "3"))
        self.namespace = env["POD_NAMESPACE"]
        self.pod = env["POD_NAME"]
        store = Store.from_env(env, ARCHIVE_PREFIX)
        if store is None:
            raise SystemExit("backup agent: no object store configured")
        self.store = store
        if env.get("KUBECONFIG"):
            config.load_kube_config(
                env["KUBECONFIG"], context=env.get("PATRONI_KUBERNETES_CONTEXT")
            )
        else:
            config.load_incluster_config()
        self.core = client.CoreV1Api()
        self.custom = client.CustomObjectsApi()
        self.published: dict[str, str] = {}
        self.parts: list[tuple[str, float]] = []
        self.pod_uid: str | None = None
        self.busy = threading.Lock()
        self.switched = False
        self.summary_due = 0.0
        self.retention_due = time.monotonic() + 60.0

    # ---- PostgreSQL -------------------------------------------------------------
    def _conninfo(self) -> dict[str, Any]:
        return localdb.conninfo(self.env, "pgherd.operand.agent")

    def query_archiver(self) -> tuple[bool, dict[str, Any]] | None:
        """(is primary, pg_stat_archiver) or None while PostgreSQL is not up."""
        import psycopg  # noqa: PLC0415

        try:
            with psycopg.connect(**self._conninfo(), autocommit=True) as conn:
                row = conn.execute(
                    "SELECT pg_is_in_recovery(), archived_count, last_archived_wal,"
                    " last_archived_time, failed_count, last_failed_wal, last_failed_time"
                    " FROM pg_stat_archiver"
                ).fetchone()
                if row is None:
                    return None
                primary = not row[0]
                if primary and not self.switched and row[1] == 0 and row[4] == 0:
                    # Archive at once rather than when the first segment fills: status then
                    # tells within seconds whether the store works.
                    conn.execute("SELECT pg_switch_wal()")
                    self.switched = True
        except psycopg.Error:
            return None
        return primary, {
            "archivedCount": row[1],
            "lastArchivedWal": row[2],
            "lastArchivedTime": _iso(row[3]),
            "failedCount": row[4],
            "lastFailedWal": row[5],
            "lastFailedTime": _iso(row[6]),
        }

    # ---- Kubernetes -------------------------------------------------------------
    def publish(self, key: str, value: dict[str, Any]) -> None:
        text = json.dumps(value, sort_keys=True)
        if self.published.get(key) == text:
            return
        self.core.patch_namespaced_pod(
            self.pod,
            self.namespace,
            {"metadata": {"annotations": {key: text}}},
            _request_timeout=KUBE_TIMEOUT,
        )
        self.published[key] = text

    def _patch_status(self, name: str, status: dict[str, Any], rv: str | None = None) -> None:
        body: dict[str, Any] = {"status": status}
        if rv is not None:
            body["metadata"] = {"resourceVersion": rv}
        self.custom.patch_namespaced_custom_object_status(
            GROUP, VERSION, self.namespace, BACKUP_PLURAL, name, body, _request_timeout=KUBE_TIMEOUT
        )

    def _mine(self) -> list[dict[str, Any]]:
        items = self.custom.list_namespaced_custom_object(
            GROUP, VERSION, self.namespace, BACKUP_PLURAL, _request_timeout=KUBE_TIMEOUT
        ).get("items", [])
        return [
            b
            for b in items
            if (b.get("status") or {}).get("instance") == self.pod
            and (b.get("status") or {}).get("instanceUid") == self.pod_uid
        ]

    # ---- the loop ----------------------------------------------------------------
    @contextlib.contextmanager
    def _part(self, label: str) -> Iterator[None]:
        began = time.monotonic()
        try:
            yield
        finally:
            self.parts.append((label, time.monotonic() - began))

    def step(self, startup: bool) -> None:
        if self.pod_uid is None:
            self.pod_uid = self.core.read_namespaced_pod(
                self.pod, self.namespace, _request_timeout=KUBE_TIMEOUT
            ).metadata.uid
        with self._part("list backups"):
            mine = self._mine()
        if startup:
            for b in mine:
                if b["status"].get("phase") == "Running":
                    self._patch_status(
                        b["metadata"]["name"],
                        {
                            "phase": "Failed",
                            "error": f"instance {self.pod} restarted while taking the backup; "
                            "create a new PostgresBackup",
                        },
                    )
        with self._part("query archiver"):
            observed = self.query_archiver()
        if observed is None:
            return
        primary, archiver = observed
        if primary:
            failing = archiver["failedCount"] and (
                not archiver["lastArchivedTime"]
                or (archiver["lastFailedTime"] or "") > archiver["lastArchivedTime"]
            )
            if failing:
                with contextlib.suppress(OSError):
                    archiver["error"] = error_file(self.env).read_text()[:1000]
            # The newest file, not pg_stat_archiver's most recent one (see pgherd.operand.wal);
            # the time stays the last success, which is what says archiving works.
            archiver["lastArchivedWal"] = contract.newer(
                archiver["lastArchivedWal"], wal.read_newest(self.env)
            )
            with self._part("publish archiver"):
                self.publish(ARCHIVER_ANNOTATION, archiver)
        for b in mine:
            if b["status"].get("phase") == "Pending" and not self.busy.locked():
                self._claim(b)
        now = time.monotonic()
        if primary and not self.busy.locked():
            if now >= self.retention_due:
                self.retention_due = now + RETENTION_EVERY
                with self._part("retention"):
                    self.apply_retention()
            if now >= self.summary_due:
                self.summary_due = now + SUMMARY_EVERY
                with self._part("store summary"):
                    self.refresh_summary()

    def _claim(self, b: dict[str, Any]) -> None:
        from kubernetes.client.exceptions import ApiException  # noqa: PLC0415

        name = b["metadata"]["name"]
        try:
            self._patch_status(
                name,
                {"phase": "Running", "beginTime": _iso(datetime.now(UTC))},
                rv=b["metadata"]["resourceVersion"],
            )
        except ApiException as e:
            if e.status == 409:
                return  # changed meanwhile; the next pass sees the new state
            raise
        self.busy.acquire()
        threading.Thread(target=self._backup, args=(name,), daemon=True).start()

    def _run(
        self,
        argv: list[str],
        extra: Mapping[str, str] | None = None,
        timeout: float | None = STORE_TIMEOUT,
    ) -> tuple[int, str, str]:
        env = self.store.child_env(self.env)
        env.update(extra or {})
        try:
            proc = subprocess.run(
                argv, env=env, capture_output=True, text=True, check=False, timeout=timeout
            )
        except subprocess.TimeoutExpired:
            return 124, "", f"{argv[0]} did not finish within {timeout:.0f}s"
        return proc.returncode, proc.stdout, proc.stderr

    def list_backups(self) -> list[dict[str, Any]] | None:
        code, out, err = self._run(
            [
                "barman-cloud-backup-list",
                *self.store.args(),
                "--format",
                "json",
                *self.store.location(),
            ]
        )
        if code != 0:
            log.warning("backup list failed: %s", summary(err))
            return None
        backups: list[dict[str, Any]] = json.loads(out or "{}").get("backups_list", [])
        return backups

    def _heartbeat(self, name: str | None) -> None:
        value = json.dumps({"backup": name, "time": _iso(datetime.now(UTC))}) if name else None
        self.core.patch_namespaced_pod(
            self.pod,
            self.namespace,
            {"metadata": {"annotations": {HEARTBEAT_ANNOTATION: value}}},
            _request_timeout=KUBE_TIMEOUT,
        )

    def _beat(self, name: str, stop: threading.Event) -> None:
        """Heartbeat of a running backup until stop is set; API hiccups only skip a beat."""
        while True:
            try:
                self._heartbeat(name)
            except Exception as e:
                log.warning("backup %s: heartbeat not written: %s", name, e)
            if stop.wait(HEARTBEAT_EVERY):
                return

    def _backup(self, name: str) -> None:
        stop = threading.Event()
        beat = threading.Thread(target=self._beat, args=(name, stop), daemon=True)
        beat.start()
        try:
            status = self.take_backup(name)
        except Exception as e:
            status = {"phase": "Failed", "error": f"backup agent error: {e}"}
        try:
            self._patch_status(name, status)
        except Exception:
            log.exception("cannot record the result of backup %s", name)
        finally:
            # Beats stop only once the result is recorded: a Running backup without a
            # fresh heartbeat is one the operator fails.
            stop.set()
            beat.join()
            with contextlib.suppress(Exception):
                self._heartbeat(None)
            self.busy.release()
        if status.get("phase") == "Completed":
            if self.store_is_primary():
                self.apply_retention()
            self.refresh_summary()

    def store_is_primary(self) -> bool:
        observed = self.query_archiver()
        return bool(observed and observed[0])

    def take_backup(self, name: str) -> dict[str, Any]:
        problem = bucket.check(self.store)
        if problem is not None:
            return {"phase": "Failed", "error": problem}
        conn = self._conninfo()
        code, _, err = self._run(
            [
                "barman-cloud-backup",
                *self.store.args(),
                *self.store.compression_args(),
                "--immediate-checkpoint",
                "-h",
                conn["host"],
                "-p",
                str(conn["port"]),
                "-U",
                conn["user"],
                "-d",
                "postgres",
                "-n",
                name,
                *self.store.location(),
            ],
            {"PGPASSWORD": conn["password"]},
            # A base backup takes as long as the database needs; a dead pod's backup is
            # failed by the operator once the heartbeat above stops.
            timeout=None,
        )
        if code != 0:
            return {"phase": "Failed", "error": f"barman-cloud-backup failed: {summary(err)}"}
        backups = self.list_backups() or []
        found = next((b for b in backups if b.get("backup_name") == name), None)
        if found is None:
            return {
                "phase": "Failed",
                "error": "barman-cloud-backup succeeded but the backup is not in the store's list",
            }
        return {
            "phase": "Completed",
            "backupId": found.get("backup_id"),
            "beginWal": found.get("begin_wal"),
            "endWal": found.get("end_wal"),
            "beginLsn": found.get("begin_xlog"),
            "endLsn": found.get("end_xlog"),
            "beginTime": barman_time(found.get("begin_time")),
            "endTime": barman_time(found.get("end_time")),
            "size": found.get("size"),
            "timeline": found.get("timeline"),
            "error": None,
        }

    def apply_retention(self) -> None:
        policy = self.env.get(ARCHIVE_PREFIX + "RETENTION")
        if not policy:
            return
        code, _, err = self._run(
            [
                "barman-cloud-backup-delete",
                *self.store.args(),
                "--retention-policy",
                retention_policy(policy),
                *self.store.location(),
            ]
        )
        if code != 0:
            log.warning("retention (%s) failed: %s", policy, summary(err))
        else:
            log.info("retention (%s) applied", policy)

    def refresh_summary(self) -> None:
        backups = self.list_backups()
        if backups is not None:
            found = store_summary(backups)
            # First the file: the exporter's metric must not wait on the API server.
            try:
                write_summary_file(self.env, found)
            except OSError as e:
                log.warning("backup summary not written for the exporter: %s", e)
            self.publish(BACKUPS_ANNOTATION, found)

    def loop(self) -> None:
        startup = True
        while True:
            began = time.monotonic()
            self.parts = []
            try:
                self.step(startup)
                startup = False
            except Exception:
                log.exception("backup agent step failed")
            took = time.monotonic() - began
            if took > SLOW_STEP:
                parts = ", ".join(f"{label} {t:.1f}s" for label, t in self.parts)
                log.warning("slow pass: %.1fs (%s)", took, parts)
            time.sleep(self.interval)


def spawn(env: Mapping[str, str]) -> None:
    """Start the agent as a child of this process, which then becomes Patroni; it dies with
    the container. Output goes to the container's log."""
    subprocess.Popen(
        [sys.executable, "-m", "pgherd.operand.agent"], env=dict(env), stdin=subprocess.DEVNULL
    )


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s backup-agent %(message)s")
    Agent(os.environ).loop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
