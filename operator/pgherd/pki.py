"""A cluster's certificate authority and certificate inspection, on the `cryptography` library.

The operator makes each cluster's CA here, issues its server and client certificates, and
checks the certificates users bring (parse, key match, names, expiry, issuer). New keys are
EC P-256: a key is made in well under a millisecond where an RSA-2048 key takes 50-100 ms (a
reconcile pass must stay fast), the certificates are small, and PostgreSQL, libpq, Python's
ssl, Java and Go clients all accept them. Certificates users bring may carry RSA or EC keys.

Everything is a pure function of its arguments (the clock is passed in as `now`) apart from
key generation and random serial numbers. Nothing here logs, and a KeyPair's repr never shows
its key; PkiError messages are short enough to go into a Degraded condition as they are.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.types import (
    CertificatePublicKeyTypes,
    PrivateKeyTypes,
    PublicKeyTypes,
)
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

# Clock skew between the operator and the pods. Kept small because tests use certificates
# that live only minutes, and a large backdate would distort their renewal schedule.
BACKDATE = timedelta(minutes=1)

_BEGIN = "-----BEGIN CERTIFICATE-----"
_END = "-----END CERTIFICATE-----"
_ORGANIZATION = "pgherd"


class PkiError(ValueError):
    """A certificate or key that cannot be used; the message says why (for a Degraded condition)."""


@dataclass(frozen=True)
class KeyPair:
    """A certificate and its private key, as PEM text (the key unencrypted PKCS#8)."""

    cert_pem: str
    key_pem: str = field(repr=False)

    def __repr__(self) -> str:
        # Written by hand so that a KeyPair in a log line or a traceback never shows the key.
        try:
            info = inspect(self.cert_pem)
        except PkiError:
            return "KeyPair(<unreadable certificate>)"
        return f"KeyPair({info.subject_cn}, not after {info.not_after:%Y-%m-%dT%H:%M:%SZ})"


@dataclass(frozen=True)
class CertInfo:
    """What the operator needs to know of one certificate; datetimes are aware UTC."""

    subject_cn: str | None
    issuer: str
    subject: str
    dns_names: tuple[str, ...]
    not_before: datetime
    not_after: datetime
    is_ca: bool
    serial: int
    fingerprint: str
    pem: str = field(repr=False)


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _key_pem(key: ec.EllipticCurvePrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()


def _cert_pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def _spki(key: PublicKeyTypes | CertificatePublicKeyTypes) -> bytes:
    return key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, _ORGANIZATION),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _key_usage(*, sign_certificates: bool) -> x509.KeyUsage:
    # A CA signs certificates and CRLs only; an EC leaf only signs the TLS handshake
    # (keyEncipherment is an RSA key-transport usage, meaningless for EC keys).
    return x509.KeyUsage(
        digital_signature=not sign_certificates,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=sign_certificates,
        crl_sign=sign_certificates,
        encipher_only=False,
        decipher_only=False,
    )


def _reason(error: Exception) -> str:
    # cryptography's messages carry Rust debug dumps and FAQ links; the first clause is
    # what a person reading a condition can use.
    return re.split(r"[.:({]", str(error), maxsplit=1)[0].strip() or type(error).__name__


def _blocks(pem: str) -> list[str]:
    """The CERTIFICATE blocks of a PEM text, each ending with a newline; other blocks (a
    private key pasted along) are skipped."""
    out: list[str] = []
    rest = pem
    while (start := rest.find(_BEGIN)) != -1:
        end = rest.find(_END, start)
        if end == -1:
            raise PkiError("not a valid certificate: a PEM block is cut short")
        out.append(rest[start : end + len(_END)] + "\n")
        rest = rest[end + len(_END) :]
    return out


def _load(block: str) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(block.encode())
    except ValueError as e:
        raise PkiError(f"not a valid certificate: {_reason(e)}") from None


def _first(pem: str) -> x509.Certificate:
    blocks = _blocks(pem)
    if not blocks:
        raise PkiError("no PEM certificate found")
    return _load(blocks[0])


def _load_key(pem: str, what: str) -> PrivateKeyTypes:
    try:
        return serialization.load_pem_private_key(pem.encode(), password=None)
    except TypeError:
        # cryptography's way of saying that the key needs a password.
        raise PkiError(f"{what} is encrypted; an unencrypted key is needed") from None
    except (ValueError, UnsupportedAlgorithm):
        raise PkiError(f"{what} is not a valid private key") from None


def new_ca(common_name: str, *, now: datetime, lifetime: timedelta) -> KeyPair:
    """A self-signed CA that may sign leaf certificates only (path length 0)."""
    key = _new_key()
    name = _name(common_name)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + lifetime)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(sign_certificates=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return KeyPair(_cert_pem(cert), _key_pem(key))


def issue(
    ca: KeyPair,
    *,
    common_name: str,
    dns_names: Sequence[str] = (),
    now: datetime,
    lifetime: timedelta,
    client: bool = False,
) -> KeyPair:
    """A leaf certificate signed by `ca`, with a fresh key, that never outlives the CA.

    A server certificate (the default) allows server and client authentication, because
    Patroni presents the server certificate as its client certificate too; with client=True
    it allows client authentication only. The DNS names go into the SubjectAlternativeName
    (clients match SANs, not the CN); a client certificate may have none.
    """
    ca_cert = _first(ca.cert_pem)
    ca_key = _load_key(ca.key_pem, "the CA key")
    # The signature hash below is SHA-256, which EC and RSA keys take and Ed25519 does not.
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
        raise PkiError("the CA key is neither an EC nor an RSA key")
    if _spki(ca_key.public_key()) != _spki(ca_cert.public_key()):
        raise PkiError("the CA key does not belong to the CA certificate")
    ca_not_after = ca_cert.not_valid_after_utc
    if now >= ca_not_after:
        raise PkiError(f"the CA expired at {ca_not_after:%Y-%m-%dT%H:%M:%SZ}")
    try:
        ca_ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        authority = x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski)
    except x509.ExtensionNotFound:
        authority = x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key())
    usages = [ExtendedKeyUsageOID.CLIENT_AUTH]
    if not client:
        usages.insert(0, ExtendedKeyUsageOID.SERVER_AUTH)
    key = _new_key()
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(min(now + lifetime, ca_not_after))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(sign_certificates=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .add_extension(authority, critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )
    if dns_names:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName(n) for n in dns_names]), critical=False
        )
    return KeyPair(_cert_pem(builder.sign(ca_key, hashes.SHA256())), _key_pem(key))


