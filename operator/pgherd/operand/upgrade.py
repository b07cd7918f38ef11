"""`pgherd upgrade run | rollback | finish | analyze`: the in-place major upgrade of one
stopped data directory with pg_upgrade (the preflight, `pgherd upgrade check`, is
pgherd.operand.upgrade_check).

An upgrade pod mounts the primary's volume after its instance has stopped, with the new
major's image and the old major's binaries beside them. `run`:

1. reads the old cluster's settings (pg_controldata; template0's encoding and locale and
   the install user from a private start of the old server: pgherd.operand.pgtools);
2. initdb of the new major at `<pgdata>-<new>-upgrade`, beside PGDATA on the same volume
   (link and clone need one filesystem), with the settings pg_upgrade demands to match;
3. pg_upgrade with the method (link by default), the old server run privately (no TLS, no
   archiving, a local-trust pg_hba of its own);
4. the swap: PGDATA becomes the new cluster (an atomic exchange of the two directories
   where the filesystem allows), the old one is kept as `<pgdata>-<old>` until `finish`
   removes it once the new cluster is proven.

Each step is first recorded in a journal on the volume (`pgherd-upgrade/journal.json` beside
PGDATA, written atomically). Every step is redone or undone from what the filesystem shows,
so a kill at any point followed by `run` again finishes the upgrade (an interrupted
pg_upgrade is rolled back and started afresh; an interrupted swap completed), and
`rollback` brings the old cluster back as PGDATA as long as the new one has never started:
pg_control's fingerprint after pg_upgrade is in the journal and any start changes it. In
link mode the clusters share their files, so once the new one has run going back is refused.

`analyze` rebuilds what pg_upgrade does not carry once the new server runs (see its
docstring).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from pgherd import contract
from pgherd.operand import pgtools
from pgherd.operand.pgtools import Installation, ToolError

METHODS = contract.UPGRADE_METHODS
EXIT_OK, EXIT_ERROR, EXIT_PROBLEMS = (
    contract.UPGRADE_EXIT_OK,
    contract.UPGRADE_EXIT_ERROR,
    contract.UPGRADE_EXIT_PROBLEMS,
)
# The fields of pg_control that any start of a server changes (its state, the shutdown
# checkpoint it writes, the file's own time): equal means the cluster never ran since.
FINGERPRINT = ("Database cluster state", "Latest checkpoint location", "pg_control last modified")
# A fault injection point for tests only (a kill at an exact step cannot be timed from
# outside): the command stops and waits to be killed when it enters this journal state (or
# at "swap-half", between the swap's two renames).
TEST_PAUSE_ENV = "PGHERD_UPGRADE_TEST_PAUSE"


class UpgradeError(Exception):
    """The upgrade cannot go on (or back); the message says why and what to do."""


@dataclass(frozen=True)
class Settings:
    """What the new cluster's initdb must match in the old one."""

    superuser: str
    encoding: str
    collate: str
    ctype: str
    provider: str  # pg_database.datlocprovider: c (libc), i (ICU), b (builtin)
    locale: str | None  # the ICU or builtin locale
    checksums: bool
    wal_segment_mb: int

    def initdb_args(self, new_major: int) -> list[str]:
        args = [
            "-U",
            self.superuser,
            "--encoding",
            self.encoding,
            "--auth",
            "trust",
            "--no-sync",
            "--lc-collate",
            self.collate,
            "--lc-ctype",
            self.ctype,
            f"--wal-segsize={self.wal_segment_mb}",
        ]
        provider = {"c": "libc", "i": "icu", "b": "builtin"}.get(self.provider, "libc")
        args.append(f"--locale-provider={provider}")
        if provider == "icu" and self.locale:
            args.append(f"--icu-locale={self.locale}")
        if provider == "builtin" and self.locale:
            args.append(f"--builtin-locale={self.locale}")
        # 18's initdb turns checksums on unless told otherwise; pg_upgrade wants them equal.
        if self.checksums:
            args.append("--data-checksums")
        elif new_major >= 18:
            args.append("--no-data-checksums")
        return args


