"""`pgherd upgrade`: PostgreSQL 15 data directories in Patroni's layout upgraded to 18 with
the real binaries (pg_upgrade, initdb, both servers), as an upgrade pod would run the
command; kills by SIGKILL of the command's PID namespace, as a pod's end."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import stat
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from pgherd.operand import pgtools, upgrade, upgrade_check, upgrade_followup
from tests import upgrade_support as us

# --- pure parts ----------------------------------------------------------------------------
BASE = upgrade.Settings(
    superuser="postgres",
    encoding="UTF8",
    collate="C.UTF-8",
    ctype="C.UTF-8",
    provider="c",
    locale=None,
    checksums=False,
    wal_segment_mb=16,
)


@pytest.mark.parametrize(
    ("changes", "new_major", "present", "absent"),
    [
        # 18's initdb turns checksums on by default: an old cluster without them says so.
        ({}, 18, ["--no-data-checksums", "--locale-provider=libc"], ["--data-checksums"]),
        ({}, 17, [], ["--no-data-checksums", "--data-checksums"]),
        ({"checksums": True}, 18, ["--data-checksums"], ["--no-data-checksums"]),
        ({"provider": "i", "locale": "und"}, 18, ["--locale-provider=icu", "--icu-locale=und"], []),
        ({"wal_segment_mb": 64}, 18, ["--wal-segsize=64"], []),
    ],
)
def test_the_new_clusters_initdb_matches_the_old_one(
    changes: dict[str, object], new_major: int, present: list[str], absent: list[str]
) -> None:
    args = upgrade.Settings(**{**BASE.__dict__, **changes}).initdb_args(new_major)  # type: ignore[arg-type]
    assert args[:2] == ["-U", "postgres"]
    for arg in present:
        assert arg in args
    for arg in absent:
        assert arg not in args


def test_the_termination_summary_stays_under_4_kib() -> None:
    many = [
        upgrade_check.problem("extension", f"ext{i} in database db{i}", "x" * 900, "y" * 300)
        for i in range(30)
    ]
    text = upgrade.summary({"ok": False, "problems": many, "oldVersion": "15.18"})
    assert len(text.encode()) <= upgrade.SUMMARY_LIMIT
    short = json.loads(text)
    assert short["ok"] is False and short["problems"]
    assert short["problemsLeftOut"] == 30 - len(short["problems"])
    # A long error keeps its start (what failed) and its end (the program's last words).
    error = "pg_ctl failed" + "x" * 6000 + "FATAL: the cause"
    text = upgrade.summary({"ok": False, "error": error})
    assert len(text.encode()) <= upgrade.SUMMARY_LIMIT
    cut = json.loads(text)["error"]
    assert cut.startswith("pg_ctl failed") and cut.endswith("FATAL: the cause")


@pytest.mark.parametrize(
    ("method", "data", "needed"),
    [
        ("copy", 1000 << 20, (256 + 1050) << 20),
        ("link", 1000 << 20, 256 << 20),
        ("clone", 1000 << 20, 256 << 20),
    ],
)
def test_copy_needs_room_for_a_second_copy(method: str, data: int, needed: int) -> None:
    assert upgrade.space_needed(method, data) == needed


def test_extension_update_paths_are_followed() -> None:
    scripts = {"x--1.0--1.1.sql", "x--1.1--1.3.sql", "x--1.3.sql", "y--2.0--2.1.sql"}
    assert upgrade_check._update_path(scripts, "x", "1.0", "1.3")
    assert not upgrade_check._update_path(scripts, "x", "0.9", "1.3")


# --- real upgrades -------------------------------------------------------------------------
slow = pytest.mark.slow


def _run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        us.upgrade_command(*args),
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        check=False,
        timeout=300,
    )


def _report(proc: subprocess.CompletedProcess[str]) -> dict[str, object]:
    try:
        out: dict[str, object] = json.loads(proc.stdout)
    except ValueError:
        raise AssertionError(f"no JSON report ({proc.returncode}): {proc.stderr}") from None
    return out


def _check_data(srv: us.Server, *, major: int) -> None:
    """What make_cluster wrote, read back; the index used; the sequence continues."""
    with srv.connect() as conn:
        assert str(conn.execute("SHOW server_version_num").fetchone()[0]).startswith(str(major))  # type: ignore[index]
        assert conn.execute("SELECT count(*), sum(a) FROM items").fetchone() == (20000, 990000)
        # citext compares case-insensitively; pg_trgm's index answers a similarity search.
        assert conn.execute("SELECT id FROM items WHERE name = 'ITEM-77'").fetchone() == (77,)
        conn.execute("SET enable_seqscan = off")
        plan = " ".join(
            r[0]
            for r in conn.execute(
                "EXPLAIN SELECT id FROM items WHERE label LIKE '%label-1234%'"
            ).fetchall()
        )
        assert "items_label_trgm" in plan, plan
        assert conn.execute("SELECT id FROM items WHERE label LIKE '%label-12345%'").fetchall() == [
            (12345,)
        ]
        plan = " ".join(
            r[0] for r in conn.execute("EXPLAIN SELECT * FROM items WHERE a = 5").fetchall()
        )
        assert "items_a" in plan, plan
        assert conn.execute("SELECT count(*) FROM cheap").fetchone() == (2000,)
        nextval = conn.execute("SELECT nextval('counter')").fetchone()
        assert nextval is not None and nextval[0] > 4242


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["check", "--work-dir", "{tmp}/w"], "give the source: --source-conninfo"),
        (["run", "--pgdata", "{tmp}"], "is not a PostgreSQL 15 data directory"),
        (["rollback", "--pgdata", "{tmp}/pgdata"], "no upgrade journal at"),
        (["finish", "--pgdata", "{tmp}/pgdata"], "nothing to finish"),
        (["run", "--method", "swap"], "invalid choice: 'swap'"),
        (["run", "--pgdata", "{tmp}/pg15", "--method", "clone"], "does not support reflinks"),
    ],
)
def test_bad_input_is_refused_with_a_clear_message(
    tmp_path: Path, args: list[str], message: str
) -> None:
    if "clone" in args and upgrade.reflink_supported(tmp_path) is None:
        pytest.skip("this filesystem has reflinks")
    (tmp_path / "pg15").mkdir()
    (tmp_path / "pg15" / "PG_VERSION").write_text("15\n")
    proc = _run(*(a.format(tmp=tmp_path) for a in args))
    assert proc.returncode == upgrade.EXIT_ERROR
    assert message in proc.stderr, proc.stderr


def test_a_rollback_of_an_upgrade_that_never_began_changes_nothing(tmp_path: Path) -> None:
    """The run refused before its journal (its first step): the old data is all there is."""
    (tmp_path / "pg15").mkdir()
    (tmp_path / "pg15" / "PG_VERSION").write_text("15\n")
    proc = _run("rollback", "--pgdata", str(tmp_path / "pg15"))
    assert proc.returncode == upgrade.EXIT_OK, proc.stderr
    assert _report(proc)["state"] == "untouched"
    assert sorted(p.name for p in (tmp_path / "pg15").iterdir()) == ["PG_VERSION"]


def _archived(archive: Path) -> list[str]:
    return sorted(p.name for p in archive.iterdir())


@slow
@pytest.mark.parametrize("method", ["link", "copy"])
def test_an_upgrade_keeps_the_data(tmp_path: Path, method: str) -> None:
    """15 -> 18 in place; link with checksums (pgherd's initdb), copy without (18's initdb
    would turn them on); then the statistics step, rollback refused or not, finish."""
    old, new = us.binaries()
    pgdata = tmp_path / "vol" / "pgdata"
    archive = us.make_cluster(pgdata, checksums=method == "link")
    archived = _archived(archive)
    system = "Database system identifier"
    before = pgtools.controldata(old, pgdata)[system]
    started = time.monotonic()
    proc = _run("run", "--pgdata", str(pgdata), "--method", method)
    report = _report(proc)
    print(
        f"pgherd upgrade run --method {method}: {time.monotonic() - started:.1f} s "
        f"{report.get('durations')}"
    )
    assert proc.returncode == 0, proc.stderr
    assert report["state"] == "swapped" and report["method"] == method
    assert str(report["newVersion"]).startswith("18.")
    kept = tmp_path / "vol" / "pgdata-15"
    assert (pgdata / "PG_VERSION").read_text().strip() == "18"
    assert report["systemIdentifier"] == pgtools.controldata(new, pgdata)[system] != before
    assert (kept / "PG_VERSION").read_text().strip() == "15"
    # Patroni's rules, not initdb's trust, guard the new cluster until Patroni rewrites them.
    assert (pgdata / "pg_hba.conf").read_text() == (kept / "pg_hba.conf").read_text()
    assert _archived(archive) == archived, "the upgrade archived WAL into the old store"
    with us.Server(new, pgdata) as srv:
        _check_data(srv, major=18)
        with srv.connect() as conn:
            assert conn.execute("SHOW data_checksums").fetchone() == (
                "on" if method == "link" else "off",
            )
            # 18's pg_upgrade carried the column statistics, not the extended ones.
            assert conn.execute(
                "SELECT count(*) FROM pg_stats WHERE tablename = 'items'"
            ).fetchone() == (5,)
            ext = "SELECT dependencies IS NOT NULL FROM pg_stats_ext WHERE statistics_name = 'items_ab'"  # noqa: E501
            assert conn.execute(ext).fetchall() == []
            if method == "link":
                # The new cluster has run on files it shares with the old one.
                proc = _run("rollback", "--pgdata", str(pgdata))
                assert proc.returncode == upgrade.EXIT_ERROR
                assert "has started since pg_upgrade" in proc.stderr and "link mode" in proc.stderr
                assert (pgdata / "PG_VERSION").read_text().strip() == "18"
                # What the instance does once its server runs as primary: analyze, finish.
                journal = upgrade_followup.pending(pgdata, 18)
                assert journal is not None
                socket, port = str(srv.socket), srv.port
                assert upgrade_followup.is_primary(new, {}, socket, port, "postgres")
                record = upgrade_followup.follow_up(
                    journal, new, {}, pgdata=pgdata, host=socket, port=port, user="postgres",
                    log_file=tmp_path / "analyze.log",
                )  # fmt: skip
                print(f"follow-up: {record}")
                assert (record["fromMajor"], record["toMajor"]) == (15, 18)
                assert upgrade_followup.read_record(pgdata) == record
                assert not kept.exists() and not (tmp_path / "vol" / "pgherd-upgrade").exists()
                assert upgrade_followup.pending(pgdata, 18) is None
            else:
                proc = _run(
                    "analyze",
                    "--pgdata",
                    str(pgdata),
                    "--host",
                    str(srv.socket),
                    "--port",
                    str(srv.port),
                    "--log",
                    str(tmp_path / "analyze.log"),
                )
                assert proc.returncode == 0, proc.stderr + (tmp_path / "analyze.log").read_text()
                print(f"analyze: {_report(proc)}")
            assert conn.execute(ext).fetchall() == [(True,)]
    if method == "copy":
        proc = _run("rollback", "--pgdata", str(pgdata))
        assert proc.returncode == upgrade.EXIT_ERROR and "--force" in proc.stderr
        proc = _run("rollback", "--pgdata", str(pgdata), "--force")
        assert proc.returncode == 0, proc.stderr
        with us.Server(old, pgdata) as srv:
            _check_data(srv, major=15)


@slow
def test_the_preflight_of_a_running_primary(tmp_path: Path) -> None:
    """pg_basebackup of a running 15 primary: everything passes but clone, when this
    filesystem has no reflinks (else it passes too); the primary keeps running."""
    old, _ = us.binaries()
    pgdata = tmp_path / "pgdata"
    us.make_cluster(pgdata)
    with us.Server(old, pgdata) as srv:
        conninfo = f"host={srv.socket} port={srv.port} user=postgres"
        proc = _run(
            "check",
            "--method",
            "clone",
            "--source-conninfo",
            conninfo,
            "--work-dir",
            str(tmp_path / "work"),
            "--report-file",
            str(tmp_path / "termination"),
        )
        report = _report(proc)
        print(f"pgherd upgrade check (pg_basebackup): {report['durations']}")
        _check_data(srv, major=15)
    assert report["source"] == "pg_basebackup"
    no_reflinks = upgrade.reflink_supported(tmp_path)
    if no_reflinks:
        assert proc.returncode == upgrade.EXIT_PROBLEMS
        assert [(p["check"], p["subject"]) for p in report["problems"]] == [("method", "clone")]  # type: ignore[attr-defined,index]
        assert "reflinks" in report["problems"][0]["message"]  # type: ignore[index]
    else:
        assert proc.returncode == 0, report
    assert json.loads((tmp_path / "termination").read_text())["ok"] is report["ok"]
    assert not (tmp_path / "work" / "old").exists(), "the throwaway copy is left"


def _snapshot(root: Path) -> dict[str, tuple[int, str]]:
    return {
        str(p.relative_to(root)): (p.stat().st_mtime_ns, hashlib.sha256(p.read_bytes()).hexdigest())
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@slow
def test_the_preflight_reports_every_problem_and_changes_nothing(tmp_path: Path) -> None:
    """adminpack (gone in 17) installed in a database, a preload library 18 lacks, a
    parameter 18 does not know, an ALTER SYSTEM setting: each reported by name, pg_upgrade's
    own finding too; the source is untouched."""
    pgdata = tmp_path / "pgdata"
    us.make_cluster(pgdata, sql="CREATE DATABASE app", extra="")
    old, _ = us.binaries()
    with us.Server(old, pgdata) as srv, srv.connect("app") as conn:
        conn.execute("CREATE EXTENSION adminpack")
        conn.execute("ALTER SYSTEM SET work_mem = '8MB'")
    with (pgdata / "postgresql.conf").open("a") as conf:
        conf.write("shared_preload_libraries = 'pg_stat_statements,adminpack'\n")
        # Removed in 16: Patroni would write it into 18's postgresql.conf too.
        conf.write("vacuum_defer_cleanup_age = 0\n")
    before = _snapshot(pgdata)
    proc = _run(
        "check",
        "--method",
        "link",
        "--source-pgdata",
        str(pgdata),
        "--work-dir",
        str(tmp_path / "work"),
    )
    report = _report(proc)
    print(f"pgherd upgrade check (cp): {report['durations']}")
    assert proc.returncode == upgrade.EXIT_PROBLEMS, proc.stderr
    problems = {(p["check"], p["subject"]): p for p in report["problems"]}  # type: ignore[attr-defined]
    assert ("extension", "adminpack in database app") in problems, problems
    assert (
        "DROP EXTENSION adminpack" in problems[("extension", "adminpack in database app")]["hint"]
    )
    assert ("preload-library", "shared_preload_libraries: adminpack") in problems
    assert not any("pg_stat_statements" in s for _, s in problems)
    assert ("parameter", "vacuum_defer_cleanup_age") in problems
    assert "work_mem" in problems[("parameter", "postgresql.auto.conf")]["message"]
    assert problems[("parameter", "postgresql.auto.conf")]["severity"] == "warning"
    assert not any(s in {"wal_level", "archive_command", "ssl"} for _, s in problems)
    libraries = [p for (check, _), p in problems.items() if check == "pg_upgrade"]
    assert libraries and "adminpack" in libraries[0]["message"], problems
    assert _snapshot(pgdata) == before
    # Run anyway: pg_upgrade fails, and the old cluster is put straight back, startable.
    proc = _run("run", "--pgdata", str(pgdata))
    assert proc.returncode == upgrade.EXIT_ERROR
    assert "loadable libraries" in proc.stderr and "old cluster is back" in proc.stderr
    assert _journal(pgdata)["state"] == "rolled-back"
    assert pgtools.data_major(pgdata) == 15 and not (tmp_path / "pgdata-18-upgrade").exists()
    with us.Server(old, pgdata) as srv, srv.connect("app") as conn:
        assert conn.execute("SELECT extname FROM pg_extension WHERE extname = 'adminpack'"
                            ).fetchall() == [("adminpack",)]  # fmt: skip


def _kill_pod(proc: subprocess.Popen[str]) -> None:
    # unshare --kill-child: the PID namespace (the command, pg_upgrade, their servers) ends.
    inits = _namespace_pids(proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    deadline = time.monotonic() + 30
    while any(Path(f"/proc/{pid}").exists() for pid in inits):
        assert time.monotonic() < deadline
        time.sleep(0.1)
    time.sleep(0.5)  # the namespace's other processes die with its init


def _namespace_pids(proc: subprocess.Popen[str]) -> list[int]:
    return [
        int(p.name)
        for p in Path("/proc").iterdir()
        if p.name.isdigit() and _ppid(int(p.name)) == proc.pid
    ]


def _ppid(pid: int) -> int:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return -1


def _run_and_kill(pgdata: Path, *, when: Callable[[], bool], pause: str = "") -> None:
    """`pgherd upgrade run`, killed (its whole PID namespace) as soon as when() holds;
    pause: where the command waits to be killed (upgrade.TEST_PAUSE_ENV)."""
    proc = subprocess.Popen(
        us.upgrade_command("run", "--pgdata", str(pgdata)),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, upgrade.TEST_PAUSE_ENV: pause},
    )
    deadline = time.monotonic() + 120
    while not when():
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.01)
    _kill_pod(proc)


def _journal(pgdata: Path) -> dict[str, object]:
    out: dict[str, object] = json.loads(
        (pgdata.parent / "pgherd-upgrade" / "journal.json").read_text()
    )
    return out


@slow
def test_a_kill_during_pg_upgrade_then_run_again_completes(tmp_path: Path) -> None:
    """SIGKILL once pg_upgrade has begun linking (the old pg_control renamed away): the
    next run rolls the partial upgrade back and upgrades afresh."""
    _, new = us.binaries()
    pgdata = tmp_path / "vol" / "pgdata"
    us.make_cluster(pgdata)
    _run_and_kill(pgdata, when=(pgdata / "global" / "pg_control.old").exists)
    assert _journal(pgdata)["state"] == "upgrading"
    assert not (pgdata / "global" / "pg_control").exists()
    again = _run("run", "--pgdata", str(pgdata))
    assert again.returncode == 0, again.stderr
    assert _report(again)["resumed"] is True
    with us.Server(new, pgdata) as srv:
        _check_data(srv, major=18)


@slow
def test_a_kill_in_the_swap_then_run_then_rollback(tmp_path: Path) -> None:
    """SIGKILL inside the swap (the directories exchanged, the old one not yet at its kept
    name): PGDATA is still a cluster; run again completes the swap; rollback (the new
    cluster never started) brings the old one back, startable by 15 with its data although
    link mode had disabled it; a new run then upgrades it."""
    old, new = us.binaries()
    pgdata = tmp_path / "vol" / "pgdata"
    building = tmp_path / "vol" / "pgdata-18-upgrade"
    us.make_cluster(pgdata)
    _run_and_kill(pgdata, when=lambda: pgtools.data_major(building) == 15, pause="swap-half")
    assert _journal(pgdata)["state"] == "swapping"
    assert pgtools.data_major(pgdata) == 18, "PGDATA went missing in the swap"
    again = _run("run", "--pgdata", str(pgdata))
    assert again.returncode == 0, again.stderr
    assert _report(again)["state"] == "swapped"
    assert pgtools.data_major(pgdata) == 18
    assert pgtools.data_major(tmp_path / "vol" / "pgdata-15") == 15
    back = _run("rollback", "--pgdata", str(pgdata))
    assert back.returncode == 0, back.stderr
    assert pgtools.data_major(pgdata) == 15
    assert (pgdata / "global" / "pg_control").exists()
    assert not building.exists()
    assert not (tmp_path / "vol" / "pgdata-15").exists()
    with us.Server(old, pgdata) as srv:
        _check_data(srv, major=15)
    again = _run("run", "--pgdata", str(pgdata))
    assert again.returncode == 0, again.stderr
    with us.Server(new, pgdata) as srv:
        _check_data(srv, major=18)


def test_directories_are_exchanged_atomically(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    (a / "PG_VERSION").write_text("15\n")
    (b / "PG_VERSION").write_text("18\n")
    assert pgtools.exchange(a, b)
    assert (pgtools.data_major(a), pgtools.data_major(b)) == (18, 15)


@pytest.mark.parametrize(
    ("conninfo", "env", "expected"),
    [
        # A preflight pod: the primary named in the environment (and forwarded by the test
        # kubelet: hostaddr).
        (
            "application_name=x",
            {"PGHOST": "db-rw.prod.svc", "PGPORT": "5432", "PGHOSTADDR": "127.0.0.1"},
            "application_name=x host=db-rw.prod.svc hostaddr=127.0.0.1 port=5432",
        ),
        ("host=a port=1", {}, "host=a port=1"),
        (None, {}, None),
    ],
)
def test_the_source_is_taken_out_of_the_local_tools_environment(
    conninfo: str | None, env: dict[str, str], expected: str | None
) -> None:
    env = {**env, "PGUSER": "replicator"}
    assert upgrade_check.source_from_environment(conninfo, env) == expected
    # What stays is what the local tools may see: no remote server for pg_upgrade.
    assert env == {"PGUSER": "replicator"}


@pytest.mark.parametrize(
    ("mode", "expected"),
    [
        (0o700, 0o700),
        (0o750, 0o750),
        # What fsGroup ownership makes of a volume's directories: setgid, group rwx.
        (0o2770, 0o2750),
        (0o777, 0o750),
    ],
)
def test_a_data_directory_is_given_modes_postgresql_accepts(
    tmp_path: Path, mode: int, expected: int
) -> None:
    pgdata = tmp_path / "pgdata"
    pgdata.mkdir()
    pgdata.chmod(mode)
    pgtools.data_directory_mode(pgdata)
    assert stat.S_IMODE(pgdata.stat().st_mode) == expected
