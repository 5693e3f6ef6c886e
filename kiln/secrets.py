"""The cluster's secrets under secrets/: created when missing, never overwritten, never logged.

signing.key / signing.pub   Ed25519 bundle signing key pair (public key: PEM SubjectPublicKeyInfo)
ca.key / ca.pem             the cluster CA
server.key / server.pem     the provisioning server's own TLS identity: names only the provisioning host, never
                            leaves the server (no bundle, no image)
site.key / site.pem         the site certificate the load balancers serve (the domain and the VIP): from the
                            cluster CA, or the operator's own from a public CA (site.pem: leaf, then its chain)
operator.token              the operator credential for GET /v1/hosts and the dashboard
alertmanager.token          what Alertmanager sends (a bearer token) with its notifications to POST /v1/alerts
cluster.id                  a random identity of this cluster, named in every bundle
hosts/<host>/journal.*      each host's certificate for the central journal (kiln/roles/journal.py), issued by
                            the cluster CA for its name and address, for both TLS ends; only with a mon host
db_*_password               per-cluster database passwords
backup.key                  the key backups are sealed with (32 random bytes, base64): without it no backup
                            restores, so keep a copy of it away from the cluster (docs/database.md)
<credentials>               the backup bucket's access key, named by roles.db.backup.credentials (AWS credentials
                            file format); the operator puts it there, kiln never creates it
<bmc credentials>           a BMC's login (username, password under [default]), named by hosts[].bmc.credentials;
                            the operator puts it there, kiln never creates it

A secrets/ made by an older kiln held one certificate (tls.pem) for both the server and the site, so an LB's
copy could impersonate the server: it is moved to secrets/retired/ and never used again.
"""

from __future__ import annotations

import base64
import binascii
import configparser
import datetime as dt
import ipaddress
import os
import secrets as pysecrets
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from kiln import signing
from kiln.bundle import Bundle
from kiln.fsutil import create_exclusive, write_atomic
from kiln.model import Cluster

# secrets each host has its own of, by bundle secret name: the file under hosts/<host>/
HOST_BOUND = {"journal_key": "journal.key", "journal_pem": "journal.pem"}
PASSWORDS = ("db_replication_password", "db_app_password", "db_admin_password", "db_monitor_password")
CA_YEARS = 10
CERT_DAYS = 825  # the longest lifetime clients commonly accept for a leaf certificate
EXPIRY_WARNING_DAYS = 21
SYSTEM_TRUST = Path("/etc/ssl/certs/ca-certificates.crt")  # where a public CA's root is found


class SecretMissing(Exception):
    pass


class SiteCertificateError(Exception):
    """The site certificate cannot be served for this cluster; the message says why and what to do."""


