"""Patroni's post_bootstrap hook: create the application owner and database once.

Patroni runs it on the first primary right after initdb, with a superuser connection
string as its argument. The owner's password comes from the pod's environment (the
application Secret), so it is never written to disk or logged.
"""

from __future__ import annotations

import os
import sys

import psycopg
from psycopg import sql


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        print("usage: python -m pgherd.operand.post_bootstrap <connection string>", file=sys.stderr)
        return 2
    dbname = os.environ.get("PGHERD_APP_DATABASE", "app")
    user = os.environ.get("PGHERD_APP_USER", "app")
    password = os.environ.get("PGHERD_APP_PASSWORD", "")
    if not password:
        print("post_bootstrap: PGHERD_APP_PASSWORD is empty", file=sys.stderr)
        return 2
    with psycopg.connect(argv[1], autocommit=True) as conn:
        # Hash on the client so the plain password never reaches the server's logs.
        verifier = conn.pgconn.encrypt_password(password.encode(), user.encode(), b"scram-sha-256")
        # A cluster restored from a backup (backups) already has both: the role then
        # only takes this cluster's password.
        exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (user,)).fetchone()
        verb = "ALTER" if exists else "CREATE"
        conn.execute(
            sql.SQL(verb + " ROLE {} LOGIN PASSWORD {}").format(
                sql.Identifier(user), sql.Literal(verifier.decode())
            )
        )
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (dbname,)).fetchone():
            conn.execute(
                sql.SQL("CREATE DATABASE {} OWNER {}").format(
                    sql.Identifier(dbname), sql.Identifier(user)
                )
            )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
