"""Major upgrade outage (issue 15): `pgherd upgrade run` from PostgreSQL 15 to 18 on a ~1 GiB
database (pgbench -i), per method: link, copy, and clone where this filesystem has
reflinks. The whole command is the write outage of the primary (its server is stopped
throughout); pg_upgrade's own share, the preflight on the same data, and the statistics
step after the new server starts are measured too. Local data directories only: no
Kubernetes, the binaries the tests use (tests.upgrade_support)."""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from tests import upgrade_support as us

from pgherd.operand import upgrade

# pgbench's scale 1 is ~15 MiB with its indexes; 68 makes ~1 GiB.
SCALE = 68


def _command(*args: str) -> tuple[float, dict[str, Any]]:
    started = time.monotonic()
    proc = subprocess.run(us.upgrade_command(*args), capture_output=True, text=True, check=False)
    seconds = time.monotonic() - started
    if proc.returncode not in (upgrade.EXIT_OK, upgrade.EXIT_PROBLEMS):
        raise RuntimeError(f"pgherd upgrade {args[0]} failed: {proc.stderr[-2000:]}")
    report: dict[str, Any] = json.loads(proc.stdout)
    return seconds, report


def _database(template: Path) -> dict[str, Any]:
    old, _ = us.binaries()
    started = time.monotonic()
    us.make_cluster(template, sql="SELECT 1")
    with us.Server(old, template, extra="-c max_wal_size=4GB -c archive_mode=off") as srv:
        us.sh(
            [old.tool("pgbench"), "-i", "-q", "-s", str(SCALE), "-I", "dtGvp",
             "-h", str(srv.socket), "-p", str(srv.port), "-U", "postgres", "postgres"]
        )  # fmt: skip
        with srv.connect() as conn:
            size = conn.execute("SELECT pg_database_size('postgres')").fetchone()
    assert size is not None  # noqa: S101 - pg_database_size of an existing database
    return {"scale": SCALE, "bytes": size[0], "seconds": round(time.monotonic() - started, 1)}


def upgrade_outage(tmp: Path | None = None) -> dict[str, Any]:
    """Seconds per method for `pgherd upgrade run`, pg_upgrade alone, and analyze."""
    _, new = us.binaries()
    with tempfile.TemporaryDirectory(prefix="pgherd-upgrade-bench-", dir=tmp) as where:
        base = Path(where)
        template = base / "template" / "pgdata"
        results: dict[str, Any] = {"database": _database(template)}
        seconds, report = _command(
            "check", "--method", "link", "--source-pgdata", str(template),
            "--work-dir", str(base / "check"),
        )  # fmt: skip
        results["check_seconds"] = round(seconds, 2)
        results["check"] = {"ok": report["ok"], "durations": report["durations"]}
        methods = ["link", "copy"]
        if upgrade.reflink_supported(base) is None:
            methods.append("clone")
        else:
            results["clone"] = "not measured: this filesystem has no reflinks"
        for method in methods:
            pgdata = base / method / "pgdata"
            pgdata.parent.mkdir()
            subprocess.run(["cp", "-a", str(template), str(pgdata)], check=True)
            seconds, report = _command("run", "--pgdata", str(pgdata), "--method", method)
            row: dict[str, Any] = {
                "run_seconds": round(seconds, 2),
                "pg_upgrade_seconds": report["durations"]["pg_upgrade"],
                "durations": report["durations"],
            }
            with us.Server(new, pgdata) as srv:
                seconds, _ = _command(
                    "analyze", "--pgdata", str(pgdata), "--host", str(srv.socket),
                    "--port", str(srv.port), "--log", str(base / f"{method}-analyze.log"),
                )  # fmt: skip
                row["analyze_seconds"] = round(seconds, 2)
                seconds, _ = _command(
                    "analyze", "--pgdata", str(pgdata), "--host", str(srv.socket),
                    "--port", str(srv.port), "--full", "--log", str(base / "full.log"),
                )  # fmt: skip
                row["analyze_full_seconds"] = round(seconds, 2)
            results[method] = row
            shutil.rmtree(base / method)
        return results


if __name__ == "__main__":
    print(json.dumps(upgrade_outage(), indent=2))
