"""Helpers for the first-boot agent's tests: signed bundles, a fake machine root, small local HTTP stand-ins."""

from __future__ import annotations

import contextlib
import http.server
import json
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from kiln import signing
from kiln.bundle import BUNDLE_SCHEMA, dumps

MAC = "52:54:00:10:00:41"
OTHER_MAC = "52:54:00:99:99:99"
SECRETS = {
    "db_app_password": "app-S3cret-value-7f1c2a",
    "db_replication_password": "repl-S3cret-value-9b8d11",
    "db_admin_password": "admin-S3cret-value-4e0f33",
}


def bundle(mac: str = MAC, *, secrets: dict[str, str | None] | None = None, withheld: bool = False) -> dict[str, Any]:
    values = SECRETS if secrets is None else secrets
    return {
        "schema": BUNDLE_SCHEMA,
        "cluster": "test",
        "host": {"name": "db1", "role": "db", "mac": mac, "ip": "10.10.0.41", "fqdn": "db1.test"},
        "network": {
            "interface": "kiln0",
            "address": "10.10.0.41",
            "prefix": 24,
            "gateway": "10.10.0.1",
            "dns": [],
            "vip": "10.10.0.100",
        },  # fmt: skip
        "directories": [{"path": "/etc/kiln/secrets", "mode": "0711", "owner": "root", "group": "root"}],
        "files": [
            {"path": "/etc/hostname", "mode": "0644", "owner": "root", "group": "root", "content": "db1\n"},
            {"path": "/etc/kiln/app.env", "mode": "0640", "owner": "root", "group": "kiln-app", "content": "A=1\n"},
        ],
        "secrets": [
            {"name": n, "path": f"/etc/kiln/secrets/{n}", "mode": "0600", "owner": "root", "group": "root", "value": v}
            for n, v in values.items()
        ],
        "services": [],
        "join": {"kind": "db-primary", "params": {}},
        "checks": [],
        "secrets_withheld": withheld,
    }


def signed(data: dict[str, Any], key: Any) -> tuple[bytes, str]:
    body = dumps(data)
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


def cache_bundle(root: Path, data: dict[str, Any], key: Any) -> None:
    """A bundle as the fetch step leaves it (what a resumed run reads)."""
    body, signature = signed(data, key)
    state = root / "var/lib/firstboot"
    state.mkdir(parents=True, exist_ok=True)
    (state / "bundle.json").write_bytes(body)
    (state / "bundle.sig").write_text(signature)


Handler = Callable[[http.server.BaseHTTPRequestHandler], None]


@contextlib.contextmanager
def http_stand_in(routes: dict[tuple[str, str], Handler]) -> Iterator[tuple[str, list[tuple[str, str, bytes]]]]:
    """A plain HTTP server on 127.0.0.1 (ephemeral port) answering routes[(method, path)]; records requests."""
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
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", seen
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
