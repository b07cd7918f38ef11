"""PostgresPooler decisions, pure: a cluster's poolers are decided in the cluster's pass.

A PostgresPooler points at a cluster as a PostgresBackup does: it is cached in its own store,
its events queue the cluster, and the cluster's pass plans for it here and patches its status
(an action like any other). Per cluster, while at least one pooler exists:
- the `<cluster>-pooler` Secret holds the password (generated once, from `secrets`) of the
  role `pgherd_pooler`: LOGIN and nothing else;
- through the shared SQL machinery (RunSql, group `pooler:<cluster>`) the role is created or
  set back (attributes, password), and in every database that accepts connections the
  SECURITY DEFINER function `pgherd.pooler_auth(text)` that PgBouncer's auth_query calls is
  created, EXECUTE granted to that role only. PgBouncer 1.18 has no auth_dbname: auth_query
  runs in the database the client asks for, so each database needs the function (template1
  too, so a database created later has it from the start).
Per pooler: its ConfigMap, certificate Secret (signed by the cluster's CA for the pooler's
Service names), Service and Deployment, applied only when they differ; and its status.

A pooler's trouble (no such cluster, certificates not ready, a neighbour's object in the way,
the role not there yet) is its own Ready=False condition; nothing of the cluster waits on it.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from pydantic import ValidationError

from pgherd import contract
from pgherd.api.v1alpha1 import (
    POOLER_KIND,
    POOLER_USERNAME,
    RESERVED_ROLE_NAMES,
    RESERVED_ROLE_PREFIXES,
    PostgresCluster,
    PostgresPooler,
)
from pgherd.controller import certificates, references
from pgherd.controller.actions import (
    Action,
    Apply,
    Delete,
    Event,
    Involved,
    Patch,
    RunSql,
    ready_events,
)
from pgherd.controller.diff import contains, stamped
from pgherd.controller.snapshot import expected_children
from pgherd.controller.sql import Ident, Lit, Statement, Target
from pgherd.render import ownership
from pgherd.render import pooler as render

Manifest = dict[str, Any]
Generator = Callable[[], str]
Salt = Callable[[], bytes]

# Marks the function's current definition: a database whose function carries another (or
# none) gets it (re)created.
FUNCTION_MARK = "pgherd pooler auth v1"
FUNCTION_SIGNATURE = f"{contract.POOLER_AUTH_SCHEMA}.{contract.POOLER_AUTH_FUNCTION}(text)"
SCRAM_ITERATIONS = 4096

# Condition reasons of a PostgresPooler.
READY = "Ready"
CLUSTER_NOT_FOUND = "ClusterNotFound"
CLUSTER_INVALID = "ClusterInvalid"
TLS_NOT_READY = "TLSNotReady"
NO_IMAGE = "NoImage"
AUTH_NOT_READY = "AuthenticationNotReady"
CHILD_NAME_CONFLICT = "ChildNameConflict"
PODS_NOT_READY = "PodsNotReady"
SCALED_TO_ZERO = "ScaledToZero"
INVALID_SPEC = "InvalidSpec"


# ---- what observe read ------------------------------------------------------------------
@dataclass(frozen=True)
class PoolerSeen:
    """What the primary holds for the poolers: the role (its SCRAM verifier, whether it has
    exactly the attributes wanted), the databases that accept connections and those whose
    function is current; or why it could not be read."""

    role_exists: bool = False
    role_verifier: str | None = None
    role_attributes_ok: bool = False
    databases: tuple[str, ...] = ()
    functions_ok: frozenset[str] = frozenset()
    # Where the function exists at all, current or not (what the last pooler leaves behind).
    functions_present: frozenset[str] = frozenset()
    error: str | None = None

    @property
    def ready(self) -> bool:
        return (
            self.error is None
            and self.role_exists
            and self.role_attributes_ok
            and set(self.databases) <= self.functions_ok
        )


ROLE_QUERY = Statement(
    "SELECT r.rolpassword, (r.rolcanlogin AND NOT r.rolsuper AND NOT r.rolcreatedb"
    " AND NOT r.rolcreaterole AND NOT r.rolreplication AND NOT r.rolbypassrls"
    " AND NOT r.rolinherit) FROM pg_catalog.pg_authid r WHERE r.rolname = {}",
    (Lit(POOLER_USERNAME),),
)
DATABASES_QUERY = Statement(
    "SELECT datname FROM pg_catalog.pg_database WHERE datallowconn ORDER BY datname"
)
FUNCTION_QUERY = Statement(
    "SELECT f IS NOT NULL, pg_catalog.obj_description(f, 'pg_proc')"
    " FROM pg_catalog.to_regprocedure({}) AS f",
    (Lit(FUNCTION_SIGNATURE),),
)


# ---- SCRAM ------------------------------------------------------------------------------
def _hmac(key: bytes, message: bytes) -> bytes:
    return hmac.new(key, message, hashlib.sha256).digest()


def scram_verifier(password: str, salt: bytes, iterations: int = SCRAM_ITERATIONS) -> str:
    """PostgreSQL's SCRAM-SHA-256 verifier of password (RFC 5802, as pg_authid stores it).
    The generated passwords are ASCII, which SASLprep leaves as they are."""
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    stored_key = hashlib.sha256(_hmac(salted, b"Client Key")).digest()
    server_key = _hmac(salted, b"Server Key")

    def b64(b: bytes) -> str:
        return base64.b64encode(b).decode("ascii")

    return f"SCRAM-SHA-256${iterations}:{b64(salt)}${b64(stored_key)}:{b64(server_key)}"


def scram_matches(verifier: str | None, password: str) -> bool:
    """Whether a stored verifier is password's (recomputed with its own salt)."""
    try:
        method, rest = (verifier or "").split("$", 1)
        head, _ = rest.split("$", 1)
        iterations, salt = head.split(":", 1)
        if method != "SCRAM-SHA-256":
            return False
        want = scram_verifier(password, base64.b64decode(salt), int(iterations))
    except ValueError:
        return False
    return hmac.compare_digest(want, verifier or "")


