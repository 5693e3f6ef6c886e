"""The provisioning server's host list, read over HTTPS with the cluster CA pinned (from inside the namespace)."""

from __future__ import annotations

import json
import ssl
import urllib.request
from typing import Any

from kiln.lab.layout import Lab


def hosts(lab: Lab, timeout: float = 10) -> list[dict[str, Any]]:
    """GET /v1/hosts: every host with its state, last event and timeline."""
    context = ssl.create_default_context(cafile=str(lab.secrets / "ca.pem"))
    with urllib.request.urlopen(f"{lab.server_url}/v1/hosts", timeout=timeout, context=context) as response:
        return json.loads(response.read())["hosts"]


def try_hosts(lab: Lab) -> list[dict[str, Any]] | None:
    try:
        return hosts(lab, timeout=5)
    except (OSError, ValueError):
        return None
