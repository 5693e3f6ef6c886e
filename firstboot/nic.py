"""The cluster NIC under its rendered name (kiln0), now rather than at the next boot.

The rendered 10-kiln0.link renames the NIC with this host's MAC, but udev applies .link files only when
a device appears: on the first boot the NIC already has its kernel name. The agent renames it (a link
must be down to be renamed) so that keepalived, nftables and the rest can name it right away. When kiln0
is a bond (roles.yaml hosts[].network.bond) the NIC is one of its members and takes the member's name
(kiln0m0...) from its rendered .link instead; networkd creates the bond kiln0 and enslaves it.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from kiln.bundle import File
from kiln.mac import normalize
from kiln.run import run

# Devices that take their MAC from a NIC: never "the NIC with the host's MAC" (a bond of the host's NICs has it)
STACKED = frozenset({"bond", "vlan", "bridge", "macvlan", "ipvlan"})


def interface_with_mac(mac: str) -> str | None:
    """The NIC whose own MAC is `mac`: its permanent one when a bond gave it another; None when there is none."""
    links = json.loads(run(["ip", "-details", "-json", "link", "show"]).stdout or "[]")
    wanted = normalize(mac)
    return next((link["ifname"] for link in links if _kind(link) not in STACKED and _mac_of(link) == wanted), None)


def _kind(link: dict[str, Any]) -> str:
    return str(link.get("linkinfo", {}).get("info_kind", ""))


def _mac_of(link: dict[str, Any]) -> str:
    try:
        return normalize(link.get("permaddr") or link.get("address", ""))  # permaddr: only when it differs
    except ValueError:  # loopback's and tunnels' addresses are no Ethernet MACs
        return ""


def link_name(files: Iterable[File], mac: str) -> str | None:
    """The name the bundle's .link files give the NIC with `mac` (kiln0, or kiln0mN when kiln0 is a bond of it):
    the Name= of the first, by file name as udev orders them, whose MACAddress= or PermanentMACAddress= is `mac`.
    None when none does."""
    wanted = normalize(mac)
    for f in sorted((f for f in files if f.path.endswith(".link")), key=lambda f: Path(f.path).name):
        keys = dict(line.split("=", 1) for line in f.content.splitlines() if "=" in line and not line.startswith("#"))
        matched = keys.get("PermanentMACAddress") or keys.get("MACAddress")
        if matched and _normal(matched) == wanted and keys.get("Name"):
            return keys["Name"].strip()
    return None


def _normal(text: str) -> str:
    try:
        return normalize(text.strip())
    except ValueError:
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
