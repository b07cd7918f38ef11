"""`pgherd upgrade check`: the major upgrade's preflight, in a throwaway copy.

The copy comes from a running primary (pg_basebackup, as a preflight pod reaches it) or from
a stopped data directory (cp, with reflinks where the filesystem has them); the source is
only read. The copy is started with the old binaries on a private socket
(pgherd.operand.pgtools) and examined, then `pg_upgrade --check` runs against a fresh initdb
of the new major made with the old cluster's settings. Every problem is reported, not just
the first (pg_upgrade itself stops at its first fatal check, so what it cannot see is checked
here before it runs):

- extensions installed in any database that the new major does not have (no control file
  in its share/extension), and installed versions it has no update path from (a warning);
- shared_preload_libraries, session_preload_libraries and local_preload_libraries entries
  missing from the new major's library directory (the new server would not start);
- parameters set in postgresql.conf that the new major does not know (removed or renamed:
  the new server would not start), and ALTER SYSTEM settings, which are not carried (a
  warning);
- clone without reflinks on the filesystem (pg_upgrade --check then runs with copy, so that
  its other findings are still reported);
- whatever `pg_upgrade --check` finds, each fatal check with its details file.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import time
from collections import deque
from collections.abc import MutableMapping
from pathlib import Path
from typing import Any

from pgherd.operand import pgtools, upgrade
from pgherd.operand.pgtools import Installation, ToolError


def problem(
    check: str, subject: str, message: str, hint: str, severity: str = "error"
) -> dict[str, str]:
    return {
        "check": check,
        "subject": subject,
        "message": message,
        "hint": hint,
        "severity": severity,
    }


# libpq's variables that name a server: the source's, never the local tools'.
SOURCE_VARIABLES = (("PGHOST", "host"), ("PGHOSTADDR", "hostaddr"), ("PGPORT", "port"))


def source_from_environment(conninfo: str | None, env: MutableMapping[str, str]) -> str | None:
    """The source's conninfo with the server the environment names (PGHOST, PGHOSTADDR,
    PGPORT: how a preflight pod is given the primary), which are taken out of the
    environment: pg_upgrade refuses to run while PGHOST names a remote server, and the
    private servers are reached over their own sockets. None: no source in either."""
    parts = [conninfo] if conninfo else []
    for variable, keyword in SOURCE_VARIABLES:
        value = env.pop(variable, None)
        if value:
            parts.append(f"{keyword}={value}")
    return " ".join(parts) or None


def copy_source(args: argparse.Namespace, old: Installation, copy: Path, log: Path) -> str:
    """The throwaway copy of the source; returns how it was made."""
    shutil.rmtree(copy, ignore_errors=True)
    if args.source_pgdata:
        source = Path(args.source_pgdata)
        if (pid := pgtools.running_postmaster(source)) is not None:
            raise ToolError(
                f"a server (pid {pid}) runs on {source}: stop it, or copy it "
                "running with --source-conninfo"
            )
        pgtools.run_logged(["cp", "-a", "--reflink=auto", str(source), str(copy)], log)
        (copy / "postmaster.pid").unlink(missing_ok=True)
        return "cp"
    if not args.source_conninfo:
        raise ToolError(
            "give the source: --source-conninfo (or PGHERD_UPGRADE_SOURCE) for a "
            "running primary, or --source-pgdata for a stopped data directory"
        )
    pgtools.run_logged(
        [
            old.tool("pg_basebackup"),
            "-D",
            str(copy),
            "-d",
            args.source_conninfo,
            "-X",
            "stream",
            "-c",
            "fast",
            "--no-sync",
            "-w",
        ],
        log,
    )
    return "pg_basebackup"


def inventory(srv: pgtools.PrivateServer) -> dict[str, Any]:
    """Extensions per database and the preload settings of the running copy."""
    databases = [
        r[0]
        for r in srv.query("SELECT datname FROM pg_database WHERE datallowconn ORDER BY datname")
    ]
    extensions = {
        db: srv.query("SELECT extname, extversion FROM pg_extension ORDER BY 1", db)
        for db in databases
    }
    preload = {
        name: srv.query(f"SHOW {name}")[0][0]
        for name in (
            "shared_preload_libraries",
            "session_preload_libraries",
            "local_preload_libraries",
        )
    }
    # Settings from a file: Patroni's postgresql.conf (spec.postgresql.parameters) and
    # postgresql.auto.conf (ALTER SYSTEM); not the private start's own command line.
    configured = srv.query(
        "SELECT name, sourcefile FROM pg_settings WHERE source = 'configuration file'"
    )
    return {"extensions": extensions, "preload": preload, "configured": configured}


def _update_path(scripts: set[str], name: str, start: str, goal: str) -> bool:
    """Whether share/extension's update scripts lead from version start to goal."""
    edges: dict[str, set[str]] = {}
    pattern = re.compile(rf"^{re.escape(name)}--(.+?)--(.+)\.sql$")
    for script in scripts:
        if m := pattern.match(script):
            edges.setdefault(m.group(1), set()).add(m.group(2))
    seen, todo = {start}, deque([start])
    while todo:
        version = todo.popleft()
        if version == goal:
            return True
        for nxt in edges.get(version, set()) - seen:
            seen.add(nxt)
            todo.append(nxt)
    return False


