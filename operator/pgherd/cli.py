"""The `pgherd` command: `pgherd operator` runs the controller; `pgherd instance` is the
operand container's entrypoint (PostgreSQL under Patroni); `pgherd pooler` a PostgresPooler's
(PgBouncer)."""

from __future__ import annotations

import argparse
import sys

# Commands PostgreSQL and Patroni run in the operand (archive_command, restore_command, the
# restore bootstrap method); they parse their own arguments.
BACKUP_COMMANDS = ("wal-archive", "wal-restore", "restore-bootstrap")


def main(argv: list[str] | None = None) -> int:
    raw = sys.argv[1:] if argv is None else argv
    if raw and raw[0] in BACKUP_COMMANDS:
        from pgherd.operand import commands  # noqa: PLC0415

        return commands.main(raw[0], raw[1:])
    if raw and raw[0] == "upgrade":
        # Major upgrades (pg_upgrade): `pgherd upgrade check|run|rollback|finish|analyze`.
        from pgherd.operand import upgrade  # noqa: PLC0415

        return upgrade.main(raw[1:])
    parser = argparse.ArgumentParser(prog="pgherd", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("instance", help="run PostgreSQL under Patroni (operand entrypoint)")
    sub.add_parser("pooler", help="run PgBouncer for a PostgresPooler (pooler entrypoint)")
    op = sub.add_parser("operator", help="run the operator")
    op.add_argument(
        "--namespace",
        action="append",
        default=None,
        help="watch only this namespace (repeatable); default: WATCH_NAMESPACE "
        "(comma-separated, as OLM sets it), or every namespace when that is empty",
    )
    op.add_argument(
        "--health-port",
        type=int,
        default=8081,
        help="port of the /healthz liveness endpoint (0 disables it)",
    )
    op.add_argument(
        "--metrics-port",
        type=int,
        default=None,
        help="port of the Prometheus /metrics endpoint (0 disables metrics); "
        "default: PGHERD_METRICS_PORT, or 8080",
    )
    args = parser.parse_args(argv)
    # Imported per command: the operand image must not need kopf, nor the operator Patroni.
    if args.command == "instance":
        from pgherd.operand import instance  # noqa: PLC0415

        return instance.main()
    if args.command == "pooler":
        from pgherd.operand import pooler  # noqa: PLC0415

        return pooler.main()
    import os  # noqa: PLC0415

    from pgherd.controller import runner  # noqa: PLC0415
    from pgherd.settings import Settings, SettingsError  # noqa: PLC0415

    try:
        settings = Settings.from_env(
            os.environ,
            namespaces=args.namespace,
            health_port=args.health_port,
            metrics_port=args.metrics_port,
        )
    except SettingsError as e:
        print(f"pgherd operator: {e}", file=sys.stderr)
        return 2
    return runner.main(settings)


if __name__ == "__main__":
    sys.exit(main())