def read_settings(srv: pgtools.PrivateServer) -> Settings:
    """The old cluster's settings, from its running private server and its pg_control."""
    ((install_user,),) = srv.query("SELECT rolname FROM pg_authid WHERE oid = 10")
    # to_jsonb: 15 and 16 name the locale column daticulocale, 17 and later datlocale.
    ((db,),) = srv.query("SELECT to_jsonb(d) FROM pg_database d WHERE datname = 'template0'")
    ((encoding,),) = srv.query(
        "SELECT pg_encoding_to_char(encoding) FROM pg_database WHERE datname = 'template0'"
    )
    control = pgtools.controldata(srv.inst, srv.pgdata)
    return Settings(
        superuser=install_user,
        encoding=encoding,
        collate=db["datcollate"],
        ctype=db["datctype"],
        provider=db.get("datlocprovider", "c"),
        locale=db.get("datlocale", db.get("daticulocale")),
        checksums=control.get("Data page checksum version", "0") != "0",
        wal_segment_mb=int(control["Bytes per WAL segment"]) // (1024 * 1024),
    )


def pg_upgrade_argv(
    old: Installation,
    new: Installation,
    old_data: Path,
    new_data: Path,
    *,
    user: str,
    method: str,
    hba: Path,
    socket: Path,
    check: bool,
    jobs: int,
) -> list[str]:
    return [
        new.tool("pg_upgrade"),
        "-b",
        str(old.bindir),
        "-B",
        str(new.bindir),
        "-d",
        str(old_data),
        "-D",
        str(new_data),
        "-U",
        user,
        f"--{method}",
        "-s",
        str(socket),
        "-p",
        "50432",
        "-P",
        "50433",
        "-j",
        str(jobs),
        "-o",
        pgtools.option_string(hba),
        *(["--check"] if check else []),
    ]


def initdb(new: Installation, target: Path, settings: Settings, log: Path) -> None:
    shutil.rmtree(target, ignore_errors=True)
    pgtools.run_logged(
        [new.tool("initdb"), "-D", str(target), *settings.initdb_args(new.major)], log
    )


def reflink_supported(directory: Path) -> str | None:
    """None when files in directory can be cloned (reflinks), else why not."""
    import errno  # noqa: PLC0415
    import fcntl  # noqa: PLC0415

    ficlone = 0x40049409  # _IOW(0x94, 9, int), linux/fs.h
    src, dst = directory / ".pgherd-reflink-probe", directory / ".pgherd-reflink-probe.clone"
    try:
        src.write_bytes(b"\0" * 8192)
        with src.open("rb") as s, dst.open("wb") as d:
            fcntl.ioctl(d.fileno(), ficlone, s.fileno())
        return None
    except OSError as e:
        if e.errno in (errno.EOPNOTSUPP, errno.ENOTTY, errno.EINVAL, errno.EXDEV, errno.ENOSYS):
            return f"the filesystem of {directory} does not support reflinks ({e.strerror})"
        raise
    finally:
        src.unlink(missing_ok=True)
        dst.unlink(missing_ok=True)


# ---- the journal --------------------------------------------------------------------------
STATES = (
    "preparing",
    "upgrading",
    "upgraded",
    "swapping",
    "swapped",
    "rolling-back",
    "rolled-back",
)


@dataclass(frozen=True)
class Layout:
    """Where the upgrade of one PGDATA keeps things, all on the data volume."""

    pgdata: Path
    old_major: int
    new_major: int

    @property
    def work(self) -> Path:
        return self.pgdata.parent / "pgherd-upgrade"

    @property
    def journal(self) -> Path:
        return self.work / "journal.json"

    @property
    def logs(self) -> Path:
        return self.work / "logs"

    @property
    def new_dir(self) -> Path:
        return self.pgdata.with_name(f"{self.pgdata.name}-{self.new_major}-upgrade")

    @property
    def old_kept(self) -> Path:
        return self.pgdata.with_name(f"{self.pgdata.name}-{self.old_major}")


