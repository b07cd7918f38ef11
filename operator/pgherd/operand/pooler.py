"""`pgherd pooler`: the PgBouncer container's entrypoint (a PostgresPooler's pods).

It writes pgbouncer.ini and the auth file from what the pod mounts and its environment, runs
Debian's pgbouncer in the foreground as its child, and keeps it in step with the mounts:
- the operator's settings (the ConfigMap's pgbouncer.ini) or the certificates (the Secret)
  changed: the file is rewritten and PgBouncer reloads it (SIGHUP, the console's RELOAD),
  which keeps every client and server connection;
- the pause switch changed: SIGUSR1 (the console's PAUSE: new queries wait, running
  transactions finish) or SIGUSR2 (RESUME).
No admin console user is configured at all: signals need no password. PgBouncer's exit ends
the container (the kubelet restarts it); SIGTERM is passed on to PgBouncer.

PgBouncer connects to the host and port of its environment, the cluster's `-rw` (or `-ro`)
Service: after a failover the Service leads to the new primary, and the old primary's
restart closes PgBouncer's server connections, so the next transaction gets a new one there.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from types import FrameType

from pgherd import contract
from pgherd.api.v1alpha1 import POOLER_USERNAME
from pgherd.contract import rooted

log = logging.getLogger("pgherd.pooler")
POLL_SECONDS = 1.0
# Where Debian's package installs it (not on a non-root PATH).
PGBOUNCER_DIRS = "/usr/sbin:/usr/bin:/usr/local/sbin:/usr/local/bin"


class Paths:
    """The pod's paths as the process sees them (PGHERD_ROOT prefixes them under the test
    kubelet; it is "/" in a real pod)."""

    def __init__(self, env: Mapping[str, str]) -> None:
        root = env.get("PGHERD_ROOT", "/")
        self.config = Path(rooted(root, contract.POOLER_CONFIG_DIR))
        self.tls = Path(rooted(root, contract.POOLER_TLS_DIR))
        self.run = Path(rooted(root, contract.POOLER_RUN_DIR))

    @property
    def ini(self) -> Path:
        return self.run / "pgbouncer.ini"

    @property
    def auth_file(self) -> Path:
        return self.run / "userlist.txt"


def _quoted(value: str) -> str:
    # The auth file's quoting: a double quote inside is doubled.
    return '"' + value.replace('"', '""') + '"'


def userlist(password: str) -> str:
    """The auth file: the auth_user's password only (every other user comes by auth_query)."""
    return f"{_quoted(POOLER_USERNAME)} {_quoted(password)}\n"


def ini(base: str, env: Mapping[str, str], paths: Paths) -> str:
    """The whole pgbouncer.ini: the database line for the target Service, the operator's
    [pgbouncer] section, and what only the pod knows (where it listens, its files)."""
    host = env[contract.POOLER_HOST_ENV]
    port = env.get(contract.POOLER_TARGET_PORT_ENV, str(contract.POSTGRES_PORT))
    own = {
        "listen_addr": env.get(contract.POOLER_LISTEN_ADDR_ENV, "0.0.0.0"),  # noqa: S104
        "listen_port": env.get(contract.POOLER_LISTEN_PORT_ENV, str(contract.POOLER_PORT)),
        # No Unix socket: the root filesystem is read-only, and every client comes over TCP.
        "unix_socket_dir": "",
        "auth_file": str(paths.auth_file),
        "client_tls_cert_file": str(paths.tls / contract.TLS_CERT),
        "client_tls_key_file": str(paths.tls / contract.TLS_KEY),
        "server_tls_ca_file": str(paths.tls / contract.POOLER_SERVER_CA),
    }
    # Every database a client names is the server's of that name (a wildcard entry).
    databases = f"[databases]\n* = host={host} port={port}\n\n"
    return databases + base.rstrip("\n") + "\n" + "".join(f"{k} = {v}\n" for k, v in own.items())


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


def _tls_digest(paths: Paths) -> str:
    h = hashlib.sha256()
    for name in (contract.TLS_CERT, contract.TLS_KEY, contract.POOLER_SERVER_CA):
        h.update(_read(paths.tls / name).encode())
    return h.hexdigest()


def _write(path: Path, text: str) -> None:
    tmp = path.with_suffix(".tmp")
    with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as f:
        f.write(text)
    tmp.replace(path)


def _paused(paths: Paths) -> bool:
    return _read(paths.config / contract.POOLER_PAUSED_KEY).strip() == "true"


def pgbouncer(env: Mapping[str, str]) -> str:
    exe = env.get("PGHERD_PGBOUNCER") or shutil.which(
        "pgbouncer", path=f"{env.get('PATH', '')}:{PGBOUNCER_DIRS}"
    )
    if not exe:
        raise SystemExit("pgherd pooler: pgbouncer is not installed (Debian's pgbouncer package)")
    return exe


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    env = dict(os.environ)
    paths = Paths(env)
    paths.run.mkdir(parents=True, exist_ok=True)
    password = env.get(contract.POOLER_PASSWORD_ENV, "")
    if not password:
        log.error("no password for %s in %s", POOLER_USERNAME, contract.POOLER_PASSWORD_ENV)
        return 1
    _write(paths.auth_file, userlist(password))
    base = _read(paths.config / contract.POOLER_INI_KEY)
    _write(paths.ini, ini(base, env, paths))
    tls = _tls_digest(paths)
    child = subprocess.Popen([pgbouncer(env), str(paths.ini)])
    log.info("pgbouncer started (pid %s)", child.pid)

    def forward(signum: int, _frame: FrameType | None) -> None:
        child.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    paused = False
    while child.poll() is None:
        time.sleep(POLL_SECONDS)
        new_base, new_tls = _read(paths.config / contract.POOLER_INI_KEY), _tls_digest(paths)
        if new_base and (new_base != base or new_tls != tls):
            base, tls = new_base, new_tls
            _write(paths.ini, ini(base, env, paths))
            log.info("configuration changed: reloading pgbouncer")
            child.send_signal(signal.SIGHUP)
        want = _paused(paths)
        if want != paused:
            log.info("%s the pool", "pausing" if want else "resuming")
            child.send_signal(signal.SIGUSR1 if want else signal.SIGUSR2)
            paused = want
    log.info("pgbouncer exited with %s", child.returncode)
    return child.returncode or 0


if __name__ == "__main__":
    sys.exit(main())
