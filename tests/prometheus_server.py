"""A real Prometheus for tests: Debian's `prometheus` on 127.0.0.1, on a free port, as a
child process stopped by pid, scraping targets the test writes into a file_sd file (so a
restarted pod's new port is picked up without a restart), evaluating rule files, and read
back through its HTTP API.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from pgherd_dev import processes

# Fast enough that a test sees a series within seconds of a change.
SCRAPE_INTERVAL = "1s"


@dataclass(frozen=True)
class Target:
    address: str  # host:port
    labels: dict[str, str]


@dataclass
class Prometheus:
    port: int
    directory: Path
    proc: subprocess.Popen[bytes]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def set_targets(self, job: str, targets: list[Target]) -> None:
        """Replace the job's targets (file_sd: Prometheus re-reads the file on change)."""
        groups = [{"targets": [t.address], "labels": t.labels} for t in targets]
        path = self.directory / f"{job}.targets.json"
        scratch = path.with_suffix(".tmp")
        scratch.write_text(json.dumps(groups))
        scratch.replace(path)  # atomically: never a half-written file

    def api(self, path: str, **params: str) -> Any:
        query = urllib.parse.urlencode(params)
        with urllib.request.urlopen(f"{self.url}/api/v1/{path}?{query}", timeout=10) as r:  # noqa: S310 - 127.0.0.1
            body = json.load(r)
        assert body["status"] == "success", body
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """An instant query's result vector (or matrix, for a range selector)."""
        result: list[dict[str, Any]] = self.api("query", query=expr)["result"]
        return result

    def alerts(self) -> list[dict[str, Any]]:
        alerts: list[dict[str, Any]] = self.api("alerts")["alerts"]
        return alerts

    def targets(self) -> list[dict[str, Any]]:
        active: list[dict[str, Any]] = self.api("targets")["activeTargets"]
        return active

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def start(directory: Path, jobs: list[str], rule_files: list[Path]) -> Prometheus:
    """Prometheus with one file_sd job per name in `jobs` (targets empty until set) and the
    given rule files, storing into directory/data, logging to directory/prometheus.log."""
    binary = shutil.which("prometheus")
    if binary is None:
        raise RuntimeError("prometheus is missing: `make deps` installs Debian's prometheus")
    directory.mkdir(parents=True, exist_ok=True)
    config = {
        "global": {"scrape_interval": SCRAPE_INTERVAL, "evaluation_interval": SCRAPE_INTERVAL},
        "rule_files": [str(p) for p in rule_files],
        "scrape_configs": [
            {
                "job_name": job,
                "scrape_timeout": SCRAPE_INTERVAL,
                "file_sd_configs": [
                    {"files": [str(directory / f"{job}.targets.json")], "refresh_interval": "1s"}
                ],
            }
            for job in jobs
        ],
    }
    (directory / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = processes.free_port()
    with (directory / "prometheus.log").open("ab") as log:
        proc = subprocess.Popen(
            [
                binary,
                f"--config.file={directory / 'prometheus.yml'}",
                f"--storage.tsdb.path={directory / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--storage.tsdb.retention.time=1h",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=directory,
        )
    server = Prometheus(port, directory, proc)
    for job in jobs:
        server.set_targets(job, [])
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"prometheus exited: see {directory / 'prometheus.log'}")
        try:
            with urllib.request.urlopen(f"{server.url}/-/ready", timeout=2) as r:  # noqa: S310
                if r.status == 200:
                    return server
        except OSError:
            time.sleep(0.2)
    server.stop()
    raise RuntimeError(f"prometheus did not get ready: see {directory / 'prometheus.log'}")
