"""The instance-side backup commands: what they tell barman and what they report back.

The commands themselves run against a real store in tests/cluster/test_backup.py; here are
the parts that must hold whatever the store does: a hung store call ends, and the words a
user reads come out right.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from pgherd import contract
from pgherd.operand import agent, wal


def test_a_hung_store_command_ends_with_a_failure_naming_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # PostgreSQL would wait for a hung archive_command forever, archiving nothing and
    # logging nothing; a failure is logged, reported in status and retried.
    monkeypatch.setattr(wal, "COMMAND_TIMEOUT", 0.5)
    code, message = wal._run([sys.executable, "-c", "import time; time.sleep(30)"], {})
    assert code != 0
    assert message == f"{sys.executable} did not finish within 0s"


def test_a_store_command_reports_its_own_error() -> None:
    code, message = wal._run(
        [sys.executable, "-c", "import sys; sys.exit('NoSuchBucket: the bucket is missing')"], {}
    )
    assert (code, message) == (1, "NoSuchBucket: the bucket is missing")


def test_summary_keeps_the_last_lines_that_name_the_cause() -> None:
    output = "\n".join(["Traceback", "  frame", "", "botocore error", "InvalidAccessKeyId: no"])
    assert wal.summary(output) == "  frame | botocore error | InvalidAccessKeyId: no"
    assert wal.summary("") == "no output"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("30d", "RECOVERY WINDOW OF 30 DAYS"),
        ("4w", "RECOVERY WINDOW OF 4 WEEKS"),
        ("6m", "RECOVERY WINDOW OF 6 MONTHS"),
    ],
)
def test_retention_policy_in_barmans_words(value: str, expected: str) -> None:
    assert agent.retention_policy(value) == expected


def test_timeline_of_segments_and_history_files() -> None:
    assert wal.timeline_of("00000002000000000000000D") == 2
    assert wal.timeline_of("0000000A.history") == 10


def test_store_summary_counts_only_finished_backups() -> None:
    listed = [
        {"backup_id": "20261101T000000", "status": "DONE", "end_time": "Sun Nov  1 00:01:00 2026"},
        {"backup_id": "20261120T000000", "status": "DONE", "end_time": "Fri Nov 20 00:02:00 2026"},
        {"backup_id": "20261127T000000", "status": "FAILED", "end_time": None},
    ]
    assert agent.store_summary(listed) == {
        "backups": 2,
        "firstRecoverabilityPoint": "2026-11-01T00:01:00Z",
        "lastBackup": "20261120T000000",
        "lastBackupTime": "2026-11-20T00:02:00Z",
    }
    assert agent.store_summary(listed[2:]) == {"backups": 0}


def test_newer_follows_wal_order_not_archive_order() -> None:
    # After a failover the new primary archives its new timeline's segments and then the
    # old timeline's leftovers: the newest is the furthest in WAL, whatever came last.
    assert contract.newer("00000002000000000000000E", "000000010000000000000002") == (
        "00000002000000000000000E"
    )
    assert contract.newer("00000001000000000000000D", "00000002000000000000000D") == (
        "00000002000000000000000D"
    )
    # A segment that only crossed a log boundary is still later.
    assert contract.newer("0000000100000000000000FF", "000000010000000100000000") == (
        "000000010000000100000000"
    )
    # A .partial or .backup file is no further than its whole segment; history files and
    # nothing say nothing.
    assert contract.newer("00000001000000000000000D", "00000001000000000000000D.partial") == (
        "00000001000000000000000D"
    )
    assert (
        contract.newer("00000001000000000000000C", "00000002.history") == "00000001000000000000000C"
    )
    assert contract.newer(None, "00000002.history") == "00000002.history"
    assert contract.newer(None, None) is None
    assert contract.newer("00000001000000000000000C", None) == "00000001000000000000000C"


def test_the_newest_archived_file_is_kept_in_wal_order(tmp_path: Path) -> None:
    # What `pgherd wal-archive` notes after each successful upload (the uploads themselves
    # run against a real store in tests/cluster/test_backup.py, failover included).
    env = {"PGHERD_ROOT": str(tmp_path)}
    assert wal.read_newest(env) is None
    for name in ["00000002.history", "00000002000000000000000E", "000000010000000000000002"]:
        wal._note_archived(env, name)
    assert wal.read_newest(env) == "00000002000000000000000E"
    assert wal.newest_file(env).parent == tmp_path / "tmp"