class Journal:
    """The upgrade's record on the volume: its parameters, its state, each step's time."""

    def __init__(self, path: Path, data: dict[str, Any]) -> None:
        self.path, self.data = path, data

    @classmethod
    def load(cls, path: Path) -> Journal | None:
        try:
            return cls(path, json.loads(path.read_text()))
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as e:
            raise UpgradeError(f"the upgrade journal {path} is unreadable: {e}") from None

    @property
    def state(self) -> str:
        return str(self.data.get("state", ""))

    def layout(self) -> Layout:
        return Layout(Path(self.data["pgdata"]), self.data["oldMajor"], self.data["newMajor"])

    def record(self, state: str, **extra: Any) -> None:
        """Write the new state durably (write, fsync, rename, fsync the directory)."""
        self.data.update(extra, state=state)
        self.data.setdefault("steps", []).append({"state": state, "at": round(time.time(), 3)})
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        with tmp.open("w") as f:
            f.write(json.dumps(self.data, indent=1) + "\n")
            f.flush()
            os.fsync(f.fileno())
        tmp.replace(self.path)
        pgtools.fsync_dir(self.path.parent)
        print(f"pgherd upgrade: {state}", file=sys.stderr, flush=True)
        _test_pause(state)


def _test_pause(point: str) -> None:
    if os.environ.get(TEST_PAUSE_ENV) == point:
        print(f"pgherd upgrade: paused at {point} ({TEST_PAUSE_ENV})", file=sys.stderr, flush=True)
        while True:
            time.sleep(3600)


# ---- run ----------------------------------------------------------------------------------
def _rename(src: Path, dst: Path) -> None:
    if dst.exists():
        raise UpgradeError(f"cannot move {src} to {dst}: {dst} exists; move it away first")
    src.rename(dst)
    pgtools.fsync_dir(dst.parent)


def _not_running(*dirs: Path) -> None:
    for d in dirs:
        if (pid := pgtools.running_postmaster(d)) is not None:
            raise UpgradeError(f"a server (pid {pid}) is running on {d}: stop it first")


def recover_if_needed(inst: Installation, pgdata: Path, layout: Layout, user: str) -> None:
    """A data directory a killed server left (a killed pod, or an interrupted pg_upgrade's
    old server) replays its WAL once, privately, so that pg_upgrade finds it shut down."""
    state = pgtools.controldata(inst, pgdata).get("Database cluster state", "")
    if state == "shut down":
        return
    print(f"pgherd upgrade: {pgdata} is {state!r}: recovering it privately", file=sys.stderr)
    hba = pgtools.write_trust_hba(layout.work / "pg_hba.conf")
    with pgtools.PrivateServer(inst, pgdata, layout.logs / "recovery.log", hba_file=hba, user=user):
        pass


def _restore_old(layout: Layout, old: Installation, user: str) -> None:
    """Put the old cluster back as PGDATA, startable, whatever step was interrupted, and
    remove the (never started) new one. Where the swap exchanged the directories, they are
    exchanged back, so that PGDATA never goes missing."""
    pgdata, major = layout.pgdata, pgtools.data_major
    if major(pgdata) == layout.new_major:
        # The old cluster is where the swap's exchange put it, or already at its kept name.
        where = layout.new_dir if major(layout.new_dir) == layout.old_major else layout.old_kept
        if major(where) != layout.old_major:
            raise UpgradeError(
                f"{pgdata} holds the new cluster and the old one (PostgreSQL "
                f"{layout.old_major}) is neither at {layout.old_kept} nor {layout.new_dir}"
            )
        if not pgtools.exchange(pgdata, where):
            _rename(pgdata, layout.new_dir)
    if not pgdata.exists() and major(layout.old_kept) == layout.old_major:
        _rename(layout.old_kept, pgdata)
    if major(layout.old_kept) == layout.new_major:  # exchanged back from its kept name
        _rename(layout.old_kept, layout.new_dir)
    if major(pgdata) != layout.old_major:
        raise UpgradeError(
            f"the old cluster (PostgreSQL {layout.old_major}) is not at {pgdata}"
            f" nor {layout.old_kept}: nothing to restore"
        )
    _not_running(pgdata, layout.new_dir)
    # Link mode: pg_upgrade renamed pg_control before linking files, so that the old
    # cluster could not start on files the new one might change.
    control = pgdata / "global" / "pg_control"
    if not control.exists() and control.with_suffix(".old").exists():
        control.with_suffix(".old").rename(control)
        pgtools.fsync_dir(control.parent)
    recover_if_needed(old, pgdata, layout, user)
    shutil.rmtree(layout.new_dir, ignore_errors=True)


