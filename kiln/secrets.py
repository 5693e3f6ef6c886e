"""The cluster's secrets under secrets/: created when missing, never overwritten, never logged.

signing.key / signing.pub   Ed25519 bundle signing key pair (public key: PEM SubjectPublicKeyInfo)
ca.key / ca.pem             the cluster CA
tls.key / tls.pem           the site certificate (domain + VIP + provisioning host as SANs), signed by the CA
db_*_password               per-cluster database passwords
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import secrets as pysecrets
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from kiln import signing
from kiln.fsutil import create_exclusive
from kiln.model import Cluster

PASSWORDS = ("db_replication_password", "db_app_password", "db_admin_password")
CA_YEARS = 10
CERT_DAYS = 825  # the longest lifetime clients commonly accept for a leaf certificate


class SecretMissing(Exception):
    pass


@dataclass(frozen=True)
class SecretStore:
    root: Path

    @property
    def signing_pub(self) -> Path:
        return self.root / "signing.pub"

    @property
    def ca_pem(self) -> Path:
        return self.root / "ca.pem"

    def path(self, name: str) -> Path:
        return self.root / name

    def value(self, name: str) -> str:
        """A bundle secret's value by name: a password, or the TLS chain plus key for HAProxy."""
        try:
            if name == "tls_pem":
                return (self.root / "tls.pem").read_text() + (self.root / "tls.key").read_text()
            if name in PASSWORDS:
                return (self.root / name).read_text().strip()
        except FileNotFoundError as e:
            raise SecretMissing(f"{e.filename} is missing; run ./inv keys") from None
        raise SecretMissing(f"no secret named {name!r}")

    def ensure(self, cluster: Cluster) -> list[Path]:
        """Create whatever is missing; return the files created. Existing files are left as they are."""
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(self.root, 0o700)
        created: list[Path] = []

        def create(name: str, data: bytes) -> None:
            if create_exclusive(self.root / name, data):
                created.append(self.root / name)

        if not (self.root / "signing.key").exists():
            key = signing.generate_private_key()
            create("signing.key", signing.private_key_pem(key))
            (self.root / "signing.pub").unlink(missing_ok=True)  # a pub without its key is useless
            create("signing.pub", signing.public_key_pem(key.public_key()))
        elif not self.signing_pub.exists():
            key = signing.load_private_key(self.root / "signing.key")
            create("signing.pub", signing.public_key_pem(key.public_key()))

        if not (self.root / "ca.key").exists():
            ca_key = ec.generate_private_key(ec.SECP256R1())
            create("ca.key", _key_pem(ca_key))
            (self.root / "ca.pem").unlink(missing_ok=True)
            (self.root / "tls.pem").unlink(missing_ok=True)  # signed by the old CA
        loaded = serialization.load_pem_private_key((self.root / "ca.key").read_bytes(), password=None)
        assert isinstance(loaded, ec.EllipticCurvePrivateKey)
        ca_key = loaded
        if not self.ca_pem.exists():
            create("ca.pem", _ca_cert(cluster, ca_key).public_bytes(serialization.Encoding.PEM))
        ca_cert = x509.load_pem_x509_certificate(self.ca_pem.read_bytes())

        if not (self.root / "tls.key").exists():
            create("tls.key", _key_pem(ec.generate_private_key(ec.SECP256R1())))
            (self.root / "tls.pem").unlink(missing_ok=True)
        if not (self.root / "tls.pem").exists():
            tls_key = serialization.load_pem_private_key((self.root / "tls.key").read_bytes(), password=None)
            assert isinstance(tls_key, ec.EllipticCurvePrivateKey)
            cert = _site_cert(cluster, tls_key, ca_cert, ca_key)
            create("tls.pem", cert.public_bytes(serialization.Encoding.PEM))

        for name in PASSWORDS:
            if not (self.root / name).exists():
                create(name, pysecrets.token_urlsafe(24).encode() + b"\n")
        return created

    def uncovered_names(self, cluster: Cluster) -> list[str]:
        """Names the cluster needs that the existing site certificate does not carry (roles.yaml changed)."""
        cert = x509.load_pem_x509_certificate((self.root / "tls.pem").read_bytes())
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        have = {str(v) for v in sans.get_values_for_type(x509.DNSName)}
        have |= {str(v) for v in sans.get_values_for_type(x509.IPAddress)}
        return [n for n in _site_names(cluster) if n not in have]


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _ca_cert(cluster: Cluster, key: ec.EllipticCurvePrivateKey) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"kiln {cluster.name} cluster CA")])
    now = _now()
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=365 * CA_YEARS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )


def _site_names(cluster: Cluster) -> list[str]:
    names = [cluster.domain, str(cluster.network.vip)]
    host = urlsplit(cluster.provisioning_url).hostname
    if host and host not in names:
        names.append(host)
    return names


def _san(name: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)


def _site_cert(
    cluster: Cluster,
    key: ec.EllipticCurvePrivateKey,
    ca_cert: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
) -> x509.Certificate:
    now = _now()
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cluster.domain)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=CERT_DAYS))
        .add_extension(x509.SubjectAlternativeName([_san(n) for n in _site_names(cluster)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