# ---- statements -------------------------------------------------------------------------
_ROLE_OPTIONS = (
    "LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOINHERIT NOREPLICATION NOBYPASSRLS PASSWORD {}"
)


def role_statements(seen: PoolerSeen, password: str, salt: bytes) -> tuple[Statement, ...]:
    """Create the pooler role, or set back its attributes and password; () when it is so."""
    if seen.role_exists and seen.role_attributes_ok and scram_matches(seen.role_verifier, password):
        return ()
    verb = "ALTER" if seen.role_exists else "CREATE"
    # The verifier, never the password, reaches the server (nor its logs).
    verifier = Lit(scram_verifier(password, salt), secret=True)
    return (Statement(f"{verb} ROLE {{}} {_ROLE_OPTIONS}", (Ident(POOLER_USERNAME), verifier)),)


def function_statements() -> tuple[Statement, ...]:
    """The auth_query function of one database, and who may call it.

    SECURITY DEFINER (its owner, the superuser, may read pg_shadow; the pooler role may not),
    with search_path pinned so that no object a user creates can stand in for a catalog. It
    never returns a superuser, a replication role or pgherd's own roles: those cannot log in
    through the pooler."""
    schema, role = Ident(contract.POOLER_AUTH_SCHEMA), Ident(POOLER_USERNAME)
    function = Ident(contract.POOLER_AUTH_SCHEMA, contract.POOLER_AUTH_FUNCTION)
    # The names spec.managed.roles may not take either (PostgreSQL's and pgherd's).
    excluded = ", ".join(f"'{r}'" for r in RESERVED_ROLE_NAMES)
    prefixes = "|".join(RESERVED_ROLE_PREFIXES)
    body = (
        "SELECT s.usename, s.passwd FROM pg_catalog.pg_shadow s WHERE s.usename = p_usename"  # noqa: S608 - constants only
        " AND NOT s.usesuper AND NOT s.userepl"
        f" AND s.usename NOT IN ({excluded}) AND s.usename !~ '^({prefixes})'"
        " AND (s.valuntil IS NULL OR s.valuntil > pg_catalog.now())"
    )
    return (
        Statement("CREATE SCHEMA IF NOT EXISTS {}", (schema,)),
        Statement("GRANT USAGE ON SCHEMA {} TO {}", (schema, role)),
        Statement(
            "CREATE OR REPLACE FUNCTION {}(p_usename text, OUT usename name, OUT passwd text)"
            " RETURNS SETOF record LANGUAGE sql STABLE SECURITY DEFINER"
            " SET search_path = pg_catalog, pg_temp AS $pgherd$ " + body + " $pgherd$",
            (function,),
        ),
        Statement("REVOKE ALL ON FUNCTION {}(text) FROM PUBLIC", (function,)),
        Statement("GRANT EXECUTE ON FUNCTION {}(text) TO {}", (function, role)),
        Statement("COMMENT ON FUNCTION {}(text) IS {}", (function, Lit(FUNCTION_MARK))),
    )


