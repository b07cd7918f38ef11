"""The instance's TLS files: private copies of the mounted `<cluster>-tls` Secret, kept
current, with a reload of Patroni (and through it PostgreSQL) whenever they change (or the
configuration file does: a rotated superuser password).

PostgreSQL and libpq refuse a private key that others can read or that another user owns; a
Secret volume's files belong to root and the pod's group. So `pgherd instance` copies the
files into a memory volume as its own, mode 0600, before Patroni starts, and then every
TLS_POLL_SECONDS: the kubelet rewrites the volume when the operator renews a certificate,
and a SIGHUP makes Patroni reload its REST API certificate and PostgreSQL's configuration,
which re-reads the server certificate, key and CA. No restart; connections stay open.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from pathlib import Path

from pgherd import contract

log = logging.getLogger("pgherd.operand.tls")


def sync(source: Path, target: Path) -> list[str]:
    """Copy the TLS files from source to target (0600) where they differ; returns the names
    copied. A file missing from source is left as it was: the next pass tries again."""
    target.mkdir(parents=True, exist_ok=True)
    changed: list[str] = []
    for name in contract.TLS_FILES:
        try:
            data = (source / name).read_bytes()
        except OSError:
            continue
        dest = target / name
        try:
            if dest.read_bytes() == data:
                continue
        except OSError:
            pass
        tmp = target / f".{name}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        # Atomic: a reader sees the old file or the new one, never half of one.
        tmp.replace(dest)
        changed.append(name)
    return changed


def missing(directory: Path) -> list[str]:
    return [name for name in contract.TLS_FILES if not (directory / name).is_file()]


def keep_current(
    source: Path,
    target: Path,
    reload: Callable[[], None],
    stop: threading.Event,
    *,
    every: float = contract.TLS_POLL_SECONDS,
    refresh: Callable[[], bool] | None = None,
) -> threading.Thread:
    """Start a thread that syncs every `every` seconds and calls reload after a change, of
    the TLS files or of what refresh rewrites (it returns whether it did)."""

    def loop() -> None:
        while not stop.wait(every):
            try:
                changed = sync(source, target)
                if refresh is not None and refresh():
                    changed.append("the configuration")
            except OSError as e:
                log.warning("cannot refresh the TLS files or the configuration: %s", e)
                continue
            if changed:
                log.info("renewed %s: reloading", ", ".join(changed))
                reload()

    thread = threading.Thread(target=loop, name="tls-files", daemon=True)
    thread.start()
    return thread
