"""An attacker on the provisioning network: a machine that is not in roles.yaml (the lab's "outside" address on
the cluster's bridge) tries what the security review found open, against the running lab's real server, and
each attempt is refused while the cluster keeps working. Run by `./inv lab verify` inside the lab namespace.

- fetch a host's bundle by its MAC, read the host list, enrol with a made-up token
- forge events: unauthenticated, text/plain (a browser's cross-site post), another host's token, and an
  `install ok` that would make a host boot its old disk
- impersonate the provisioning server: with the site certificate an LB holds (the agent's TLS check refuses it),
  and, assuming TLS were defeated, replay old, foreign and stale signed bundles (the agent refuses each)
"""

from __future__ import annotations

import datetime as dt
import http.server
import json
import os
import ssl
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from kiln import signing
from kiln.lab import client
from kiln.lab.layout import OUTSIDE, Lab
from kiln.project import Project
from kiln.render import render_host

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(os.environ.get("KILN_LAB") != "1", reason="needs the running lab: ./inv lab verify"),
]

ROLES_FILE = os.environ.get("KILN_LAB_ROLES") or None
CLUSTER = Project(roles=ROLES_FILE).cluster() if os.environ.get("KILN_LAB") == "1" else None
IMPOSTOR_PORT = 9443


@pytest.fixture(scope="module")
def lab() -> Lab:
    assert CLUSTER is not None
    return Lab(CLUSTER)


def _attacker(lab: Lab) -> ssl.SSLContext:
    """An attacker who has the cluster CA (it is public: every image bakes it) to talk TLS to the server."""
    return ssl.create_default_context(cafile=str(lab.secrets / "ca.pem"))


def _call(lab: Lab, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None):
    import http.client
    from urllib.parse import urlsplit

    url = urlsplit(lab.server_url)
    conn = http.client.HTTPSConnection(
        url.hostname or "", url.port, context=_attacker(lab), timeout=15, source_address=(OUTSIDE, 0)
    )
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def _some(kind: str) -> Any:
    assert CLUSTER is not None
    return next(h for h in Lab(CLUSTER).hosts if h.role == kind)  # one the lab booted


def test_a_mac_gets_no_bundle_no_host_list_and_a_guessed_token_no_enrolment(lab: Lab) -> None:
    db = _some("db")
    status, body = _call(lab, "GET", f"/v1/bundle?mac={db.mac}")
    assert status == 401 and b"password" not in body
    assert _call(lab, "GET", "/v1/hosts")[0] == 401
    assert _call(lab, "GET", f"/v1/hosts/{db.name}/seed")[0] == 401
    guess = json.dumps({"host_key": "A" * 43 + "=", "macs": [db.mac]}).encode()
    headers = {"Authorization": "Bearer " + "x" * 43, "Content-Type": "application/json"}
    assert _call(lab, "POST", "/v1/enrol", guess, headers)[0] == 401


def test_forged_events_change_nothing(lab: Lab) -> None:
    db = _some("db")
    before = next(r for r in client.hosts(lab) if r["name"] == db.name)
    forged = json.dumps({"step": "install", "status": "ok", "detail": "forged"}).encode()
    json_headers = {"Content-Type": "application/json"}
    assert _call(lab, "POST", f"/v1/hosts/{db.name}/events", forged, json_headers)[0] == 401
    assert _call(lab, "POST", f"/v1/hosts/{db.name}/events", forged, {"Content-Type": "text/plain"})[0] == 415
    bearer = {**json_headers, "Authorization": "Bearer " + "y" * 43}
    assert _call(lab, "POST", f"/v1/hosts/{db.name}/events", forged, bearer)[0] == 401
    after = next(r for r in client.hosts(lab) if r["name"] == db.name)
    assert after["state"] == before["state"] and after["last_event"] == before["last_event"]
    assert all(e["detail"] != "forged" for e in after.get("timeline", []))
    refused = [a for a in client.access(lab, outcome="refused") if a["peer"] == OUTSIDE]
    assert {"bundle", "event", "enrol"} <= {a["action"] for a in refused}, "every refusal is logged with the peer"


# --- an impostor provisioning server --------------------------------------------------------------------------


def _cert_for(lab: Lab, address: str) -> tuple[Path, Path]:
    """A certificate for `address` from the cluster CA: what an attacker who defeated TLS would hold."""
    ca_key = serialization.load_pem_private_key((lab.secrets / "ca.key").read_bytes(), password=None)
    ca = x509.load_pem_x509_certificate((lab.secrets / "ca.pem").read_bytes())
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    import ipaddress

    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, address)]))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(address))]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    lab.root.mkdir(parents=True, exist_ok=True)
    pem, key_pem = lab.root / "attacker.pem", lab.root / "attacker.key"
    pem.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_pem.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return pem, key_pem


