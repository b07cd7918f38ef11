"""The operator's own sessions on a cluster's primary: reading what managed roles, databases
and poolers need to compare, running the statements plans decide on, and setting a role's
password.

Everything else reaches PostgreSQL through Patroni; these cannot (Patroni has no endpoint for
them), and a password must land in the database before any Secret carries it. The operator
connects to the address Patroni advertises (conn_url) as the superuser, over TLS verified
against the cluster's CA (verify-ca: conn_url holds the pod IP, which no cluster-wide
certificate names). Statements arrive as pgherd.controller.sql values and are composed here
with psycopg's `sql` module, which quotes every identifier and literal. A password is sent as
a SCRAM verifier computed by libpq on this side, so the plain password never reaches the
server, its logs or pg_stat_activity. Nothing here logs a password.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from pgherd.controller.sql import Ident, Lit, Statement, Target

if TYPE_CHECKING:
    import psycopg
    from psycopg import sql as psql


# A rehearsal's check may not hold the operator's pass longer than this.
CHECK_TIMEOUT_SECONDS = 60


class PostgresError(Exception):
    """The statement could not run; the message says why (never with a password).
    transient: the server could not be reached (the next pass tries again)."""

    def __init__(self, message: str, *, transient: bool = False) -> None:
        super().__init__(message)
        self.transient = transient


def compose(statement: Statement) -> psql.Composed:
    """The statement with each argument quoted by psycopg (identifiers, literals)."""
    from psycopg import sql as psql  # noqa: PLC0415 - see session()

    def arg(a: Ident | Lit | Statement) -> psql.Composable:
        if isinstance(a, Ident):
            return psql.Identifier(*a.parts)
        if isinstance(a, Lit):
            return psql.Literal(a.value)
        return compose(a)

    return psql.SQL(statement.template).format(*(arg(a) for a in statement.args))


def _first_line(e: Exception) -> str:
    # psycopg's messages quote the server, never the connection's password.
    return str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__


@contextmanager
def session(target: Target, dbname: str, timeout: float) -> Iterator[psycopg.Connection[Any]]:
    """An autocommit session on dbname as the superuser, with the first of the target's
    superuser passwords that works."""
    # Imported on first use: psycopg and libpq add about 20 MiB to an operator whose clusters
    # use none of this (measured with the bench's idle RSS).
    import psycopg  # noqa: PLC0415

    parts = urlsplit(target.conn_url)
    if not parts.hostname:
        raise PostgresError(f"no host in the instance's address {target.conn_url!r}")
    # libpq reads the CA from a file only: a private one, removed right after.
    with tempfile.TemporaryDirectory(prefix="pgherd-ca-") as directory:
        ca = os.path.join(directory, "ca.crt")
        with open(os.open(ca, os.O_WRONLY | os.O_CREAT, 0o600), "w") as f:
            f.write(target.cadata)
        last: Exception | None = None
        for password in target.superuser_passwords:
            try:
                conn = psycopg.connect(
                    host=parts.hostname,
                    port=str(parts.port or 5432),
                    user=target.user,
                    password=password,
                    dbname=dbname,
                    sslmode="verify-ca",
                    sslrootcert=ca,
                    connect_timeout=str(max(1, int(timeout))),
                    application_name="pgherd-operator",
                    autocommit=True,
                )
            except psycopg.OperationalError as e:
                last = e  # perhaps the other password: try it
                continue
            with conn:
                yield conn
            return
        raise PostgresError(
            f"cannot connect to {dbname!r} on the primary: {_first_line(last or Exception())}",
            transient=True,
        )


def fetch(target: Target, dbname: str, query: Statement, timeout: float) -> list[tuple[Any, ...]]:
    """The rows of one query on dbname."""
    import psycopg  # noqa: PLC0415

    with session(target, dbname, timeout) as conn:
        try:
            return list(conn.execute(compose(query)).fetchall())
        except psycopg.Error as e:
            raise PostgresError(f"{query.shown()[:200]}: {_first_line(e)}") from None


def check(target: Target, dbname: str, query: str, timeout: float) -> tuple[bool, str]:
    """A rehearsal's check (pgherd.controller.rehearsal) on dbname: see run_check. A server
    that cannot be reached raises a transient PostgresError."""
    with session(target, dbname, timeout) as conn:
        return run_check(conn, query)


def run_check(conn: psycopg.Connection[Any], query: str) -> tuple[bool, str]:
    """Whether the first value of the last statement's first row is true, and that value (or
    the error) as text. The statements are the user's own, sent as they are (no parameters),
    under a statement timeout; only the first row is read."""
    import psycopg  # noqa: PLC0415

    try:
        conn.execute("SELECT set_config('statement_timeout', %s, false)",
                     (f"{CHECK_TIMEOUT_SECONDS}s",))  # fmt: skip
        cursor = conn.execute(query.encode())
        while cursor.nextset():
            pass  # the last statement's result counts
        row = cursor.fetchone() if cursor.description else None
    except psycopg.OperationalError as e:
        if conn.closed:
            raise PostgresError(_first_line(e), transient=True) from None
        return False, f"error: {_first_line(e)}"
    except psycopg.Error as e:
        return False, f"error: {_first_line(e)}"
    if not row:
        return False, "no row"
    return row[0] is True, str(row[0])[:1024]


def execute(target: Target, dbname: str, statements: Sequence[Statement], timeout: float) -> None:
    """Run the statements in order on dbname (autocommit: CREATE DATABASE cannot run in a
    transaction); the first that fails stops the rest and is named in the error."""
    import psycopg  # noqa: PLC0415

    with session(target, dbname, timeout) as conn:
        for statement in statements:
            try:
                conn.execute(compose(statement))
            except psycopg.OperationalError as e:
                raise PostgresError(f"{statement.shown()[:200]}: {_first_line(e)}",
                                    transient=conn.closed) from None  # fmt: skip
            except psycopg.Error as e:
                raise PostgresError(f"{statement.shown()[:200]}: {_first_line(e)}") from None


def scram_verifier(conn: psycopg.Connection[Any], role: str, password: str) -> str:
    """The SCRAM-SHA-256 verifier of password for role, computed by libpq on this side."""
    return conn.pgconn.encrypt_password(password.encode(), role.encode(), b"scram-sha-256").decode()


def set_password(
    conn_url: str,
    *,
    superuser_passwords: tuple[str, ...],
    cadata: str,
    role: str,
    password: str,
    timeout: float,
) -> None:
    """ALTER ROLE role PASSWORD <verifier of password> on the server at conn_url, logged in
    as the superuser with the first of superuser_passwords that works."""
    import psycopg  # noqa: PLC0415

    target = Target(conn_url, superuser_passwords, cadata)
    with session(target, "postgres", timeout) as conn:
        statement = Statement(
            "ALTER ROLE {} PASSWORD {}",
            (Ident(role), Lit(scram_verifier(conn, role, password), secret=True)),
        )
        try:
            conn.execute(compose(statement))
        except psycopg.Error as e:
            raise PostgresError(f"ALTER ROLE {role}: {_first_line(e)}") from None