def _fingerprint(new: Installation, pgdata: Path) -> dict[str, str]:
    control = pgtools.controldata(new, pgdata)
    return {k: control.get(k, "") for k in FINGERPRINT}


def _swap(journal: Journal, layout: Layout) -> None:
    """PGDATA becomes the new cluster, the old one goes to its kept name: an atomic
    exchange of the two directories (renameat2) where the filesystem has it, so PGDATA is
    always one cluster or the other; else two renames with PGDATA missing in between,
    which a re-run completes."""
    journal.record("swapping")
    pgdata, major = layout.pgdata, pgtools.data_major
    if major(pgdata) == layout.old_major and major(layout.new_dir) == layout.new_major:
        if pgtools.exchange(pgdata, layout.new_dir):
            _test_pause("swap-half")  # PGDATA is new, its old cluster at the new's name
        else:
            _rename(pgdata, layout.old_kept)
            _test_pause("swap-half")  # PGDATA is missing: the worst moment for a kill
    if major(layout.new_dir) == layout.old_major:
        _rename(layout.new_dir, layout.old_kept)
    if not pgdata.exists() and major(layout.new_dir) == layout.new_major:
        _rename(layout.new_dir, pgdata)
    if major(pgdata) != layout.new_major:
        raise UpgradeError(
            f"after the swap {pgdata} is not PostgreSQL {layout.new_major}; see {journal.path}"
        )
    journal.record("swapped")


def _refuse_unless_upgradable(layout: Layout, method: str) -> None:
    pgdata = layout.pgdata
    if (major := pgtools.data_major(pgdata)) != layout.old_major:
        raise UpgradeError(
            f"{pgdata} is not a PostgreSQL {layout.old_major} data directory (PG_VERSION: {major})"
        )
    for signal_file in ("standby.signal", "recovery.signal"):
        if (pgdata / signal_file).exists():
            raise UpgradeError(
                f"{pgdata} has {signal_file}: upgrade the primary's data "
                "directory; replicas are re-created from it"
            )
    _not_running(pgdata)
    if method == "clone" and (why := reflink_supported(pgdata.parent)):
        raise UpgradeError(f"--method clone: {why}; use link or copy")
    fs = os.statvfs(pgdata.parent)
    free, size = fs.f_bavail * fs.f_frsize, directory_bytes(pgdata)
    if free < (needed := space_needed(method, size)):
        raise UpgradeError(
            f"--method {method} needs about {needed >> 20} MiB free beside {pgdata} "
            f"({size >> 20} MiB of data) and the volume has {free >> 20} MiB: grow the volume "
            "(spec.storage.size) or use link"
        )
    if layout.old_kept.exists():
        raise UpgradeError(
            f"{layout.old_kept} exists (a previous upgrade's old cluster?): move it away first"
        )


