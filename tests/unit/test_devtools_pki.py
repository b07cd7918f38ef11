"""The generated certificates are what the apiserver and its clients need."""

from __future__ import annotations

import ipaddress
from pathlib import Path

from cryptography import x509

from pgherd_dev import pki


def test_serving_certificate_names_loopback_and_is_signed_by_the_ca(tmp_path: Path) -> None:
    ca = pki.CertificateAuthority(tmp_path)
    pair = ca.issue("srv", "kube-apiserver", server_names=("127.0.0.1", "localhost"))
    cert = x509.load_pem_x509_certificate(pair.cert.read_bytes())
    ca_cert = x509.load_pem_x509_certificate(ca.pair.cert.read_bytes())
    cert.verify_directly_issued_by(ca_cert)
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert ipaddress.ip_address("127.0.0.1") in sans.get_values_for_type(x509.IPAddress)
    assert "localhost" in sans.get_values_for_type(x509.DNSName)


def test_private_keys_are_owner_only(tmp_path: Path) -> None:
    ca = pki.CertificateAuthority(tmp_path)
    pair = ca.issue("admin", "admin", org="system:masters")
    for key in (ca.pair.key, pair.key, pki.service_account_keys(tmp_path).key):
        assert key.stat().st_mode & 0o077 == 0
