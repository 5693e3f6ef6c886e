"""This machine's identity: the MACs of its NICs, the boot interface (BOOTIF or the installer's seed) first."""

from __future__ import annotations

from firstboot.paths import Paths
from kiln.mac import normalize

NULL_MAC = "00:00:00:00:00:00"


def macs(paths: Paths, first: str = "") -> list[str]:
    found: list[str] = []
    if first:
        found.append(normalize(first))
    try:
        interfaces = sorted(paths.sys_net.iterdir())
    except FileNotFoundError:
        interfaces = []
    for iface in interfaces:
        if iface.name == "lo":
            continue
        try:
            mac = normalize((iface / "address").read_text())
        except (OSError, ValueError):
            continue
        if mac != NULL_MAC and mac not in found:
            found.append(mac)
    return found
