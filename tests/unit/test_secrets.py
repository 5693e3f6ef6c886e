"""secrets/: created when missing, 0600 in a 0700 directory, never overwritten, a certificate that verifies."""

from __future__ import annotations

import ipaddress
import stat
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from kiln import signing
from kiln.model import parse_roles
from kiln.secrets import PASSWORDS, SecretStore


def test_everything_is_created_private(tmp_path: Path, cluster):
    store = SecretStore(tmp_path / "secrets")
    created = store.ensure(cluster)
    names = {p.name for p in created}
    assert names == {"signing.key", "signing.pub", "ca.key", "ca.pem", "tls.key", "tls.pem", *PASSWORDS}
    assert stat.S_IMODE(store.root.stat().st_mode) == 0o700
    for path in created:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path


def test_a_second_run_changes_nothing(tmp_path: Path, cluster):
    store = SecretStore(tmp_path / "secrets")
    store.ensure(cluster)
    before = {p.name: p.read_bytes() for p in store.root.iterdir()}
    assert store.ensure(cluster) == []
    assert {p.name: p.read_bytes() for p in store.root.iterdir()} == before


def test_only_the_missing_file_is_made(tmp_path: Path, cluster):
    store = SecretStore(tmp_path / "secrets")
    store.ensure(cluster)
    key = (store.root / "signing.key").read_bytes()
    (store.root / "db_app_password").unlink()
    assert [p.name for p in store.ensure(cluster)] == ["db_app_password"]
    assert (store.root / "signing.key").read_bytes() == key


def test_signing_pub_matches_signing_key(secret_store):
    private = signing.load_private_key(secret_store.root / "signing.key")
    public = signing.load_public_key(secret_store.signing_pub.read_bytes())
    signing.verify(b"x", signing.sign(b"x", private), public)


def test_site_certificate_is_signed_by_the_ca_and_names_the_site(secret_store, cluster):
    ca = x509.load_pem_x509_certificate(secret_store.ca_pem.read_bytes())
    cert = x509.load_pem_x509_certificate((secret_store.root / "tls.pem").read_bytes())
    cert.verify_directly_issued_by(ca)
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert cluster.domain in sans.get_values_for_type(x509.DNSName)
    assert {ipaddress.ip_address("10.10.0.100"), ipaddress.ip_address("10.10.0.1")} <= set(
        sans.get_values_for_type(x509.IPAddress)
    )
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert isinstance(cert.public_key(), ec.EllipticCurvePublicKey)
    assert secret_store.uncovered_names(cluster) == []


def test_a_changed_domain_is_reported_not_silently_reissued(secret_store, shipped_roles):
    moved = parse_roles(shipped_roles.read_text().replace("www.foobar.com", "shop.foobar.com"))
    assert secret_store.uncovered_names(moved) == ["shop.foobar.com"]


def test_secret_values_by_bundle_name(secret_store):
    pem = secret_store.value("tls_pem")
    assert "BEGIN CERTIFICATE" in pem and "BEGIN PRIVATE KEY" in pem
    passwords = {secret_store.value(n) for n in PASSWORDS}
    assert len(passwords) == 3 and all(len(p) >= 32 for p in passwords)
