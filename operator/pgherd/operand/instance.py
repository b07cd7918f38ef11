"""`pgherd instance`: the operand container's entrypoint.

Turns the pod's environment (name, namespace, IP, ports, credentials) and the mounted
patroni.yaml into Patroni's final configuration, then runs Patroni as its child and stays
beside it as a small supervisor: it passes Patroni's and PostgreSQL's output through to the
container log, forwards signals, exits with Patroni's status, and reports the instance to
the operator (pgherd.operand.report: PostgreSQL's version and libraries, why it does not
start, which parameters Patroni dropped), and serves the instance's Prometheus metrics
(pgherd.operand.metrics, from a thread). Per-pod values travel as PATRONI_* environment
variables, which Patroni prefers over its file; secrets never touch the disk.

PGHERD_ROOT (default "/") prefixes every filesystem path the pod spec names. A real pod
never sets it; pgherd's test kubelet does, so that many pods can share one machine.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import yaml

from pgherd import contract
from pgherd.contract import rooted
from pgherd.operand import tls_files

_DEFAULT_BIN_ROOT = Path(contract.POSTGRES_INSTALL_ROOT)


class InstanceError(Exception):
    """The pod's environment cannot run an instance; the message says what is missing."""


def _require(env: Mapping[str, str], name: str) -> str:
    value = env.get(name, "")
    if not value:
        raise InstanceError(f"environment variable {name} is required and empty")
    return value


def patroni_environment(env: Mapping[str, str]) -> dict[str, str]:
    """The PATRONI_* variables for this pod, derived from what the pod spec provides."""
    root = env.get("PGHERD_ROOT", "/")
    pod_ip = _require(env, "POD_IP")
    pg_port = env.get("PGHERD_PG_PORT", str(contract.POSTGRES_PORT))
    api_port = env.get("PGHERD_API_PORT", str(contract.PATRONI_PORT))
    # Listen on the pod IP and on loopback: kubectl port-forward connects to loopback.
    hosts = ",".join(dict.fromkeys(["127.0.0.1", pod_ip]))
    return {
        "PATRONI_NAME": _require(env, "POD_NAME"),
        "PATRONI_KUBERNETES_NAMESPACE": _require(env, "POD_NAMESPACE"),
        "PATRONI_KUBERNETES_POD_IP": pod_ip,
        "PATRONI_POSTGRESQL_LISTEN": f"{hosts}:{pg_port}",
        "PATRONI_POSTGRESQL_CONNECT_ADDRESS": f"{pod_ip}:{pg_port}",
        "PATRONI_RESTAPI_LISTEN": f"{pod_ip}:{api_port}",
        "PATRONI_RESTAPI_CONNECT_ADDRESS": f"{pod_ip}:{api_port}",
        "PATRONI_POSTGRESQL_DATA_DIR": rooted(root, env.get("PGDATA", contract.PGDATA)),
        "PATRONI_POSTGRESQL_PGPASS": rooted(root, contract.PGPASS),
    }


def find_bin_dir(env: Mapping[str, str], base: Path = _DEFAULT_BIN_ROOT) -> str:
    """PostgreSQL's binaries: PGHERD_PG_BIN_DIR; else those of the cluster's major
    (PGHERD_POSTGRES_MAJOR, from spec.postgresVersion) at the image layout
    <base>/<major>/bin; else (a pod rendered before the operator passed the major) the
    newest under base.

    The major's own binaries, never merely the newest: an image may carry two majors (the
    old and the new of an upgrade), and a server must never run on another major's data.
    """
    if explicit := env.get("PGHERD_PG_BIN_DIR"):
        return explicit
    if major := env.get(contract.POSTGRES_MAJOR_ENV, "").strip():
        if not major.isdigit():
            raise InstanceError(f"{contract.POSTGRES_MAJOR_ENV}={major!r} is not a major version")
        wanted = base / major / "bin"
        if not (wanted / "postgres").exists():
            raise InstanceError(
                f"no PostgreSQL {major} binaries in {wanted} (this image does not carry "
                f"major {major}: use an image for postgresVersion {major}, or set "
                "PGHERD_PG_BIN_DIR)"
            )
        return str(wanted)
    majors = sorted(
        (p for p in base.glob("*/bin") if (p / "postgres").exists()),
        key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0,
    )
    if not majors:
        raise InstanceError(f"no PostgreSQL binaries under {base}; set PGHERD_PG_BIN_DIR")
    return str(majors[-1])