def cleanup_statements(role_exists: bool) -> tuple[Statement, ...]:
    """Undo function_statements in one database: the function and the role's use of the
    schema (the schema stays: it may hold what others put there)."""
    function = Ident(contract.POOLER_AUTH_SCHEMA, contract.POOLER_AUTH_FUNCTION)
    drop = Statement("DROP FUNCTION IF EXISTS {}(text)", (function,))
    if not role_exists:
        return (drop,)
    revoke = Statement(
        "REVOKE ALL ON SCHEMA {} FROM {}",
        (Ident(contract.POOLER_AUTH_SCHEMA), Ident(POOLER_USERNAME)),
    )
    return (drop, revoke)


def plan_cleanup(inputs: Inputs) -> list[Action]:
    """Once a cluster has no pooler left: its auth_query functions, then its role, then the
    Secret of the role's password, each when what depends on it is gone (a LOGIN role with
    a password nobody uses is not left behind). Only the Secret the cluster owns says there
    is something of pgherd's to take away."""
    cluster, seen = inputs.cluster, inputs.seen
    if cluster is None or inputs.cluster_problem is not None:
        return []
    name = render.auth_secret(cluster.metadata.name)
    live = inputs.children.get(("Secret", name))
    if live is None or not ownership.owns(cluster, "Secret", live):
        return []
    if seen is None or seen.error is not None or inputs.target is None:
        return []
    group = f"pooler:{cluster.metadata.name}"
    actions: list[Action] = [
        RunSql(f"no pooler is left: drop the auth_query function in {db}", group=group,
               database=db, statements=cleanup_statements(seen.role_exists),
               target=inputs.target)
        for db in sorted(seen.functions_present)
    ]  # fmt: skip
    if seen.role_exists:
        actions.append(RunSql(f"no pooler is left: drop the role {POOLER_USERNAME}", group=group,
                              database="postgres", target=inputs.target, statements=(
            Statement("DROP ROLE IF EXISTS {}", (Ident(POOLER_USERNAME),)),)))  # fmt: skip
    elif not seen.functions_present:
        uid = (live.get("metadata") or {}).get("uid")
        actions.append(Delete(f"no pooler is left: the password of {POOLER_USERNAME}, a role "
                              "that is gone", kind="Secret", name=name, uid=uid))  # fmt: skip
    return actions


def plan_sql(
    cluster: str, seen: PoolerSeen | None, target: Target | None, password: str, salt: bytes
) -> list[Action]:
    """The role first (on postgres), then the function where it is missing or old."""
    if seen is None or seen.error is not None or target is None:
        return []
    group = f"pooler:{cluster}"
    actions: list[Action] = []
    if statements := role_statements(seen, password, salt):
        verb = "set back" if seen.role_exists else "create"
        why = f"{verb} the pooler role {POOLER_USERNAME}"
        actions.append(RunSql(why, group=group, database="postgres", statements=statements,
                              target=target))  # fmt: skip
    for db in seen.databases:
        if db not in seen.functions_ok:
            actions.append(
                RunSql(f"the pooler's auth_query function in {db}", group=group, database=db,
                       statements=function_statements(), target=target)
            )  # fmt: skip
    return actions


