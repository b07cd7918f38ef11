"""`pgherd restore-bootstrap`: Patroni's custom bootstrap method `pgherd_restore`.

Patroni runs it on the first instance of a cluster created with spec.bootstrap.recovery,
with `--scope`, `--datadir` and the method's extra keys (`--backup-id`, `--target-time`).
It restores a base backup from the source store into the data directory with
barman-cloud-restore; Patroni then starts PostgreSQL with the method's recovery_conf
(restore_command reading the source's WAL, the recovery target), which replays WAL and
promotes, and Patroni runs post_bootstrap (passwords of this cluster's Secrets).

Before restoring, the new cluster's own archive location (when spec.backup is set) must be
empty: it never archives into a folder holding another system's WAL, the source's included.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from pgherd.contract import ARCHIVE_PREFIX, RESTORE_PREFIX
from pgherd.operand.store import Store


class RestoreError(Exception):
    """The restore cannot go on; the message says why and what to do."""


def parse_barman_time(value: str | None) -> datetime | None:
    """barman's JSON times: ISO 8601 in recent versions, ctime-like in older ones."""
    if not value:
        return None
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        pass
    for fmt in ("%a %b %d %H:%M:%S %Y", "%Y-%m-%d %H:%M:%S.%f%z", "%Y-%m-%d %H:%M:%S%z"):
        try:
            return datetime.strptime(value, fmt)
        except ValueError:
            continue
    return None


def list_backups(store: Store, env: Mapping[str, str]) -> list[dict[str, Any]]:
    """The store's backups as barman-cloud-backup-list reports them (JSON)."""
    proc = subprocess.run(
        ["barman-cloud-backup-list", *store.args(), "--format", "json", *store.location()],
        env=store.child_env(env),
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise RestoreError(f"cannot list backups in {store.destination}: {proc.stderr.strip()}")
    backups: list[dict[str, Any]] = json.loads(proc.stdout or "{}").get("backups_list", [])
    return backups


def choose_backup(
    backups: list[dict[str, Any]], backup_id: str | None, target_time: datetime | None
) -> str:
    """The backup to restore: the one named, else the newest that ends before the target."""
    done = [b for b in backups if b.get("status") == "DONE"]
    if backup_id:
        if not any(b.get("backup_id") == backup_id for b in done):
            raise RestoreError(f"backup {backup_id} is not a completed backup in the store")
        return backup_id
    candidates = []
    for b in done:
        end = parse_barman_time(b.get("end_time"))
        if target_time is None or (end is not None and _cmp_time(end, target_time) <= 0):
            candidates.append((b.get("backup_id") or "", b))
    if not candidates:
        raise RestoreError("no completed backup in the store ends before the recovery target")
    return max(candidates)[0]


def _cmp_time(a: datetime, b: datetime) -> int:
    if (a.tzinfo is None) != (b.tzinfo is None):
        a, b = a.replace(tzinfo=None), b.replace(tzinfo=None)
    return (a > b) - (a < b)


def check_own_archive(env: Mapping[str, str]) -> None:
    own = Store.from_env(env, ARCHIVE_PREFIX)
    if own is None:
        return
    proc = subprocess.run(
        ["barman-cloud-check-wal-archive", *own.args(), *own.location()],
        env=own.child_env(env),
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise RestoreError(
            f"this cluster's archive {own.destination}/{own.server_name} is not empty; a "
            "restored cluster must archive to a new location (spec.backup.serverName or "
            f"objectStore.path): {proc.stderr.strip()[-500:]}"
        )


def restore(args: argparse.Namespace, env: Mapping[str, str]) -> None:
    source = Store.from_env(env, RESTORE_PREFIX)
    if source is None:
        raise RestoreError("no restore source in the environment (PGHERD_RESTORE_DESTINATION)")
    check_own_archive(env)
    target_time = datetime.fromisoformat(args.target_time) if args.target_time else None
    backup_id = choose_backup(list_backups(source, env), args.backup_id, target_time)
    print(f"restore-bootstrap: restoring backup {backup_id} into {args.datadir}", flush=True)
    proc = subprocess.run(
        ["barman-cloud-restore", *source.args(), *source.location(), backup_id, args.datadir],
        env=source.child_env(env),
        check=False,
    )
    if proc.returncode != 0:
        raise RestoreError(f"barman-cloud-restore of {backup_id} failed ({proc.returncode})")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="pgherd restore-bootstrap")
    parser.add_argument("--scope", default="")
    parser.add_argument("--datadir", required=True)
    parser.add_argument("--backup-id", default=None)
    parser.add_argument("--target-time", default=None)
    args = parser.parse_args(argv)
    try:
        restore(args, os.environ)
    except RestoreError as e:
        print(f"restore-bootstrap: {e}", file=sys.stderr)
        return 1
    return 0
