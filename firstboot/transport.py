"""One HTTP(S) request to the provisioning server, with the cluster CA context for https."""

from __future__ import annotations

import http.client
import ssl
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit


@dataclass(frozen=True)
class Answer:
    status: int
    body: bytes
    headers: dict[str, str]


def tls_context(ca_pem: Path) -> ssl.SSLContext:
    """Only the cluster CA is trusted (no system store); hostnames are checked."""
    return ssl.create_default_context(cafile=str(ca_pem))


def request(
    method: str,
    base_url: str,
    path: str,
    *,
    context: ssl.SSLContext | None,
    timeout: float,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> Answer:
    """`path` under `base_url`; raises OSError (ssl errors included) or http.client.HTTPException."""
    parts = urlsplit(base_url)
    host = parts.hostname or ""
    conn: http.client.HTTPConnection
    if parts.scheme == "https":
        conn = http.client.HTTPSConnection(host, parts.port or 443, timeout=timeout, context=context)
    else:
        conn = http.client.HTTPConnection(host, parts.port or 80, timeout=timeout)
    try:
        conn.request(method, parts.path.rstrip("/") + path, body=body, headers=headers or {})
        response = conn.getresponse()
        return Answer(response.status, response.read(), {k.lower(): v for k, v in response.getheaders()})
    finally:
        conn.close()
