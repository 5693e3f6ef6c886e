"""Probes the verify suite and the drills use from inside the lab namespace: TCP connects from a chosen source
address, HTTPS through the VIP with the cluster CA pinned, and the same connect attempted from a lab host."""

from __future__ import annotations

import errno
import http.client
import json
import socket
import ssl
from dataclasses import dataclass
from typing import Any

OPEN, REFUSED, DROPPED = "open", "refused", "dropped"


def connect(dst: str, port: int, src: str | None = None, timeout: float = 3.0) -> str:
    """open, refused (RST or ICMP) or dropped (no answer within `timeout`)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        if src:
            s.bind((src, 0))
        try:
            s.connect((dst, port))
        except TimeoutError:
            return DROPPED
        except OSError as e:
            if e.errno in (errno.ECONNREFUSED, errno.EHOSTUNREACH, errno.ENETUNREACH, errno.EACCES, errno.EPERM):
                return REFUSED
            raise
    return OPEN


@dataclass(frozen=True)
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def request(
    vip: str,
    domain: str,
    cafile: str,
    method: str = "GET",
    path: str = "/",
    *,
    tls: bool = True,
    body: bytes | None = None,
    src: str | None = None,
    timeout: float = 10,
) -> Reply:
    """One HTTP(S) request to the VIP with Host and SNI set to the site's domain (certificate checked)."""
    source = (src, 0) if src else None
    if tls:
        context = ssl.create_default_context(cafile=cafile)
        conn: http.client.HTTPConnection = _SniConnection(
            vip, 443, domain, context=context, timeout=timeout, source_address=source
        )
    else:
        conn = http.client.HTTPConnection(vip, 80, timeout=timeout, source_address=source)
    try:
        headers = {"Host": domain}
        if body is not None:
            headers["Content-Type"] = "application/json"
        conn.request(method, path, body=body, headers=headers)
        response = conn.getresponse()
        return Reply(response.status, {k.lower(): v for k, v in response.getheaders()}, response.read())
    finally:
        conn.close()


class _SniConnection(http.client.HTTPSConnection):
    """HTTPS to an address, with the TLS server name (and certificate check) for the site's domain."""

    def __init__(self, address: str, port: int, server_name: str, *, context: ssl.SSLContext, **kwargs: Any) -> None:
        super().__init__(address, port, context=context, **kwargs)
        self._server_name = server_name
        self._tls = context  # HTTPSConnection keeps its context private (and untyped) as _context

    def connect(self) -> None:
        http.client.HTTPConnection.connect(self)
        self.sock = self._tls.wrap_socket(self.sock, server_hostname=self._server_name)
