"""Where the cluster's alerts go: roles.yaml's optional `monitoring: {alerts_to: [...]}`. No side effects.

Each receiver is `provisioning` (the provisioning server's POST /v1/alerts, authenticated by the token in
secrets/alertmanager.token) or the https URL of another webhook receiver; without the section, the provisioning
server alone. kiln/monitoring/config.py turns them into Alertmanager's webhook_configs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

PROVISIONING = "provisioning"


@dataclass(frozen=True)
class Monitoring:
    alerts_to: tuple[str, ...] = (PROVISIONING,)  # `provisioning` or https URLs, in roles.yaml's order


def build(section: dict[str, Any] | None, default: list[str]) -> Monitoring:
    """The typed section from a valid document's `monitoring` mapping (None: absent); `default`: the schema's."""
    return Monitoring(alerts_to=tuple((section or {}).get("alerts_to", default)))


def same_server(url: str, provisioning_url: str) -> bool:
    """Whether `url` reaches the provisioning server itself (same host and port): as a plain URL it would carry no
    token, and the server refuses an unauthenticated notification."""
    try:
        a, b = urlsplit(url), urlsplit(provisioning_url)
        return (a.hostname, a.port or 443) == (b.hostname, b.port or 443)
    except ValueError:  # a port out of range: the shape check says so
        return False
