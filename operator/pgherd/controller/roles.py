"""Managed roles (spec.managed.roles): what the primary holds, what to change, what to report.

The operator reconciles the roles itself, over its superuser session on the primary
(pgherd.controller.postgres), rather than from the instances: it already holds a verified
superuser TLS session for password rotation, it reads the password Secrets itself (so the
instance pods need no access to the application's Secrets), and one writer (the cluster's
pass) reports status.

- read_roles reads, for the spec's roles only, pg_authid (attributes, the stored password
  verifier, VALID UNTIL), pg_auth_members (memberships) and shobj_description (the comment);
  one query per pass, and none for a cluster without managed roles.
- plan_roles is pure: it compares the declaration with what was read and returns one RunSql
  per role that differs (group "role:<name>"), each with its reason; a role as declared
  writes nothing. A password is compared with the stored SCRAM verifier in Python (RFC 5802 /
  7677), so an unchanged password writes nothing either, and a new one is sent as a verifier
  computed here: the plain password never reaches the server or its logs.
- states gives status.managedRoles from the plan and what act did; failed roles become a
  Degraded problem naming them (an Event on the transition), and nothing else of the cluster
  waits for them.

Decisions: a role removed from the spec is left alone (only ensure: absent drops, and a role
that owns objects is not forced: the server's error is reported); inRoles is exact (a
membership granted by hand is revoked); an unset validUntil means no expiry (a date set by
hand becomes 'infinity'); an empty comment means none; without passwordSecret and
disablePassword the password is not managed. Names are always sql.Ident / sql.Lit values,
quoted by psycopg at act time, so hostile names stay one identifier.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import os
import stringprep
import unicodedata
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from pgherd.api.v1alpha1 import (
    ManagedRole,
    ManagedRoleStatus,
    PostgresCluster,
    reserved_role,
)
from pgherd.controller import references
from pgherd.controller.actions import RunSql
from pgherd.controller.conditions import Problem
from pgherd.controller.sql import Ident, Lit, Reader, Statement, Target, join

Manifest = dict[str, Any]
GROUP_PREFIX = "role:"
# Degraded's reason while a managed role cannot be reconciled.
MANAGED_ROLE_FAILED = "ManagedRoleFailed"
# PostgreSQL's default (scram_iterations); a verifier with other iterations is still checked.
SCRAM_ITERATIONS = 4096
SALT_BYTES = 16

State = Literal["Reconciled", "Pending", "Failed", "Absent"]
RECONCILED: State = "Reconciled"
PENDING: State = "Pending"
FAILED: State = "Failed"
ABSENT: State = "Absent"


def group(role: str) -> str:
    """The RunSql group of a role (act reports per group)."""
    return GROUP_PREFIX + role


# ---- SCRAM-SHA-256 (RFC 5802, RFC 7677), as PostgreSQL stores it ---------------------------
def saslprep(password: str) -> str | None:
    """The password as PostgreSQL prepares it before hashing (RFC 4013 SASLprep, as
    src/common/saslprep.c applies it), or None when SASLprep refuses it: PostgreSQL then
    hashes the raw bytes. Pure ASCII is taken as it is, as PostgreSQL does."""
    if password.isascii():
        return password
    # Non-ASCII spaces become a space first (so U+200B, in both tables, is a space), then
    # the characters "commonly mapped to nothing" go, as src/common/saslprep.c does.
    mapped = "".join(
        " " if stringprep.in_table_c12(ch) else ch
        for ch in password
        if stringprep.in_table_c12(ch) or not stringprep.in_table_b1(ch)
    )
    prepared = unicodedata.normalize("NFKC", mapped)
    if not prepared:
        return None
    prohibited = (
        stringprep.in_table_c12, stringprep.in_table_c21_c22, stringprep.in_table_c3,
        stringprep.in_table_c4, stringprep.in_table_c5, stringprep.in_table_c6,
        stringprep.in_table_c7, stringprep.in_table_c8, stringprep.in_table_c9,
        stringprep.in_table_a1,
    )  # fmt: skip
    if any(check(ch) for ch in prepared for check in prohibited):
        return None
    if any(stringprep.in_table_d1(ch) for ch in prepared):
        # Right-to-left text: no left-to-right character, and RandAL at both ends.
        if any(stringprep.in_table_d2(ch) for ch in prepared):
            return None
        if not (stringprep.in_table_d1(prepared[0]) and stringprep.in_table_d1(prepared[-1])):
            return None
    return prepared


def _password_bytes(password: str) -> bytes:
    prepared = saslprep(password)
    return (prepared if prepared is not None else password).encode()


def _keys(password: str, salt: bytes, iterations: int) -> tuple[bytes, bytes]:
    salted = hashlib.pbkdf2_hmac("sha256", _password_bytes(password), salt, iterations)
    client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
    stored_key = hashlib.sha256(client_key).digest()
    server_key = hmac.new(salted, b"Server Key", hashlib.sha256).digest()
    return stored_key, server_key


def scram_verifier(password: str, salt: bytes, iterations: int = SCRAM_ITERATIONS) -> str:
    """SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>, what libpq's
    PQencryptPasswordConn computes and pg_authid.rolpassword holds."""
    stored_key, server_key = _keys(password, salt, iterations)

    def b64(b: bytes) -> str:
        return base64.b64encode(b).decode()

    return f"SCRAM-SHA-256${iterations}:{b64(salt)}${b64(stored_key)}:{b64(server_key)}"


@functools.lru_cache(maxsize=1024)
def scram_matches(verifier: str | None, password: str) -> bool:
    """Whether a stored verifier is one of password (any salt and iteration count). Cached:
    a pass over an unchanged role must not cost 4096 HMAC rounds each time."""
    if not verifier or not verifier.startswith("SCRAM-SHA-256$"):
        return False  # none, MD5 or plain: not what pgherd sets
    try:
        head, keys = verifier[len("SCRAM-SHA-256$") :].split("$", 1)
        iterations_text, salt_text = head.split(":", 1)
        stored_text, server_text = keys.split(":", 1)
        iterations = int(iterations_text)
        salt = base64.b64decode(salt_text, validate=True)
        stored = base64.b64decode(stored_text, validate=True)
        server = base64.b64decode(server_text, validate=True)
    except ValueError:
        return False
    if not 1 <= iterations <= 10_000_000:
        return False
    stored_key, server_key = _keys(password, salt, iterations)
    return hmac.compare_digest(stored_key, stored) and hmac.compare_digest(server_key, server)


# ---- what the primary holds ---------------------------------------------------------------
@dataclass(frozen=True)
class SeenRole:
    """One role as pg_authid, pg_auth_members and shobj_description show it."""

    name: str
    superuser: bool = False
    inherit: bool = True
    createrole: bool = False
    createdb: bool = False
    login: bool = False
    replication: bool = False
    bypassrls: bool = False
    connection_limit: int = -1
    # The stored verifier: not the password, but not for logs either.
    password: str | None = field(default=None, repr=False)
    # VALID UNTIL in whole seconds since the epoch; None: no expiry (NULL or 'infinity').
    valid_until: int | None = None
    comment: str | None = None
    member_of: frozenset[str] = frozenset()


@dataclass(frozen=True)
class RolesSeen:
    """The spec's roles that exist on the primary, by name; or why they could not be read."""

    roles: Mapping[str, SeenRole] = field(default_factory=dict)
    unreachable: str | None = None


