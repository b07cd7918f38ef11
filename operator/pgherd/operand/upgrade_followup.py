"""After a major upgrade, on the instance that runs the upgraded data directory: once its
server runs as the primary, rebuild the statistics (`pgherd upgrade analyze`: the extension
updates pg_upgrade listed, then vacuumdb) and remove the old cluster (`finish`), then leave a
record beside PGDATA that the instance report publishes, from which the operator ends the
upgrade (Analyzing -> Completed).

Why here and not in a Job: the extension update script pg_upgrade writes is on this volume,
and the statistics must be rebuilt by the server that serves. Why finish without waiting:
once the new primary has accepted writes, going back to the old cluster would lose them (and
in link mode the old cluster shares the new one's files), so the old copy only takes space.
A replica never has the journal: it was cloned from the new primary into a new volume.
"""

from __future__ import annotations

import json
import logging
import subprocess
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from pgherd import contract
from pgherd.operand import upgrade
from pgherd.operand.pgtools import Installation, ToolError

log = logging.getLogger("pgherd.instance")

RECORD = "pgherd-upgraded.json"  # beside PGDATA, on the data volume
INTERVAL = 5.0


def record_path(pgdata: Path) -> Path:
    return pgdata.parent / RECORD


def read_record(pgdata: Path) -> dict[str, Any] | None:
    """The last upgrade this volume finished (fromMajor, toMajor, analyzeSeconds, at)."""
    try:
        value = json.loads(record_path(pgdata).read_text())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def pending(pgdata: Path, major: int) -> upgrade.Journal | None:
    """The journal of an upgrade to major swapped into PGDATA and not yet followed up."""
    journal = upgrade.Journal.load(pgdata.parent / "pgherd-upgrade" / "journal.json")
    if journal is None or journal.state != "swapped":
        return None
    return journal if journal.data.get("newMajor") == major else None


def follow_up(
    journal: upgrade.Journal,
    new: Installation,
    env: Mapping[str, str],
    *,
    pgdata: Path,
    host: str,
    port: int,
    user: str,
    log_file: Path,
) -> dict[str, Any]:
    """analyze, then the record, then finish: a kill anywhere repeats at most the analyze."""
    old_major = int(journal.data["oldMajor"])
    done = upgrade.analyze(
        new, old_major, env, pgdata=pgdata, host=host, port=port, user=user, full=False,
        log=log_file,
    )  # fmt: skip
    record = {
        "fromMajor": old_major,
        "toMajor": new.major,
        "method": journal.data.get("method"),
        "analyzeSeconds": done.get("analyzeSeconds"),
        "at": round(time.time(), 3),
    }
    tmp = record_path(pgdata).with_suffix(".tmp")
    tmp.write_text(json.dumps(record) + "\n")
    tmp.replace(record_path(pgdata))
    upgrade.finish(pgdata, old_major, new.major)
    return record


def is_primary(new: Installation, env: Mapping[str, str], host: str, port: int, user: str) -> bool:
    """Whether the local server runs out of recovery (Patroni promoted it)."""
    child_env = {**env, "PGHOST": host, "PGPORT": str(port), "PGUSER": user}
    if password := contract.read_superuser_password(env):
        child_env["PGPASSWORD"] = password
    try:
        out = subprocess.run(
            [new.tool("psql"), "-X", "-A", "-t", "-d", "postgres", "-c",
             "SELECT pg_is_in_recovery()"],
            env=child_env, capture_output=True, text=True, timeout=30, check=False,
        )  # fmt: skip
    except (OSError, subprocess.TimeoutExpired, ToolError):
        return False
    return out.returncode == 0 and out.stdout.strip() == "f"


def watch(
    env: Mapping[str, str], bin_dir: str, *, sleep: Callable[[float], None] = time.sleep
) -> None:
    """Wait for this instance to run the upgraded data as primary, then follow up. Returns
    at once when there is no upgrade to follow up (the common case)."""
    root = env.get("PGHERD_ROOT", "/")
    pgdata = Path(contract.rooted(root, env.get("PGDATA", contract.PGDATA)))
    new = Installation(Path(bin_dir))
    journal = pending(pgdata, new.major)
    if journal is None:
        return
    host = contract.rooted(root, contract.SOCKET_DIR)
    port = int(env.get("PGHERD_PG_PORT", contract.POSTGRES_PORT))
    user = env.get("PATRONI_SUPERUSER_USERNAME", "postgres")
    log_file = Path(contract.rooted(root, f"{contract.TMP_DIR}/analyze.log"))
    while True:
        if is_primary(new, env, host, port, user):
            try:
                record = follow_up(journal, new, env, pgdata=pgdata, host=host, port=port,
                                   user=user, log_file=log_file)  # fmt: skip
            except (upgrade.UpgradeError, ToolError) as e:
                log.warning("after the upgrade: %s; trying again", e)
            else:
                log.info("after the upgrade: statistics rebuilt, old cluster removed: %s", record)
                return
        sleep(INTERVAL)


def start(env: Mapping[str, str], bin_dir: str) -> None:
    """watch in a daemon thread; its failures are logged, never fatal."""

    def run() -> None:
        try:
            watch(env, bin_dir)
        except Exception:
            log.exception("after the upgrade: follow-up stopped")

    threading.Thread(target=run, name="upgrade-follow-up", daemon=True).start()
