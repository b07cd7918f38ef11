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

    def start(self) -> None:
        env = {
            **os.environ,
            "KUBECONFIG": str(self.kubeconfig),
            "PGHERD_HEALTH_HOST": "127.0.0.1",
            **self.env,
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
