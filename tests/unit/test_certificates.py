"""The certificate decisions (pgherd.controller.certificates), table-driven, on real keys and
certificates (EC keys are cheap) and a clock that is moved by hand."""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from pgherd import contract, pki
from pgherd.api.v1alpha1 import PostgresCluster
from pgherd.controller import certificates as certs
from pgherd.controller import conditions as c
from pgherd.render import names

T0 = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
POLICY = certs.Policy(
    ca_lifetime=timedelta(hours=60), certificate_lifetime=timedelta(hours=6), renew_fraction=2 / 3
)
MINT = certs.Mint()
CLUSTER = PostgresCluster.model_validate({"metadata": {"name": "pg", "namespace": "team"}})
NAMES = names.server_names("pg", "team")


def _secret(data: dict[str, str], name: str = "s", **meta: Any) -> dict[str, Any]:
    encoded = {k: base64.b64encode(v.encode()).decode() for k, v in data.items()}
    return {"metadata": {"name": name, **meta}, "data": encoded}


def _with_tls(spec: dict[str, Any]) -> PostgresCluster:
    return PostgresCluster.model_validate(
        {"metadata": {"name": "pg", "namespace": "team"}, "spec": {"tls": spec}}
    )


def _pass(
    stored: certs.Outcome | None,
    now: datetime,
    cluster: PostgresCluster = CLUSTER,
    user: dict[str, Any] | None = None,
    *,
    refused: bool = False,
) -> certs.Outcome:
    return certs.plan_tls(
        cluster,
        _secret(stored.ca) if stored and stored.ca else None,
        _secret(stored.tls) if stored and stored.tls else None,
        user or {},
        refused=refused,
        now=now,
        policy=POLICY,
        mint=MINT,
    )


def _reasons(outcome: certs.Outcome) -> list[str]:
    return [reason for reason, _ in outcome.issued]


def _issuer_subjects(pem: str) -> list[str]:
    return [i.subject for i in pki.inspect_all(pem)]


def test_a_new_cluster_gets_a_ca_a_server_and_a_replication_certificate() -> None:
    first = _pass(None, T0)
    assert first.ca is not None and first.tls is not None
    assert _reasons(first) == [
        "CertificateAuthorityCreated",
        "CertificateIssued",
        "CertificateIssued",
    ]
    assert set(first.tls) == set(contract.TLS_FILES)
    server = pki.inspect(first.tls[contract.TLS_CERT])
    assert pki.missing_names(server, NAMES) == []
    assert pki.signed_by(first.tls[contract.TLS_CERT], first.tls[contract.TLS_CA])
    replication = pki.inspect(first.tls[contract.TLS_REPLICATION_CERT])
    assert replication.subject_cn == "replicator"
    assert pki.signed_by(
        first.tls[contract.TLS_REPLICATION_CERT], first.tls[contract.TLS_CLIENT_CA]
    )
    # The CA's key stays in <cluster>-ca: nothing the pods mount holds it.
    assert first.ca[certs.CA_KEY] not in "".join(first.tls.values())
    assert first.status is not None and first.status.source == "operator"
    assert first.status.server_not_after == server.not_after


def test_a_pass_that_renews_nothing_returns_the_stored_data() -> None:
    first = _pass(None, T0)
    again = _pass(first, T0 + timedelta(hours=1))
    assert again.issued == ()
    assert again.ca == first.ca and again.tls == first.tls


@pytest.mark.parametrize(
    ("after", "renewed"),
    [
        (timedelta(hours=3, minutes=59), []),
        # Two thirds of six hours: both leaf certificates are reissued, the CA is kept.
        (timedelta(hours=4, minutes=1), ["CertificateIssued", "CertificateIssued"]),
    ],
)
def test_leaf_certificates_renew_at_two_thirds_of_their_lifetime(
    after: timedelta, renewed: list[str]
) -> None:
    first = _pass(None, T0)
    later = _pass(first, T0 + after)
    assert _reasons(later) == renewed
    assert later.ca == first.ca
    changed = later.tls != first.tls
    assert changed == bool(renewed)


def test_the_ca_rotates_with_both_trusted_during_the_overlap() -> None:
    first = _pass(None, T0)
    old_ca = first.ca[certs.CA_CERT] if first.ca else ""
    # Keep the leaves fresh on the way, as resyncs would.
    state = first
    for hours in range(4, 41, 4):
        state = _pass(state, T0 + timedelta(hours=hours))
    assert state.ca is not None and state.tls is not None
    # At 2/3 of 60 h (40 h) the next CA exists and is trusted, but the old one still issues.
    assert certs.NEXT_CERT in state.ca
    assert state.ca[certs.CA_CERT] == old_ca
    trusted = _issuer_subjects(state.tls[contract.TLS_CA])
    assert len(trusted) == 2
    assert pki.signed_by(state.tls[contract.TLS_CERT], old_ca)
    next_ca = state.ca[certs.NEXT_CERT]
    # At 5/6 (50 h) the next CA takes over; the leaves are reissued by it at once.
    promoted = _pass(state, T0 + timedelta(hours=50, minutes=1))
    assert promoted.ca is not None and promoted.tls is not None
    assert "CertificateAuthorityRotated" in _reasons(promoted)
    assert promoted.ca[certs.CA_CERT] == next_ca and certs.NEXT_CERT not in promoted.ca
    assert pki.signed_by(promoted.tls[contract.TLS_CERT], next_ca)
    assert not pki.signed_by(promoted.tls[contract.TLS_CERT], old_ca)
    # Both stay trusted until the old CA expires (60 h), then only the new one is.
    assert len(_issuer_subjects(promoted.tls[contract.TLS_CA])) == 2
    after = _pass(promoted, T0 + timedelta(hours=60, minutes=2))
    assert after.tls is not None
    assert len(_issuer_subjects(after.tls[contract.TLS_CA])) == 1


