"""Helpers for the first-boot agent's tests: signed and stamped bundles, a fake machine root, small local HTTP
stand-ins, and `StandIn`: an HTTPS stand-in for the provisioning server that speaks the agent's protocol."""

from __future__ import annotations

import contextlib
import copy
import datetime as dt
import http.server
import ipaddress
import json
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.x509.oid import NameOID

from kiln import hostauth, signing
from kiln.bundle import (
    BUNDLE_SCHEMA,
    Bundle,
    DbPrimaryJoin,
    Directory,
    File,
    HostInfo,
    Network,
    Secret,
    dumps,
    shared_digest,
)

MAC = "52:54:00:10:00:41"
OTHER_MAC = "52:54:00:99:99:99"
SECRETS = {
    "db_app_password": "app-S3cret-value-7f1c2a",
    "db_replication_password": "repl-S3cret-value-9b8d11",
    "db_admin_password": "admin-S3cret-value-4e0f33",
}


def bundle(mac: str = MAC, *, secrets: dict[str, str | None] | None = None, withheld: bool = False) -> Bundle:
    """db1's bundle, small: a directory, two files (one group-owned by an account of the image), its secrets."""
    values = SECRETS if secrets is None else secrets
    return Bundle(
        schema=BUNDLE_SCHEMA,
        cluster="test",
        host=HostInfo(name="db1", role="db", mac=mac, ip="10.10.0.41", fqdn="db1.test"),
        network=Network(
            interface="kiln0", address="10.10.0.41", prefix=24, gateway="10.10.0.1", dns=(), vip="10.10.0.100"
        ),
        directories=(Directory("/etc/kiln/secrets", mode="0711"),),
        files=(
            File("/etc/hostname", "db1\n"),
            File("/etc/kiln/app.env", "A=1\n", mode="0640", group="kiln-app"),
        ),
        secrets=tuple(Secret(n, f"/etc/kiln/secrets/{n}", value=v) for n, v in values.items()),
        services=(),
        join=DbPrimaryJoin(
            kind="db-primary",
            database="foobar",
            port=3306,
            server_id=1,
            replication_user="repl",
            app_user="app",
            exporter_user="prometheus",
            replica_hosts=("10.10.0.42",),
            app_hosts=("10.10.0.31",),
        ),
        checks=(),
        secrets_withheld=withheld,
    )


HOSTS = "127.0.0.1 localhost\n10.10.0.41 db1.test db1\n"  # a cluster-wide file: in bundles by its sha256 only


def with_shared_hosts(b: Bundle) -> Bundle:
    """The bundle naming /etc/hosts by the digest of HOSTS, as the renderer names cluster-wide files."""
    return replace(b, files=(*b.files, File("/etc/hosts", shared=shared_digest(HOSTS))))


def as_data(b: Bundle) -> dict[str, Any]:
    """The bundle as plain JSON data, to break on purpose."""
    data: dict[str, Any] = json.loads(b.to_json())
    return data


CLUSTER_ID = "c0ffee00" * 4  # the cluster a kiln server stamps into every bundle it signs
TOKEN = "enrol-token-for-db1-0123456789abcdef"


def stamped(
    b: Bundle | dict[str, Any],
    *,
    cluster_id: str = CLUSTER_ID,
    generation: int = 1,
    issued: float | None = None,
    ttl: float = 3600.0,
) -> dict[str, Any]:
    """The bundle as a server signs it: naming its cluster and generation, issued (now) and expiring after `ttl`."""
    data = as_data(b) if isinstance(b, Bundle) else copy.deepcopy(b)
    at = int(time.time() if issued is None else issued)
    data.update(cluster_id=cluster_id, generation=generation, issued_at=at, expires_at=at + int(ttl))
    return data


def signed(b: Bundle | dict[str, Any], key: Any) -> tuple[bytes, str]:
    body = b.to_json() if isinstance(b, Bundle) else dumps(b)
    return body, signing.sign(body, key)


