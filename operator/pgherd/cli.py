"""The `pgherd` command. `pgherd instance` is the operand container's entrypoint
(PostgreSQL under Patroni)."""

from __future__ import annotations

import argparse
import sys

from pgherd import instance


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="pgherd", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("instance", help="run PostgreSQL under Patroni (operand entrypoint)")
    parser.parse_args(argv)
    return instance.main()


if __name__ == "__main__":
    sys.exit(main())