@dataclass(frozen=True)
class SecretStore:
    root: Path
    notes: list[str] = field(default_factory=list, compare=False)  # what ensure() did beyond creating files

    @property
    def signing_pub(self) -> Path:
        return self.root / "signing.pub"

    @property
    def ca_pem(self) -> Path:
        return self.root / "ca.pem"

    @property
    def server_pem(self) -> Path:
        return self.root / "server.pem"

    @property
    def server_key(self) -> Path:
        return self.root / "server.key"

    @property
    def site_pem(self) -> Path:
        return self.root / "site.pem"

    @property
    def site_key(self) -> Path:
        return self.root / "site.key"

    def path(self, name: str) -> Path:
        return self.root / name

    def value(self, name: str, host: str | None = None) -> str:
        """A bundle secret's value by name: a password, the site chain plus key for HAProxy, the cluster CA or the
        alert token (the mon hosts'); for a secret each host has its own (HOST_BOUND), `host`'s."""
        try:
            if name in HOST_BOUND:
                if host is None:
                    raise SecretMissing(f"{name} is each host's own: name the host")
                return (self.root / "hosts" / host / HOST_BOUND[name]).read_text()
            if name == "tls_pem":
                return self.site_pem.read_text() + self.site_key.read_text()
            if name in PASSWORDS:
                return (self.root / name).read_text().strip()
            if name in ("ca_pem", "journal_ca"):  # the provisioning server's and the mon hosts' certificates' CA
                return self.ca_pem.read_text()
            if name == "alertmanager_token":
                return self.alertmanager_token()
        except FileNotFoundError as e:
            raise SecretMissing(f"{e.filename} is missing; run ./inv keys") from None
        raise SecretMissing(f"no secret named {name!r}")

    def values_for(self, bundle: Bundle) -> dict[str, str]:
        """Every secret the bundle names, its host's own where each host has one (SecretMissing if one is absent)."""
        return {name: self.value(name, bundle.host.name) for name in bundle.secret_names()}

    def operator_token(self) -> str:
        try:
            return (self.root / "operator.token").read_text().strip()
        except FileNotFoundError:
            raise SecretMissing(f"{self.root / 'operator.token'} is missing; run ./inv keys") from None

    def alertmanager_token(self) -> str:
        """The bearer token Alertmanager's webhook sends to the provisioning server (POST /v1/alerts)."""
        try:
            return (self.root / "alertmanager.token").read_text().strip()
        except FileNotFoundError:
            raise SecretMissing(f"{self.root / 'alertmanager.token'} is missing; run ./inv keys") from None

    def backup_key(self) -> bytes:
        """The 32-byte key backups are sealed with (kiln.db.seal)."""
        path = self.root / "backup.key"
        try:
            key = base64.b64decode(path.read_text().strip(), validate=True)
        except FileNotFoundError:
            raise SecretMissing(f"{path} is missing; run ./inv keys") from None
        except (binascii.Error, ValueError):
            raise SecretMissing(f"{path} is not base64 text") from None
        if len(key) != 32:
            raise SecretMissing(f"{path} holds {len(key)} bytes, not 32")
        return key

    def s3_credentials(self, name: str) -> tuple[str, str]:
        """(access key id, secret access key) from secrets/NAME, an AWS credentials file ([default] section)."""
        keys = ("aws_access_key_id", "aws_secret_access_key")
        return self._ini_pair(name, keys, "the backup bucket's access key", "an AWS credentials file")

    def bmc_credentials(self, name: str) -> tuple[str, str]:
        """(user name, password) from secrets/NAME, a host's BMC login (roles.yaml hosts[].bmc.credentials): an INI
        file with `username` and `password` under [default], read as written (no % interpolation). Never logged."""
        return self._ini_pair(name, ("username", "password"), "the BMC's login (mode 0600)", "an INI file")

    def _ini_pair(self, name: str, keys: tuple[str, str], what: str, kind: str) -> tuple[str, str]:
        """The two `keys` under [default] of secrets/NAME; SecretMissing saying what belongs there and how."""
        path = self.root / name
        parser = configparser.ConfigParser(interpolation=None)
        try:
            parser.read_string(path.read_text())
            section = parser["default"]
            return section[keys[0]].strip(), section[keys[1]].strip()
        except FileNotFoundError:
            raise SecretMissing(
                f"{path} is missing: put {what} there, as\n[default]\n{keys[0]} = ...\n{keys[1]} = ..."
            ) from None
        except (configparser.Error, KeyError):
            raise SecretMissing(f"{path} is not {kind} with {keys[0]} and {keys[1]} under [default]") from None

    def generation(self) -> int:
        """The highest generation the server published for this cluster (0: none yet): kept beside its identity,
        so a new state database never publishes a lower one, which every enrolled agent would refuse."""
        try:
            return int((self.root / "generation").read_text().strip() or 0)
        except FileNotFoundError:
            return 0

    def note_generation(self, generation: int) -> None:
        if generation > self.generation():
            write_atomic(self.root / "generation", f"{generation}\n".encode(), 0o600)

    def cluster_id(self) -> str:
        try:
            return (self.root / "cluster.id").read_text().strip()
        except FileNotFoundError:
            raise SecretMissing(f"{self.root / 'cluster.id'} is missing; run ./inv keys") from None

    def ensure(self, cluster: Cluster) -> list[Path]:
        """Create whatever is missing; return the files created. Existing files are left as they are, except:
        the server certificate is reissued from the cluster CA when it no longer names the provisioning host,
        the CA-issued site certificate when it no longer covers the domain or VIP, and a combined tls.pem from
        an older kiln is retired (see the module docstring). What was done besides creating is in `notes`."""
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(self.root, 0o700)
        created: list[Path] = []

        def create(name: str, data: bytes) -> None:
            if create_exclusive(self.root / name, data):
                created.append(self.root / name)

        self._retire_combined_certificate()
        if not (self.root / "signing.key").exists():
            key = signing.generate_private_key()
            create("signing.key", signing.private_key_pem(key))
            self.signing_pub.unlink(missing_ok=True)  # a pub without its key is useless
            create("signing.pub", signing.public_key_pem(key.public_key()))
        elif not self.signing_pub.exists():
            create(
                "signing.pub", signing.public_key_pem(signing.load_private_key(self.root / "signing.key").public_key())
            )

        if not (self.root / "ca.key").exists():
            create("ca.key", _key_pem(ec.generate_private_key(ec.SECP256R1())))
            for stale in (self.ca_pem, self.server_pem, self.site_pem):  # signed by the old CA
                stale.unlink(missing_ok=True)
        ca_key = _load_ec_key(self.root / "ca.key")
        if not self.ca_pem.exists():
            create("ca.pem", _pem(_ca_cert(cluster, ca_key)))
        ca_cert = x509.load_pem_x509_certificate(self.ca_pem.read_bytes())

        server_names = [_provisioning_host(cluster)]
        if self.server_pem.exists() and uncovered(_load_chain(self.server_pem)[0], server_names):
            self.notes.append(f"reissued {self.server_pem.name}: the provisioning host is now {server_names[0]}")
            self.server_pem.unlink()
        self._leaf("server", server_names, ca_cert, ca_key, create)

        site_names = [cluster.domain, str(cluster.network.vip)]
        if self.site_pem.exists() and self._issued_by(self.site_pem, ca_cert):
            if uncovered(_load_chain(self.site_pem)[0], site_names):
                self.notes.append(f"reissued {self.site_pem.name} from the cluster CA for {', '.join(site_names)}")
                self.site_pem.unlink()
        self._leaf("site", site_names, ca_cert, ca_key, create)

        self._journal_certificates(cluster, ca_cert, ca_key, create)

        if not (self.root / "operator.token").exists():
            create("operator.token", pysecrets.token_urlsafe(32).encode() + b"\n")
        if not (self.root / "alertmanager.token").exists():
            create("alertmanager.token", pysecrets.token_urlsafe(32).encode() + b"\n")
        if not (self.root / "cluster.id").exists():
            create("cluster.id", pysecrets.token_hex(16).encode() + b"\n")
        for name in PASSWORDS:
            if not (self.root / name).exists():
                create(name, pysecrets.token_urlsafe(24).encode() + b"\n")
        if not (self.root / "backup.key").exists():
            create("backup.key", base64.b64encode(pysecrets.token_bytes(32)) + b"\n")
        return created

    def _journal_certificates(
        self,
        cluster: Cluster,
        ca_cert: x509.Certificate,
        ca_key: ec.EllipticCurvePrivateKey,
        create: Callable[[str, bytes], None],
    ) -> None:
        """hosts/<host>/journal.{key,pem} for every host when the cluster has a mon host (kiln/roles/journal.py);
        reissued when it no longer names the host's address."""
        if not cluster.by_role("mon"):
            return
        for host in cluster.hosts:
            directory = self.root / "hosts" / host.name
            directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            names = [host.name, str(host.ip)]
            pem = directory / "journal.pem"
            if pem.exists() and uncovered(_load_chain(pem)[0], names):
                self.notes.append(f"reissued hosts/{host.name}/journal.pem for {', '.join(names)}")
                pem.unlink()
            self._leaf(f"hosts/{host.name}/journal", names, ca_cert, ca_key, create, client=True)

    def _retire_combined_certificate(self) -> None:
        old = [self.root / n for n in ("tls.pem", "tls.key") if (self.root / n).exists()]
        if not old:
            return
        retired = self.root / "retired"
        retired.mkdir(mode=0o700, exist_ok=True)
        for path in old:
            path.rename(retired / path.name)
        self.notes.append(
            "retired tls.pem/tls.key to secrets/retired/: one certificate served both the provisioning server and "
            "the site, so a load balancer's copy could impersonate the server; the server now has server.pem, "
            "the load balancers site.pem (re-provision the load balancers to give them the new one)"
        )

    def _issued_by(self, pem: Path, ca_cert: x509.Certificate) -> bool:
        return _load_chain(pem)[0].issuer == ca_cert.subject

    def _leaf(
        self,
        stem: str,
        names: list[str],
        ca_cert: x509.Certificate,
        ca_key: ec.EllipticCurvePrivateKey,
        create: Callable[[str, bytes], None],
        *,
        client: bool = False,
    ) -> None:
        """STEM.key and STEM.pem (issued by the cluster CA for `names`) when missing; `client`: for TLS clients too."""
        key_path, pem_path = self.root / f"{stem}.key", self.root / f"{stem}.pem"
        if not key_path.exists():
            pem_path.unlink(missing_ok=True)  # a certificate without its key is useless
            create(f"{stem}.key", _key_pem(ec.generate_private_key(ec.SECP256R1())))
        if not pem_path.exists():
            create(f"{stem}.pem", _pem(_leaf_cert(names, _load_ec_key(key_path), ca_cert, ca_key, client=client)))

    def check_site(self, cluster: Cluster, *, now: dt.datetime | None = None) -> list[str]:
        """Why the site certificate cannot be served for this cluster (empty when it can): it must cover the domain
        and the VIP, match its key, be valid now, and carry its chain up to a CA the clients trust. Raise nothing."""
        now = now or dt.datetime.now(dt.UTC)
        try:
            chain = _load_chain(self.site_pem)
            key = serialization.load_pem_private_key(self.site_key.read_bytes(), password=None)
        except FileNotFoundError as e:
            return [f"{e.filename} is missing: run ./inv keys (or put your certificate and key there)"]
        except ValueError as e:
            return [f"{self.site_pem.name} or {self.site_key.name} is not PEM: {e}"]
        leaf, problems = chain[0], []
        names = [cluster.domain, str(cluster.network.vip)]
        missing = uncovered(leaf, names)
        if missing:
            problems.append(
                f"{self.site_pem} does not cover {', '.join(missing)}: issue one that does (or delete site.pem and "
                "site.key and run ./inv keys for one from the cluster CA)"
            )
        public = leaf.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        if (
            key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
            != public
        ):
            problems.append(f"{self.site_key} is not the key of {self.site_pem}: put the matching key there")
        if leaf.not_valid_after_utc <= now:
            problems.append(f"{self.site_pem} expired on {leaf.not_valid_after_utc:%Y-%m-%d}: renew it")
        elif leaf.not_valid_before_utc > now:
            problems.append(f"{self.site_pem} is not valid before {leaf.not_valid_before_utc:%Y-%m-%d %H:%M} UTC")
        gap = _chain_gap(chain, self.ca_pem)
        if gap:
            problems.append(f"{self.site_pem}: {gap}")
        return problems

    def check_server(self, cluster: Cluster) -> list[str]:
        """Why the server certificate cannot serve this cluster (empty when it can): it must name the provisioning
        host. Raise nothing."""
        host = _provisioning_host(cluster)
        try:
            leaf = _load_chain(self.server_pem)[0]
        except (FileNotFoundError, ValueError) as e:
            return [f"{self.server_pem} cannot be read ({e}): run ./inv keys"]
        if uncovered(leaf, [host]):
            return [f"{self.server_pem} does not name {host}: run ./inv keys, which reissues it"]
        return []

    def site_expires_soon(self, *, now: dt.datetime | None = None) -> dt.datetime | None:
        """When the site certificate expires, if that is within EXPIRY_WARNING_DAYS."""
        now = now or dt.datetime.now(dt.UTC)
        leaf = _load_chain(self.site_pem)[0]
        soon = leaf.not_valid_after_utc - now < dt.timedelta(days=EXPIRY_WARNING_DAYS)
        return leaf.not_valid_after_utc if soon else None