def directory_bytes(path: Path) -> int:
    return sum(p.lstat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def space_needed(method: str, data_bytes: int) -> int:
    """Free bytes the new cluster needs beside the old: a whole copy in copy mode; in link
    and clone modes its catalog and first WAL (the user's files are shared)."""
    base = 256 << 20
    return base + (data_bytes + data_bytes // 20 if method == "copy" else 0)


def run(
    pgdata: Path, old: Installation, new: Installation, *, method: str, user: str, jobs: int
) -> dict[str, Any]:
    """Upgrade PGDATA (stopped) from old's major to new's; resumes an interrupted run."""
    started = time.monotonic()
    layout = Layout(pgdata, old.major, new.major)
    journal = Journal.load(layout.journal)
    if journal is not None and journal.layout() != layout:
        raise UpgradeError(
            f"{layout.journal} records another upgrade ({journal.layout()}); "
            "roll it back or finish it first"
        )
    if journal is not None and journal.state in ("upgraded", "swapping", "swapped"):
        if journal.state != "swapped":
            _swap(journal, layout)
        return _result(journal, old, new, {"total": time.monotonic() - started}, resumed=True)
    resumed = journal is not None and journal.state != "rolled-back"
    if journal is not None and resumed:
        # An interrupted pg_upgrade: its half-made cluster never ran; start again.
        print(
            f"pgherd upgrade: resuming from {journal.state!r}: rolling the partial "
            "upgrade back first",
            file=sys.stderr,
        )
        _restore_old(layout, old, user)
    _refuse_unless_upgradable(layout, method)
    journal = Journal(
        layout.journal,
        {"pgdata": str(pgdata), "oldMajor": old.major, "newMajor": new.major, "method": method},
    )
    journal.record("preparing")
    durations = _upgrade(journal, layout, old, new, method=method, user=user, jobs=jobs)
    t = time.monotonic()
    _swap(journal, layout)
    durations["swap"] = time.monotonic() - t
    durations["total"] = time.monotonic() - started
    return _result(journal, old, new, durations, resumed=resumed)


def _upgrade(
    journal: Journal,
    layout: Layout,
    old: Installation,
    new: Installation,
    *,
    method: str,
    user: str,
    jobs: int,
) -> dict[str, float]:
    """Steps 1 to 3 (see the module's docstring): the new cluster beside the old."""
    durations: dict[str, float] = {}
    t = time.monotonic()
    pgdata = layout.pgdata
    recover_if_needed(old, pgdata, layout, user)
    hba = pgtools.write_trust_hba(layout.work / "pg_hba.conf")
    with pgtools.PrivateServer(
        old, pgdata, layout.logs / "inspect.log", hba_file=hba, user=user
    ) as srv:
        settings = read_settings(srv)
    durations["inspect"] = time.monotonic() - t
    t = time.monotonic()
    initdb(new, layout.new_dir, settings, layout.logs / "initdb.log")
    durations["initdb"] = time.monotonic() - t
    journal.record("upgrading", settings=asdict(settings))
    t = time.monotonic()
    socket = pgtools.short_socket_dir()
    argv = pg_upgrade_argv(
        old,
        new,
        pgdata,
        layout.new_dir,
        user=settings.superuser,
        method=method,
        hba=hba,
        socket=socket,
        check=False,
        jobs=jobs,
    )
    try:
        pgtools.run_logged(argv, layout.logs / "pg_upgrade.log", cwd=layout.work)
    except ToolError as e:
        # pg_upgrade gave up: its new cluster never ran, so the old one goes straight back.
        _keep_pg_upgrade_logs(layout.new_dir, layout.logs)
        journal.record("rolling-back")
        _restore_old(layout, old, user)
        journal.record("rolled-back")
        raise UpgradeError(f"{e}\nThe old cluster is back as {pgdata}, unchanged.") from None
    finally:
        shutil.rmtree(socket, ignore_errors=True)
    durations["pg_upgrade"] = time.monotonic() - t
    # Patroni's rules until its first start rewrites them, so that nothing but the
    # operator's rules ever guards the new cluster.
    for name in ("pg_hba.conf", "pg_ident.conf"):
        if (pgdata / name).exists():
            shutil.copy2(pgdata / name, layout.new_dir / name)
    journal.record(
        "upgraded",
        fingerprint=_fingerprint(new, layout.new_dir),
        durations={k: round(v, 3) for k, v in durations.items()},
    )
    return durations


def _keep_pg_upgrade_logs(new_dir: Path, logs: Path) -> None:
    for out in sorted(new_dir.glob("pg_upgrade_output.d/*")):
        shutil.copytree(out, logs / f"pg_upgrade_output.{out.name}", dirs_exist_ok=True)


def _result(
    journal: Journal,
    old: Installation,
    new: Installation,
    durations: dict[str, float],
    *,
    resumed: bool,
) -> dict[str, Any]:
    layout = journal.layout()
    durations = {**journal.data.get("durations", {}), **durations}
    # A new initdb, so a new system: the operator hands it to Patroni's DCS.
    system = pgtools.controldata(new, layout.pgdata).get("Database system identifier")
    return {
        "ok": True,
        "state": journal.state,
        "resumed": resumed,
        "method": journal.data.get("method"),
        "oldVersion": old.version,
        "newVersion": new.version,
        "pgdata": str(layout.pgdata),
        "systemIdentifier": system,
        "oldCluster": str(layout.old_kept),
        "journal": str(layout.journal),
        "durations": {k: round(v, 3) for k, v in durations.items()},
        "next": "start the new server (Patroni), then `pgherd upgrade analyze`; "
        "`pgherd upgrade finish` once it is proven",
    }


# ---- rollback and finish ------------------------------------------------------------------
def _new_location(layout: Layout) -> Path | None:
    if pgtools.data_major(layout.pgdata) == layout.new_major:
        return layout.pgdata
    return layout.new_dir if pgtools.data_major(layout.new_dir) == layout.new_major else None


def rollback(
    pgdata: Path, old: Installation, new: Installation, *, user: str, force: bool = False
) -> dict[str, Any]:
    """Put the old cluster back as PGDATA, while the new one has never started."""
    layout = Layout(pgdata, old.major, new.major)
    journal = Journal.load(layout.journal)
    if journal is None:
        # The upgrade refused before it changed anything (its first step is the journal).
        if pgtools.data_major(pgdata) != old.major:
            raise UpgradeError(
                f"no upgrade journal at {layout.journal}, and {pgdata} is not "
                f"PostgreSQL {old.major}'s: nothing to roll back to"
            )
        return {"ok": True, "state": "untouched", "pgdata": str(pgdata)}
    if journal.state == "rolled-back":
        return {"ok": True, "state": journal.state, "pgdata": str(pgdata)}
    where = _new_location(layout)
    fingerprint = journal.data.get("fingerprint")
    if journal.state != "rolling-back" and where is not None and fingerprint is not None:
        now = _fingerprint(new, where)
        if now != fingerprint:
            if journal.data.get("method") == "link":
                raise UpgradeError(
                    f"the new cluster at {where} has started since pg_upgrade ({now}): in "
                    "link mode it shares its data files with the old cluster, which can no "
                    "longer be brought back; restore a backup instead"
                )
            if not force:
                raise UpgradeError(
                    f"the new cluster at {where} has started since pg_upgrade: rolling back "
                    "loses whatever was written to it (the old cluster itself is intact, "
                    f"{journal.data.get('method')} mode); run again with --force to do so"
                )
    journal.record("rolling-back")
    _restore_old(layout, old, user)
    journal.record("rolled-back")
    return {"ok": True, "state": journal.state, "pgdata": str(pgdata)}


def finish(pgdata: Path, old_major: int, new_major: int) -> dict[str, Any]:
    """Once the new cluster is proven: remove the old cluster and the upgrade's work area.
    From here on no rollback exists."""
    layout = Layout(pgdata, old_major, new_major)
    journal = Journal.load(layout.journal)
    if journal is None or journal.state != "swapped":
        state = journal.state if journal else "no journal"
        raise UpgradeError(f"nothing to finish at {pgdata} ({state}): only a swapped upgrade")
    shutil.rmtree(layout.old_kept, ignore_errors=True)
    shutil.rmtree(layout.work, ignore_errors=True)
    return {"ok": True, "state": "finished", "pgdata": str(pgdata)}


# ---- statistics ---------------------------------------------------------------------------
def analyze_commands(new: Installation, *, full: bool) -> list[list[str]]:
    """The vacuumdb runs that rebuild planner statistics after an upgrade to new.

    pg_upgrade 18 and later carry the old cluster's optimizer statistics (pg_statistic)
    over, but not extended statistics (CREATE STATISTICS) nor the cumulative activity
    counters autovacuum uses: `--missing-stats-only` analyzes just what lacks them, in
    stages so that rough statistics exist within seconds. Before 18 nothing is carried and
    every table is analyzed in stages. full adds a complete ANALYZE of everything.
    """
    vacuumdb = new.tool("vacuumdb")
    if new.major >= 18:
        commands = [[vacuumdb, "--all", "--analyze-in-stages", "--missing-stats-only"]]
        if full:
            commands.append([vacuumdb, "--all", "--analyze-only"])
        return commands
    return [[vacuumdb, "--all", "--analyze-in-stages"]]


def analyze(
    new: Installation,
    old_major: int,
    env: Mapping[str, str],
    *,
    pgdata: Path,
    host: str,
    port: int,
    user: str,
    full: bool,
    log: Path,
) -> dict[str, Any]:
    """After the new server started: the extension updates pg_upgrade listed
    (update_extensions.sql, ALTER EXTENSION ... UPDATE for those whose new major has a newer
    version), then analyze_commands. The superuser's password, when the mounted Secret has
    one, goes in the environment, never on the command line."""
    import subprocess  # noqa: PLC0415

    started = time.monotonic()
    child_env = {**env, "PGHOST": host, "PGPORT": str(port), "PGUSER": user}
    if password := contract.read_superuser_password(env):
        child_env["PGPASSWORD"] = password
    commands = analyze_commands(new, full=full)
    updates = Layout(pgdata, old_major, new.major).work / "update_extensions.sql"
    if updates.exists():
        psql = [new.tool("psql"), "-X", "-v", "ON_ERROR_STOP=1", "-d", "postgres"]
        commands.insert(0, [*psql, "-f", str(updates)])
    log.parent.mkdir(parents=True, exist_ok=True)
    for argv in commands:
        with log.open("a") as out:
            proc = subprocess.run(
                argv, env=child_env, stdout=out, stderr=subprocess.STDOUT, check=False
            )
        if proc.returncode != 0:
            raise ToolError(f"{' '.join(argv)} failed ({proc.returncode}); see {log}")
    if updates.exists():
        updates.rename(updates.with_suffix(".sql.done"))
    return {
        "ok": True,
        "ran": [" ".join([Path(c[0]).name, *c[1:]]) for c in commands],
        "analyzeSeconds": round(time.monotonic() - started, 3),
    }


# ---- command line -------------------------------------------------------------------------
def _installations(args: argparse.Namespace) -> tuple[Installation, Installation]:
    if not args.old_bindir or not args.new_bindir:
        raise UpgradeError(
            "--old-bindir and --new-bindir (or PGHERD_UPGRADE_OLD_BINDIR and "
            "PGHERD_UPGRADE_NEW_BINDIR) are required"
        )
    old, new = Installation(Path(args.old_bindir)), Installation(Path(args.new_bindir))
    if old.major >= new.major:
        raise UpgradeError(
            f"{args.old_bindir} is PostgreSQL {old.major} and {args.new_bindir} "
            f"{new.major}: the new major must be newer"
        )
    return old, new


def parser(env: Mapping[str, str]) -> argparse.ArgumentParser:
    root = env.get("PGHERD_ROOT", "/")
    p = argparse.ArgumentParser(
        prog="pgherd upgrade", description="major upgrade of a data directory (pg_upgrade)"
    )
    sub = p.add_subparsers(dest="action", required=True)

    def common(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--old-bindir", default=env.get("PGHERD_UPGRADE_OLD_BINDIR"))
        sp.add_argument("--new-bindir", default=env.get("PGHERD_UPGRADE_NEW_BINDIR"))
        sp.add_argument(
            "--superuser",
            default=env.get("PATRONI_SUPERUSER_USERNAME", "postgres"),
            help="the clusters' install user (default: postgres)",
        )
        sp.add_argument(
            "--report-file",
            default=None,
            help="also write the JSON summary here (e.g. terminationMessagePath)",
        )

    pgdata = contract.rooted(root, env.get("PGDATA", contract.PGDATA))
    check = sub.add_parser("check", help="preflight in a throwaway copy; changes nothing")
    common(check)
    check.add_argument("--method", choices=METHODS, default="link")
    check.add_argument(
        "--source-conninfo",
        default=env.get("PGHERD_UPGRADE_SOURCE"),
        help="copy a running primary with pg_basebackup (libpq conninfo)",
    )
    check.add_argument("--source-pgdata", default=None, help="copy a stopped data directory")
    check.add_argument("--work-dir", required=True, help="where the throwaway copies go")
    check.add_argument("--log-dir", default=None, help="full logs (default: <work-dir>/logs)")
    check.add_argument("--keep", action="store_true", help="keep the throwaway copies")
    for name, text in (
        ("run", "upgrade a stopped PGDATA in place (resumes if interrupted)"),
        ("rollback", "put the old cluster back while the new never started"),
    ):
        sp = sub.add_parser(name, help=text)
        common(sp)
        sp.add_argument("--pgdata", default=pgdata)
        if name == "run":
            sp.add_argument("--method", choices=METHODS, default="link")
            # pg_upgrade's parallel dump, restore and transfer; a pod sees the node's CPUs.
            sp.add_argument("--jobs", type=int, default=min(os.cpu_count() or 1, 4))
        else:
            sp.add_argument(
                "--force",
                action="store_true",
                help="copy/clone mode: go back even though the new cluster ran",
            )
    fin = sub.add_parser("finish", help="remove the kept old cluster once the new is proven")
    common(fin)
    fin.add_argument("--pgdata", default=pgdata)
    an = sub.add_parser("analyze", help="rebuild statistics on the running new server")
    common(an)
    an.add_argument("--pgdata", default=pgdata)
    an.add_argument("--host", default=contract.rooted(root, contract.SOCKET_DIR))
    an.add_argument(
        "--port", type=int, default=int(env.get("PGHERD_PG_PORT", contract.POSTGRES_PORT))
    )
    an.add_argument("--full", action="store_true", help="also a complete ANALYZE afterwards")
    an.add_argument("--log", default=contract.rooted(root, f"{contract.TMP_DIR}/analyze.log"))
    return p


# A pod's termination message holds 4 KiB; full logs are in files the report names.
SUMMARY_LIMIT = 4000
ERROR_LIMIT = 2400


def summary(report: dict[str, Any], limit: int = SUMMARY_LIMIT) -> str:
    """The report as JSON within limit bytes: long messages cut, then problems dropped."""
    text = json.dumps(report, separators=(",", ":"))
    if len(text.encode()) <= limit:
        return text
    short = dict(report)
    error = str(report.get("error") or "")
    if len(error) > ERROR_LIMIT:
        # Its start says what failed, its end (the program's last lines) why.
        half = ERROR_LIMIT // 2
        short["error"] = error[:half] + " … " + error[-half:]
    problems = [
        {k: (v[:240] + "…" if isinstance(v, str) and len(v) > 240 else v) for k, v in p.items()}
        for p in report.get("problems", [])
    ]
    while True:
        short["problems"] = problems
        text = json.dumps(short, separators=(",", ":"))
        if len(text.encode()) <= limit or not problems:
            return text
        problems = problems[:-1]
        short["problemsLeftOut"] = len(report.get("problems", [])) - len(problems)


def emit(report: dict[str, Any], report_file: str | None) -> None:
    print(json.dumps(report, indent=1))
    if report_file:
        Path(report_file).write_text(summary(report))


def main(argv: list[str], env: Mapping[str, str] | None = None) -> int:
    env = os.environ if env is None else env
    try:
        args = parser(env).parse_args(argv)
    except SystemExit as e:
        return EXIT_ERROR if e.code else EXIT_OK
    try:
        old, new = _installations(args)
        if args.action == "check":
            from pgherd.operand import upgrade_check  # noqa: PLC0415

            args.source_conninfo = upgrade_check.source_from_environment(
                args.source_conninfo, os.environ
            )

            report = upgrade_check.check(args, old, new)
            emit(report, args.report_file)
            return EXIT_OK if report["ok"] else EXIT_PROBLEMS
        if args.action == "run":
            report = run(
                Path(args.pgdata), old, new, method=args.method, user=args.superuser, jobs=args.jobs
            )
        elif args.action == "rollback":
            report = rollback(Path(args.pgdata), old, new, user=args.superuser, force=args.force)
        elif args.action == "finish":
            report = finish(Path(args.pgdata), old.major, new.major)
        else:
            report = analyze(
                new,
                old.major,
                env,
                pgdata=Path(args.pgdata),
                host=args.host,
                port=args.port,
                user=args.superuser,
                full=args.full,
                log=Path(args.log),
            )
    except (UpgradeError, ToolError) as e:
        print(f"pgherd upgrade {args.action}: {e}", file=sys.stderr)
        emit({"ok": False, "error": str(e)}, args.report_file)
        return EXIT_ERROR
    except Exception as e:
        # Anything else is the tool's own failure too (exit 2, not Python's 1, which a
        # caller could not tell from a finding), with the traceback for the log.
        import traceback  # noqa: PLC0415

        traceback.print_exc()
        emit({"ok": False, "error": f"{type(e).__name__}: {e}"}, args.report_file)
        return EXIT_ERROR
    emit(report, args.report_file)
    return EXIT_OK