# ---- parsing and ownership --------------------------------------------------------------
def parse(raw: Manifest) -> PostgresPooler | str:
    try:
        return PostgresPooler.model_validate(raw)
    except ValidationError as e:
        parts = [
            f"{'.'.join(str(x) for x in err['loc'])}: {err['msg']}"
            for err in e.errors(include_input=False, include_url=False)
        ]
        return ("the spec is invalid: " + "; ".join(parts))[:2000]


def owns(pooler: PostgresPooler, live: Manifest) -> bool:
    """A pooler's child: pgherd's labels for its cluster and the pooler as controller."""
    if not ownership.labelled_for(live, pooler.spec.cluster):
        return False
    refs = live.get("metadata", {}).get("ownerReferences") or []
    controller = next((r for r in refs if r.get("controller")), None)
    return controller is not None and controller.get("uid") == pooler.metadata.uid


# ---- status -----------------------------------------------------------------------------
def condition(
    stored: Mapping[str, Any] | None,
    *,
    ok: bool,
    reason: str,
    message: str,
    now: datetime,
    generation: int | None,
) -> dict[str, Any]:
    status = "True" if ok else "False"
    previous = next(
        (c for c in (stored or {}).get("conditions") or [] if c.get("type") == "Ready"), None
    )
    since = (
        previous["lastTransitionTime"]
        if previous and previous.get("status") == status and previous.get("lastTransitionTime")
        else now.strftime("%Y-%m-%dT%H:%M:%SZ")
    )
    return {
        "type": "Ready",
        "status": status,
        "reason": reason,
        "message": message,
        "lastTransitionTime": since,
        "observedGeneration": generation,
    }


def status_patch(
    raw: Manifest, now: datetime, reason: str, message: str, *, extra: Mapping[str, Any]
) -> Patch | None:
    """The pooler's status as a Patch, or None when it already says so."""
    stored = raw.get("status") or {}
    generation = raw["metadata"].get("generation")
    ready = condition(stored, ok=reason in (READY, SCALED_TO_ZERO), reason=reason,
                      message=message, now=now, generation=generation)  # fmt: skip
    want = {**extra, "observedGeneration": generation, "conditions": [ready]}
    if contains(stored, want):
        return None
    return Patch(message, kind=POOLER_KIND, name=raw["metadata"]["name"],
                 body={"status": want}, subresource="status")  # fmt: skip


def _pods_reason(pooler: PostgresPooler, deployment: Manifest | None) -> tuple[str, str, int, int]:
    status = (deployment or {}).get("status") or {}
    have, ready = int(status.get("replicas") or 0), int(status.get("readyReplicas") or 0)
    want = pooler.spec.instances
    if want == 0:
        return SCALED_TO_ZERO, "spec.instances is 0: no PgBouncer pod runs", have, ready
    if ready < want:
        return PODS_NOT_READY, f"{ready} of {want} PgBouncer pods ready", have, ready
    service = render.target_service(pooler)
    return READY, f"{ready} PgBouncer pods ready, serving {service}", have, ready


# ---- the cluster's poolers --------------------------------------------------------------
@dataclass(frozen=True)
class Inputs:
    """What the cluster's pass settled on that the poolers need."""

    cluster: PostgresCluster | None
    children: Mapping[tuple[str, str], Manifest]
    poolers: Sequence[Manifest]
    seen: PoolerSeen | None
    target: Target | None
    now: datetime
    image: str | None = None
    tls: certificates.Outcome | None = None
    policy: certificates.Policy = field(default_factory=certificates.Policy)
    cluster_problem: tuple[str, str] | None = None  # (reason, message): the cluster is not usable


def _auth(
    cluster: PostgresCluster, children: Mapping[tuple[str, str], Manifest], new_password: Generator
) -> tuple[str | None, list[Action], str | None]:
    """The pooler role's password as stored (None until the Secret is cached), the apply
    that creates the Secret, or why it cannot be used (a neighbour's of that name)."""
    name = render.auth_secret(cluster.metadata.name)
    live = children.get(("Secret", name))
    if live is None:
        return None, [Apply("the pooler role's password", manifest=stamped(
            render.render_auth_secret(cluster, new_password())))], None  # fmt: skip
    if not ownership.owns(cluster, "Secret", live):
        return (
            None,
            [],
            (
                f"Secret {name!r} exists but is not the cluster's; pgherd keeps the pooler role's "
                "password there: rename or remove it"
            ),
        )
    password = references.decoded(live, "password")
    return password or None, [], None