class _Impostor(http.server.BaseHTTPRequestHandler):
    body = b""
    signature = ""

    def _answer(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("X-Kiln-Signature", self.signature)
        self.send_header("X-Kiln-Host", "impostor")
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    do_GET = _answer
    do_POST = _answer

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture()
def impostor(lab: Lab, request: pytest.FixtureRequest) -> Iterator[type[_Impostor]]:
    """An HTTPS server on the attacker's address serving whatever body and signature the test sets."""
    cert, key = request.param(lab)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(str(cert), str(key))
    handler = type("Handler", (_Impostor,), {})
    server = http.server.HTTPServer((OUTSIDE, IMPOSTOR_PORT), handler)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield handler
    finally:
        server.shutdown()
        server.server_close()


def _victim(lab: Lab, tmp_path: Path, host_mac: str) -> Path:
    """A machine's first boot as the agent sees it (a root under tmp_path), pointed at the impostor."""
    root = tmp_path / "victim"
    (root / "etc/kiln").mkdir(parents=True)
    (root / "etc/kiln/ca.pem").write_bytes((lab.secrets / "ca.pem").read_bytes())
    (root / "etc/kiln/signing.pub").write_bytes((lab.secrets / "signing.pub").read_bytes())
    cluster_id = (lab.secrets / "cluster.id").read_text().strip()
    (root / "etc/kiln/agent.json").write_text(json.dumps({"url": lab.server_url, "cluster_id": cluster_id}))
    seed = {"url": f"https://{OUTSIDE}:{IMPOSTOR_PORT}", "mac": host_mac, "token": "z" * 43}
    (root / "etc/kiln/seed.json").write_text(json.dumps(seed))
    (root / "sys/class/net/eth0").mkdir(parents=True)
    (root / "sys/class/net/eth0/address").write_text(host_mac + "\n")
    return root


def _first_boot(root: Path) -> str:
    project = Path(__file__).resolve().parents[2]
    argv = [
        sys.executable,
        "-m",
        "firstboot",
        "run",
        "--root",
        str(root),
        "--fetch-deadline",
        "8",
        "--imds-endpoint",
        "",
    ]
    done = subprocess.run(argv, cwd=project, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 1, done.stdout + done.stderr
    status = subprocess.run(
        [sys.executable, "-m", "firstboot", "status", "--root", str(root)], cwd=project, capture_output=True, text=True
    )
    return status.stdout


def _site(lab: Lab) -> tuple[Path, Path]:
    return lab.secrets / "site.pem", lab.secrets / "site.key"


@pytest.mark.parametrize("impostor", [_site], indirect=True, ids=["the site certificate an LB holds"])
def test_an_lbs_site_certificate_cannot_impersonate_the_server(lab: Lab, impostor, tmp_path: Path) -> None:
    db = _some("db")
    status = _first_boot(_victim(lab, tmp_path, db.mac))
    assert "FAILED at step fetch" in status and "TLS" in status, status
    assert not (tmp_path / "victim/etc/mysql").exists(), "nothing applied"


def _defeated_tls(lab: Lab) -> tuple[Path, Path]:
    return _cert_for(lab, OUTSIDE)


def _signed_old(lab: Lab, name: str, **stamp: Any) -> tuple[bytes, str]:
    assert CLUSTER is not None
    key = signing.load_private_key(lab.secrets / "signing.key")
    bundle = replace(render_host(CLUSTER, CLUSTER.host(name)), **stamp)
    body = bundle.to_json()
    return body, signing.sign(body, key)


def _now() -> int:
    return int(dt.datetime.now(dt.UTC).timestamp())


@pytest.mark.parametrize("impostor", [_defeated_tls], indirect=True, ids=["TLS defeated"])
@pytest.mark.parametrize(
    ("stamp", "words"),
    [
        ({"generation": 999, "issued_at": _now() - 3 * 86400, "expires_at": _now() - 2 * 86400}, "expired"),
        ({"cluster_id": "0" * 32, "generation": 999}, "this host belongs to cluster"),
        ({"generation": 0}, "older than generation"),
    ],
    ids=["replayed after it expired", "another cluster's", "an older generation"],
)
def test_replayed_or_foreign_bundles_are_refused_even_through_an_impostor(
    lab: Lab, impostor, tmp_path: Path, stamp: dict[str, Any], words: str
) -> None:
    db = _some("db")
    cluster_id = (lab.secrets / "cluster.id").read_text().strip()
    defaults = {"cluster_id": cluster_id, "generation": 999, "issued_at": _now(), "expires_at": _now() + 3600}
    root = _victim(lab, tmp_path, db.mac)
    if words == "older than generation":  # the host has accepted generation 5 before
        state = root / "var/lib/firstboot/state.json"
        state.parent.mkdir(parents=True)
        state.write_text(json.dumps({"cluster_id": cluster_id, "generation": 5}))
    impostor.body, impostor.signature = _signed_old(lab, db.name, **{**defaults, **stamp})
    status = _first_boot(root)
    assert "FAILED at step fetch" in status and "bundle refused" in status and words in status, status
    assert not (root / "etc/mysql").exists(), "nothing applied"
