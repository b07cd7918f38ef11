"""`kubectl pgherd psql`: psql to a cluster's primary or replicas, verifying the server.

The way in is `kubectl port-forward` to the `<cluster>-rw` (or `-ro`) Service on a free local
port; psql connects to 127.0.0.1 (hostaddr) while verifying the certificate against the
Service's DNS name (host) and the CA of the app Secret (verify-full). The password reaches psql
in a passfile, the CA in a file, both 0600 in a private temporary directory removed afterwards;
neither is on a command line nor printed.

TEST ENVIRONMENTS ONLY: the project's local control plane runs pods as local processes (kwok
nodes), where port-forward has nothing to forward to. Its kubelet publishes each pod's real
local ports in the pod annotation `kubelet.pgherd.dev/ports`; when the pods behind the Service
carry it, psql connects to that port directly. `--direct HOST:PORT` does the same by hand.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pgherd.contract import POSTGRES_PORT, POSTGRES_PORT_NAME, TLS_CA
from pgherd.render import names

Obj = dict[str, Any]
# The test kubelet's annotation (pgherd_dev.kubelet, which the shipped package must not import).
TEST_PORTS_ANNOTATION = "kubelet.pgherd.dev/ports"
PORT_FORWARD_TIMEOUT = 30.0


@dataclass(frozen=True)
class Credentials:
    user: str
    password: str
    dbname: str
    sslmode: str | None
    ca: str | None


def _field(secret: Obj, key: str) -> str | None:
    raw = (secret.get("data") or {}).get(key)
    return base64.b64decode(raw).decode() if raw else None


def credentials(app_secret: Obj, superuser_secret: Obj | None = None) -> Credentials:
    """Who to log in as: the app owner (its Secret says where and how), or the superuser with
    the app Secret's CA and sslmode."""
    sslmode, ca = _field(app_secret, "sslmode"), _field(app_secret, TLS_CA)
    source = superuser_secret or app_secret
    user = _field(source, "username") or _field(source, "user")
    password = _field(source, "password")
    if not user or not password:
        name = (source.get("metadata") or {}).get("name", "the Secret")
        raise ValueError(f"{name} has no username and password")
    dbname = "postgres" if superuser_secret else (_field(app_secret, "dbname") or user)
    return Credentials(user, password, dbname, sslmode, ca)


def service_name(cluster: str, replica: bool) -> str:
    return names.service_ro(cluster) if replica else names.service_rw(cluster)


def _passfile_field(value: str) -> str:
    return value.replace("\\", "\\\\").replace(":", "\\:")


def libpq_environment(
    creds: Credentials, host: str, hostaddr: str, port: int, directory: Path
) -> dict[str, str]:
    """The PG* variables psql connects with; writes the passfile and CA into directory."""
    passfile = directory / "pgpass"
    passfile.touch(mode=0o600)
    passfile.write_text(f"*:*:*:{_passfile_field(creds.user)}:{_passfile_field(creds.password)}\n")
    env = {
        "PGHOST": host,
        "PGHOSTADDR": hostaddr,
        "PGPORT": str(port),
        "PGUSER": creds.user,
        "PGDATABASE": creds.dbname,
        "PGPASSFILE": str(passfile),
        "PGCONNECT_TIMEOUT": "10",
        "PGAPPNAME": "kubectl-pgherd",
    }
    if creds.ca:
        ca = directory / "ca.crt"
        ca.touch(mode=0o600)
        ca.write_text(creds.ca)
        env |= {"PGSSLROOTCERT": str(ca), "PGSSLMODE": creds.sslmode or "verify-full"}
    elif creds.sslmode:
        env["PGSSLMODE"] = creds.sslmode
    return env


def test_kubelet_port(service: Obj, pods: list[Obj]) -> int | None:
    """The local port of a ready pod the Service selects, published by the test kubelet; None
    where pods are real (no such annotation)."""
    selector = (service.get("spec") or {}).get("selector") or {}
    for pod in sorted(pods, key=lambda p: str(p["metadata"]["name"])):
        meta = pod["metadata"]
        pod_labels = meta.get("labels") or {}
        if not selector or any(pod_labels.get(k) != v for k, v in selector.items()):
            continue
        conditions = (pod.get("status") or {}).get("conditions") or []
        if not any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions):
            continue
        raw = (meta.get("annotations") or {}).get(TEST_PORTS_ANNOTATION)
        try:
            port = json.loads(raw).get(POSTGRES_PORT_NAME) if raw else None
        except (ValueError, AttributeError):
            port = None
        if isinstance(port, int):
            return port
    return None


def parse_direct(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ValueError(f"--direct takes HOST:PORT, not {value!r}")
    return host, int(port)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


@contextmanager
def port_forward(kubectl: str, flags: list[str], service: str) -> Iterator[int]:
    """`kubectl port-forward svc/SERVICE` on a free local port, for the duration."""
    port = free_port()
    argv = [kubectl, "port-forward", *flags, "--address", "127.0.0.1",
            f"service/{service}", f"{port}:{POSTGRES_PORT}"]  # fmt: skip
    with tempfile.TemporaryFile() as log:
        # Its own session: Ctrl-C in psql must not end the forward under it.
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            deadline = time.monotonic() + PORT_FORWARD_TIMEOUT
            while not _listening(port):
                if proc.poll() is not None or time.monotonic() > deadline:
                    log.seek(0)
                    said = log.read().decode(errors="replace").strip()
                    raise RuntimeError(f"kubectl port-forward to {service} failed: {said}")
                time.sleep(0.2)
            yield port
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@contextmanager
def private_directory() -> Iterator[Path]:
    """A 0700 directory for the passfile and CA, removed whatever happens."""
    path = Path(tempfile.mkdtemp(prefix="kubectl-pgherd-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def run_psql(psql: str, args: list[str], env: dict[str, str]) -> int:
    """psql in the foreground with the caller's terminal; its exit code."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    proc = subprocess.Popen([psql, *args], env=clean | env)
    # Ctrl-C is psql's (it cancels the query), not a reason for the plugin to quit.
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        return proc.wait()
    finally:
        signal.signal(signal.SIGINT, previous)
