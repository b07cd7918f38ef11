"""What observe reads on the primary for a cluster's PostgresDatabases (and only when the
cluster has some): one query on the postgres database (the named databases, the roles the
specs name, the extensions the image ships), then one inside each database the specs want
present (its extensions, the schemas the specs name). Read failures become the state's error,
never an exception: the rest of the cluster's pass goes on. Kept apart from the pure
decisions (pgherd.controller.databases) because it knows PostgreSQL's error type.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from pgherd.controller.databases import (
    DatabasesSeen,
    Inside,
    LiveDatabase,
    Manifest,
    parse,
    wanted_names,
)
from pgherd.controller.postgres import PostgresError
from pgherd.controller.sql import Lit, Reader, Statement, Target, join


def _names(values: Iterable[str]) -> Statement:
    """ARRAY[...]::text[] of literals (an empty one is valid, unlike IN ())."""
    items = [Statement("{}", (Lit(v),)) for v in sorted(values)]
    return Statement("ARRAY[{}]::text[]", (join(items, ", "),))


def cluster_query(dbs: set[str], roles: set[str], extensions: set[str]) -> Statement:
    return Statement(
        "SELECT 'db', datname::text, pg_get_userbyid(datdba)::text, "
        "pg_encoding_to_char(encoding)::text, datcollate::text, datctype::text "
        "FROM pg_database WHERE datname = ANY({}) "
        "UNION ALL SELECT 'role', rolname::text, NULL, NULL, NULL, NULL "
        "FROM pg_roles WHERE rolname = ANY({}) "
        "UNION ALL SELECT 'version', name::text, version::text, NULL, NULL, NULL "
        "FROM pg_available_extension_versions WHERE name = ANY({}) "
        "UNION ALL SELECT 'default', name::text, default_version::text, NULL, NULL, NULL "
        "FROM pg_available_extensions WHERE name = ANY({})",
        (_names(dbs), _names(roles), _names(extensions), _names(extensions)),
    )


def inside_query(schemas: set[str]) -> Statement:
    return Statement(
        "SELECT 'ext', e.extname::text, e.extversion::text, n.nspname::text "
        "FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace "
        "UNION ALL SELECT 'schema', nspname::text, pg_get_userbyid(nspowner)::text, NULL "
        "FROM pg_namespace WHERE nspname = ANY({})",
        (_names(schemas),),
    )


def read(read_sql: Reader, target: Target, resources: Sequence[Manifest]) -> DatabasesSeen:
    """What the primary holds of what the cluster's PostgresDatabases name."""
    parsed = [(raw, r) for raw in resources if (r := parse(raw)) is not None]
    specs = [r.spec for _, r in parsed]
    dbs, roles, extensions = wanted_names(specs)
    try:
        rows = read_sql(target, "postgres", cluster_query(dbs, roles, extensions))
    except PostgresError as e:
        return DatabasesSeen(error=f"cannot read the primary: {e}")
    databases: dict[str, LiveDatabase] = {}
    found_roles: set[str] = set()
    versions: dict[str, set[str]] = {}
    defaults: dict[str, str] = {}
    for kind, name, a, b, c, d in rows:
        if kind == "db":
            databases[name] = LiveDatabase(owner=a, encoding=b, collate=c, ctype=d)
        elif kind == "role":
            found_roles.add(name)
        elif kind == "version":
            versions.setdefault(name, set()).add(a)
        elif kind == "default":
            defaults[name] = a
    inside: dict[str, Inside] = {}
    for raw, r in parsed:
        spec = r.spec
        if (
            raw["metadata"].get("deletionTimestamp")  # only dropped: nothing inside matters
            or spec.ensure != "present"
            or spec.name not in databases
            or spec.name in inside
        ):
            continue
        try:
            got = read_sql(target, spec.name, inside_query({s.name for s in spec.schemas}))
        except PostgresError as e:
            inside[spec.name] = Inside(error=f"cannot read database {spec.name!r}: {e}")
            continue
        inside[spec.name] = Inside(
            extensions={n: (v, where) for k, n, v, where in got if k == "ext"},
            schemas={n: owner for k, n, owner, _ in got if k == "schema"},
        )
    return DatabasesSeen(
        databases=databases,
        roles=frozenset(found_roles),
        available={k: frozenset(v) for k, v in versions.items()},
        defaults=defaults,
        inside=inside,
    )