def _require_major(env: Mapping[str, str]) -> None:
    """Stop before Patroni when the image lacks the cluster's major, after telling the
    operator which major the image does run (if any), so that the cluster says so."""
    try:
        find_bin_dir(env)
    except InstanceError as e:
        others = {k: v for k, v in env.items() if k != contract.POSTGRES_MAJOR_ENV}
        try:
            carried = find_bin_dir(others)
        except InstanceError:
            raise e from None
        from pgherd.operand import report  # noqa: PLC0415

        report.publish_missing_major(env, carried, str(e))
        raise


# Settings of patroni.yaml that name files (TLS material), per section.
_PATH_KEYS = {
    "restapi": ("certfile", "keyfile", "cafile"),
    "ctl": ("certfile", "keyfile", "cacert"),
    "authentication": ("sslrootcert", "sslcert", "sslkey"),
    "parameters": ("ssl_cert_file", "ssl_key_file", "ssl_ca_file"),
}


def _rooted_paths(section: Mapping[str, Any], keys: tuple[str, ...], root: str) -> dict[str, Any]:
    return {k: rooted(root, v) if k in keys and isinstance(v, str) else v
            for k, v in section.items()}  # fmt: skip


def final_config(config: dict[str, Any], env: Mapping[str, str]) -> dict[str, Any]:
    """patroni.yaml as mounted, with paths mapped under PGHERD_ROOT and the binaries found."""
    root = env.get("PGHERD_ROOT", "/")
    out = dict(config)
    for section in ("restapi", "ctl"):
        if isinstance(out.get(section), dict):
            out[section] = _rooted_paths(out[section], _PATH_KEYS[section], root)
    pg = dict(out.get("postgresql", {}))
    pg["bin_dir"] = find_bin_dir(env)
    params = _rooted_paths(pg.get("parameters", {}), _PATH_KEYS["parameters"], root)
    params["unix_socket_directories"] = rooted(
        root, str(params.get("unix_socket_directories", contract.SOCKET_DIR))
    )
    pg["parameters"] = params
    pg["authentication"] = {
        role: _rooted_paths(auth, _PATH_KEYS["authentication"], root)
        for role, auth in (pg.get("authentication") or {}).items()
    }
    if password := contract.read_superuser_password(env):
        superuser = dict(pg["authentication"].get("superuser") or {})
        pg["authentication"]["superuser"] = superuser | {"password": password}
    bootstrap = dict(out.get("bootstrap", {}))
    # Creates the application database and its owner once, on the first primary.
    bootstrap["post_bootstrap"] = f"{sys.executable} -m pgherd.operand.post_bootstrap"
    out["bootstrap"] = bootstrap
    out["postgresql"] = pg
    return out


def clear_stale_socket_locks(directory: Path) -> list[str]:
    """Remove PostgreSQL's socket lock files (and sockets) left by the previous container.

    The socket directory is an emptyDir, which outlives a crashed container. Its lock file
    names the old postmaster's PID, and in the new container's PID namespace that number may
    already belong to another process (PIDs start again from 1): PostgreSQL then takes the
    lock for a live postmaster's and refuses to start. A container that is starting runs no
    postmaster, so whatever is there is stale.
    """
    directory.mkdir(parents=True, exist_ok=True)
    removed = []
    for path in directory.glob(".s.PGSQL.*"):
        path.unlink(missing_ok=True)
        removed.append(path.name)
    return removed


class ConfigFile:
    """Patroni's final configuration file, written again when what it is made of changes
    (a rotated superuser password); 0600, as it holds that password."""

    def __init__(self, config: dict[str, Any], env: Mapping[str, str], target: Path) -> None:
        self.config, self.env, self.target = config, env, target
        self.final: dict[str, Any] = {}
        self.refresh()

    def refresh(self) -> bool:
        """Write the file if its contents changed; whether they did."""
        final = final_config(self.config, self.env)
        if final == self.final:
            return False
        tmp = self.target.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(yaml.safe_dump(final, sort_keys=False))
        tmp.replace(self.target)
        self.final = final
        return True


