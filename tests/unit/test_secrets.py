"""secrets/: created when missing, 0600 in a 0700 directory, never overwritten; two TLS identities (the
server's own, naming only the provisioning host; the site's, naming the domain and the VIP); an operator's own
site certificate checked for what clients need; a combined certificate from an older kiln retired."""

from __future__ import annotations

import datetime as dt
import ipaddress
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from kiln import signing
from kiln.model import parse_roles
from kiln.secrets import PASSWORDS, SecretStore, uncovered

ALL = {
    "signing.key",
    "signing.pub",
    "ca.key",
    "ca.pem",
    "server.key",
    "server.pem",
    "site.key",
    "site.pem",
    "operator.token",
    "alertmanager.token",
    "cluster.id",
    "backup.key",
    *PASSWORDS,
}


def test_everything_is_created_private(tmp_path: Path, cluster):
    store = SecretStore(tmp_path / "secrets")
    created = store.ensure(cluster)
    assert {p.name for p in created if p.parent == store.root} == ALL
    # with a mon host, each host's journal certificate (kiln/roles/journal.py)
    journal = {str(p.relative_to(store.root)) for p in created if p.parent != store.root}
    assert journal == {f"hosts/{h.name}/journal.{ext}" for h in cluster.hosts for ext in ("key", "pem")}
    assert stat.S_IMODE(store.root.stat().st_mode) == 0o700
    assert stat.S_IMODE((store.root / "hosts" / "web1").stat().st_mode) == 0o700
    for path in created:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path


def test_a_second_run_changes_nothing(tmp_path: Path, cluster):
    store = SecretStore(tmp_path / "secrets")
    store.ensure(cluster)
    before = {p: p.read_bytes() for p in store.root.rglob("*") if p.is_file()}
    assert store.ensure(cluster) == []
    assert {p: p.read_bytes() for p in store.root.rglob("*") if p.is_file()} == before


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


def _sans(cert: x509.Certificate) -> set[str]:
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return {str(v) for v in sans.get_values_for_type(x509.DNSName)} | {
        str(v) for v in sans.get_values_for_type(x509.IPAddress)
    }


def test_two_identities_each_signed_by_the_ca_and_naming_only_their_own_names(secret_store, cluster):
    ca = x509.load_pem_x509_certificate(secret_store.ca_pem.read_bytes())
    site = x509.load_pem_x509_certificate(secret_store.site_pem.read_bytes())
    server = x509.load_pem_x509_certificate(secret_store.server_pem.read_bytes())
    for cert in (site, server):
        cert.verify_directly_issued_by(ca)
        assert isinstance(cert.public_key(), ec.EllipticCurvePublicKey)
    assert _sans(site) == {cluster.domain, "10.10.0.100"}, "the site names the domain and the VIP, not the server"
    assert _sans(server) == {"10.10.0.1"}, "the server names only the provisioning host"
    assert secret_store.server_key.read_bytes() != secret_store.site_key.read_bytes()
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert secret_store.check_site(cluster) == []


def test_what_the_load_balancers_get_is_the_site_identity_not_the_servers(secret_store):
    pem = secret_store.value("tls_pem")
    assert secret_store.site_pem.read_text() in pem and secret_store.site_key.read_text() in pem
    assert secret_store.server_key.read_text() not in pem
    passwords = {secret_store.value(n) for n in PASSWORDS}
    assert len(passwords) == len(PASSWORDS) == 4 and all(len(p) >= 32 for p in passwords)


def test_a_new_provisioning_host_reissues_the_server_cert_and_a_new_domain_the_ca_issued_site_cert(
    tmp_path, cluster, shipped_roles
):
    store = SecretStore(tmp_path / "secrets")
    store.ensure(cluster)
    text = shipped_roles.read_text().replace("https://10.10.0.1:8443", "https://10.10.0.2:8443")
    moved = parse_roles(text.replace("www.foobar.com", "shop.foobar.com"))
    store.ensure(moved)
    assert _sans(x509.load_pem_x509_certificate(store.server_pem.read_bytes())) == {"10.10.0.2"}
    assert "shop.foobar.com" in _sans(x509.load_pem_x509_certificate(store.site_pem.read_bytes()))
    assert len(store.notes) == 2 and store.check_site(moved) == []


def test_a_combined_certificate_from_an_older_kiln_is_retired_not_reused(tmp_path: Path, cluster):
    root = tmp_path / "secrets"
    root.mkdir()
    (root / "tls.pem").write_text("old combined certificate\n")
    (root / "tls.key").write_text("old key\n")
    store = SecretStore(root)
    store.ensure(cluster)
    assert (
        not (root / "tls.pem").exists() and (root / "retired" / "tls.pem").read_text() == "old combined certificate\n"
    )
    assert "old key" not in store.server_key.read_text() + store.value("tls_pem")
    assert any("retired" in n for n in store.notes)


