"""The cluster NIC under its rendered name (kiln0), now rather than at the next boot.

The rendered 10-kiln0.link renames the NIC with this host's MAC, but udev applies .link files only when
a device appears: on the first boot the NIC already has its kernel name. The agent renames it (a link
must be down to be renamed) so that keepalived, nftables and the rest can name it right away.
"""

from __future__ import annotations

import json

from kiln.mac import normalize
from kiln.run import run


def interface_with_mac(mac: str) -> str | None:
    links = json.loads(run(["ip", "-json", "link", "show"]).stdout or "[]")
    wanted = normalize(mac)
    return next((link["ifname"] for link in links if _mac_of(link) == wanted), None)


def _mac_of(link: dict[str, str]) -> str:
    try:
        return normalize(link.get("address", ""))
    except ValueError:  # loopback's and tunnels' addresses are no Ethernet MACs
        return ""


def ensure_name(mac: str, name: str) -> str:
    """Rename the NIC with `mac` to `name` when it is called otherwise; say what was done."""
    current = interface_with_mac(mac)
    if current is None:
        return f"no NIC with MAC {mac} (the rendered .link names it at the next boot)"
    if current == name:
        return f"{name} ({mac}) unchanged"
    was_up = "UP" in json.loads(run(["ip", "-json", "link", "show", "dev", current]).stdout)[0]["flags"]
    run(["ip", "link", "set", "dev", current, "down"])
    run(["ip", "link", "set", "dev", current, "name", name])
    if was_up:
        run(["ip", "link", "set", "dev", name, "up"])
    return f"renamed {current} to {name} ({mac})"


def holds_address(address: str) -> bool:
    """Whether an interface of this network namespace has the IPv4 address."""
    out = run(["ip", "-o", "-4", "addr", "show"]).stdout
    return any(f" inet {address}/" in line for line in out.splitlines())
