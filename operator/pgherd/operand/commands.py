"""Dispatch of the operand's backup commands: `pgherd wal-archive`, `wal-restore` and
`restore-bootstrap`."""

from __future__ import annotations


def main(command: str, argv: list[str]) -> int:
    # Imported per command: archive_command runs once per WAL file and should start fast.
    if command == "wal-archive":
        from pgherd.operand import wal  # noqa: PLC0415

        return wal.main_archive(argv)
    if command == "wal-restore":
        from pgherd.operand import wal  # noqa: PLC0415

        return wal.main_restore(argv)
    from pgherd.operand import restore  # noqa: PLC0415

    return restore.main(argv)
