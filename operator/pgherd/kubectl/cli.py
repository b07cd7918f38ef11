"""The `kubectl-pgherd` command line (`kubectl pgherd ...` once it is on PATH): arguments only;
each subcommand is a function of pgherd.kubectl.commands."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from kubernetes.client.exceptions import ApiException

from pgherd.kubectl import bundle
from pgherd.kubectl.session import PluginError

PROG = "kubectl pgherd"
DEFAULT_TIMEOUT = 600.0


def _connection_options(parser: argparse.ArgumentParser, default: Any) -> None:
    # On the main parser with real defaults, and again on each subcommand with SUPPRESS, so
    # that `kubectl pgherd -n x status c` and `kubectl pgherd status c -n x` both work.
    parser.add_argument("--kubeconfig", default=default, help="path of the kubeconfig file")
    parser.add_argument("--context", default=default, help="kubeconfig context to use")
    parser.add_argument(
        "-n", "--namespace", default=default,
        help="namespace of the cluster (default: the context's namespace, else default)",
    )  # fmt: skip


def _wait_options(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument("--wait", action="store_true", help=f"follow until {what}")
    parser.add_argument(
        "--timeout", type=float, default=DEFAULT_TIMEOUT,
        help=f"seconds --wait waits at most (default {DEFAULT_TIMEOUT:.0f})",
    )  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Inspect and operate pgherd PostgresClusters.",
        epilog="psql takes its own arguments after --: "
        "kubectl pgherd psql CLUSTER -- -c 'select 1'",
    )
    _connection_options(parser, None)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help_: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_, description=help_)
        _connection_options(p, argparse.SUPPRESS)
        p.add_argument("cluster", metavar="CLUSTER", help="name of the PostgresCluster")
        return p

    p = command("status", "phase, conditions, instances, lag, archiving, backups, certificates")
    p.add_argument("-o", "--output", choices=("text", "json"), default="text")

    p = command("psql", "psql to the primary (or a replica), verifying the server's certificate")
    p.add_argument("--replica", action="store_true", help="connect to a replica (-ro Service)")
    p.add_argument("--superuser", action="store_true", help="log in as the postgres superuser")
    p.add_argument(
        "--direct", metavar="HOST:PORT",
        help="connect to this address instead of port-forwarding (test environments, or a "
        "route of your own); the certificate is still verified against the Service's name",
    )  # fmt: skip
    p.add_argument("--psql", default="psql", help="the psql binary (default: psql from PATH)")

    p = command("switchover", "promote a replica: the one named, else the best ready one")
    p.add_argument("--to", metavar="INSTANCE", help="pod name of the replica to promote")
    _wait_options(p, "the new primary is in the status")

    p = command("backup", "take a base backup now (a PostgresBackup)")
    p.add_argument("--name", help="name of the PostgresBackup (default: CLUSTER-<time>)")
    _wait_options(p, "the backup is Completed or Failed")

    p = command("restart", "rolling restart of every instance (replicas first)")
    _wait_options(p, "every pod is new and ready, and the cluster Healthy")

    p = command("report", "a support bundle (zip or directory) with Secrets redacted")
    p.add_argument(
        "-o", "--output", metavar="FILE.zip|DIR",
        help="where to write it (default: pgherd-report-CLUSTER-<time>.zip here)",
    )  # fmt: skip
    p.add_argument(
        "--operator-namespace", default=bundle.OPERATOR_NAMESPACE,
        help=f"namespace of the operator's pod (default {bundle.OPERATOR_NAMESPACE})",
    )  # fmt: skip
    p.add_argument("--tail", type=int, default=bundle.LOG_TAIL_LINES,
                   help="lines of the operator's log")  # fmt: skip
    return parser


def parse(argv: list[str]) -> argparse.Namespace:
    """The options, with psql's own arguments (after --) in psql_args."""
    extra: list[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, extra = argv[:cut], argv[cut + 1 :]
    parser = build_parser()
    args = parser.parse_args(argv)
    if extra and args.command != "psql":
        parser.error(f"{args.command} takes no arguments after --")
    args.psql_args = extra
    return args


def run(args: argparse.Namespace) -> int:
    from pgherd.kubectl import commands  # noqa: PLC0415 - --help needs no API client
    from pgherd.kubectl.session import open_session  # noqa: PLC0415

    session = open_session(args.kubeconfig, args.context, args.namespace)
    name = args.cluster
    if args.command == "status":
        return commands.status(session, name, args.output)
    if args.command == "psql":
        return commands.psql(
            session, name, replica=args.replica, superuser=args.superuser, direct=args.direct,
            psql_args=args.psql_args, psql_binary=args.psql,
        )  # fmt: skip
    if args.command == "switchover":
        return commands.switchover(session, name, to=args.to, wait=args.wait,
                                   timeout=args.timeout)  # fmt: skip
    if args.command == "backup":
        return commands.backup(session, name, backup=args.name, wait=args.wait,
                               timeout=args.timeout)  # fmt: skip
    if args.command == "restart":
        return commands.restart(session, name, wait=args.wait, timeout=args.timeout)
    return commands.report(
        session, name, output=args.output, operator_namespace=args.operator_namespace,
        tail=args.tail,
    )  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    args = parse(sys.argv[1:] if argv is None else argv)
    try:
        return run(args)
    except PluginError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except ApiException as e:
        print(f"error: the API answered {e.status} {e.reason}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