def _default_version(control: Path) -> str | None:
    m = re.search(r"^\s*default_version\s*=\s*'([^']*)'", control.read_text(), re.M)
    return m.group(1) if m else None


def extension_problems(
    extensions: dict[str, list[tuple[str, str]]], new: Installation
) -> list[dict[str, str]]:
    where = new.sharedir / "extension"
    scripts = {p.name for p in where.glob("*.sql")}
    found = []
    for db, installed in extensions.items():
        for name, version in installed:
            control = where / f"{name}.control"
            if not control.exists():
                found.append(
                    problem(
                        "extension",
                        f"{name} in database {db}",
                        f"extension {name} {version} is installed in database {db!r}, but "
                        f"PostgreSQL {new.major} does not provide it (no {name}.control)",
                        f"DROP EXTENSION {name} in database {db!r} before upgrading, or use an "
                        f"image whose PostgreSQL {new.major} has {name}",
                    )
                )
                continue
            goal = _default_version(control)
            if goal and goal != version and not _update_path(scripts, name, version, goal):
                found.append(
                    problem(
                        "extension-version",
                        f"{name} in database {db}",
                        f"extension {name} {version} in database {db!r}: PostgreSQL {new.major} "
                        f"has {goal} and no update path from {version}",
                        f"update {name} to a version {new.major} knows before upgrading, or "
                        "expect ALTER EXTENSION ... UPDATE to fail afterwards",
                        "warning",
                    )
                )
    return found


def _libraries(value: str) -> list[str]:
    return [v.strip().strip('"') for v in value.split(",") if v.strip().strip('"')]


def library_problems(preload: dict[str, str], new: Installation) -> list[dict[str, str]]:
    found = []
    lib = new.pkglibdir
    for setting, value in preload.items():
        for entry in _libraries(value):
            if "/" in entry and not entry.startswith("$libdir/"):
                candidates = [Path(entry), Path(entry + ".so")]
            else:
                name = entry.removeprefix("$libdir/")
                candidates = [lib / name, lib / f"{name}.so"]
                if setting == "local_preload_libraries":
                    candidates += [lib / "plugins" / name, lib / "plugins" / f"{name}.so"]
            if not any(c.is_file() for c in candidates):
                found.append(
                    problem(
                        "preload-library",
                        f"{setting}: {entry}",
                        f"{setting} names {entry!r}, which PostgreSQL {new.major} does not have "
                        f"({lib} has no {entry.removeprefix('$libdir/')}.so): the upgraded "
                        "server would not start",
                        f"remove {entry} from {setting} (spec.postgresql.parameters) before "
                        f"upgrading, or use an image whose PostgreSQL {new.major} has it",
                    )
                )
    return found


def parameter_problems(
    configured: list[tuple[str, str]], new: Installation
) -> list[dict[str, str]]:
    """Parameters set in a file that the new major does not know (removed or renamed:
    vacuum_defer_cleanup_age, old_snapshot_threshold...): Patroni writes them into the
    new cluster's postgresql.conf and the server would refuse to start. Settings made with
    ALTER SYSTEM (postgresql.auto.conf) are not carried over at all: a warning."""
    out = subprocess.run(
        [new.tool("postgres"), "--describe-config"], capture_output=True, text=True, check=True
    ).stdout
    known = {line.split("\t", 1)[0] for line in out.splitlines()}
    found = []
    auto = sorted(name for name, source in configured if source.endswith("postgresql.auto.conf"))
    for name, source in configured:
        # Extensions' own settings (prefix.name) are checked with their libraries.
        if "." in name or name in known or source.endswith("postgresql.auto.conf"):
            continue
        found.append(
            problem(
                "parameter",
                name,
                f"{name} is set in {Path(source).name}, and PostgreSQL {new.major} has no such "
                "parameter: the upgraded server would refuse to start",
                f"remove {name} from spec.postgresql.parameters before upgrading",
            )
        )
    if auto:
        found.append(
            problem(
                "parameter",
                "postgresql.auto.conf",
                f"settings made with ALTER SYSTEM are not carried over: {', '.join(auto)}",
                "set them in spec.postgresql.parameters instead (ALTER SYSTEM RESET them)",
                "warning",
            )
        )
    return found


