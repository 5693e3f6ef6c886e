"""Fetch this host's bundle over HTTPS with the cluster CA pinned, retrying with bounded backoff."""

from __future__ import annotations

import http.client
import ssl
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, urlsplit

from firstboot.backoff import Backoff, DeadlineExceeded, Retry, retry
from firstboot.errors import FetchFailed
from firstboot.log import LOG
from firstboot.transport import request, tls_context

SIGNATURE_HEADER = "X-Kiln-Signature"
TIMEOUT = 10.0


@dataclass(frozen=True)
class Fetched:
    body: bytes
    signature: str | None
    mac: str


def fetch_bundle(url: str, macs: list[str], ca_pem: Path, backoff: Backoff) -> Fetched:
    """GET /v1/bundle?mac=MAC for each MAC in order until one is known; retry transient failures."""
    if urlsplit(url).scheme != "https":
        raise FetchFailed(
            f"{url}: the provisioning URL must be https (the cluster CA is pinned)", "fix the URL in the source"
        )
    try:
        context = tls_context(ca_pem)
    except (OSError, ssl.SSLError) as e:
        raise FetchFailed(
            f"cannot load the cluster CA {ca_pem}: {e}", "the image lacks /etc/kiln/ca.pem; rebuild it"
        ) from None
    if not macs:
        raise FetchFailed("this machine has no network interface with a MAC address")

    def attempt() -> Fetched:
        unknown = []
        for mac in macs:
            try:
                answer = request("GET", url, f"/v1/bundle?mac={quote(mac)}", context=context, timeout=TIMEOUT)
                status, body, signature = answer.status, answer.body, answer.headers.get(SIGNATURE_HEADER.lower())
            except ssl.SSLCertVerificationError as e:
                raise Retry(f"TLS: {e.verify_message} (is {url} serving a certificate from the cluster CA?)") from None
            except (TimeoutError, OSError, http.client.HTTPException) as e:
                raise Retry(f"{url}: {e.__class__.__name__}: {e}") from None
            if status == 200:
                LOG.info("fetched the bundle for %s (%d bytes)", mac, len(body))
                return Fetched(body, signature, mac)
            if status == 404:
                unknown.append(mac)
                continue
            raise Retry(f"{url}/v1/bundle?mac={mac}: HTTP {status}: {body[:200].decode(errors='replace')}")
        raise Retry(f"the server knows none of this machine's MACs ({', '.join(unknown)}); is the host in roles.yaml?")

    try:
        return retry(attempt, "fetch bundle", backoff)
    except DeadlineExceeded as e:
        raise FetchFailed(
            f"no bundle within {backoff.deadline:.0f}s: {e.last}",
            f"check that the provisioning server ({url}) is up (./inv serve) and reachable from this host, "
            "then reboot or run `firstboot run`",
        ) from None
