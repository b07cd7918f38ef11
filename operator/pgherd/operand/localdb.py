"""How the instance's own processes reach the local PostgreSQL: the backup agent and the
metrics exporter connect over the Unix socket as the superuser, with the password read
from the mounted Secret at each connection (a rotation changes the file, not the
environment). TLS and pg_hba stay as they are: local socket connections never leave the pod.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pgherd import contract


def conninfo(env: Mapping[str, str], application_name: str) -> dict[str, Any]:
    """psycopg.connect() keywords for the superuser over the pod's socket (holds the
    password: never log it)."""
    return {
        "host": contract.rooted(env.get("PGHERD_ROOT", "/"), contract.SOCKET_DIR),
        "port": int(env.get("PGHERD_PG_PORT", contract.POSTGRES_PORT)),
        "user": env.get("PATRONI_SUPERUSER_USERNAME", "postgres"),
        "password": contract.read_superuser_password(env),
        "dbname": "postgres",
        "connect_timeout": 5,
        "application_name": application_name,
    }
