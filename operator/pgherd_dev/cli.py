"""Command line for the developer tooling: `pgherd-dev cluster up|down|status`.

Errors a user can fix are printed as one message with advice, never as a traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from pgherd_dev.controlplane import PORT_ENV, ControlPlane
from pgherd_dev.errors import DevError
from pgherd_dev.tools import REPO_ROOT

DEFAULT_WORKDIR = REPO_ROOT / ".local" / "cluster"


def _workdir(args: argparse.Namespace) -> Path:
    return Path(args.workdir or os.environ.get("PGHERD_CLUSTER_DIR") or DEFAULT_WORKDIR)


def _port() -> int | None:
    raw = os.environ.get(PORT_ENV)
    if not raw:
        return None
    if not raw.isdigit() or not 0 < int(raw) < 65536:
        raise DevError(f"{PORT_ENV}={raw!r} is not a port number (1-65535); fix or unset it.")
    return int(raw)


def cluster_up(args: argparse.Namespace) -> int:
    cp = ControlPlane(_workdir(args), apiserver_port=_port())
    seconds = cp.up()
    print(f"control plane ready in {seconds:.1f}s ({cp.nodes} kwok nodes in 3 zones)")
    print(f"  export KUBECONFIG={cp.kubeconfig}")
    print(f"  logs: {cp.log_dir}")
    return 0


def cluster_down(args: argparse.Namespace) -> int:
    cp = ControlPlane(_workdir(args))
    stopped = cp.down()
    print(f"stopped: {', '.join(stopped) if stopped else 'nothing was running'}")
    return 0


def cluster_status(args: argparse.Namespace) -> int:
    status = ControlPlane(_workdir(args)).status()
    print(json.dumps(status, indent=2))
    procs = status["processes"]
    return 0 if procs and all(v == "running" for v in procs.values()) else 1


def run(args: argparse.Namespace) -> int:
    from pgherd_dev import run as run_module  # noqa: PLC0415 - only this command needs it

    cp = ControlPlane(_workdir(args), apiserver_port=_port())
    if not cp.status()["processes"] or "gone" in cp.status()["processes"].values():
        print(f"control plane ready in {cp.up():.1f}s")
    return run_module.run(cp, REPO_ROOT)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="pgherd-dev", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="group", required=True)
    cluster = sub.add_parser("cluster", help="the local control plane")
    cluster.add_argument("--workdir", help=f"working directory (default {DEFAULT_WORKDIR})")
    csub = cluster.add_subparsers(dest="action", required=True)
    csub.add_parser("up", help="start it").set_defaults(func=cluster_up)
    csub.add_parser("down", help="stop it and clear its data").set_defaults(func=cluster_down)
    csub.add_parser("status", help="show its processes").set_defaults(func=cluster_status)
    runp = sub.add_parser("run", help="control plane + operator + a sample cluster")
    runp.add_argument("--workdir", help=f"working directory (default {DEFAULT_WORKDIR})")
    runp.set_defaults(func=run)
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except DevError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
