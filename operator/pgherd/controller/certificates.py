"""The cluster's certificates: which to keep, renew or issue; pure but for the keys it mints.

By default every cluster has its own certificate authority, in the `<cluster>-ca` Secret
(the operator's alone; its key never reaches a pod or a log). The CA issues the server
certificate (every name of the cluster's Services and pods) and the replication role's client
certificate; both go, with the CA bundles, into `<cluster>-tls`, which the instances mount.
With spec.tls.serverSecret the user's certificate serves instead (for example cert-manager's),
checked before use; the cluster's CA still signs the replication certificate, and only it is
trusted for client certificates, so a certificate from a CA shared with other applications
never logs in as the replication role.

Renewal, on the clock of each pass (level-based, so a renewal happens within one resync):
- a certificate is reissued at Policy.renew_fraction of its lifetime (two thirds by default),
  or at once when it is missing, malformed, not from the active CA or short of a name;
- the CA rotates with an overlap: at renew_fraction of its life a next CA is made and trusted
  (the bundles hold both), at `promote_at` it becomes the issuing CA and the certificates are
  reissued by it; the old CA stays trusted until it expires. Clients that re-read ca.crt
  during the overlap never see a certificate they cannot verify.

Same stored Secrets, same clock, same outcome, apart from the randomness of new keys (the
Mint): a pass that renews nothing returns the stored data unchanged, so nothing is written.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from pgherd import contract, pki
from pgherd.api.v1alpha1 import REPLICATION_USERNAME, PostgresCluster, TlsStatus
from pgherd.controller import conditions as c
from pgherd.controller.conditions import Problem
from pgherd.render import names

Manifest = dict[str, Any]

# Keys of <cluster>-ca: the issuing CA, the next one during a rotation, and every CA trusted.
CA_CERT, CA_KEY = "ca.crt", "ca.key"
NEXT_CERT, NEXT_KEY = "next.crt", "next.key"
TRUST = "trust.crt"


@dataclass(frozen=True)
class Policy:
    """Lifetimes and when to renew (the operator's settings)."""

    ca_lifetime: timedelta = timedelta(days=5 * 365)
    certificate_lifetime: timedelta = timedelta(days=90)
    renew_fraction: float = 2 / 3

    @property
    def promote_fraction(self) -> float:
        # Halfway between making the next CA and the active one's expiry.
        return (1 + self.renew_fraction) / 2


class Mint:
    """Makes keys and certificates (pgherd.pki): the only impure part of the decisions, kept
    behind one object so that a test can count or replace what is minted."""

    def ca(self, common_name: str, *, now: datetime, lifetime: timedelta) -> pki.KeyPair:
        return pki.new_ca(common_name, now=now, lifetime=lifetime)

    def issue(
        self,
        ca: pki.KeyPair,
        *,
        common_name: str,
        dns_names: Sequence[str],
        now: datetime,
        lifetime: timedelta,
        client: bool,
    ) -> pki.KeyPair:
        return pki.issue(ca, common_name=common_name, dns_names=dns_names, now=now,
                         lifetime=lifetime, client=client)  # fmt: skip


@dataclass(frozen=True)
class Outcome:
    """What the pass settles on: the data of `<cluster>-ca` and `<cluster>-tls` (None: not
    possible yet, the instances must wait), the bundle clients verify the server with, what
    was issued and why (Events), problems, and the status."""

    ca: dict[str, str] | None = field(default=None, repr=False)
    tls: dict[str, str] | None = field(default=None, repr=False)
    server_trust: str | None = field(default=None, repr=False)
    issued: tuple[tuple[str, str], ...] = ()  # (reason, message)
    problems: tuple[Problem, ...] = ()
    status: TlsStatus | None = None


def _when(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def decode(secret: Manifest | None) -> dict[str, str]:
    """A Secret's data as text (empty for None)."""
    data = (secret or {}).get("data") or {}
    return {k: base64.b64decode(v).decode(errors="replace") for k, v in data.items() if v}


def _pair(data: Mapping[str, str], cert: str, key: str, now: datetime) -> pki.KeyPair | None:
    """The stored pair when it is usable: both parse, they match, not expired."""
    if not data.get(cert) or not data.get(key):
        return None
    try:
        info = pki.inspect(data[cert])
        pki.check_key(data[cert], data[key])
    except pki.PkiError:
        return None
    return None if pki.expired(info, now) else pki.KeyPair(data[cert], data[key])


def _trusted(pem: str, now: datetime) -> str:
    try:
        return pki.drop_expired(pem, now) if pem else ""
    except pki.PkiError:
        return ""


def plan_ca(
    stored: Mapping[str, str], cluster: str, now: datetime, policy: Policy, mint: Mint
) -> tuple[dict[str, str], pki.KeyPair, list[tuple[str, str]]]:
    """The CA Secret's data, the issuing CA, and what was made (see the module docstring)."""
    issued: list[tuple[str, str]] = []
    active = _pair(stored, CA_CERT, CA_KEY, now)
    nxt = _pair(stored, NEXT_CERT, NEXT_KEY, now)
    old_trust = _trusted(stored.get(TRUST, ""), now)

    def make() -> pki.KeyPair:
        return mint.ca(f"{cluster} CA", now=now, lifetime=policy.ca_lifetime)

    if active is None:
        why = "the stored one is expired or unusable" if stored.get(CA_CERT) else "none yet"
        active, nxt = make(), None
        issued.append(("CertificateAuthorityCreated", f"created the cluster's CA ({why})"))
    else:
        info = pki.inspect(active.cert_pem)
        promote_at = info.not_before + policy.promote_fraction * (info.not_after - info.not_before)
        if nxt is not None and now >= promote_at:
            active, nxt = nxt, None
            issued.append(("CertificateAuthorityRotated", "the next CA issues from now on; "
                           "the previous one stays trusted until it expires"))  # fmt: skip
        elif nxt is None and pki.due(info, now, policy.renew_fraction):
            nxt = make()
            message = (
                "made the next CA: trusted from now on beside the current one, it issues "
                f"from {_when(promote_at)}"
            )
            issued.append(("CertificateAuthorityRenewing", message))
    trust = pki.bundle(active.cert_pem, nxt.cert_pem if nxt else "", old_trust)
    data = {CA_CERT: active.cert_pem, CA_KEY: active.key_pem, TRUST: trust}
    if nxt is not None:
        data |= {NEXT_CERT: nxt.cert_pem, NEXT_KEY: nxt.key_pem}
    return data, active, issued


def _leaf_problem(
    pair: pki.KeyPair | None, ca: pki.KeyPair, names_: Sequence[str], now: datetime, fraction: float
) -> str | None:
    """Why a stored certificate of ours must be reissued, or None to keep it."""
    if pair is None:
        return "none yet"
    info = pki.inspect(pair.cert_pem)
    if not pki.signed_by(pair.cert_pem, ca.cert_pem):
        return "the issuing CA changed"
    if missing := pki.missing_names(info, names_):
        return f"it does not cover {', '.join(missing[:3])}"
    if pki.due(info, now, fraction):
        return f"{fraction:.0%} of its lifetime passed; it expires {_when(info.not_after)}"
    return None


def _issue(
    stored: Mapping[str, str],
    keys: tuple[str, str],
    what: str,
    ca: pki.KeyPair,
    mint: Mint,
    *,
    common_name: str,
    dns_names: Sequence[str],
    client: bool,
    now: datetime,
    policy: Policy,
    issued: list[tuple[str, str]],
) -> pki.KeyPair:
    current = _pair(stored, *keys, now)
    why = _leaf_problem(current, ca, dns_names, now, policy.renew_fraction)
    if current is not None and why is None:
        return current
    issued.append(("CertificateIssued", f"issued the {what} certificate ({why})"))
    return mint.issue(ca, common_name=common_name, dns_names=dns_names, now=now,
                      lifetime=policy.certificate_lifetime, client=client)  # fmt: skip


def check_user_certificate(  # noqa: PLR0911 - one return per check, in the order a user fixes them
    field_name: str, server: Mapping[str, str], ca_bundle: str, names_: Sequence[str], now: datetime
) -> str | None:
    """Why the user's server certificate cannot serve, or None."""
    try:
        chain = pki.inspect_all(server.get(contract.TLS_CERT, ""))
        pki.check_key(server[contract.TLS_CERT], server.get(contract.TLS_KEY, ""))
    except pki.PkiError as e:
        return f"{field_name}: {e}"
    leaf = chain[0]
    if pki.expired(leaf, now):
        return f"{field_name}: the certificate expired at {_when(leaf.not_after)}"
    if missing := pki.missing_names(leaf, names_):
        more = f" and {len(missing) - 4} more" if len(missing) > 4 else ""
        shown = ", ".join(missing[:4]) + more
        return f"{field_name}: the certificate's names do not cover {shown}"
    if not ca_bundle:
        return f"{field_name}: no CA to give clients: add ca.crt or set spec.tls.caSecret"
    try:
        verified = pki.signed_by(leaf.pem, pki.bundle(ca_bundle, *(i.pem for i in chain[1:])))
    except pki.PkiError as e:
        return f"{field_name}: ca.crt: {e}"
    if not verified:
        return f"{field_name}: the certificate is not signed by the CA given (ca.crt)"
    return None


def _renew_at(pairs: Sequence[pki.KeyPair], fraction: float) -> datetime | None:
    times = []
    for pair in pairs:
        info = pki.inspect(pair.cert_pem)
        times.append(info.not_before + fraction * (info.not_after - info.not_before))
    return min(times) if times else None


def plan_tls(
    cluster: PostgresCluster,
    stored_ca: Manifest | None,
    stored_tls: Manifest | None,
    user_secrets: Mapping[str, Manifest],
    *,
    refused: bool,
    now: datetime,
    policy: Policy,
    mint: Mint,
) -> Outcome:
    """The certificates of one pass. stored_*: the cluster's own Secrets (or None);
    user_secrets: the opted-in Secrets by name; refused: a Secret spec.tls names cannot be
    used (the reference check says why), so the instances keep what they have."""
    name, namespace = cluster.metadata.name, cluster.metadata.namespace
    spec = cluster.spec.tls
    issued: list[tuple[str, str]] = []
    ca_data, ca, ca_issued = plan_ca(decode(stored_ca), name, now, policy, mint)
    issued += ca_issued
    trust = ca_data[TRUST]
    stored = decode(stored_tls)
    dns_names = names.server_names(name, namespace)
    replication = _issue(
        stored, (contract.TLS_REPLICATION_CERT, contract.TLS_REPLICATION_KEY), "replication",
        ca, mint, common_name=REPLICATION_USERNAME, dns_names=(), client=True, now=now,
        policy=policy, issued=issued,
    )  # fmt: skip
    problems: list[Problem] = []
    mine: list[pki.KeyPair] = [replication]
    if spec.server_secret is None:
        server: pki.KeyPair | None = _issue(
            stored, (contract.TLS_CERT, contract.TLS_KEY), "server", ca, mint,
            common_name=names.service_rw(name), dns_names=dns_names, client=False, now=now,
            policy=policy, issued=issued,
        )  # fmt: skip
        assert server is not None  # noqa: S101 - issued when not kept
        mine.append(server)
        server_trust: str | None = trust
    else:
        user = decode(user_secrets.get(spec.server_secret.name))
        ca_name = spec.ca_secret.name if spec.ca_secret else None
        user_ca = decode(user_secrets.get(ca_name)).get(contract.TLS_CA, "") if ca_name else ""
        user_ca = user_ca or user.get(contract.TLS_CA, "")
        why = None if refused else check_user_certificate(
            f"spec.tls.serverSecret {spec.server_secret.name!r}", user, user_ca, dns_names, now
        )  # fmt: skip
        if refused or why is not None:
            if why is not None:
                problems.append(Problem(c.TLS_CERTIFICATE_INVALID, why + "; the instances keep "
                                        "the certificate they have"))  # fmt: skip
            # Keep serving on what the instances have, if anything.
            server = _pair(stored, contract.TLS_CERT, contract.TLS_KEY, now)
            server_trust = stored.get(contract.TLS_CA) or None
        else:
            server = pki.KeyPair(user[contract.TLS_CERT], user[contract.TLS_KEY])
            server_trust = user_ca
    tls: dict[str, str] | None = None
    if server is not None and server_trust:
        tls = {
            contract.TLS_CERT: server.cert_pem,
            contract.TLS_KEY: server.key_pem,
            contract.TLS_CA: server_trust,
            contract.TLS_CLIENT_CA: trust,
            contract.TLS_REPLICATION_CERT: replication.cert_pem,
            contract.TLS_REPLICATION_KEY: replication.key_pem,
        }
    status = TlsStatus(
        source="operator" if spec.server_secret is None else "user",
        server_not_after=pki.inspect(server.cert_pem).not_after if server else None,
        ca_not_after=pki.inspect(ca.cert_pem).not_after,
        replication_not_after=pki.inspect(replication.cert_pem).not_after,
        renew_at=_renew_at([*mine, ca], policy.renew_fraction),
    )
    return Outcome(ca_data, tls, server_trust, tuple(issued), tuple(problems), status)


# ---- PostgresPooler ---------------------------------------------------------------------
def issue_pooler(
    stored: Mapping[str, str],
    ca_data: Mapping[str, str],
    *,
    common_name: str,
    dns_names: Sequence[str],
    now: datetime,
    policy: Policy,
    mint: Mint,
) -> tuple[pki.KeyPair, tuple[str, str] | None]:
    """A pooler's certificate for its Service names, signed by the cluster's issuing CA:
    the stored one while it is good (same rules as the server's), else a new one, with the
    Event that says why."""
    ca = pki.KeyPair(ca_data[CA_CERT], ca_data[CA_KEY])
    issued: list[tuple[str, str]] = []
    pair = _issue(
        stored, (contract.TLS_CERT, contract.TLS_KEY), f"pooler {common_name}", ca, mint,
        common_name=common_name, dns_names=dns_names, client=False, now=now, policy=policy,
        issued=issued,
    )  # fmt: skip
    return pair, (issued[0] if issued else None)
