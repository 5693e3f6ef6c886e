"""EC2 IMDSv2 user-data: PUT a session token (TTL header), then GET user-data with it.

Connect timeouts are short (0.2 s by default), so a host that is not on EC2 moves on in well under a second.
User-data is JSON {"url": ..., "host": ...} or kiln.url=/kiln.host= words.
"""

from __future__ import annotations

import http.client
import json
from urllib.parse import urlsplit

from firstboot.paths import Paths
from firstboot.sources import Settings, Source, parse_key_values, source_from_mapping

TOKEN_TTL = "300"


def _request(settings: Settings, method: str, path: str, headers: dict[str, str]) -> bytes | None:
    """The body of a 200 answer; None when nothing answers in time, or on any other status."""
    url = urlsplit(settings.imds_endpoint)
    conn = http.client.HTTPConnection(url.hostname or "", url.port or 80, timeout=settings.imds_timeout)
    try:
        conn.connect()  # the short timeout covers the connect only
        assert conn.sock is not None
        conn.sock.settimeout(settings.imds_read_timeout)
        conn.request(method, path, headers=headers)
        response = conn.getresponse()
        body = response.read()
        return body if response.status == 200 else None
    except (OSError, http.client.HTTPException):
        return None
    finally:
        conn.close()


def source(paths: Paths, settings: Settings) -> Source | None:
    if not settings.imds_endpoint:
        return None
    token = _request(settings, "PUT", "/latest/api/token", {"X-aws-ec2-metadata-token-ttl-seconds": TOKEN_TTL})
    if not token:
        return None
    body = _request(settings, "GET", "/latest/user-data", {"X-aws-ec2-metadata-token": token.decode().strip()})
    if not body:
        return None
    text = body.decode(errors="replace").strip()
    if text.startswith("{"):
        data = json.loads(text)
        return source_from_mapping(data, "EC2 user-data") if isinstance(data, dict) else None
    return source_from_mapping(dict(parse_key_values(text)), "EC2 user-data")
