"""PostgreSQL's own programs driven for a major upgrade (pgherd.operand.upgrade and
upgrade_check): a major's installation given by its bin directory, pg_controldata's
fields, and a server started privately on a data directory.

A private server listens on no TCP address, only on a socket in a fresh short directory,
and runs with the settings that would make it reach outside the pod switched off: no TLS
(the pod's certificate files are not mounted in an upgrade pod), no WAL archiving (the
upgrade's WAL must never land in the old cluster's archive), and a pg_hba of its own that
trusts local connections (Patroni's demands a password the upgrade does not have). Those
settings go on the command line, which overrides postgresql.conf and Patroni's
postgresql.base.conf without touching either.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg


class ToolError(Exception):
    """A PostgreSQL program failed or an installation is unusable; the message says which
    and where its log is."""


@dataclass(frozen=True)
class Installation:
    """One major's binaries: bin/ as given; share/ and lib/ as its pg_config says (Debian
    splits them across /usr/share and /usr/lib; a relocatable build keeps them beside
    bin/)."""

    bindir: Path

    def tool(self, name: str) -> str:
        path = self.bindir / name
        if not path.exists():
            raise ToolError(f"{name} is missing from {self.bindir}")
        return str(path)

    @property
    def major(self) -> int:
        out = _output([self.tool("postgres"), "-V"])
        found = re.search(r"\(PostgreSQL\) (\d+)", out)
        if not found:
            raise ToolError(f"cannot tell the major of {self.bindir}/postgres from {out!r}")
        return int(found.group(1))

    @property
    def version(self) -> str:
        out = _output([self.tool("postgres"), "-V"])
        found = re.search(r"\(PostgreSQL\) (\S+)", out)
        return found.group(1) if found else out.strip()

    def _config(self, flag: str, fallback: Path) -> Path:
        pg_config = self.bindir / "pg_config"
        if pg_config.exists():
            return Path(_output([str(pg_config), flag]).strip())
        return fallback

    @property
    def sharedir(self) -> Path:
        return self._config("--sharedir", self.bindir.parent / "share")

    @property
    def pkglibdir(self) -> Path:
        return self._config("--pkglibdir", self.bindir.parent / "lib")


def _output(argv: list[str]) -> str:
    proc = subprocess.run(argv, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise ToolError(f"{' '.join(argv)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc.stdout


def run_logged(argv: list[str], log: Path, *, cwd: Path | None = None) -> None:
    """Run a program with its output appended to log; ToolError with the output's tail."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("a") as out:
        out.write(f"$ {' '.join(argv)}\n")
        out.flush()
        proc = subprocess.run(argv, stdout=out, stderr=subprocess.STDOUT, cwd=cwd, check=False)
    if proc.returncode != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-15:])
        raise ToolError(f"{Path(argv[0]).name} failed ({proc.returncode}); log {log}:\n{tail}")


def data_directory_mode(pgdata: Path) -> None:
    """Take group write and every other's access off a data directory, which PostgreSQL
    refuses to start on ("invalid permissions"): a volume's fsGroup ownership (a kubelet's, on
    mounting it into another pod) adds them. Group read stays allowed, as PostgreSQL allows."""
    mode = stat.S_IMODE(pgdata.stat().st_mode)
    if mode & 0o027:
        pgdata.chmod(mode & ~0o027)


def controldata(inst: Installation, pgdata: Path) -> dict[str, str]:
    """pg_controldata's fields, read by the data directory's own major's program."""
    out = _output([inst.tool("pg_controldata"), "-D", str(pgdata)])
    fields = {}
    for line in out.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            fields[key.strip()] = value.strip()
    return fields


def data_major(pgdata: Path) -> int | None:
    """The major a data directory belongs to (its PG_VERSION), None when it has none."""
    try:
        return int((pgdata / "PG_VERSION").read_text().strip())
    except (OSError, ValueError):
        return None


def running_postmaster(pgdata: Path) -> int | None:
    """The pid of a live postmaster on pgdata, None when none (a stale postmaster.pid, as a
    killed pod leaves, names a pid that is gone or is some other program)."""
    try:
        pid = int((pgdata / "postmaster.pid").read_text().splitlines()[0])
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, ValueError, IndexError):
        return None
    return pid if b"postgres" in cmdline or b"postmaster" in cmdline else None


