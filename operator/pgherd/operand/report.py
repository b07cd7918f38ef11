"""What an instance tells the operator about itself, published on its own pod.

The operator cannot see inside a pod: which PostgreSQL the image has, which libraries it can
load, why PostgreSQL does not start, which parameters Patroni threw away. The `pgherd
instance` supervisor knows all of these, so a reporter thread beside Patroni publishes them
as the pod annotation `pgherd.io/instance` (keys in pgherd.render.operand), writing only
when something changed:

- the major version and the libraries of the image's PostgreSQL, which the operator checks
  spec.postgresVersion and *_preload_libraries against;
- PostgreSQL's own last fatal error while it is not running (from its log lines, which pass
  through the supervisor), so that a server that cannot start says why;
- the parameters of Patroni's dynamic configuration that Patroni's own validator rejects for
  this version (unknown names, invalid values): Patroni drops them with only a log line;
- the data volume's size, used and available bytes (statvfs) and pg_wal's size, from which
  the operator warns before the disk fills (pgherd.controller.storage). These move all the
  time, so a change of them alone is published only when it is worth it (worth_publishing:
  more than 1 % of the volume, or any change after VOLUME_EVERY seconds): no annotation
  write storm while WAL is written.
"""

from __future__ import annotations

import json
import logging
import os
import re
import ssl
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pgherd import contract
from pgherd.operand import upgrade_followup

log = logging.getLogger("pgherd.instance")

INTERVAL = 3.0
VOLUME_EVERY = 60.0
KUBE_TIMEOUT = (5.0, 15.0)
_SEVERE = re.compile(r"\b(FATAL|PANIC):\s+(.*)$")
# FATALs a running server logs about one client connection; they say nothing of the server.
_CONNECTION_NOISE = (
    "the database system is starting up",
    "the database system is shutting down",
    "the database system is not yet accepting connections",
    "the database system is not accepting connections",
    "the database system is in recovery mode",
    "password authentication failed",
    "no pg_hba.conf entry",
    "terminating connection",
    "terminating walreceiver",
    "terminating background worker",
    "canceling",
    'role "',
    'database "',
    "sorry, too many clients",
    "remaining connection slots",
    "could not receive data from WAL stream",
    "could not connect to the primary server",
    "the database system is in startup mode",
    "requested timeline",
    "connection to client lost",
)