def test_an_expired_or_broken_ca_is_replaced() -> None:
    first = _pass(None, T0)
    assert first.ca is not None
    broken = certs.Outcome(ca={**first.ca, certs.CA_KEY: "garbage"}, tls=first.tls)
    replaced = _pass(broken, T0 + timedelta(hours=1))
    assert "CertificateAuthorityCreated" in _reasons(replaced)
    assert replaced.ca is not None and replaced.ca[certs.CA_CERT] != first.ca[certs.CA_CERT]


def _user_server(
    ca: pki.KeyPair, dns: list[str], now: datetime, lifetime: timedelta = timedelta(days=30)
) -> pki.KeyPair:
    return pki.issue(ca, common_name="pg", dns_names=dns, now=now, lifetime=lifetime)


USER_CA = pki.new_ca("corp CA", now=T0 - timedelta(days=1), lifetime=timedelta(days=365))
OTHER_CA = pki.new_ca("other CA", now=T0 - timedelta(days=1), lifetime=timedelta(days=365))
GOOD = _user_server(USER_CA, NAMES, T0)


def _user_case(case: str) -> dict[str, str]:  # noqa: PLR0911 - one return per case
    good = {"tls.crt": GOOD.cert_pem, "tls.key": GOOD.key_pem, "ca.crt": USER_CA.cert_pem}
    if case == "good":
        return good
    if case == "expired":
        old = _user_server(USER_CA, NAMES, T0 - timedelta(days=20), timedelta(days=1))
        return good | {"tls.crt": old.cert_pem, "tls.key": old.key_pem}
    if case == "names":
        short = _user_server(USER_CA, ["pg-rw.team.svc"], T0)
        return good | {"tls.crt": short.cert_pem, "tls.key": short.key_pem}
    if case == "key":
        return good | {"tls.key": OTHER_CA.key_pem}
    if case == "malformed":
        return good | {"tls.crt": "-----BEGIN CERTIFICATE-----\nnope\n-----END CERTIFICATE-----\n"}
    if case == "unsigned":
        return good | {"ca.crt": OTHER_CA.cert_pem}
    assert case == "no-ca"
    return {k: v for k, v in good.items() if k != "ca.crt"}


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("good", None),
        ("expired", "expired at"),
        ("names", "do not cover pg-rw, pg-rw.team,"),
        ("key", "does not belong"),
        ("malformed", "serverSecret 'corp-tls'"),
        ("unsigned", "not signed by the CA"),
        ("no-ca", "no CA to give clients"),
    ],
)
def test_a_users_server_certificate_is_checked_before_it_serves(
    case: str, message: str | None
) -> None:
    cluster = _with_tls({"serverSecret": {"name": "corp-tls"}})
    # The cluster serves on an earlier certificate of its own; a bad one must not replace it.
    serving = _pass(None, T0)
    user = {"corp-tls": _secret(_user_case(case), "corp-tls")}
    outcome = _pass(serving, T0 + timedelta(minutes=5), cluster, user)
    assert outcome.tls is not None and serving.tls is not None
    if message is None:
        assert outcome.problems == ()
        assert outcome.tls[contract.TLS_CERT] == GOOD.cert_pem
        assert outcome.tls[contract.TLS_CA] == USER_CA.cert_pem
        # Client certificates are still verified against the cluster's own CA only.
        assert outcome.tls[contract.TLS_CLIENT_CA] == serving.tls[contract.TLS_CLIENT_CA]
        assert outcome.status is not None and outcome.status.source == "user"
        return
    [problem] = outcome.problems
    assert problem.reason == c.TLS_CERTIFICATE_INVALID
    assert message in problem.message, problem.message
    assert "keep the certificate they have" in problem.message
    assert outcome.tls[contract.TLS_CERT] == serving.tls[contract.TLS_CERT]
    assert outcome.tls[contract.TLS_KEY] == serving.tls[contract.TLS_KEY]


def test_a_refused_users_secret_leaves_a_new_cluster_without_certificates() -> None:
    cluster = _with_tls({"serverSecret": {"name": "corp-tls"}})
    # The reference check already said why (SecretNotPermitted); nothing is served yet.
    outcome = _pass(None, T0, cluster, {}, refused=True)
    assert outcome.tls is None and outcome.problems == ()


def test_the_ca_secret_of_a_users_bundle_wins_over_its_ca_crt() -> None:
    cluster = _with_tls({"serverSecret": {"name": "corp-tls"}, "caSecret": {"name": "corp-ca"}})
    user = {
        "corp-tls": _secret(_user_case("unsigned"), "corp-tls"),
        "corp-ca": _secret({"ca.crt": USER_CA.cert_pem}, "corp-ca"),
    }
    outcome = _pass(None, T0, cluster, user)
    assert outcome.problems == ()
    assert outcome.tls is not None and outcome.tls[contract.TLS_CA] == USER_CA.cert_pem


def test_a_users_secret_that_went_away_leaves_the_serving_certificate_alone() -> None:
    cluster = _with_tls({"serverSecret": {"name": "corp-tls"}})
    user = {"corp-tls": _secret(_user_case("good"), "corp-tls")}
    serving = _pass(None, T0, cluster, user)
    assert serving.tls is not None
    # Deleted (or no longer opted in): the reference check reports it; what serves stays.
    later = _pass(serving, T0 + timedelta(hours=1), cluster, {}, refused=True)
    assert later.tls is not None
    assert later.tls[contract.TLS_CERT] == GOOD.cert_pem
    assert later.tls[contract.TLS_CA] == USER_CA.cert_pem
