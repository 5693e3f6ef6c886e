"""A real `./inv serve` in a subprocess on loopback ephemeral ports, for the server's integration tests."""

from __future__ import annotations

import contextlib
import json
import re
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from kiln import hostauth
from kiln.secrets import SecretStore
from tests.integration.processes import stop_group

PROJECT = Path(__file__).resolve().parent.parent.parent
INV = [sys.executable, "-m", "invoke", "--search-root", str(PROJECT)]
LOOPBACK_URL = "https://127.0.0.1:8443"  # the site certificate then covers 127.0.0.1


def write_manifest(images: Path, role: str) -> Any:
    """images/ROLE/manifest.json and ROLE.map for the ROLE.raw already there, as ./inv build writes them (the
    build's own file_entry and block map), so kiln serve offers it for install. Returns the block map
    (kiln.blockmap.write's: its digest is what the install is pinned to)."""
    from kiln import blockmap
    from kiln.build.manifest import file_entry

    raw = images / role / f"{role}.raw"
    block_map = blockmap.write(raw, images / role / f"{role}.map")
    manifest = {"role": role, "files": {raw.name: file_entry(raw)}, "blockmap": block_map.manifest_entry(f"{role}.map")}
    (images / role / "manifest.json").write_text(json.dumps(manifest))
    return block_map


def loopback_roles(directory: Path, text: str | None = None) -> Path:
    """The shipped roles.yaml (or `text`) with the provisioning URL on loopback."""
    text = text if text is not None else (PROJECT / "roles.yaml").read_text()
    path = directory / "roles.yaml"
    path.write_text(re.sub(r'url: "?https://[^"}\s]+"?', f'url: "{LOOPBACK_URL}"', text))
    return path


@dataclass
class RunningServer:
    process: subprocess.Popen[bytes]
    log: Path
    http_url: str
    tls_url: str
    fingerprint: str
    secrets: SecretStore
    roles: Path
    database: str

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def tls_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.secrets.ca_pem))

    def client(
        self,
        *,
        timeout: float = 10,
        operator: bool = True,
        headers: dict[str, str] | None = None,
        check_hostname: bool = True,
        **kwargs: Any,
    ) -> httpx.Client:
        """Verifies the server with secrets/ca.pem only, as a booting host does; as the operator (their token
        as a bearer token) unless `operator=False` or other credentials in `headers`: then it is anyone.
        `check_hostname=False` for a certificate that names another address (the guest's view of this machine)."""
        sent = {"Authorization": f"Bearer {self.secrets.operator_token()}"} if operator else {}
        context = self.tls_context()
        context.check_hostname = check_hostname
        return httpx.Client(verify=context, timeout=timeout, headers={**sent, **(headers or {})}, **kwargs)

    def token(self, host: str) -> str:
        """The host's enrolment token, as the operator reads it (GET /v1/hosts/NAME/seed)."""
        with self.client() as c:
            answer = c.get(f"{self.tls_url}/v1/hosts/{host}/seed")
        assert answer.status_code == 200, answer.text
        return str(answer.json()["token"])

    def host(self, name: str, mac: str) -> HostClient:
        return HostClient(self, name, mac)

    def inv(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*INV, *args], capture_output=True, text=True, timeout=60, check=False)


@dataclass
class HostClient:
    """A host as the agent talks to the server: enrol with its token and its own key, then sign every call."""

    server: RunningServer
    name: str
    mac: str
    key: Ed25519PrivateKey = field(default_factory=hostauth.generate_key)

    def enrol(self, token: str | None = None, *, macs: list[str] | None = None) -> httpx.Response:
        body = json.dumps({"host_key": hostauth.public_text(self.key.public_key()), "macs": macs or [self.mac]})
        headers = {
            "Authorization": f"Bearer {token or self.server.token(self.name)}",
            "Content-Type": "application/json",
        }
        with self.server.client(operator=False) as c:
            return c.post(f"{self.server.tls_url}/v1/enrol", content=body, headers=headers)

    def signed(self, method: str, path: str, body: bytes = b"", **headers: str) -> httpx.Response:
        auth = hostauth.authorization(self.key, self.name, method, path, body)
        with self.server.client(operator=False) as c:
            return c.request(
                method, f"{self.server.tls_url}{path}", content=body, headers={"Authorization": auth, **headers}
            )

    def bundle(self) -> httpx.Response:
        return self.signed("GET", "/v1/bundle")

    def event(self, step: str, status: str, detail: str = "") -> httpx.Response:
        body = json.dumps({"step": step, "status": status, "detail": detail}).encode()
        return self.signed("POST", f"/v1/hosts/{self.name}/events", body, **{"Content-Type": "application/json"})


def _wait_started(process: subprocess.Popen[bytes], log: Path, timeout: float = 30) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = log.read_text(errors="replace")
        if "signing key" in text:
            return text
        if process.poll() is not None:
            raise RuntimeError(f"./inv serve exited {process.returncode}:\n{text}")
        time.sleep(0.05)
    raise RuntimeError(f"./inv serve did not start within {timeout}s:\n{log.read_text(errors='replace')}")


@contextlib.contextmanager
def running_server(
    tmp: Path,
    *,
    roles: Path | None = None,
    database: str | None = None,
    images: Path | None = None,
    secrets: Path | None = None,
    extra: tuple[str, ...] = (),
    tls_port: int = 0,
    start_timeout: float = 30,
    address: str = "127.0.0.1",
) -> Iterator[RunningServer]:
    """`address`: where both listeners bind (the URLs given name it; 0.0.0.0 is named by its loopback)."""
    tmp.mkdir(parents=True, exist_ok=True)
    roles = roles or loopback_roles(tmp)
    database = database or f"sqlite:///{tmp / 'state' / 'kiln.db'}"
    secrets = secrets or tmp / "secrets"
    images = images or tmp / "images"
    log = tmp / "serve.log"
    args = [
        *INV,
        "serve",
        "--roles",
        str(roles),
        "--listen",
        f"{address}:0",
        "--tls-listen",
        f"{address}:{tls_port}",
        "--database",
        database,
        "--secrets",
        str(secrets),
        "--images",
        str(images),
        *extra,
    ]
    with log.open("wb") as out:
        process = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, cwd=PROJECT, start_new_session=True)
    try:
        text = _wait_started(process, log, start_timeout)
        http_url = re.search(r"boot scripts\s+(http://\S+?)/boot\.ipxe", text)
        tls_url = re.search(r"dashboard\s+(https://\S+?)/\s", text)
        fingerprint = re.search(r"signing key\s+(SHA256:\S+)", text)
        assert http_url and tls_url and fingerprint, text
        yield RunningServer(
            process, log, http_url[1], tls_url[1], fingerprint[1], SecretStore(secrets), roles, database
        )
    finally:
        stop_group(process)
