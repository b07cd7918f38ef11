"""The operator run from the working tree as a child process (for `make run`, tests and
benchmarks), with a given kubeconfig, so it acts with exactly that identity's permissions."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pgherd_dev import processes


@dataclass
class OperatorProcess:
    """`pgherd operator` as a process; stop and start it to test restarts."""

    kubeconfig: Path
    log: Path
    proc: subprocess.Popen[bytes] | None = None
    env: dict[str, str] = field(default_factory=dict)
    args: list[str] = field(default_factory=list)
    health_port: int = 0
    # 0: metrics off (PGHERD_METRICS_PORT=0 in env); else a free port, chosen at start.
    metrics_port: int = 0

    def start(self) -> None:
        # Operators run side by side (tests, `make run`): each on free ports of its own.
        self.metrics_port = (
            0 if self.env.get("PGHERD_METRICS_PORT") == "0" else processes.free_port()
        )
        env = {
            **os.environ,
            "KUBECONFIG": str(self.kubeconfig),
            "PGHERD_HEALTH_HOST": "127.0.0.1",
            "PGHERD_METRICS_HOST": "127.0.0.1",
            **self.env,
            "PGHERD_METRICS_PORT": str(self.metrics_port),
        }
        self.health_port = processes.free_port()
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "pgherd.cli",
                    "operator",
                    *self.args,
                    f"--health-port={self.health_port}",
                ],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=processes.set_parent_death_signal,  # noqa: PLW1509
            )

    def health(self) -> dict[str, Any] | None:
        """What the operator's /healthz reports (its probes), or None while it does not answer."""
        url = f"http://127.0.0.1:{self.health_port}/healthz"
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                report: dict[str, Any] = json.loads(response.read())
        except (OSError, ValueError):
            return None
        return report

    @property
    def metrics_url(self) -> str | None:
        """Where the operator serves /metrics, or None when its metrics are off."""
        return f"http://127.0.0.1:{self.metrics_port}/metrics" if self.metrics_port else None

    def metrics(self) -> str:
        """The operator's /metrics, as Prometheus' text format."""
        if not self.metrics_port:
            raise RuntimeError("the operator runs with its metrics off")
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as response:
            return str(response.read().decode())

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, sig: signal.Signals = signal.SIGTERM) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(sig)
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