def run(env: Mapping[str, str]) -> int:
    """Write the final configuration and run Patroni; returns its exit status."""
    root = env.get("PGHERD_ROOT", "/")
    source = Path(rooted(root, env.get("PGHERD_CONFIG", contract.CONFIG_FILE)))
    try:
        config = yaml.safe_load(source.read_text())
    except OSError as e:
        raise InstanceError(f"cannot read Patroni configuration {source}: {e}") from None
    patroni_env = patroni_environment(env)
    _require_major(env)
    clear_stale_socket_locks(Path(rooted(root, contract.SOCKET_DIR)))
    tls_source = Path(rooted(root, contract.TLS_MOUNT))
    tls_target = Path(rooted(root, contract.TLS_DIR))
    tls_files.sync(tls_source, tls_target)
    if absent := tls_files.missing(tls_target):
        raise InstanceError(f"TLS files missing from {contract.TLS_MOUNT}: {', '.join(absent)}")
    if not contract.read_superuser_password(env):
        raise InstanceError(f"no superuser password in {contract.SUPERUSER_PASSWORD_FILE}")
    target = Path(rooted(root, contract.TMP_DIR)) / "patroni.yaml"
    target.parent.mkdir(parents=True, exist_ok=True)
    config_file = ConfigFile(config, env, target)
    # Before Patroni, so that a scrape answers (pgherd_up 0) while PostgreSQL starts; a
    # failure to serve is logged and the instance runs on without metrics.
    from pgherd.operand import metrics  # noqa: PLC0415

    metrics.serve(env)
    if env.get("PGHERD_BACKUP_DESTINATION"):
        # The backup agent runs beside Patroni (see pgherd.operand.agent).
        from pgherd.operand import agent  # noqa: PLC0415

        agent.spawn(env)
    return supervise(
        [sys.executable, "-m", "patroni", str(target)],
        {**env, **patroni_env},
        bin_dir=str(config_file.final["postgresql"]["bin_dir"]),
        tls=(tls_source, tls_target),
        refresh=config_file.refresh,
    )


_FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1)


def supervise(
    command: list[str],
    env: dict[str, str],
    *,
    bin_dir: str,
    tls: tuple[Path, Path] | None = None,
    refresh: Callable[[], bool] | None = None,
) -> int:
    """Run Patroni, pass its output (PostgreSQL's included) to ours, report the instance,
    keep the TLS files (source, private copy) and the configuration (refresh) current, with
    a reload when either changed; returns Patroni's exit status."""
    from pgherd.operand import report as instance_report  # noqa: PLC0415
    from pgherd.operand import upgrade_followup  # noqa: PLC0415

    watch = instance_report.LogWatch()
    child = subprocess.Popen(
        command, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    for sig in _FORWARDED:
        signal.signal(sig, lambda signum, _frame: child.send_signal(signum))

    def relay() -> None:
        assert child.stdout is not None  # noqa: S101 - stdout=PIPE
        out = sys.stderr.buffer
        # PostgreSQL inherits the pipe: its lines (and a surviving postmaster's) pass here.
        for raw in iter(child.stdout.readline, b""):
            out.write(raw)
            out.flush()
            watch.feed(raw.decode(errors="replace"))

    threading.Thread(target=relay, name="relay", daemon=True).start()
    instance_report.start(env, watch, bin_dir)
    upgrade_followup.start(env, bin_dir)
    if tls is not None:
        # SIGHUP: Patroni reloads its REST API certificate and PostgreSQL's configuration.
        tls_files.keep_current(
            *tls, lambda: child.send_signal(signal.SIGHUP), threading.Event(), refresh=refresh
        )
    return _reap_until(child)


def _reap_until(child: subprocess.Popen[bytes]) -> int:
    """Wait for Patroni's exit, reaping every other child meanwhile.

    In a container this process is PID 1: PostgreSQL's postmaster (which Patroni starts
    detached) and any other orphan become its children. Unreaped, a dead postmaster stays a
    zombie that Patroni takes for a running server, and never finishes stopping it.
    """
    while True:
        try:
            pid, status = os.wait()
        except ChildProcessError:
            return child.wait()
        if pid == child.pid:
            child.returncode = os.waitstatus_to_exitcode(status)
            return child.returncode


def main() -> int:
    # The supervisor's own lines (reloads, reports) go to the container log beside Patroni's.
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s pgherd instance: %(message)s", stream=sys.stderr
    )
    try:
        return run(os.environ)
    except InstanceError as e:
        print(f"pgherd instance: {e}", file=sys.stderr)
        return 2