# --- an operator's own site certificate --------------------------------------------------------------------


def _ca(name: str) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def _issue(issuer: x509.Certificate, issuer_key, names, *, days=(-1, 90), key=None, ca=False):
    key = key or ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    sans = [x509.IPAddress(ipaddress.ip_address(n)) if n[0].isdigit() else x509.DNSName(n) for n in names]
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
        .issuer_name(issuer.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now + dt.timedelta(days=days[0]))
        .not_valid_after(now + dt.timedelta(days=days[1]))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return builder.sign(issuer_key, hashes.SHA256()), key


def _install(store: SecretStore, chain: list[x509.Certificate], key: ec.EllipticCurvePrivateKey) -> None:
    store.site_pem.write_bytes(b"".join(c.public_bytes(serialization.Encoding.PEM) for c in chain))
    store.site_key.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )


@pytest.fixture()
def public_ca(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A root the 'system trust store' holds and an intermediate under it, as a public CA issues from."""
    root, root_key = _ca("Test Root CA")
    intermediate, intermediate_key = _issue(root, root_key, ["Test Issuing CA"], days=(-1, 3000), ca=True)
    trust = tmp_path / "ca-certificates.crt"
    trust.write_bytes(root.public_bytes(serialization.Encoding.PEM))
    monkeypatch.setattr("kiln.secrets.SYSTEM_TRUST", trust)
    return intermediate, intermediate_key


def test_an_operators_certificate_with_its_chain_is_kept_and_passes(tmp_path, cluster, public_ca, shipped_roles):
    store = SecretStore(tmp_path / "secrets")
    store.ensure(cluster)
    intermediate, intermediate_key = public_ca
    leaf, key = _issue(intermediate, intermediate_key, ["www.foobar.com", "10.10.0.100"])
    _install(store, [leaf, intermediate], key)
    assert store.check_site(cluster) == []
    moved = parse_roles(shipped_roles.read_text().replace("www.foobar.com", "shop.foobar.com"))
    store.ensure(moved)
    assert store.site_pem.read_bytes().startswith(leaf.public_bytes(serialization.Encoding.PEM)), "never replaced"
    [problem] = store.check_site(moved)
    assert "does not cover shop.foobar.com" in problem


def test_a_wildcard_covers_one_label(public_ca):
    intermediate, intermediate_key = public_ca
    leaf, _ = _issue(intermediate, intermediate_key, ["*.foobar.com"])
    assert uncovered(leaf, ["www.foobar.com", "a.b.foobar.com", "foobar.com"]) == ["a.b.foobar.com", "foobar.com"]


@pytest.mark.parametrize(
    ("case", "words"),
    [
        ("no chain", "the chain is incomplete"),
        ("wrong key", "is not the key of"),
        ("expired", "expired on"),
        ("not yet valid", "is not valid before"),
        ("other names", "does not cover www.foobar.com, 10.10.0.100"),
    ],
)
def test_an_operators_certificate_that_clients_would_refuse_is_refused_with_the_fix(
    tmp_path, cluster, public_ca, case, words
):
    store = SecretStore(tmp_path / "secrets")
    store.ensure(cluster)
    intermediate, intermediate_key = public_ca
    names = ["shop.example.org"] if case == "other names" else ["www.foobar.com", "10.10.0.100"]
    days = {"expired": (-90, -1), "not yet valid": (2, 90)}.get(case, (-1, 90))
    leaf, key = _issue(intermediate, intermediate_key, names, days=days)
    chain = [leaf] if case == "no chain" else [leaf, intermediate]
    _install(store, chain, ec.generate_private_key(ec.SECP256R1()) if case == "wrong key" else key)
    problems = store.check_site(cluster)
    assert any(words in p for p in problems), problems


def test_keys_fails_and_serve_refuses_to_start_with_a_site_certificate_clients_would_refuse(
    tmp_path, cluster, public_ca
):
    import subprocess
    import sys

    project = Path(__file__).resolve().parents[2]
    store = SecretStore(tmp_path / "secrets")
    store.ensure(cluster)
    intermediate, intermediate_key = public_ca
    leaf, key = _issue(intermediate, intermediate_key, ["shop.example.org"])
    _install(store, [leaf, intermediate], key)
    inv = [sys.executable, "-m", "invoke", "--search-root", str(project)]
    keys = subprocess.run([*inv, "keys", "--secrets", str(store.root)], capture_output=True, text=True, check=False)
    assert keys.returncode == 1 and "does not cover www.foobar.com" in keys.stderr, keys.stderr
    serve = subprocess.run(
        [
            *inv,
            "serve",
            "--secrets",
            str(store.root),
            "--listen",
            "127.0.0.1:0",
            "--tls-listen",
            "127.0.0.1:0",
            "--database",
            f"sqlite:///{tmp_path / 'kiln.db'}",
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert serve.returncode == 1 and "site certificate cannot be served" in serve.stderr, serve.stderr