# The spec's roles as the server has them (one row per existing role); {}: their names.
ROLES_QUERY = (
    "SELECT r.rolname, r.rolsuper, r.rolinherit, r.rolcreaterole, r.rolcreatedb, "
    "r.rolcanlogin, r.rolreplication, r.rolbypassrls, r.rolconnlimit, r.rolpassword, "
    # 'infinity' and NULL both mean no expiry; -infinity (never valid) counts as the epoch.
    "CASE WHEN r.rolvaliduntil IS NULL OR r.rolvaliduntil = 'infinity' THEN NULL "
    "WHEN isfinite(r.rolvaliduntil) THEN floor(extract(epoch FROM r.rolvaliduntil))::bigint "
    "ELSE 0 END, "
    "shobj_description(r.oid, 'pg_authid'), "
    "ARRAY(SELECT DISTINCT g.rolname::text FROM pg_auth_members m "
    "JOIN pg_roles g ON g.oid = m.roleid WHERE m.member = r.oid ORDER BY 1) "
    "FROM pg_authid r WHERE r.rolname IN ({}) ORDER BY 1"
)


def roles_query(names: Sequence[str]) -> Statement:
    """ROLES_QUERY for these names, each a literal."""
    return Statement(ROLES_QUERY, (join([Statement("{}", (Lit(n),)) for n in names], ", "),))