class LogWatch:
    """Remembers PostgreSQL's last server-level FATAL or PANIC message."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._last: str | None = None

    def feed(self, line: str) -> None:
        m = _SEVERE.search(line)
        if m is None or any(noise in m.group(2) for noise in _CONNECTION_NOISE):
            return
        with self._lock:
            self._last = f"{m.group(1)}: {m.group(2).strip()}"[:1000]

    def last(self) -> str | None:
        with self._lock:
            return self._last

    def clear(self) -> None:
        with self._lock:
            self._last = None


def server_version(bin_dir: str) -> tuple[int, int]:
    """(major, PG_VERSION_NUM-like number) of the postgres binary in bin_dir."""
    out = subprocess.run(
        [str(Path(bin_dir) / "postgres"), "-V"], capture_output=True, text=True, check=True
    ).stdout
    m = re.search(r"\(PostgreSQL\) (\d+)(?:\.(\d+))?", out)
    if m is None:
        raise ValueError(f"cannot read the version from {out!r}")
    major, minor = int(m.group(1)), int(m.group(2) or 0)
    return major, major * 10000 + minor


def libraries(bin_dir: str) -> list[str]:
    """Loadable libraries next to the binaries ($libdir), as names preload settings use."""
    lib = Path(bin_dir).parent / "lib"
    return sorted(p.stem for p in lib.glob("*.so")) if lib.is_dir() else []


def available_gucs(bin_dir: str) -> set[str]:
    """Every parameter this server knows (what Patroni's validator also consults)."""
    out = subprocess.run(
        [str(Path(bin_dir) / "postgres"), "--describe-config"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return {line.split("\t", 1)[0].lower() for line in out.splitlines() if line}


def ignored_parameters(
    version_num: int, parameters: Mapping[str, Any], gucs: set[str]
) -> dict[str, str]:
    """Parameters Patroni's validator drops for this server, each with the reason."""
    from patroni.collections import CaseInsensitiveSet  # noqa: PLC0415
    from patroni.postgresql.validator import (  # noqa: PLC0415 - operand only
        transform_postgresql_parameter_value,
    )

    known = CaseInsensitiveSet(gucs)
    out: dict[str, str] = {}
    for name, value in parameters.items():
        if transform_postgresql_parameter_value(version_num, name, value, known) is not None:
            continue
        if "." not in name and name.lower() not in gucs:
            out[name] = f"PostgreSQL {version_num // 10000} has no parameter {name}"
        else:
            out[name] = f"invalid value {str(value)[:200]!r}"
    return out


def volume(data: Path, wal: Path) -> dict[str, int | None] | None:
    """The data volume (statvfs: bytes as df counts them) and pg_wal's size; None when the
    volume cannot be read."""
    try:
        st = os.statvfs(data)
    except OSError:
        return None
    size = st.f_blocks * st.f_frsize
    available = st.f_bavail * st.f_frsize
    used = (st.f_blocks - st.f_bfree) * st.f_frsize
    try:
        # pg_wal is flat (segments, and archive_status's empty marker files).
        wal_bytes: int | None = sum(
            e.stat(follow_symlinks=False).st_size for e in os.scandir(wal) if e.is_file()
        )
    except OSError:
        wal_bytes = None  # not initialised yet, or a segment removed while we counted
    return {"sizeBytes": size, "usedBytes": used, "availableBytes": available,
            "walBytes": wal_bytes}  # fmt: skip


def worth_publishing(
    before: Mapping[str, Any] | None, now: Mapping[str, Any] | None, age: float, every: float
) -> bool:
    """Whether a change of the volume figures alone is worth a new annotation: a new size,
    used or pg_wal bytes moved by more than 1 % of the volume, or any change once `every`
    seconds passed since the last publication."""
    if before == now:
        return False
    if before is None or now is None or before.get("sizeBytes") != now.get("sizeBytes"):
        return True
    step = (now.get("sizeBytes") or 0) / 100
    moved = max(abs((before.get(k) or 0) - (now.get(k) or 0)) for k in ("usedBytes", "walBytes"))
    return moved > step or age >= every


class Reporter:
    """Publishes this instance's report on its pod whenever it changes."""

    def __init__(self, env: Mapping[str, str], watch: LogWatch, bin_dir: str) -> None:
        from kubernetes import client, config  # noqa: PLC0415 - operand only

        if env.get("KUBECONFIG"):
            config.load_kube_config(env["KUBECONFIG"])
        else:
            config.load_incluster_config()
        self.core = client.CoreV1Api()
        self.pod = env["POD_NAME"]
        self.namespace = env["POD_NAMESPACE"]
        self.api = f"https://{env['POD_IP']}:{env.get('PGHERD_API_PORT', contract.PATRONI_PORT)}"
        self.ca_file = contract.rooted(env.get("PGHERD_ROOT", "/"),
                                       contract.tls_path(contract.TLS_CA))  # fmt: skip
        self.watch = watch
        self.bin_dir = bin_dir
        self.major, self.version_num = server_version(bin_dir)
        self.libraries = libraries(bin_dir)
        self.gucs = available_gucs(bin_dir)
        self.published: str | None = None
        root = env.get("PGHERD_ROOT", "/")
        self.data = Path(contract.rooted(root, contract.DATA_MOUNT))
        self.pgdata = Path(contract.rooted(root, contract.PGDATA))
        self.wal = self.pgdata / "pg_wal"
        self.volume: dict[str, Any] | None = None
        self.published_at = -float("inf")

    def _get(self, path: str) -> dict[str, Any] | None:
        try:
            # Patroni's REST API speaks TLS with the cluster's certificate; verified against
            # the CA as the instance has it now (a renewal replaces the file), not by name.
            context = ssl.create_default_context(cafile=self.ca_file)
            context.check_hostname = False
            # Patroni's read-only endpoints answer without credentials, also with HTTP 503
            # when the server is not running (the body still says why).
            with urllib.request.urlopen(self.api + path, timeout=5, context=context) as resp:  # noqa: S310
                body = resp.read()
        except urllib.error.HTTPError as e:
            body = e.read()
        except OSError:
            return None
        try:
            value = json.loads(body)
        except ValueError:
            return None
        return value if isinstance(value, dict) else None

    def report(self) -> dict[str, Any]:
        state = (self._get("/patroni") or {}).get("state")
        if state == "running":
            self.watch.clear()
        config = self._get("/config") or {}
        parameters = (config.get("postgresql") or {}).get("parameters") or {}
        return {
            contract.REPORT_MAJOR: self.major,
            contract.REPORT_LIBRARIES: self.libraries,
            contract.REPORT_ERROR: None if state == "running" else self.watch.last(),
            contract.REPORT_IGNORED: ignored_parameters(self.version_num, parameters, self.gucs),
            contract.REPORT_UPGRADED: upgrade_followup.read_record(self.pgdata),
        }

    def publish_once(self) -> None:
        report = self.report()
        measured = volume(self.data, self.wal)
        rest = json.dumps(report, sort_keys=True, separators=(",", ":"))
        age = time.monotonic() - self.published_at
        if rest == self.published and not worth_publishing(
            self.volume, measured, age, VOLUME_EVERY
        ):
            return
        text = json.dumps({**report, contract.REPORT_VOLUME: measured}, sort_keys=True,
                          separators=(",", ":"))  # fmt: skip
        self.core.patch_namespaced_pod(
            self.pod,
            self.namespace,
            {"metadata": {"annotations": {contract.INSTANCE_ANNOTATION: text}}},
            _request_timeout=KUBE_TIMEOUT,
        )
        self.published, self.volume, self.published_at = rest, measured, time.monotonic()

    def loop(self) -> None:
        while True:
            try:
                self.publish_once()
            except Exception as e:
                log.warning("instance report not published: %s", e)
            time.sleep(INTERVAL)


def start(env: Mapping[str, str], watch: LogWatch, bin_dir: str) -> None:
    """Run the reporter in a daemon thread; a reporter that cannot start is logged, never
    fatal: the instance serves without it."""
    try:
        reporter = Reporter(env, watch, bin_dir)
    except Exception as e:
        log.warning("instance reporter not started: %s", e)
        return
    threading.Thread(target=reporter.loop, name="instance-report", daemon=True).start()


def publish_missing_major(env: Mapping[str, str], bin_dir: str, reason: str) -> None:
    """Publish one report for an image without the cluster's major: the major it does carry
    (bin_dir, its newest), with reason as the error. The instance then exits rather than
    run another major; from this report the operator says which major the image runs
    (VersionMismatch). Best effort: a report that cannot be published is logged."""
    watch = LogWatch()
    watch.feed(f"FATAL:  {reason}")
    try:
        Reporter(env, watch, bin_dir).publish_once()
    except Exception as e:
        log.warning("instance report not published: %s", e)
