"""Statements the operator runs on a cluster's primary itself: setting a role's password.

Everything else reaches PostgreSQL through Patroni; a password rotation cannot (Patroni has no
such endpoint), and it must land in the database before any Secret carries it. The operator
connects to the address Patroni advertises (conn_url) as the superuser, over TLS verified
against the cluster's CA (verify-ca: conn_url holds the pod IP, which no cluster-wide
certificate names). The password is sent as a SCRAM verifier computed by libpq on this side,
so the plain password never reaches the server, its logs or pg_stat_activity. Nothing here
logs a password.
"""

from __future__ import annotations

import os
import tempfile
from urllib.parse import urlsplit

from pgherd.api.v1alpha1 import SUPERUSER_USERNAME


class PostgresError(Exception):
    """The statement could not run; the message says why (never with a password)."""


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
    # Imported on first use: psycopg and libpq add about 20 MiB to an operator that rotates
    # a password rarely (measured with the bench's idle RSS).
    import psycopg  # noqa: PLC0415
    from psycopg import sql  # noqa: PLC0415

    parts = urlsplit(conn_url)
    if not parts.hostname:
        raise PostgresError(f"no host in the instance's address {conn_url!r}")
    # libpq reads the CA from a file only: a private one, removed right after.
    with tempfile.TemporaryDirectory(prefix="pgherd-ca-") as directory:
        ca = os.path.join(directory, "ca.crt")
        with open(os.open(ca, os.O_WRONLY | os.O_CREAT, 0o600), "w") as f:
            f.write(cadata)
        last: Exception | None = None
        for superuser_password in superuser_passwords:
            try:
                with psycopg.connect(
                    host=parts.hostname,
                    port=str(parts.port or 5432),
                    user=SUPERUSER_USERNAME,
                    password=superuser_password,
                    dbname="postgres",
                    sslmode="verify-ca",
                    sslrootcert=ca,
                    connect_timeout=str(max(1, int(timeout))),
                    application_name="pgherd-operator",
                    autocommit=True,
                ) as conn:
                    verifier = conn.pgconn.encrypt_password(
                        password.encode(), role.encode(), b"scram-sha-256"
                    )
                    conn.execute(
                        sql.SQL("ALTER ROLE {} PASSWORD {}").format(
                            sql.Identifier(role), sql.Literal(verifier.decode())
                        )
                    )
                return
            except psycopg.OperationalError as e:
                last = e  # perhaps the other password: try it
            except psycopg.Error as e:
                last = e
                break
        # psycopg's messages quote the server, never the connection's password.
        raise PostgresError(f"ALTER ROLE {role}: {str(last).strip()[:300]}")