def _seen(row: Sequence[Any]) -> SeenRole:
    return SeenRole(
        name=str(row[0]),
        superuser=bool(row[1]),
        inherit=bool(row[2]),
        createrole=bool(row[3]),
        createdb=bool(row[4]),
        login=bool(row[5]),
        replication=bool(row[6]),
        bypassrls=bool(row[7]),
        connection_limit=int(row[8]),
        password=row[9],
        valid_until=int(row[10]) if row[10] is not None else None,
        comment=row[11],
        member_of=frozenset(str(x) for x in row[12] or ()),
    )


def read_roles(read_sql: Reader, target: Target, cluster: PostgresCluster) -> RolesSeen | None:
    """What the primary holds of the cluster's managed roles; None when it has none (no SQL
    then). Raises what read_sql raises (observe turns it into an unreachable state)."""
    wanted = managed_roles(cluster)
    if not wanted:
        return None
    rows = read_sql(target, "postgres", roles_query([r.name for r in wanted]))
    return RolesSeen({(seen := _seen(row)).name: seen for row in rows})


def managed_roles(cluster: PostgresCluster | None) -> list[ManagedRole]:
    if cluster is None or cluster.spec.managed is None:
        return []
    return list(cluster.spec.managed.roles)


def secret_names(cluster: PostgresCluster | None) -> set[str]:
    """The password Secrets the managed roles name (observe looks for those not opted in)."""
    return {
        r.password_secret.name
        for r in managed_roles(cluster)
        if r.password_secret is not None and r.ensure == "present"
    }


# ---- the plan -----------------------------------------------------------------------------
@dataclass(frozen=True)
class RoleDecision:
    """For one role: the state if nothing is run (or what blocks it), and what to run."""

    name: str
    state: State
    message: str | None = None
    action: RunSql | None = None
    # A problem that stays whatever the SQL does (a password Secret that cannot be used).
    blocked: str | None = None
    # The action drops the role (done: Absent).
    drops: bool = False


@dataclass(frozen=True)
class RolesPlan:
    """The decisions in the spec's order (for status); actions in the order to run them."""

    decisions: tuple[RoleDecision, ...] = ()
    actions: tuple[RunSql, ...] = ()


def _ordered(roles: list[ManagedRole]) -> list[ManagedRole]:
    """Roles that others are members of first, so that one pass creates a role and then
    grants it; a cycle (which PostgreSQL refuses anyway) keeps the spec's order."""
    by_name = {r.name: r for r in roles}
    out: list[ManagedRole] = []
    visiting: set[str] = set()

    done: set[str] = set()

    def visit(role: ManagedRole) -> None:
        if role.name in done or role.name in visiting:
            return
        visiting.add(role.name)
        for parent in role.in_roles:
            if parent in by_name:
                visit(by_name[parent])
        visiting.discard(role.name)
        done.add(role.name)
        out.append(role)

    for role in roles:
        visit(role)
    return out


_FLAGS = (
    ("superuser", "SUPERUSER"),
    ("createdb", "CREATEDB"),
    ("createrole", "CREATEROLE"),
    ("inherit", "INHERIT"),
    ("login", "LOGIN"),
    ("replication", "REPLICATION"),
    ("bypassrls", "BYPASSRLS"),
)


def _flag(keyword: str, on: bool) -> str:
    # Constant keywords only: never a value from the spec.
    return keyword if on else "NO" + keyword


def _valid_until(role: ManagedRole) -> int | None:
    return int(role.valid_until.timestamp()) if role.valid_until is not None else None