def machine(root: Path, key: Any, mac: str = MAC, ca: bytes = b"") -> Path:
    """A fake machine under `root`: one NIC, the baked public key (and CA)."""
    (root / "sys/class/net/eth0").mkdir(parents=True)
    (root / "sys/class/net/eth0/address").write_text(mac + "\n")
    (root / "sys/class/net/lo").mkdir(parents=True)
    (root / "sys/class/net/lo/address").write_text("00:00:00:00:00:00\n")
    (root / "etc/kiln").mkdir(parents=True, exist_ok=True)
    (root / "etc/kiln/signing.pub").write_bytes(signing.public_key_pem(key.public_key()))
    if ca:
        (root / "etc/kiln/ca.pem").write_bytes(ca)
    (root / "proc").mkdir(exist_ok=True)
    (root / "proc/cmdline").write_text("console=ttyS0 quiet\n")
    return root


def cache_bundle(root: Path, b: Bundle | dict[str, Any], key: Any) -> None:
    """A bundle as the fetch step leaves it (what a resumed run reads): stamped by a server, signed."""
    body, signature = signed(stamped(b), key)
    state = root / "var/lib/firstboot"
    state.mkdir(parents=True, exist_ok=True)
    (state / "bundle.json").write_bytes(body)
    (state / "bundle.sig").write_text(signature)


Handler = Callable[[http.server.BaseHTTPRequestHandler], None]


