"""What observe reads from the primary for a cluster's poolers (pgherd.controller.poolers
decides from it): the pooler role, the databases that accept connections, and which of them
have the current auth_query function. Read only while the cluster has a pooler; a primary
that cannot be read is a state (error), not a failed pass."""

from __future__ import annotations

from pgherd.controller.poolers import (
    DATABASES_QUERY,
    FUNCTION_MARK,
    FUNCTION_QUERY,
    ROLE_QUERY,
    PoolerSeen,
)
from pgherd.controller.postgres import PostgresError
from pgherd.controller.sql import Reader, Target


def read(read_sql: Reader, target: Target) -> PoolerSeen:
    try:
        role = read_sql(target, "postgres", ROLE_QUERY)
        databases = tuple(str(r[0]) for r in read_sql(target, "postgres", DATABASES_QUERY))
        functions = {db: read_sql(target, db, FUNCTION_QUERY) for db in databases}
    except PostgresError as e:
        return PoolerSeen(error=f"unreachable: {e}")
    return PoolerSeen(
        role_exists=bool(role),
        role_verifier=str(role[0][0]) if role and role[0][0] else None,
        role_attributes_ok=bool(role and role[0][1]),
        databases=databases,
        functions_ok=frozenset(db for db, rows in functions.items()
                               if rows and rows[0][1] == FUNCTION_MARK),
        functions_present=frozenset(db for db, rows in functions.items() if rows and rows[0][0]),
    )  # fmt: skip
