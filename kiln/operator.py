"""The operator's side of the provisioning server's API: HTTPS with the cluster CA pinned, the operator token
(secrets/operator.token) as a bearer token. `./inv plan`, `apply` and `hosts` and the lab use it.

    server = Server.of(cluster, secrets_dir)          # the URL roles.yaml's provisioning URL names
    server.get("/v1/hosts?timeline=0")               -> the decoded JSON
    server.post("/v1/publish", {...})                 -> (status, decoded JSON)

ServerError says what went wrong and what to do (not running, wrong CA, wrong token).
"""

from __future__ import annotations

import json
import ssl
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kiln.model import Cluster


class ServerError(Exception):
    """The server could not be asked, or refused the operator: the message says which and what to do."""


@dataclass(frozen=True)
class Server:
    url: str  # https://HOST:PORT
    ca: Path  # the cluster CA that issued the server's certificate
    token: Path  # the operator token file

    @classmethod
    def of(cls, cluster: Cluster, secrets: Path, url: str | None = None) -> Server:
        """The server roles.yaml names (or `url`), with the CA and token under `secrets`."""
        return cls((url or cluster.provisioning_url).rstrip("/"), secrets / "ca.pem", secrets / "operator.token")

    def _context(self) -> ssl.SSLContext:
        try:
            return ssl.create_default_context(cafile=str(self.ca))
        except (FileNotFoundError, ssl.SSLError) as e:
            raise ServerError(f"cannot read the cluster CA {self.ca}: {e} (./inv keys makes it)") from None

    def _headers(self) -> dict[str, str]:
        try:
            token = self.token.read_text().strip()
        except FileNotFoundError:
            raise ServerError(f"no operator token at {self.token} (./inv keys or ./inv serve makes it)") from None
        return {"Authorization": f"Bearer {token}", "Accept": "application/json"}

    def call(
        self, method: str, path: str, body: dict[str, Any] | None = None, *, timeout: float = 30
    ) -> tuple[int, Any]:
        """(HTTP status, decoded JSON body or None). ServerError when the server cannot be reached or refuses
        the operator (401/403)."""
        headers = self._headers()
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        request = urllib.request.Request(f"{self.url}{path}", data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=timeout, context=self._context()) as response:
                status, raw = response.status, response.read()
        except urllib.error.HTTPError as e:
            status, raw = e.code, e.read()
        except (urllib.error.URLError, OSError) as e:
            reason = getattr(e, "reason", e)
            message = f"cannot reach the provisioning server at {self.url}: {reason} (is ./inv serve up?)"
            raise ServerError(message) from None
        if status in (401, 403):
            raise ServerError(f"the server at {self.url} refused the operator token {self.token} (HTTP {status})")
        try:
            return status, json.loads(raw) if raw else None
        except ValueError:
            raise ServerError(f"{method} {path}: the server answered HTTP {status} with no JSON") from None

    def get(self, path: str, *, timeout: float = 30) -> Any:
        status, answer = self.call("GET", path, timeout=timeout)
        if status != 200:
            raise ServerError(f"GET {path}: HTTP {status}: {_said(answer)}")
        return answer

    def post(self, path: str, body: dict[str, Any], *, timeout: float = 120) -> tuple[int, Any]:
        return self.call("POST", path, body, timeout=timeout)


def _said(answer: Any) -> str:
    return str(answer.get("error", answer)) if isinstance(answer, dict) else str(answer)