def _valid_until_literal(role: ManagedRole) -> Lit:
    when: datetime | None = role.valid_until
    return Lit(when.isoformat() if when is not None else "infinity")


def _password(
    role: ManagedRole,
    cluster_name: str,
    usable: Mapping[str, Manifest],
    unusable: frozenset[str],
) -> tuple[str | None, str | None]:
    """(the password the role should have, why the Secret cannot be used)."""
    ref = role.password_secret
    if ref is None:
        return None, None
    reference = references.Reference(
        f"spec.managed.roles[{role.name!r}].passwordSecret",
        ref.name,
        ("username", "password"),
        username=role.name,
    )
    secret = usable.get(ref.name)
    problem = references.check(cluster_name, reference, secret, exists=ref.name in unusable)
    if problem is not None or secret is None:
        return None, problem.message if problem else "no Secret"
    return references.decoded(secret, "password"), None


def _options(
    role: ManagedRole, seen: SeenRole | None, password: str | None, salt: Callable[[], bytes]
) -> tuple[list[Statement], list[str]]:
    """The CREATE/ALTER ROLE options that differ from what is seen (all for a new role),
    and what they change."""
    options: list[Statement] = []
    why: list[str] = []
    for attr, keyword in _FLAGS:
        wanted = bool(getattr(role, attr))
        if seen is None or getattr(seen, attr) != wanted:
            options.append(Statement(_flag(keyword, wanted)))
            why.append(f"{_flag(keyword, wanted)} (was {_flag(keyword, not wanted)})")
    if seen is None or seen.connection_limit != role.connection_limit:
        options.append(Statement("CONNECTION LIMIT {}", (Lit(role.connection_limit),)))
        why.append(f"connection limit {role.connection_limit}")
    if (seen.valid_until if seen else None) != _valid_until(role):
        options.append(Statement("VALID UNTIL {}", (_valid_until_literal(role),)))
        why.append("valid until " + (role.valid_until.isoformat() if role.valid_until
                                     else "no expiry"))  # fmt: skip
    if role.disable_password:
        if seen is None or seen.password is not None:
            options.append(Statement("PASSWORD NULL"))
            why.append("password removed")
    elif password is not None and (seen is None or not scram_matches(seen.password, password)):
        verifier = scram_verifier(password, salt())
        options.append(Statement("PASSWORD {}", (Lit(verifier, secret=True),)))
        why.append("password from its Secret")
    return options, why


def _memberships(role: ManagedRole, seen: SeenRole | None) -> tuple[list[Statement], list[str]]:
    """GRANT and REVOKE making the role's memberships exactly inRoles."""
    ident = Ident(role.name)
    member_of = seen.member_of if seen is not None else frozenset()
    statements: list[Statement] = []
    why: list[str] = []
    for parent in role.in_roles:
        if parent not in member_of:
            statements.append(Statement("GRANT {} TO {}", (Ident(parent), ident)))
            why.append(f"grant {parent}")
    for parent in sorted(member_of - set(role.in_roles)):
        statements.append(Statement("REVOKE {} FROM {}", (Ident(parent), ident)))
        why.append(f"revoke {parent}")
    return statements, why


def _changes(
    role: ManagedRole,
    seen: SeenRole | None,
    password: str | None,
    salt: Callable[[], bytes],
) -> tuple[list[Statement], list[str]]:
    """The statements that make the role as declared, and what they change (the reason)."""
    ident = Ident(role.name)
    statements: list[Statement] = []
    options, why = _options(role, seen, password, salt)
    if seen is None:
        statements.append(Statement("CREATE ROLE {} WITH {}", (ident, join(options))))
        why = ["create"]
    elif options:
        statements.append(Statement("ALTER ROLE {} WITH {}", (ident, join(options))))
    if (seen.comment if seen else None) != (role.comment or None):
        statements.append(Statement("COMMENT ON ROLE {} IS {}", (ident, Lit(role.comment or None))))
        why.append("comment")
    grants, granted = _memberships(role, seen)
    return statements + grants, why + granted