def pg_upgrade_problems(output: str) -> list[dict[str, str]]:
    """pg_upgrade --check's fatal checks, each with the details file it names."""
    found = []
    lines = output.splitlines()
    for i, line in enumerate(lines):
        if not line.rstrip().endswith("fatal"):
            continue
        title = line.rstrip().removesuffix("fatal").strip()
        detail = []
        for more in lines[i + 1 :]:
            if more.startswith(("Failure, exiting", "Checking for")):
                break
            detail.append(more.strip())
            listed = more.strip()
            if listed.startswith("/") and Path(listed).is_file():
                detail.append(
                    "details: "
                    + " | ".join(Path(listed).read_text(errors="replace").split("\n")[:10]).strip(
                        " |"
                    )
                )
        found.append(
            problem(
                "pg_upgrade",
                title,
                " ".join(d for d in detail if d),
                "see the details and the pg_upgrade log; fix the old cluster and check again",
            )
        )
    return found


def check(args: argparse.Namespace, old: Installation, new: Installation) -> dict[str, Any]:
    """Run the preflight; the report (ok, problems, versions, durations). The throwaway
    copies go whatever happens, unless --keep."""
    try:
        return _check(args, old, new)
    finally:
        if not args.keep:
            for made in ("old", "new"):
                shutil.rmtree(Path(args.work_dir) / made, ignore_errors=True)


def _check(args: argparse.Namespace, old: Installation, new: Installation) -> dict[str, Any]:
    started = time.monotonic()
    work = Path(args.work_dir)
    logs = Path(args.log_dir) if args.log_dir else work / "logs"
    work.mkdir(parents=True, exist_ok=True)
    copy, new_dir = work / "old", work / "new"
    durations: dict[str, float] = {}
    problems: list[dict[str, str]] = []
    t = time.monotonic()
    how = copy_source(args, old, copy, logs / "copy.log")
    durations["copy"] = time.monotonic() - t
    if (major := pgtools.data_major(copy)) != old.major:
        raise ToolError(
            f"the source is PostgreSQL {major}, the old binaries ({old.bindir}) {old.major}"
        )
    hba = pgtools.write_trust_hba(work / "pg_hba.conf")
    layout = upgrade.Layout(copy, old.major, new.major)
    t = time.monotonic()
    upgrade.recover_if_needed(old, copy, layout, args.superuser)
    with pgtools.PrivateServer(
        old, copy, logs / "old-server.log", hba_file=hba, user=args.superuser
    ) as srv:
        settings = upgrade.read_settings(srv)
        found = inventory(srv)
    durations["inspect"] = time.monotonic() - t
    problems += extension_problems(found["extensions"], new)
    problems += library_problems(found["preload"], new)
    problems += parameter_problems(found["configured"], new)
    check_method = args.method
    if args.method == "clone" and (why := upgrade.reflink_supported(work)):
        problems.append(
            problem(
                "method",
                "clone",
                f"--method clone needs reflinks: {why}",
                "use --method link (same filesystem, no extra space) or copy, or a volume on a "
                "filesystem with reflinks (XFS with reflink=1, Btrfs)",
            )
        )
        check_method = "copy"
    t = time.monotonic()
    try:
        upgrade.initdb(new, new_dir, settings, logs / "initdb.log")
    except ToolError as e:
        problems.append(
            problem(
                "initdb",
                f"PostgreSQL {new.major}",
                str(e),
                "the new major cannot make a cluster with the old one's "
                "encoding and locale; see the log",
            )
        )
    else:
        socket = pgtools.short_socket_dir()
        argv = upgrade.pg_upgrade_argv(
            old,
            new,
            copy,
            new_dir,
            user=settings.superuser,
            method=check_method,
            hba=hba,
            socket=socket,
            check=True,
            jobs=1,
        )
        proc = subprocess.run(argv, cwd=work, capture_output=True, text=True, check=False)
        shutil.rmtree(socket, ignore_errors=True)
        logs.mkdir(parents=True, exist_ok=True)
        (logs / "pg_upgrade-check.log").write_text(proc.stdout + proc.stderr)
        if proc.returncode != 0:
            upgrade._keep_pg_upgrade_logs(new_dir, logs)
            found_here = pg_upgrade_problems(proc.stdout)
            problems += found_here or [
                problem(
                    "pg_upgrade",
                    "--check",
                    " ".join((proc.stdout + proc.stderr).split()[-80:]),
                    f"see {logs / 'pg_upgrade-check.log'}",
                )
            ]
    durations["pg_upgrade_check"] = time.monotonic() - t
    durations["total"] = time.monotonic() - started
    return {
        "ok": not any(p["severity"] == "error" for p in problems),
        "problems": problems,
        "oldVersion": old.version,
        "newVersion": new.version,
        "method": args.method,
        "source": how,
        "settings": {
            "superuser": settings.superuser,
            "encoding": settings.encoding,
            "checksums": settings.checksums,
        },
        "durations": {k: round(v, 3) for k, v in durations.items()},
        "logs": str(logs),
    }
