"""Reaching a cluster's instances while the API server is down (issue 16, API-server
outage): everything needed (local ports, certificates, credentials) is read from the API
before, and the instances are then asked directly. Shared by tests/faults/test_api_outage.py
and `make bench` (bench/api_outage.py).
"""

from __future__ import annotations

import json
import ssl
import threading
import time
import urllib.request
from dataclasses import dataclass
from typing import Any

import psycopg

from pgherd.controller.client import Client as Kube
from pgherd_dev.controlplane import ControlPlane
from pgherd_dev.kubelet import PORTS_ANNOTATION
from tests.acked_writes import AckedWriter, first_primary
from tests.operator_harness import Cluster, wait_for


@dataclass
class Instance:
    """One instance, reachable without the API: its local ports and libpq settings."""

    name: str
    pg: dict[str, Any]
    patroni_port: int

    def connect(self) -> psycopg.Connection[Any]:
        return psycopg.connect(**self.pg, autocommit=True)

    def patroni(self) -> dict[str, Any] | None:
        """Patroni's GET /patroni (over HTTPS, unverified, as the probes), or None."""
        context = ssl._create_unverified_context()  # noqa: S323 - a local probe
        url = f"https://127.0.0.1:{self.patroni_port}/patroni"
        try:
            with urllib.request.urlopen(url, timeout=2, context=context) as r:
                report: dict[str, Any] = json.loads(r.read())
                return report
        except (OSError, ValueError):
            return None


def instances(cluster: Cluster) -> list[Instance]:
    user, password, dbname = cluster.app_credentials()
    found = []
    for pod in cluster.pods():
        name = pod["metadata"]["name"]
        ports = json.loads(pod["metadata"]["annotations"][PORTS_ANNOTATION])
        pg = cluster.tls(name) | {
            "port": str(ports["postgresql"]), "user": user, "password": password,
            "dbname": dbname, "connect_timeout": "2",
        }  # fmt: skip
        found.append(Instance(name, pg, int(ports["patroni"])))
    return sorted(found, key=lambda i: i.name)


def direct_primary(members: list[Instance]) -> Any:
    """AckedWriter's connect: the instance that is not in recovery, asked directly."""
    return first_primary([m.connect for m in members], (psycopg.OperationalError,))


class Prober(threading.Thread):
    """Asks every instance, every half second, whether it is in recovery (True), the primary
    (False), or unreachable (None); and the primary's Patroni whether failsafe is active."""

    def __init__(self, members: list[Instance], primary: str) -> None:
        super().__init__(daemon=True)
        self.members, self.primary = members, primary
        self.samples: list[tuple[float, dict[str, bool | None]]] = []
        self.failsafe_active: list[float] = []
        self.stop = threading.Event()
        self._conns: dict[str, psycopg.Connection[Any]] = {}

    def _in_recovery(self, member: Instance) -> bool | None:
        try:
            conn = self._conns.get(member.name) or member.connect()
            self._conns[member.name] = conn
            row = conn.execute("SELECT pg_is_in_recovery()").fetchone()
            return bool(row[0]) if row else None
        except psycopg.Error:
            old = self._conns.pop(member.name, None)
            if old is not None:
                old.close()
            return None

    def run(self) -> None:
        leader = next(m for m in self.members if m.name == self.primary)
        while not self.stop.wait(0.5):
            now = time.monotonic()
            self.samples.append((now, {m.name: self._in_recovery(m) for m in self.members}))
            if (leader.patroni() or {}).get("failsafe_mode_is_active"):
                self.failsafe_active.append(now)
        for conn in self._conns.values():
            conn.close()

    def primaries(self, since: float = 0.0) -> set[str]:
        """Every instance seen as a primary (not in recovery) after since."""
        return {n for t, s in self.samples if t >= since for n, r in s.items() if r is False}

    def demoted(self) -> list[float]:
        """When the original primary was seen in recovery."""
        return [t for t, s in self.samples if s.get(self.primary) is True]


def synchronous_cluster(kube: Kube, ns: str, name: str, patroni: dict[str, Any]) -> Cluster:
    """A 3-instance cluster in synchronous mode "on", Healthy with a synchronous standby."""
    cluster = Cluster(kube, ns, name)
    cluster.create({"instances": 3, "synchronousMode": "on", "patroni": patroni})
    cluster.wait_healthy(3, timeout=300)
    wait_for(
        "a synchronous standby",
        lambda: any(i["role"] == "sync_standby" for i in cluster.status()["instancesStatus"]),
        timeout=60,
    )
    return cluster


def recording(members: list[Instance], primary: str) -> tuple[AckedWriter, Prober]:
    """An acknowledged-writes recorder on the primary (flowing) and a prober of every
    instance, both started."""
    writer = AckedWriter(direct_primary(members))
    writer.create_table()
    writer.start()
    writer.flowing(50, timeout=30)
    prober = Prober(members, primary)
    prober.start()
    return writer, prober


def api_down(cp: ControlPlane, seconds: float) -> tuple[float, float, float]:
    """Kill kube-apiserver, wait, start it again (whatever happened: the control plane may be
    a test session's). Returns when it was killed and when it was ready again (monotonic),
    and how long its restart took."""
    stopped = time.monotonic()
    try:
        cp.stop_apiserver()
        time.sleep(seconds)
    finally:
        restart = cp.start_apiserver(timeout=120)
    return stopped, time.monotonic(), restart
