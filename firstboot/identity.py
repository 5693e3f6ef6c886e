"""This machine's identity: the MACs of its NICs, the boot interface (BOOTIF or the installer's seed) first.

BOOTIF only orders the list: a MAC that no NIC of this machine has is not this machine's, whatever the kernel
command line or a seed says (a BOOTIF naming another host's MAC must not make this one that host).
"""

from __future__ import annotations

from firstboot.log import LOG
from firstboot.paths import Paths
from kiln.mac import normalize

NULL_MAC = "00:00:00:00:00:00"


def nic_macs(paths: Paths) -> list[str]:
    """The MAC of every NIC but loopback, in interface name order."""
    try:
        interfaces = sorted(paths.sys_net.iterdir())
    except FileNotFoundError:
        return []
    found: list[str] = []
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


def macs(paths: Paths, first: str = "") -> list[str]:
    """This machine's MACs, the boot interface's first when `first` (BOOTIF, the seed's) is one of them."""
    found = nic_macs(paths)
    if not first:
        return found
    try:
        boot = normalize(first)
    except ValueError:
        LOG.warning("ignoring the boot interface %r: not a MAC address", first)
        return found
    if boot not in found:
        LOG.warning("ignoring the boot interface %s: no NIC of this machine has that MAC", boot)
        return found
    return [boot, *(m for m in found if m != boot)]
