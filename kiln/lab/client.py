"""The provisioning server's host list, read over HTTPS with the cluster CA pinned (from inside the namespace)."""

from __future__ import annotations

import json
import ssl
import urllib.request
from typing import Any

from kiln.lab.layout import Lab


def _get(lab: Lab, path: str, timeout: float) -> Any:
    """GET `path` as the operator (secrets/operator.token), the cluster CA pinned."""
    context = ssl.create_default_context(cafile=str(lab.secrets / "ca.pem"))
    token = (lab.secrets / "operator.token").read_text().strip()
    call = urllib.request.Request(f"{lab.server_url}{path}", headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(call, timeout=timeout, context=context) as response:
        return json.loads(response.read())


def hosts(lab: Lab, timeout: float = 10) -> list[dict[str, Any]]:
    """GET /v1/hosts: every host the lab boots (Lab.hosts) with its state, last event and timeline; the server
    also lists the hosts the lab leaves off, forever waiting."""
    booted = {h.name for h in lab.hosts}
    return [r for r in _get(lab, "/v1/hosts", timeout)["hosts"] if r["name"] in booted]


def seed(lab: Lab, name: str, timeout: float = 10) -> dict[str, Any]:
    """GET /v1/hosts/NAME/seed: what a VM booted from its disk image needs to enrol (URL, name, MAC, token)."""
    return dict(_get(lab, f"/v1/hosts/{name}/seed", timeout))


def try_hosts(lab: Lab) -> list[dict[str, Any]] | None:
    try:
        return hosts(lab, timeout=5)
    except (OSError, ValueError):
        return None


def access(lab: Lab, *, outcome: str | None = None, timeout: float = 10) -> list[dict[str, Any]]:
    """GET /v1/access: the server's newest access log lines (grants and refusals, with their peers)."""
    query = f"?outcome={outcome}" if outcome else ""
    return list(_get(lab, f"/v1/access{query}", timeout)["access"])


def alerts(lab: Lab, timeout: float = 10) -> dict[str, list[dict[str, Any]]]:
    """GET /v1/alerts: what Alertmanager told the server (its webhook receiver), {"firing": [...], "resolved": [...]},
    each entry with alertname, status, host and labels (kiln/server/alerts.py)."""
    return dict(_get(lab, "/v1/alerts", timeout))
