"""SQL as plain values: what plans ask PostgreSQL to do, and how the operator reaches it.

A plan is pure, so the statements it decides on (managed roles, databases, the pooler's
authentication function) are immutable values: a template with `{}` placeholders and its
arguments, identifiers and literals kept apart. Only act turns them into SQL, with psycopg's
`sql` module quoting each argument (pgherd.controller.postgres.compose); nothing here formats
a name or a value into a string, so a hostile role name stays one identifier. `shown()` gives a
readable text for logs, status and tests, with secret literals masked.

`target(snapshot)` says how to reach the cluster's primary as the superuser: its advertised
address, the superuser password kept in the vault, and the cluster's CA to verify the server
with. No psycopg import here: a cluster that uses none of this never loads libpq.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pgherd.api.v1alpha1 import SUPERUSER_USERNAME
from pgherd.contract import TLS_CA
from pgherd.controller import credentials, references
from pgherd.render import names, ownership

Manifest = dict[str, Any]

if TYPE_CHECKING:
    from pgherd.controller.snapshot import Snapshot


@dataclass(frozen=True, init=False)
class Ident:
    """An identifier; several parts make a qualified one (schema.name)."""

    parts: tuple[str, ...]

    def __init__(self, *parts: str) -> None:
        if not parts or not all(isinstance(p, str) and p for p in parts):
            raise ValueError("an identifier needs non-empty string parts")
        object.__setattr__(self, "parts", tuple(parts))

    def shown(self) -> str:
        return ".".join('"' + p.replace('"', '""') + '"' for p in self.parts)


@dataclass(frozen=True)
class Lit:
    """A literal value (str, int, bool or None); a secret one is never shown."""

    value: str | int | bool | None
    secret: bool = field(default=False)

    def __repr__(self) -> str:
        return "Lit('***')" if self.secret else f"Lit({self.value!r})"

    def shown(self) -> str:
        if self.secret:
            return "'***'"
        if self.value is None:
            return "NULL"
        if isinstance(self.value, bool):
            return "true" if self.value else "false"
        if isinstance(self.value, int):
            return str(self.value)
        return "'" + self.value.replace("'", "''") + "'"


@dataclass(frozen=True)
class Statement:
    """A template with one `{}` per argument; an argument may itself be a Statement (a
    fragment such as an option list), composed in place."""

    template: str
    args: tuple[Ident | Lit | Statement, ...] = ()

    def __post_init__(self) -> None:
        if self.template.count("{}") != len(self.args):
            raise ValueError(f"{self.template!r} has not one placeholder per argument")
        if "{" in self.template.replace("{}", ""):
            raise ValueError(f"{self.template!r}: only plain {{}} placeholders are allowed")

    def shown(self) -> str:
        pieces = self.template.split("{}")
        out = [pieces[0]]
        for arg, rest in zip(self.args, pieces[1:], strict=True):
            out.append(arg.shown())
            out.append(rest)
        return "".join(out)


def join(fragments: list[Statement], separator: str = " ") -> Statement:
    """One Statement made of fragments, separated by separator (a constant)."""
    if "{" in separator or "}" in separator:
        raise ValueError("a separator holds no placeholders")
    return Statement(separator.join("{}" for _ in fragments), tuple(fragments))


@dataclass(frozen=True)
class Target:
    """The primary, reached as the superuser over TLS verified against the cluster's CA."""

    conn_url: str
    # Tried in order (a superuser rotation cut short may have changed the superuser's).
    superuser_passwords: tuple[str, ...] = field(repr=False)
    cadata: str = field(repr=False)
    # Who logs in: the superuser, but for a rehearsal's check (the application owner, with
    # the owner's password in superuser_passwords).
    user: str = SUPERUSER_USERNAME


# (target, database, query) -> rows; raises pgherd.controller.postgres.PostgresError.
Reader = Callable[[Target, str, Statement], list[tuple[Any, ...]]]


def target(snapshot: Snapshot) -> Target | None:
    """How to reach the ready primary, or None while there is none, or no vault or CA yet."""
    cluster, primary = snapshot.cluster, snapshot.primary
    if cluster is None or primary is None or not primary.ready or not primary.conn_url:
        return None

    def own(name: str) -> Manifest | None:
        secret = snapshot.child("Secret", name)
        # A neighbour's Secret with the child's name is never trusted.
        return secret if secret is not None and ownership.owns(cluster, "Secret", secret) else None

    vault = own(names.vault(snapshot.name))
    tls = own(names.tls_secret(snapshot.name))
    password = credentials.kept(vault, None, "superuser")
    cadata = references.decoded(tls, TLS_CA) if tls is not None else None
    if not password or not cadata:
        return None
    passwords: tuple[str, ...] = (password,)
    pending = credentials.rotation(vault, "superuser").pending if vault is not None else None
    if pending and pending != password:
        passwords += (pending,)
    return Target(primary.conn_url, passwords, cadata)


def owner_target(snapshot: Snapshot) -> Target | None:
    """As target, but logged in as the application owner (spec.bootstrap.owner) with its
    password: the rehearsal's check runs with the owner's rights, never the superuser's."""
    found = target(snapshot)
    vault = snapshot.child("Secret", names.vault(snapshot.name))
    password = credentials.kept(vault, None, "app") if vault is not None else None
    if found is None or snapshot.cluster is None or not password:
        return None
    return Target(found.conn_url, (password,), found.cadata,
                  user=snapshot.cluster.spec.bootstrap.owner)  # fmt: skip