def _info(cert: x509.Certificate) -> CertInfo:
    # Extensions are parsed lazily, so a malformed one only shows up here.
    try:
        extensions = cert.extensions
    except ValueError as e:
        raise PkiError(f"not a valid certificate: {_reason(e)}") from None
    try:
        san = extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        dns_names = tuple(san.get_values_for_type(x509.DNSName))
    except x509.ExtensionNotFound:
        dns_names = ()
    try:
        is_ca = extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        is_ca = False
    cns = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return CertInfo(
        subject_cn=str(cns[0].value) if cns else None,
        issuer=cert.issuer.rfc4514_string(),
        subject=cert.subject.rfc4514_string(),
        dns_names=dns_names,
        not_before=cert.not_valid_before_utc,
        not_after=cert.not_valid_after_utc,
        is_ca=is_ca,
        serial=cert.serial_number,
        fingerprint=hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest(),
        pem=_cert_pem(cert),
    )


def inspect(pem: str) -> CertInfo:
    """The first certificate of `pem` (a leaf followed by its chain gives the leaf)."""
    return _info(_first(pem))


def inspect_all(pem: str) -> list[CertInfo]:
    """Every certificate of a PEM bundle, in order."""
    blocks = _blocks(pem)
    if not blocks:
        raise PkiError("no PEM certificate found")
    return [_info(_load(b)) for b in blocks]


def check_key(cert_pem: str, key_pem: str) -> None:
    """PkiError unless `key_pem` is the unencrypted private key of the first certificate of
    `cert_pem` (EC, RSA or any other key type cryptography reads)."""
    cert = _first(cert_pem)
    key = _load_key(key_pem, "tls.key")
    if _spki(key.public_key()) != _spki(cert.public_key()):
        raise PkiError("tls.key does not belong to tls.crt")


def signed_by(cert_pem: str, ca_bundle_pem: str) -> bool:
    """Whether some certificate of the bundle issued the first certificate of `cert_pem`:
    its subject is the certificate's issuer and its key verifies the signature."""
    cert = _first(cert_pem)
    for block in _blocks(ca_bundle_pem):
        ca = _load(block)
        # verify_directly_issued_by compares the names too; this only skips a signature check.
        if ca.subject != cert.issuer:
            continue
        try:
            cert.verify_directly_issued_by(ca)
        except (ValueError, TypeError, InvalidSignature):
            # A same-named CA with another key (a renewed CA), or a key type that cannot sign.
            continue
        return True
    return False


def _covers(san: str, name: str) -> bool:
    san, name = san.lower(), name.lower()
    if san == name:
        return True
    # RFC 6125: a wildcard stands for exactly one whole leftmost label. A requested wildcard
    # is only met by the same wildcard, never by a concrete name.
    if not san.startswith("*.") or name.startswith("*."):
        return False
    label, _, parent = name.partition(".")
    return bool(label) and parent == san[2:]


def missing_names(info: CertInfo, names: Iterable[str]) -> list[str]:
    """The DNS names, in input order, that the certificate's SANs do not cover."""
    return [n for n in names if not any(_covers(san, n) for san in info.dns_names)]


def expired(info: CertInfo, now: datetime) -> bool:
    """Whether the certificate is no longer valid at `now`."""
    return now >= info.not_after


def due(info: CertInfo, now: datetime, fraction: float) -> bool:
    """Whether renewal is due: `fraction` (in (0, 1]) of the lifetime has passed, or it expired."""
    if not 0 < fraction <= 1:
        raise ValueError(f"renewal fraction {fraction} is not in (0, 1]")
    renew_at = info.not_before + (info.not_after - info.not_before) * fraction
    return now >= renew_at or expired(info, now)


def bundle(*pems: str) -> str:
    """The certificates of the texts, each once (by fingerprint), in order of first appearance."""
    seen: set[str] = set()
    out: list[str] = []
    for pem in pems:
        for block in _blocks(pem):
            info = _info(_load(block))
            if info.fingerprint not in seen:
                seen.add(info.fingerprint)
                out.append(info.pem)
    return "".join(out)


def drop_expired(pem: str, now: datetime) -> str:
    """The bundle without its expired certificates, in the same order ("" for an empty text)."""
    if not pem.strip():
        return ""
    return "".join(i.pem for i in inspect_all(pem) if not expired(i, now))