def _children(
    pooler: PostgresPooler, inputs: Inputs, mint: certificates.Mint
) -> tuple[list[Action], str | None, str | None]:
    """The pooler's applies, and (reason, message) of what holds it back, if anything."""
    name, ns = pooler.metadata.name, pooler.metadata.namespace
    children = inputs.children
    tls = inputs.tls
    actions: list[Action] = []
    data: dict[str, str] | None = None
    if tls is not None and tls.ca is not None and tls.server_trust:
        stored_secret = children.get(("Secret", render.tls_secret(name)))
        stored = (
            certificates.decode(stored_secret)
            if stored_secret is not None and owns(pooler, stored_secret)
            else {}
        )
        pair, issued = certificates.issue_pooler(
            stored, tls.ca, common_name=name, dns_names=render.service_names(name, ns),
            now=inputs.now, policy=inputs.policy, mint=mint,
        )  # fmt: skip
        if issued is not None:
            actions.append(Event(issued[0], message=issued[1]))
        data = {
            contract.TLS_CERT: pair.cert_pem,
            contract.TLS_KEY: pair.key_pem,
            contract.TLS_CA: tls.ca[certificates.TRUST],
            contract.POOLER_SERVER_CA: tls.server_trust,
        }
    rendered = render.render_pooler(pooler, inputs.image, data)
    # A name the cluster's own children take is never the pooler's, even before the cluster
    # made it (a pooler named <cluster>-rw would otherwise hold the cluster's Service).
    theirs = set(expected_children(pooler.spec.cluster))
    theirs.add(("Secret", render.auth_secret(pooler.spec.cluster)))
    for desired in rendered:
        kind, child = desired["kind"], desired["metadata"]["name"]
        live = children.get((kind, child))
        if (kind, child) in theirs:
            return (
                [],
                CHILD_NAME_CONFLICT,
                (
                    f"{kind} {child!r} is a name of PostgresCluster {pooler.spec.cluster!r}'s own "
                    "objects: give the pooler another name"
                ),
            )
        if live is not None and not owns(pooler, live):
            return (
                [],
                CHILD_NAME_CONFLICT,
                (
                    f"{kind} {child!r} exists but is not this pooler's; pgherd leaves it "
                    "untouched: rename or remove it, or give the pooler another name"
                ),
            )
        want = stamped(desired)
        if live is not None and contains(live, want):
            continue
        if live is None:
            actions.append(Apply("missing", manifest=want))
        else:
            version = str(live["metadata"].get("resourceVersion"))
            actions.append(Apply("changed", manifest=want, resource_version=version))
    if data is None:
        return (
            actions,
            TLS_NOT_READY,
            ("the cluster's certificate authority is not ready yet; the pooler starts once it is"),
        )
    if inputs.image is None:
        return actions, NO_IMAGE, "no operand image is known for the cluster yet"
    return actions, None, None


def _confirmed(raw: Manifest) -> bool:
    """Whether a past pass found the pooler's authentication in place (its Ready reason went
    past it): a primary that cannot be read for a moment (a failover) does not undo that."""
    stored = (raw.get("status") or {}).get("conditions") or []
    ready: dict[str, Any] = next((c for c in stored if c.get("type") == "Ready"), {})
    return ready.get("reason") in (READY, PODS_NOT_READY, SCALED_TO_ZERO)