def uncovered(cert: x509.Certificate, names: list[str]) -> list[str]:
    """The names (DNS names or IP addresses) the certificate's subjectAltName does not cover; `*.` wildcards
    cover one label."""
    try:
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return list(names)
    dns = [str(v).lower() for v in sans.get_values_for_type(x509.DNSName)]
    ips = {str(v) for v in sans.get_values_for_type(x509.IPAddress)}

    def covered(name: str) -> bool:
        if _is_ip(name):
            return name in ips
        name = name.lower()
        return name in dns or any(d.startswith("*.") and name.split(".", 1)[-1] == d[2:] for d in dns)

    return [n for n in names if not covered(n)]


def _chain_gap(chain: list[x509.Certificate], cluster_ca: Path) -> str:
    """What is missing for clients to build a path from the leaf to a trusted root, or ""."""
    for child, parent in zip(chain, chain[1:], strict=False):
        if child.issuer != parent.subject:
            return f"the certificate after {child.subject.rfc4514_string()} is not its issuer: order them leaf first"
    last = chain[-1]
    if last.issuer == last.subject:
        return ""  # the chain ends in a root
    if cluster_ca.exists() and x509.load_pem_x509_certificate(cluster_ca.read_bytes()).subject == last.issuer:
        return ""
    if SYSTEM_TRUST.exists():
        with warnings.catch_warnings():  # a few roots in the system bundle have serials RFC 5280 disallows
            warnings.simplefilter("ignore")
            roots = x509.load_pem_x509_certificates(SYSTEM_TRUST.read_bytes())
        if any(root.subject == last.issuer for root in roots):
            return ""
    return (
        f"the chain is incomplete: nothing here issued {last.subject.rfc4514_string()} (issuer "
        f"{last.issuer.rfc4514_string()}); append the intermediate certificate(s) after it"
    )


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def _load_chain(path: Path) -> list[x509.Certificate]:
    return x509.load_pem_x509_certificates(path.read_bytes())


def _load_ec_key(path: Path) -> ec.EllipticCurvePrivateKey:
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ValueError(f"{path}: not an EC private key")
    return key


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _provisioning_host(cluster: Cluster) -> str:
    return urlsplit(cluster.provisioning_url).hostname or "localhost"


def _ca_cert(cluster: Cluster, key: ec.EllipticCurvePrivateKey) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"kiln {cluster.name} cluster CA")])
    now = _now()
    usage = x509.KeyUsage(
        digital_signature=False,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=True,
        crl_sign=True,
        encipher_only=False,
        decipher_only=False,
    )
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=365 * CA_YEARS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(usage, critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )


def _san(name: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)


def _leaf_cert(
    names: list[str],
    key: ec.EllipticCurvePrivateKey,
    ca_cert: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    *,
    client: bool = False,
) -> x509.Certificate:
    """A server certificate for `names` (the first is also its common name), issued by the cluster CA; `client`:
    a client certificate too."""
    usages = [ExtendedKeyUsageOID.SERVER_AUTH, *([ExtendedKeyUsageOID.CLIENT_AUTH] if client else [])]
    now = _now()
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=CERT_DAYS))
        .add_extension(x509.SubjectAlternativeName([_san(n) for n in names]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