def tls_for_loopback(directory: Path) -> tuple[bytes, ssl.SSLContext]:
    """A throwaway cluster CA (PEM) and a server context whose certificate it signed for 127.0.0.1."""
    now = dt.datetime.now(dt.UTC)

    def certificate(subject: str, key: ec.EllipticCurvePrivateKey, issuer: x509.Name, signer: Any, ca: bool) -> Any:
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
            .issuer_name(issuer)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(hours=1))
            .not_valid_after(now + dt.timedelta(hours=1))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(signer.public_key()), critical=False)
        )
        if ca:
            flags = dict.fromkeys(
                ("digital_signature", "content_commitment", "key_encipherment", "data_encipherment"), False
            )
            flags |= {"key_agreement": False, "encipher_only": False, "decipher_only": False}
            usage = x509.KeyUsage(**flags, key_cert_sign=True, crl_sign=True)
            builder = builder.add_extension(usage, critical=True)
        else:
            san = x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])
            builder = builder.add_extension(san, critical=False)
        return builder.sign(signer, hashes.SHA256())

    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test cluster CA")])
    ca = certificate("test cluster CA", ca_key, ca_name, ca_key, True)
    leaf = certificate("127.0.0.1", key, ca_name, ca_key, False)
    (directory / "server.pem").write_bytes(
        leaf.public_bytes(serialization.Encoding.PEM)
        + key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(directory / "server.pem")
    return ca.public_bytes(serialization.Encoding.PEM), context


@contextlib.contextmanager
def http_stand_in(
    routes: dict[tuple[str, str], Handler], tls: ssl.SSLContext | None = None
) -> Iterator[tuple[str, list[tuple[str, str, bytes]]]]:
    """An HTTP (or, with `tls`, HTTPS) server on 127.0.0.1 (ephemeral port) answering routes[(method, path)];
    records requests."""
    seen: list[tuple[str, str, bytes]] = []

    class H(http.server.BaseHTTPRequestHandler):
        def _any(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            seen.append((self.command, self.path, self.rfile.read(length) if length else b""))
            handler = routes.get((self.command, self.path.split("?")[0]))
            if handler is None:
                self.send_response(404)
                self.end_headers()
                return
            handler(self)

        do_GET = do_PUT = do_POST = _any

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
    if tls is not None:
        server.socket = tls.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"{'https' if tls else 'http'}://127.0.0.1:{server.server_address[1]}", seen
    finally:
        server.shutdown()
        server.server_close()


def reply(status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> Handler:
    def handle(h: http.server.BaseHTTPRequestHandler) -> None:
        h.send_response(status)
        for k, v in (headers or {}).items():
            h.send_header(k, v)
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        h.wfile.write(body)

    return handle


def json_reply(data: object) -> Handler:
    return reply(200, json.dumps(data).encode(), {"Content-Type": "application/json"})


@dataclass(frozen=True)
class Seen:
    """One request the stand-in received, and how it answered (0: it dropped the answer)."""

    method: str
    path: str
    authorization: str
    body: bytes
    status: int


@dataclass
class StandIn:
    """An HTTPS stand-in for the provisioning server, speaking the agent's protocol as kiln/hostauth.py states it:

    POST /v1/enrol          Bearer `token` + {"host_key", "macs"}: binds the key; the same key again is a retry
                            (200 again), another key 403, another token 401; answers the bundle, X-Kiln-Host
    GET /v1/bundle          signed by the bound key (KilnHost), each nonce once: the bundle
    GET /v1/bundle?after=G  signed likewise (converge): the bundle when its generation is newer than G, else 204
                            with Retry-After `retry_after`; 403 once `retired` (the host's key revoked);
                            `ignore_after`: answers like GET /v1/bundle (a server that does not know ?after=)
    GET /v1/shared/SHA256   signed likewise: `shared[SHA256]`
    POST /v1/hosts/H/events the token before the secrets are acknowledged, or signed; a signed `secrets ok`
                            spends the token and later bundles come without secrets (secrets_withheld)

    `bundle` is served stamped with `stamp` (see `stamped`) and signed by `signing_key`, at each request, so a test
    can change both between runs. `drop_enrol` enrol answers are lost: handled (the key bound), never sent.
    """

    bundle: Bundle | dict[str, Any]
    signing_key: Ed25519PrivateKey
    tls: ssl.SSLContext
    token: str = TOKEN
    host: str = "db1"
    shared: dict[str, bytes] = field(default_factory=dict)
    stamp: dict[str, Any] = field(default_factory=dict)
    drop_enrol: int = 0
    retry_after: str = "30"
    retired: bool = False
    ignore_after: bool = False
    url: str = ""
    host_key: str | None = None  # base64, as enrolment registers it
    acked: bool = False
    requests: list[Seen] = field(default_factory=list)
    events: list[tuple[str, dict[str, Any]]] = field(default_factory=list)  # ("token" | "key", event)
    _nonces: set[str] = field(default_factory=set)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def served(self) -> tuple[bytes, str]:
        b = self.bundle.withheld() if self.acked and isinstance(self.bundle, Bundle) else self.bundle
        return signed(stamped(b, **self.stamp), self.signing_key)

    def enrolments(self) -> list[Seen]:
        return [r for r in self.requests if r.path == "/v1/enrol"]

    # --- the protocol ---
    def handle(self, h: http.server.BaseHTTPRequestHandler) -> None:
        length = int(h.headers.get("Content-Length") or 0)
        body = h.rfile.read(length) if length else b""
        auth = h.headers.get("Authorization") or ""
        with self._lock:
            status, answer, headers = self._answer(h.command, h.path, auth, body)
            self.requests.append(Seen(h.command, h.path, auth, body, status))
        if status == 0:
            h.close_connection = True  # the answer is lost: the connection closes with nothing sent
            return
        h.send_response(status)  # with a Date header: the agent signs with the server's clock
        for k, v in headers.items():
            h.send_header(k, v)
        h.send_header("Content-Length", str(len(answer)))
        h.end_headers()
        h.wfile.write(answer)

    def _answer(self, method: str, path: str, auth: str, body: bytes) -> tuple[int, bytes, dict[str, str]]:
        if (method, path) == ("POST", "/v1/enrol"):
            return self._enrol(auth, body)
        if (method, path) == ("POST", f"/v1/hosts/{self.host}/events"):
            by = (
                "token" if auth == f"Bearer {self.token}" and not self.acked else self._signer(method, path, auth, body)
            )
            if not by:
                return _refusal(401, "no valid credential")
            event = json.loads(body)
            self.events.append((by, event))
            if by == "key" and (event.get("step"), event.get("status")) == ("secrets", "ok"):
                self.acked = True
            return 201, b"{}", {"Content-Type": "application/json"}
        if method == "GET" and path.startswith("/v1/bundle?after="):
            if not self._signer(method, path, auth, body):
                return _refusal(401, "host credential required")
            if self.retired:
                return _refusal(403, f"{self.host} is retired: its key was revoked")
            if not self.ignore_after and self.stamp.get("generation", 1) <= int(path.partition("=")[2]):
                return 204, b"", {"Retry-After": self.retry_after}
            return self._bundle_answer()
        if method == "GET" and (path == "/v1/bundle" or path.startswith("/v1/shared/")):
            if not self._signer(method, path, auth, body):
                return _refusal(401, "host credential required")
            if path == "/v1/bundle":
                return self._bundle_answer()
            content = self.shared.get(path.removeprefix("/v1/shared/"))
            return (200, content, {}) if content is not None else _refusal(404, "no shared content with that sha256")
        return _refusal(404, "not found")

    def _enrol(self, auth: str, body: bytes) -> tuple[int, bytes, dict[str, str]]:
        if auth != f"Bearer {self.token}" or self.acked:
            return _refusal(401, "no armed host holds this enrolment token (spent, or never minted)")
        key = str(json.loads(body)["host_key"])
        hostauth.load_public(key)
        if self.host_key is not None and key != self.host_key:
            return _refusal(403, f"{self.host}'s enrolment token was already used by another machine")
        self.host_key = key
        if self.drop_enrol > 0:
            self.drop_enrol -= 1
            return 0, b"", {}
        return self._bundle_answer()

    def _bundle_answer(self) -> tuple[int, bytes, dict[str, str]]:
        body, signature = self.served()
        return 200, body, {"Content-Type": "application/json", "X-Kiln-Signature": signature, "X-Kiln-Host": self.host}

    def _signer(self, method: str, path: str, auth: str, body: bytes) -> str:
        """ "key" when the request is signed by the bound host key (fresh, its nonce unseen), else ""."""
        if self.host_key is None:
            return ""
        try:
            claim = hostauth.parse(auth)
            public: Ed25519PublicKey = hostauth.load_public(self.host_key)
            hostauth.verify(claim, public, method, path, body, time.time())
        except hostauth.AuthError:
            return ""
        if claim.host != self.host or claim.nonce in self._nonces:
            return ""
        self._nonces.add(claim.nonce)
        return "key"

    @contextlib.contextmanager
    def running(self) -> Iterator[StandIn]:
        """Serve on 127.0.0.1 (an ephemeral port, `url`) until the block ends."""
        stand_in = self

        class H(http.server.BaseHTTPRequestHandler):
            def _any(self) -> None:
                stand_in.handle(self)

            do_GET = do_POST = _any

            def log_message(self, *args: object) -> None:
                pass

        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
        server.socket = self.tls.wrap_socket(server.socket, server_side=True)
        thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        thread.start()
        self.url = f"https://127.0.0.1:{server.server_address[1]}"
        try:
            yield self
        finally:
            server.shutdown()
            server.server_close()


def _refusal(status: int, message: str) -> tuple[int, bytes, dict[str, str]]:
    return status, json.dumps({"error": message}).encode(), {"Content-Type": "application/json"}


def seed(root: Path, url: str, *, host: str = "db1", token: str | None = TOKEN, mac: str = MAC) -> None:
    """The seed the PXE installer writes (/etc/kiln/seed.json), with the host's enrolment token unless None."""
    data = {"url": url, "host": host, "mac": mac} | ({"token": token} if token is not None else {})
    (root / "etc/kiln").mkdir(parents=True, exist_ok=True)
    (root / "etc/kiln/seed.json").write_text(json.dumps(data))


def host_public_key(root: Path) -> str:
    """The public half of the key the agent made at its first run (base64, as it enrols it)."""
    key = hostauth.load_private((root / "var/lib/firstboot/host.key").read_bytes())
    return hostauth.public_text(key.public_key())