def _one(
    raw: Manifest,
    pooler: PostgresPooler,
    inputs: Inputs,
    auth_problem: str | None,
    mint: certificates.Mint,
) -> tuple[list[Action], str, str, dict[str, Any]]:
    """One pooler of an existing cluster: its applies, its Ready reason and message (the
    first thing that holds it back), and the rest of its status."""
    actions, held, held_message = _children(pooler, inputs, mint)
    deployment = inputs.children.get(("Deployment", pooler.metadata.name))
    pods, pods_message, have, ready = _pods_reason(pooler, deployment)
    extra = {
        "instances": have,
        "readyInstances": ready,
        "service": pooler.metadata.name,
        "paused": pooler.spec.paused,
    }
    if held is not None:
        return actions, held, held_message or "", extra
    if auth_problem is not None:
        return actions, AUTH_NOT_READY, auth_problem, extra
    unknown = inputs.seen is None or inputs.seen.error is not None
    if (unknown and not _confirmed(raw)) or (inputs.seen is not None and not inputs.seen.ready
                                             and inputs.seen.error is None):  # fmt: skip
        why = (inputs.seen.error if inputs.seen is not None else None) or (
            "waiting for the primary" if inputs.target is None
            else f"creating the role {POOLER_USERNAME} and its auth_query function"
        )  # fmt: skip
        return actions, AUTH_NOT_READY, f"authentication not ready: {why}", extra
    return actions, pods, pods_message, extra


def plan_poolers(
    inputs: Inputs,
    new_password: Generator,
    mint: certificates.Mint | None = None,
    salt: Salt = lambda: secrets.token_bytes(16),
) -> list[Action]:
    """Every action for a cluster's poolers: the role and its function, each pooler's
    children, and each pooler's status."""
    if not inputs.poolers:
        return plan_cleanup(inputs)
    mint = mint or certificates.Mint()
    actions: list[Action] = []
    patches: list[Action] = []
    cluster = inputs.cluster
    auth_problem: str | None = None
    if cluster is not None and inputs.cluster_problem is None:
        password, auth_actions, auth_problem = _auth(cluster, inputs.children, new_password)
        actions += auth_actions
        if password is None and auth_problem is None:
            auth_problem = f"creating the Secret of the role {POOLER_USERNAME}'s password"
        if password is not None:
            actions += plan_sql(cluster.metadata.name, inputs.seen, inputs.target, password,
                                salt())  # fmt: skip
    for raw in inputs.poolers:
        parsed = parse(raw)
        extra: dict[str, Any] = {}
        if isinstance(parsed, str):
            reason, message = INVALID_SPEC, parsed
        elif cluster is None or inputs.cluster_problem is not None:
            reason, message = inputs.cluster_problem or (
                CLUSTER_NOT_FOUND,
                f"PostgresCluster {parsed.spec.cluster!r} does not exist in "
                f"{parsed.metadata.namespace}",
            )
        else:
            child_actions, reason, message, extra = _one(raw, parsed, inputs, auth_problem, mint)
            actions += child_actions
        patch = status_patch(raw, inputs.now, reason, message, extra=extra)
        if patch is not None:
            patches.append(patch)
            patches += events_of(raw, patch)
    return actions + patches


# Ready False on a normal way to ready: no warning unless it takes a Ready away.
PROGRESS = frozenset({TLS_NOT_READY, NO_IMAGE, AUTH_NOT_READY, PODS_NOT_READY})


def events_of(raw: Manifest, patch: Patch) -> list[Event]:
    """The Event on the pooler itself that its status patch is worth: from the stored Ready
    condition to the one written (actions.ready_events)."""
    meta = raw.get("metadata") or {}
    stored = (raw.get("status") or {}).get("conditions") or []
    before = next((x for x in stored if x.get("type") == "Ready"), None)
    after = patch.body["status"]["conditions"][0]
    involved = Involved(POOLER_KIND, str(meta.get("name")), meta.get("uid"))
    return ready_events(involved, before, after, PROGRESS)


def policy_from(lifetime_ca: float, lifetime: float, fraction: float) -> certificates.Policy:
    return certificates.Policy(
        ca_lifetime=timedelta(seconds=lifetime_ca),
        certificate_lifetime=timedelta(seconds=lifetime),
        renew_fraction=fraction,
    )


def wants_sql(
    poolers: Sequence[Manifest], cluster: str, children: Mapping[tuple[str, str], Manifest]
) -> bool:
    """Whether the cluster's database needs reading for its poolers: while it has one, and
    while what the last one left (its role's password Secret) is still there."""
    return bool(poolers) or ("Secret", render.auth_secret(cluster)) in children
