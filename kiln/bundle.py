"""The bundle: everything one host needs, as JSON. Shared by the renderer, the server and the agent.

A bundle is a JSON object:
  schema      BUNDLE_SCHEMA (the agent refuses any other)
  cluster     cluster name
  host        {name, role, mac, ip, fqdn}
  network     {interface, address, prefix, gateway, dns, vip}
  directories [{path, mode, owner, group}]
  files       [{path, mode, owner, group, content}]
  secrets     [{name, path, mode, owner, group, value}]  value is null until the server fills it
  services    [{unit, enable, restart_on: [paths]}]
  join        {kind, params}
  checks      [{name, kind, ...}]
  secrets_withheld  true when the server handed this host's secrets out already
"""

from __future__ import annotations

import json
from typing import Any

BUNDLE_SCHEMA = 1


def dumps(bundle: dict[str, Any]) -> bytes:
    """Canonical bytes of a bundle: sorted keys, no insignificant whitespace, UTF-8."""
    return json.dumps(bundle, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def secret_names(bundle: dict[str, Any]) -> list[str]:
    return [s["name"] for s in bundle.get("secrets", [])]