def plan_roles(
    cluster: PostgresCluster,
    seen: RolesSeen | None,
    target: Target | None,
    *,
    usable_secrets: Mapping[str, Manifest],
    unusable_secrets: frozenset[str] = frozenset(),
    salt: Callable[[], bytes] = lambda: os.urandom(SALT_BYTES),
) -> RolesPlan:
    """One decision per managed role (see the module docstring); pure but for salt, the
    random salt of a new password's verifier."""
    roles = managed_roles(cluster)
    decisions: list[RoleDecision] = []
    owner = cluster.spec.bootstrap.owner
    for role in _ordered(roles):
        name = role.name
        if reserved_role(name) or name == owner:
            # The API refuses these (CEL); an object stored before a rule existed is not acted on.
            decisions.append(RoleDecision(name, FAILED, f"role {name!r} is reserved: pgherd "
                                          "does not manage it"))  # fmt: skip
            continue
        password, blocked = (None, None)
        if role.ensure == "present":
            password, blocked = _password(role, cluster.metadata.name, usable_secrets,
                                          unusable_secrets)  # fmt: skip
        if seen is None or target is None:
            decisions.append(RoleDecision(name, FAILED if blocked else PENDING,
                                          blocked or "waiting for a ready primary",
                                          blocked=blocked))  # fmt: skip
            continue
        if seen.unreachable is not None:
            state = FAILED if blocked else PENDING
            decisions.append(RoleDecision(name, state, blocked or seen.unreachable,
                                          blocked=blocked))  # fmt: skip
            continue
        current = seen.roles.get(name)
        if role.ensure == "absent":
            if current is None:
                decisions.append(RoleDecision(name, ABSENT))
                continue
            drop = RunSql(f"role {name!r} has ensure: absent", group=group(name),
                          statements=(Statement("DROP ROLE {}", (Ident(name),)),),
                          target=target)  # fmt: skip
            decisions.append(RoleDecision(name, PENDING, "being dropped", drop, drops=True))
            continue
        statements, why = _changes(role, current, password, salt)
        action = None
        if statements:
            reason = f"role {name!r}: " + ", ".join(why) if why else f"role {name!r} differs"
            action = RunSql(reason, group=group(name), statements=tuple(statements),
                            target=target)  # fmt: skip
        state = FAILED if blocked else (PENDING if action else RECONCILED)
        decisions.append(RoleDecision(name, state, blocked or (
            "being changed" if action else None), action, blocked))  # fmt: skip
    actions = tuple(d.action for d in decisions if d.action is not None)
    # Status lists the roles in the spec's order.
    position = {r.name: i for i, r in enumerate(roles)}
    decisions.sort(key=lambda d: position[d.name])
    return RolesPlan(tuple(decisions), actions)


# ---- status -------------------------------------------------------------------------------
def states(
    plan: RolesPlan | None, sql_done: set[str], sql_errors: Mapping[str, str]
) -> list[ManagedRoleStatus] | None:
    """status.managedRoles: each role's decision, with what act did of its SQL."""
    if plan is None or not plan.decisions:
        return None
    out: list[ManagedRoleStatus] = []
    for d in plan.decisions:
        state, message = d.state, d.message
        if d.action is not None:
            error = sql_errors.get(d.action.group)
            if error is not None:
                state, message = FAILED, error if not d.blocked else f"{d.blocked}; {error}"
            elif d.action.group in sql_done:
                state = FAILED if d.blocked else (ABSENT if d.drops else RECONCILED)
                message = d.blocked
            # else: not run (no primary reachable): Pending, as decided.
        out.append(ManagedRoleStatus(name=d.name, state=state, message=message))
    return out


def problems(managed: Sequence[ManagedRoleStatus] | None) -> list[Problem]:
    """Degraded's problem while any managed role failed, naming each with its error."""
    failed = [s for s in managed or () if s.state == FAILED]
    if not failed:
        return []
    return [
        Problem(
            MANAGED_ROLE_FAILED,
            "managed roles not reconciled: "
            + "; ".join(f"{s.name!r}: {s.message}" for s in failed),
        )
    ]