# Settings that keep a private server private; see the module's docstring.
def private_options(hba_file: Path) -> list[str]:
    return [
        "-c ssl=off",
        "-c archive_mode=off",
        f"-c hba_file='{hba_file}'",
        # Patroni's ident_file names the pod's path, absent from a copy made elsewhere.
        f"-c ident_file='{hba_file.with_name('pg_ident.conf')}'",
    ]


def write_trust_hba(path: Path) -> Path:
    """pg_hba.conf for the upgrade's own servers: local socket connections only."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("# pgherd upgrade: its private servers' socket only\nlocal all all trust\n")
    path.with_name("pg_ident.conf").write_text("# pgherd upgrade: no user name maps\n")
    return path


def option_string(hba_file: Path) -> str:
    """The private settings as one pg_ctl/pg_upgrade -o string."""
    return " ".join(private_options(hba_file))


def short_socket_dir() -> Path:
    # A Unix socket path holds at most 107 bytes; a volume's paths can be longer.
    return Path(tempfile.mkdtemp(prefix="pgu-"))


class PrivateServer:
    """A server on a data directory, on a private socket only (see the module's docstring),
    started with `with`: waits until it accepts connections, stops it fast on exit."""

    def __init__(
        self, inst: Installation, pgdata: Path, log: Path, *, hba_file: Path, user: str
    ) -> None:
        self.inst, self.pgdata, self.log, self.hba_file, self.user = (
            inst,
            pgdata,
            log,
            hba_file,
            user,
        )
        self.port = 50431
        self.socket = short_socket_dir()

    def __enter__(self) -> PrivateServer:
        data_directory_mode(self.pgdata)
        opts = (
            f"{option_string(self.hba_file)} -c listen_addresses='' -c port={self.port} "
            f"-c unix_socket_directories='{self.socket}'"
        )
        self.log.parent.mkdir(parents=True, exist_ok=True)
        try:
            run_logged(
                [
                    self.inst.tool("pg_ctl"),
                    "start",
                    "-w",
                    "-t",
                    "300",
                    "-D",
                    str(self.pgdata),
                    "-o",
                    opts,
                    "-l",
                    str(self.log),
                ],
                self.log.with_suffix(".pg_ctl.log"),
            )
        except ToolError as e:
            # pg_ctl says only "examine the log output": the server's own last lines say why,
            # and a pod's termination message is all an operator reads of them.
            try:
                server = "\n".join(self.log.read_text(errors="replace").splitlines()[-8:])
            except OSError:
                raise e from None
            raise ToolError(f"{e}\nthe server's log ({self.log}) ends:\n{server}") from None
        return self

    def conninfo(self, dbname: str = "postgres") -> dict[str, Any]:
        return {
            "host": str(self.socket),
            "port": self.port,
            "user": self.user,
            "dbname": dbname,
            "connect_timeout": 10,
        }

    def query(self, sql: str, dbname: str = "postgres") -> list[tuple[Any, ...]]:
        with psycopg.connect(**self.conninfo(dbname), autocommit=True) as conn:
            return conn.execute(sql).fetchall()

    def stop(self) -> None:
        run_logged(
            [
                self.inst.tool("pg_ctl"),
                "stop",
                "-w",
                "-t",
                "300",
                "-m",
                "fast",
                "-D",
                str(self.pgdata),
            ],
            self.log.with_suffix(".pg_ctl.log"),
        )

    def __exit__(self, *exc: object) -> None:
        try:
            self.stop()
        finally:
            shutil.rmtree(self.socket, ignore_errors=True)


def exchange(a: Path, b: Path) -> bool:
    """Swap the names of two directories atomically (renameat2 RENAME_EXCHANGE, Linux 3.15,
    ext4, XFS, Btrfs, tmpfs); False where the kernel or the filesystem cannot."""
    import ctypes  # noqa: PLC0415
    import errno  # noqa: PLC0415

    libc = ctypes.CDLL(None, use_errno=True)
    renameat2 = getattr(libc, "renameat2", None)
    if renameat2 is None:
        return False
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        fsync_dir(a.parent)
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(a))


def fsync_dir(path: Path) -> None:
    """Make a rename in path durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
