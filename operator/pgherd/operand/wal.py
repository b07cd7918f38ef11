"""`pgherd wal-archive` and `pgherd wal-restore`: Patroni's archive_command and restore_command.

Thin wrappers over barman-cloud-wal-archive / -restore that take the store from the pod's
environment, so the commands in the (shared, secret-free) Patroni configuration never change.

Before the first WAL file a data directory archives, wal-archive checks that the bucket
exists (pgherd.operand.bucket: pgherd never creates buckets, and barman's check below would
create a missing one), then runs barman-cloud-check-wal-archive: it refuses to archive into
a folder holding WAL of this or a later timeline, i.e. another database system's archive
(two clusters given the same location, or a restored cluster pointed at its source). A
marker in the data directory (where PostgreSQL runs archive_command) records that the
checks passed. The last failure's message is kept in a file the backup agent publishes, so
that status says why.

It also keeps the name of the newest file archived (in WAL order) in a file the agent
publishes: pg_stat_archiver only knows the most recent one, and after a failover the new
primary archives the old timeline's leftover segments after its new ones, which would make
"last archived WAL" go backwards.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

from pgherd import contract
from pgherd.contract import ARCHIVE_PREFIX, RESTORE_PREFIX, newer
from pgherd.operand import bucket
from pgherd.operand.store import Store

CHECKED_MARKER = "pgherd-archive-checked"
ERROR_FILE = "pgherd-archive-error"
NEWEST_FILE = "pgherd-archive-newest"


def _pod_tmp(env: Mapping[str, str]) -> Path:
    return Path(contract.rooted(env.get("PGHERD_ROOT", "/"), contract.TMP_DIR))


def error_file(env: Mapping[str, str]) -> Path:
    """Where the last archiving error is kept (the pod's private /tmp)."""
    return _pod_tmp(env) / ERROR_FILE


def newest_file(env: Mapping[str, str]) -> Path:
    """Where the newest archived file's name is kept (the pod's private /tmp)."""
    return _pod_tmp(env) / NEWEST_FILE


def read_newest(env: Mapping[str, str]) -> str | None:
    """The newest file archived from this pod since it started, if any."""
    try:
        return newest_file(env).read_text().strip() or None
    except OSError:
        return None


def _note_archived(env: Mapping[str, str], name: str) -> None:
    current = read_newest(env)
    if current == name or newer(current, name) != name:
        return
    path = newest_file(env)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(name)
        tmp.replace(path)  # the agent never reads half a file
    except OSError:
        pass  # status then falls back to pg_stat_archiver


def timeline_of(wal_name: str) -> int:
    """Timeline of a WAL segment (first 8 hex digits) or history file (NNNNNNNN.history)."""
    return int(wal_name[:8], 16)


# PostgreSQL waits for archive_command and restore_command without a limit: a store call
# that hangs would stop archiving silently, while a failure is logged, reported and retried.
COMMAND_TIMEOUT = 600.0


def _run(argv: list[str], env: Mapping[str, str]) -> tuple[int, str]:
    try:
        proc = subprocess.run(
            argv,
            env=dict(env),
            capture_output=True,
            text=True,
            check=False,
            timeout=COMMAND_TIMEOUT,
        )
    except subprocess.TimeoutExpired:
        return 124, f"{argv[0]} did not finish within {COMMAND_TIMEOUT:.0f}s"
    return proc.returncode, (proc.stderr or proc.stdout).strip()


def summary(output: str) -> str:
    # barman prints a traceback-free last line that names the cause (NoSuchBucket,
    # InvalidAccessKeyId, Could not connect to the endpoint URL, ...).
    lines = [line for line in output.splitlines() if line.strip()]
    return " | ".join(lines[-3:])[-1000:] if lines else "no output"


def archive(wal_path: str, env: Mapping[str, str], cwd: Path) -> int:
    store = Store.from_env(env, ARCHIVE_PREFIX)
    if store is None:
        print(
            "wal-archive: no object store configured (PGHERD_BACKUP_DESTINATION)", file=sys.stderr
        )
        return 1
    child = store.child_env(env)
    marker = cwd / CHECKED_MARKER
    errors = error_file(env)
    if not marker.exists():
        problem = bucket.check(store)
        if problem is not None:
            _record(errors, problem)
            print(f"wal-archive: {problem}", file=sys.stderr)
            return 1
        tl = timeline_of(Path(wal_path).name)
        code, out = _run(
            [
                "barman-cloud-check-wal-archive",
                *store.args(),
                "--timeline",
                str(tl),
                *store.location(),
            ],
            child,
        )
        if code != 0:
            # barman says "Expected empty archive" when the folder is another system's.
            message = (
                f"refusing to archive: {store.destination}/{store.server_name} already holds "
                f"WAL of timeline {tl} or later from another database system (use an empty "
                f"location: spec.backup.serverName or objectStore.path): {summary(out)}"
                if "empty archive" in out.lower()
                else f"cannot check the archive {store.destination}/{store.server_name}: "
                f"{summary(out)}"
            )
            _record(errors, message)
            print(f"wal-archive: {message}", file=sys.stderr)
            return 1
        marker.write_text("ok\n")
    code, out = _run(
        [
            "barman-cloud-wal-archive",
            *store.args(),
            *store.compression_args(),
            *store.location(),
            wal_path,
        ],
        child,
    )
    if code != 0:
        _record(errors, f"archiving {Path(wal_path).name} failed: {summary(out)}")
        print(f"wal-archive: {summary(out)}", file=sys.stderr)
        return 1
    errors.unlink(missing_ok=True)
    _note_archived(env, Path(wal_path).name)
    return 0


def _record(path: Path, message: str) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(message)
    except OSError:
        pass  # the message is also on stderr, in PostgreSQL's log


def restore(wal_name: str, target: str, env: Mapping[str, str], *, source: bool) -> int:
    store = Store.from_env(env, RESTORE_PREFIX if source else ARCHIVE_PREFIX)
    if store is None:
        return 1
    # Exit status 1 tells PostgreSQL the file is not in the archive (end of recovery).
    code, _ = _run(
        ["barman-cloud-wal-restore", *store.args(), *store.location(), wal_name, target],
        store.child_env(env),
    )
    return 0 if code == 0 else 1


def main_archive(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: pgherd wal-archive %p", file=sys.stderr)
        return 2
    return archive(argv[0], os.environ, Path.cwd())


def main_restore(argv: list[str]) -> int:
    source = "--source" in argv
    args = [a for a in argv if a != "--source"]
    if len(args) != 2:
        print("usage: pgherd wal-restore [--source] %f %p", file=sys.stderr)
        return 2
    return restore(args[0], args[1], os.environ, source=source)
