"""The cluster PKI (pgherd.pki) on real keys and certificates, at a fixed clock; openssl, an
independent implementation, checks what pgherd issues."""

from __future__ import annotations

import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TypeVar

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from pgherd import pki

_E = TypeVar("_E", bound=x509.ExtensionType)

T0 = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
CA_LIFETIME = timedelta(days=10)
CA = pki.new_ca("pg CA", now=T0, lifetime=CA_LIFETIME)
OTHER_CA = pki.new_ca("other CA", now=T0, lifetime=CA_LIFETIME)
NAMES = ["pg-rw.team.svc", "pg-rw.team.svc.cluster.local", "*.pg-pods.team.svc"]
SERVER = pki.issue(CA, common_name="pg", dns_names=NAMES, now=T0, lifetime=timedelta(days=1))
CLIENT = pki.issue(CA, common_name="replicator", now=T0, lifetime=timedelta(days=1), client=True)


def _rsa_ca(common_name: str) -> tuple[pki.KeyPair, str]:
    """A self-signed RSA CA as a user's tooling makes one; the key also as PKCS#1 PEM
    ("RSA PRIVATE KEY"), which cert-manager writes by default."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(T0 - timedelta(days=1))
        .not_valid_after(T0 + CA_LIFETIME)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    pkcs8, pkcs1 = (
        key.private_bytes(serialization.Encoding.PEM, fmt, serialization.NoEncryption()).decode()
        for fmt in (
            serialization.PrivateFormat.PKCS8,
            serialization.PrivateFormat.TraditionalOpenSSL,
        )
    )
    assert "BEGIN RSA PRIVATE KEY" in pkcs1
    return pki.KeyPair(cert.public_bytes(serialization.Encoding.PEM).decode(), pkcs8), pkcs1


RSA_CA, RSA_PKCS1_KEY = _rsa_ca("corp RSA CA")
RSA_LEAF = pki.issue(RSA_CA, common_name="pg", dns_names=NAMES, now=T0, lifetime=timedelta(days=1))


def _cert(pem: str) -> x509.Certificate:
    return x509.load_pem_x509_certificate(pem.encode())


def _ext(pem: str, kind: type[_E]) -> x509.Extension[_E]:
    return _cert(pem).extensions.get_extension_for_class(kind)


def _openssl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["openssl", *args], capture_output=True, text=True, check=False)


@pytest.mark.parametrize(
    ("ca", "leaf", "purpose", "ok"),
    [
        (CA, SERVER, "sslserver", True),
        # Patroni presents the server certificate as its client certificate.
        (CA, SERVER, "sslclient", True),
        (CA, CLIENT, "sslclient", True),
        (CA, CLIENT, "sslserver", False),
        (OTHER_CA, SERVER, "sslserver", False),
        (RSA_CA, RSA_LEAF, "sslserver", True),
    ],
)
def test_openssl_verifies_what_is_issued(
    tmp_path: Path, ca: pki.KeyPair, leaf: pki.KeyPair, purpose: str, ok: bool
) -> None:
    (tmp_path / "ca.pem").write_text(ca.cert_pem)
    (tmp_path / "leaf.pem").write_text(leaf.cert_pem)
    at = str(int((T0 + timedelta(hours=1)).timestamp()))
    # -x509_strict also wants the key identifiers and a well-formed CA.
    strict = ["-x509_strict"] if ca is not RSA_CA else []
    result = _openssl(
        "verify", *strict, "-attime", at, "-purpose", purpose,
        "-CAfile", str(tmp_path / "ca.pem"), str(tmp_path / "leaf.pem"),
    )  # fmt: skip
    assert (result.returncode == 0 and result.stdout.strip().endswith(": OK")) is ok, result


def test_openssl_finds_the_ca_expired_after_its_lifetime(tmp_path: Path) -> None:
    (tmp_path / "ca.pem").write_text(CA.cert_pem)
    at = str(int((T0 + CA_LIFETIME + timedelta(seconds=1)).timestamp()))
    result = _openssl(
        "verify", "-attime", at, "-CAfile", str(tmp_path / "ca.pem"), str(tmp_path / "ca.pem")
    )
    assert result.returncode != 0 and "expired" in result.stdout + result.stderr


def test_the_ca_is_a_leaf_only_ca_named_as_asked() -> None:
    cert = _cert(CA.cert_pem)
    constraints = _ext(CA.cert_pem, x509.BasicConstraints)
    assert constraints.critical and constraints.value.ca and constraints.value.path_length == 0
    usage = _ext(CA.cert_pem, x509.KeyUsage)
    assert usage.critical and usage.value.key_cert_sign and usage.value.crl_sign
    assert not usage.value.digital_signature
    ski = _ext(CA.cert_pem, x509.SubjectKeyIdentifier).value
    assert ski == x509.SubjectKeyIdentifier.from_public_key(cert.public_key())
    assert cert.subject == cert.issuer
    assert cert.subject.rfc4514_string() == "CN=pg CA,O=pgherd"
    assert cert.not_valid_before_utc == T0 - pki.BACKDATE
    assert cert.not_valid_after_utc == T0 + CA_LIFETIME
    assert isinstance(cert.public_key(), ec.EllipticCurvePublicKey)
    assert cert.public_key().curve.name == "secp256r1"  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("pair", "cn", "sans", "usages"),
    [
        (
            SERVER,
            "pg",
            NAMES,
            [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH],
        ),
        (CLIENT, "replicator", None, [ExtendedKeyUsageOID.CLIENT_AUTH]),
    ],
)
def test_leaf_certificates(
    pair: pki.KeyPair, cn: str, sans: list[str] | None, usages: list[x509.ObjectIdentifier]
) -> None:
    cert = _cert(pair.cert_pem)
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == cn
    assert cert.issuer == _cert(CA.cert_pem).subject
    assert list(_ext(pair.cert_pem, x509.ExtendedKeyUsage).value) == usages
    constraints = _ext(pair.cert_pem, x509.BasicConstraints)
    assert constraints.critical and not constraints.value.ca
    usage = _ext(pair.cert_pem, x509.KeyUsage)
    assert usage.critical and usage.value.digital_signature and not usage.value.key_cert_sign
    aki = _ext(pair.cert_pem, x509.AuthorityKeyIdentifier).value
    assert aki.key_identifier == _ext(CA.cert_pem, x509.SubjectKeyIdentifier).value.digest
    if sans is None:
        with pytest.raises(x509.ExtensionNotFound):
            _ext(pair.cert_pem, x509.SubjectAlternativeName)
    else:
        san = _ext(pair.cert_pem, x509.SubjectAlternativeName).value
        assert san.get_values_for_type(x509.DNSName) == sans
    assert cert.signature_hash_algorithm is not None
    assert cert.signature_hash_algorithm.name == "sha256"
    assert cert.not_valid_before_utc == T0 - pki.BACKDATE
    assert cert.not_valid_after_utc == T0 + timedelta(days=1)
    pki.check_key(pair.cert_pem, pair.key_pem)
    assert "BEGIN PRIVATE KEY" in pair.key_pem  # PKCS#8, unencrypted


def test_each_leaf_has_its_own_key_and_serial() -> None:
    again = pki.issue(CA, common_name="pg", dns_names=NAMES, now=T0, lifetime=timedelta(days=1))
    assert again.key_pem != SERVER.key_pem
    assert pki.inspect(again.cert_pem).serial != pki.inspect(SERVER.cert_pem).serial


@pytest.mark.parametrize(
    ("now", "lifetime", "not_after"),
    [
        (T0, timedelta(days=1), T0 + timedelta(days=1)),
        (T0, timedelta(days=30), T0 + CA_LIFETIME),
        (T0 + timedelta(days=9, hours=23), timedelta(hours=2), T0 + CA_LIFETIME),
    ],
)
def test_a_leaf_never_outlives_its_ca(
    now: datetime, lifetime: timedelta, not_after: datetime
) -> None:
    pair = pki.issue(CA, common_name="pg", dns_names=NAMES, now=now, lifetime=lifetime)
    assert pki.inspect(pair.cert_pem).not_after == not_after


@pytest.mark.parametrize(
    ("ca", "now", "message"),
    [
        (CA, T0 + CA_LIFETIME, "the CA expired at"),
        (pki.KeyPair(CA.cert_pem, OTHER_CA.key_pem), T0, "does not belong to the CA"),
        (pki.KeyPair(CA.cert_pem, "garbage"), T0, "the CA key is not a valid private key"),
        (pki.KeyPair("garbage", CA.key_pem), T0, "no PEM certificate found"),
    ],
)
def test_issue_refuses_an_unusable_ca(ca: pki.KeyPair, now: datetime, message: str) -> None:
    with pytest.raises(pki.PkiError, match=message):
        pki.issue(ca, common_name="pg", dns_names=NAMES, now=now, lifetime=timedelta(days=1))


def _encrypted(pem: str) -> str:
    key = serialization.load_pem_private_key(pem.encode(), password=None)
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"secret"),
    ).decode()


@pytest.mark.parametrize(
    ("cert", "key", "message"),
    [
        (SERVER.cert_pem, SERVER.key_pem, None),
        # A chain in tls.crt: the key is the leaf's.
        (SERVER.cert_pem + CA.cert_pem, SERVER.key_pem, None),
        (RSA_CA.cert_pem, RSA_CA.key_pem, None),
        (RSA_CA.cert_pem, RSA_PKCS1_KEY, None),
        (SERVER.cert_pem, CLIENT.key_pem, "tls.key does not belong to tls.crt"),
        (SERVER.cert_pem, RSA_PKCS1_KEY, "tls.key does not belong to tls.crt"),
        (RSA_CA.cert_pem, SERVER.key_pem, "tls.key does not belong to tls.crt"),
        (SERVER.cert_pem, "garbage", "tls.key is not a valid private key"),
        (SERVER.cert_pem, "", "tls.key is not a valid private key"),
        (SERVER.cert_pem, SERVER.cert_pem, "tls.key is not a valid private key"),
        (SERVER.cert_pem, _encrypted(SERVER.key_pem), "tls.key is encrypted"),
        ("", SERVER.key_pem, "no PEM certificate found"),
    ],
)
def test_check_key(cert: str, key: str, message: str | None) -> None:
    if message is None:
        pki.check_key(cert, key)
    else:
        with pytest.raises(pki.PkiError, match=message):
            pki.check_key(cert, key)


# Same subject as CA, another key: what a CA replaced without a new name would look like.
IMPOSTOR_CA = pki.new_ca("pg CA", now=T0, lifetime=CA_LIFETIME)


@pytest.mark.parametrize(
    ("cert", "bundle", "expected"),
    [
        (SERVER.cert_pem, CA.cert_pem, True),
        (CLIENT.cert_pem, CA.cert_pem, True),
        (SERVER.cert_pem, OTHER_CA.cert_pem, False),
        (SERVER.cert_pem, OTHER_CA.cert_pem + CA.cert_pem, True),
        (SERVER.cert_pem, IMPOSTOR_CA.cert_pem, False),
        (SERVER.cert_pem, IMPOSTOR_CA.cert_pem + CA.cert_pem, True),
        (SERVER.cert_pem, "", False),
        (RSA_LEAF.cert_pem, RSA_CA.cert_pem, True),
        (RSA_LEAF.cert_pem, CA.cert_pem + OTHER_CA.cert_pem, False),
        (SERVER.cert_pem, RSA_CA.cert_pem, False),
        (CA.cert_pem, CA.cert_pem, True),  # self-signed
        # A leaf is not a CA of itself (same-named check fails on the signature).
        (SERVER.cert_pem, SERVER.cert_pem, False),
    ],
)
def test_signed_by(cert: str, bundle: str, expected: bool) -> None:
    assert pki.signed_by(cert, bundle) is expected


@pytest.mark.parametrize(
    ("cert", "bundle"),
    [("garbage", CA.cert_pem), (SERVER.cert_pem, CA.cert_pem[:200])],
)
def test_signed_by_refuses_unparsable_input(cert: str, bundle: str) -> None:
    with pytest.raises(pki.PkiError):
        pki.signed_by(cert, bundle)


def _info(*sans: str) -> pki.CertInfo:
    return pki.CertInfo(
        subject_cn="pg",
        issuer="CN=ca",
        subject="CN=pg",
        dns_names=sans,
        not_before=T0,
        not_after=T0 + timedelta(days=1),
        is_ca=False,
        serial=1,
        fingerprint="00",
        pem="",
    )


@pytest.mark.parametrize(
    ("sans", "names", "missing"),
    [
        (["a.x.y"], ["a.x.y"], []),
        (["a.x.y"], ["b.x.y", "a.x.y", "c.x.y"], ["b.x.y", "c.x.y"]),
        (["*.x.y"], ["a.x.y"], []),
        (["*.x.y"], ["a.b.x.y"], ["a.b.x.y"]),
        (["*.x.y"], ["x.y"], ["x.y"]),
        (["*.x.y"], [".x.y"], [".x.y"]),
        (["*.x.y"], ["a.xx.y"], ["a.xx.y"]),
        (["A.X.Y"], ["a.x.y"], []),
        (["*.X.y"], ["A.x.Y"], []),
        (["a.x.y"], ["*.x.y"], ["*.x.y"]),
        (["*.x.y"], ["*.x.y"], []),
        (["*.X.Y"], ["*.x.y"], []),
        (["*.x.y"], ["*.b.x.y"], ["*.b.x.y"]),
        ([], ["a.x.y"], ["a.x.y"]),
        (["a.x.y"], [], []),
    ],
)
def test_missing_names(sans: list[str], names: list[str], missing: list[str]) -> None:
    assert pki.missing_names(_info(*sans), names) == missing


def test_missing_names_on_an_issued_certificate() -> None:
    info = pki.inspect(SERVER.cert_pem)
    wanted = ["pg-rw.team.svc", "pg-0.pg-pods.team.svc", "pg-ro.team.svc"]
    assert pki.missing_names(info, wanted) == ["pg-ro.team.svc"]


SHORT = pki.inspect(
    pki.issue(
        CA, common_name="pg", dns_names=NAMES, now=T0, lifetime=timedelta(minutes=90)
    ).cert_pem
)


@pytest.mark.parametrize(
    ("minutes", "is_due", "is_expired"),
    [
        (0, False, False),
        (59, False, False),
        (61, True, False),
        (89, True, False),
        (90, True, True),
        (600, True, True),
    ],
)
def test_due_and_expired(minutes: int, is_due: bool, is_expired: bool) -> None:
    now = T0 + timedelta(minutes=minutes)
    assert SHORT.not_before == T0 - pki.BACKDATE and SHORT.not_after == T0 + timedelta(minutes=90)
    assert pki.due(SHORT, now, 2 / 3) is is_due
    assert pki.expired(SHORT, now) is is_expired


@pytest.mark.parametrize(("fraction", "due_at_89"), [(1.0, False), (0.01, True)])
def test_due_at_the_ends_of_the_fraction_range(fraction: float, due_at_89: bool) -> None:
    assert pki.due(SHORT, T0 + timedelta(minutes=89), fraction) is due_at_89
    assert pki.due(SHORT, T0 + timedelta(minutes=90), fraction)


@pytest.mark.parametrize("fraction", [0.0, -0.5, 1.5])
def test_due_refuses_a_fraction_out_of_range(fraction: float) -> None:
    with pytest.raises(ValueError, match="fraction"):
        pki.due(SHORT, T0, fraction)


def test_bundle_dedupes_keeps_order_and_normalises() -> None:
    joined = pki.bundle(
        CA.cert_pem.rstrip("\n"),  # no final newline
        "",
        OTHER_CA.cert_pem + CA.cert_pem,
        "\n\n" + OTHER_CA.cert_pem,
        RSA_CA.cert_pem,
    )
    assert joined == CA.cert_pem + OTHER_CA.cert_pem + RSA_CA.cert_pem
    assert [i.subject_cn for i in pki.inspect_all(joined)] == ["pg CA", "other CA", "corp RSA CA"]
    assert pki.bundle() == pki.bundle("", "") == ""


def test_bundle_refuses_a_malformed_certificate() -> None:
    with pytest.raises(pki.PkiError, match="not a valid certificate"):
        pki.bundle(CA.cert_pem, "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")


OLD_CA = pki.new_ca("old CA", now=T0 - timedelta(days=20), lifetime=timedelta(days=10))


@pytest.mark.parametrize(
    ("pem", "now", "kept"),
    [
        (OLD_CA.cert_pem + CA.cert_pem, T0, [CA.cert_pem]),
        (CA.cert_pem + OLD_CA.cert_pem + OTHER_CA.cert_pem, T0, [CA.cert_pem, OTHER_CA.cert_pem]),
        (OLD_CA.cert_pem + CA.cert_pem, T0 - timedelta(days=15), [OLD_CA.cert_pem, CA.cert_pem]),
        (CA.cert_pem + OTHER_CA.cert_pem, T0 + CA_LIFETIME, []),
        ("", T0, []),
    ],
)
def test_drop_expired(pem: str, now: datetime, kept: list[str]) -> None:
    assert pki.drop_expired(pem, now) == "".join(kept)


@pytest.mark.parametrize(
    ("pem", "message"),
    [
        ("", "no PEM certificate found"),
        ("hello", "no PEM certificate found"),
        (SERVER.key_pem, "no PEM certificate found"),
        (
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
            "not a valid certificate",
        ),
        (
            "-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n",
            "not a valid certificate",
        ),
        (CA.cert_pem[:300], "not a valid certificate: a PEM block is cut short"),
    ],
)
def test_inspect_refuses_malformed_input(pem: str, message: str) -> None:
    for function in (pki.inspect, pki.inspect_all):
        with pytest.raises(pki.PkiError, match=message) as caught:
            function(pem)
        # Short enough for a condition: no Rust debug dumps or FAQ links.
        assert len(str(caught.value)) < 80 and "{" not in str(caught.value), caught.value


def test_inspect_reads_the_first_certificate(tmp_path: Path) -> None:
    info = pki.inspect(SERVER.cert_pem + CA.cert_pem)
    assert info.subject_cn == "pg"
    assert info.subject == "CN=pg,O=pgherd"
    assert info.issuer == "CN=pg CA,O=pgherd"
    assert info.dns_names == tuple(NAMES)
    assert not info.is_ca
    assert info.not_before == T0 - pki.BACKDATE and info.not_before.tzinfo is not None
    assert info.not_after == T0 + timedelta(days=1) and info.not_after.utcoffset() == timedelta(0)
    assert info.serial == _cert(SERVER.cert_pem).serial_number
    assert info.pem == SERVER.cert_pem
    (tmp_path / "leaf.pem").write_text(SERVER.cert_pem)
    result = _openssl(
        "x509", "-noout", "-fingerprint", "-sha256", "-in", str(tmp_path / "leaf.pem")
    )
    assert result.stdout.strip().split("=", 1)[1].replace(":", "").lower() == info.fingerprint


def test_inspect_all_reads_a_bundle_in_order() -> None:
    infos = pki.inspect_all("leading text\n" + SERVER.cert_pem + "\n" + CA.cert_pem)
    assert [(i.subject_cn, i.is_ca) for i in infos] == [("pg", False), ("pg CA", True)]
    assert infos[1].dns_names == ()
    assert [i.pem for i in infos] == [SERVER.cert_pem, CA.cert_pem]


def test_inspect_of_a_certificate_without_a_common_name() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "corp")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(T0)
        .not_valid_after(T0 + timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    info = pki.inspect(cert.public_bytes(serialization.Encoding.PEM).decode())
    assert info.subject_cn is None and info.dns_names == () and not info.is_ca


@pytest.mark.parametrize("pair", [CA, SERVER, CLIENT, RSA_CA, pki.KeyPair("junk", CA.key_pem)])
def test_repr_never_shows_the_key(pair: pki.KeyPair) -> None:
    shown = repr(pair) + str(pair) + f"{[pair]}"
    assert "PRIVATE KEY" not in shown
    assert pair.key_pem.splitlines()[1] not in shown
    assert shown.startswith("KeyPair(")


def test_repr_names_the_certificate() -> None:
    assert repr(SERVER) == "KeyPair(pg, not after 2026-12-01T12:00:00Z)"
