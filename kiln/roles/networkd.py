"""A host's systemd-networkd files, from roles.yaml hosts[].network (the model checks it: kiln/model/netcheck.py).

The cluster interface is always kiln0 and always holds the host's `ip`, untagged: PXE, the firewall, keepalived,
the exporters and the agent name it. A host that declares nothing gets what every host got before this module:
the NIC with its MAC named kiln0 by 10-kiln0.link (kiln0.link.j2) and 10-kiln0.network (kiln0.network.j2).

A host that declares a network section gets, besides:
  - 10-kiln0.network matched by name, not MAC: a VLAN (and a bond) carries kiln0's MAC, and would match it too;
    its MTU, every address, the gateway and DNS, its VLANs and the routes through its networks;
  - with a bond, no 10-kiln0.link (the NIC with the host's MAC must not take the name kiln0: the bond needs it):
    10-kiln0.netdev (the bond, with the host's MAC, so the host keeps its identity on the wire: ARP caches,
    DHCP reservations, switch tables), and per member 10-kiln0mN.link (named kiln0mN) and 10-kiln0mN.network
    (enslaved), both matched by the permanent MAC: a bond gives every member its own MAC, the current one;
  - per VLAN 10-kiln0.ID.netdev and 10-kiln0.ID.network, with its addresses and the routes through them.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from kiln.model.cluster import Bond, BondMode, HostNetwork, Route, Vlan
from kiln.roles.context import HostContext
from kiln.roles.spec import FileSpec

DIRECTORY = "/etc/systemd/network"
LINK_FILE = f"{DIRECTORY}/10-kiln0.link"
NETWORK_FILE = f"{DIRECTORY}/10-kiln0.network"
TEMPLATE = "networkd.j2"
MII_MONITOR = "100ms"  # how often a bond looks at its members' links: without it a dead link is never noticed
LACP_HASH = "layer3+4"  # 802.3ad spreads flows by addresses and ports: with layer2 two hosts talk over one link


@dataclass(frozen=True)
class Section:
    name: str  # Match, Link, Network, Route, NetDev, Bond, VLAN
    lines: tuple[tuple[str, str], ...]  # (key, value), in order; a key may repeat (Address=)


@dataclass(frozen=True)
class Unit:
    """One networkd file's content, for networkd.j2."""

    comment: str  # what the file is for, after "Rendered by kiln: "
    sections: tuple[Section, ...]


@dataclass(frozen=True)
class NetworkdFile:
    spec: FileSpec
    unit: Unit | None  # None: the template renders from the host's variables alone (kiln0.link.j2, kiln0.network.j2)


# What a host that declares no network section gets: unchanged since before hosts[].network existed.
ONE_NIC = (
    NetworkdFile(FileSpec(LINK_FILE, "kiln0.link.j2"), None),
    NetworkdFile(FileSpec(NETWORK_FILE, "kiln0.network.j2"), None),
)


def member_name(interface: str, index: int) -> str:
    """The bond member's interface name: kiln0m0, kiln0m1, ... (at most 15 characters: 8 members)."""
    return f"{interface}m{index}"


def vlan_name(interface: str, vid: int) -> str:
    """The VLAN's interface name: kiln0.20."""
    return f"{interface}.{vid}"


def files(network: HostNetwork | None, c: HostContext) -> tuple[NetworkdFile, ...]:
    """The host's networkd files, in the bundle's order: kiln0's, the bond's members', then each VLAN's. `network`
    is the host's valid section (None: the one-NIC files); `c` gives the interface, MAC, `ip`, gateway and DNS."""
    if network is None:
        return ONE_NIC
    vlans = {vlan_name(c.interface, v.id): v for v in network.vlans}
    own = (ipaddress.IPv4Interface(f"{c.ip}/{c.prefix}"), *network.addresses)
    kiln0 = Unit(
        f"{c.interface}: the cluster address, more addresses, VLANs and routes.",
        (
            Section("Match", (("Name", c.interface),)),
            *_mtu(network.mtu),
            Section(
                "Network",
                (
                    *(("Address", str(a)) for a in own),
                    ("Gateway", c.gateway),
                    *(("DNS", d) for d in c.dns),
                    *(("VLAN", name) for name in vlans),
                    ("LinkLocalAddressing", "no"),
                    ("IPv6AcceptRA", "no"),
                ),
            ),
            *_routes(network.routes, own),
        ),
    )
    out = [NetworkdFile(FileSpec(NETWORK_FILE, TEMPLATE), kiln0)]
    if network.bond is None:
        out.insert(0, ONE_NIC[0])
    else:
        out.insert(0, NetworkdFile(FileSpec(f"{DIRECTORY}/10-{c.interface}.netdev", TEMPLATE), _bond(network.bond, c)))
        out += _members(network.bond, c.interface)
    for name, vlan in vlans.items():
        out += _vlan(name, vlan, network.routes, network.mtu)
    return tuple(out)


def _mtu(mtu: int | None) -> tuple[Section, ...]:
    # in the .network, not the .netdev: networkd sets a .network's MTU at every reconfigure, a .netdev's only when
    # it creates the device
    return (Section("Link", (("MTUBytes", str(mtu)),)),) if mtu else ()


def _routes(routes: tuple[Route, ...], addresses: tuple[ipaddress.IPv4Interface, ...]) -> tuple[Section, ...]:
    """The routes whose gateway is on one of these addresses' networks: the interface that reaches it has them."""
    return tuple(
        Section("Route", (("Destination", str(r.to)), ("Gateway", str(r.via))))
        for r in routes
        if any(r.via in a.network for a in addresses)
    )


def _bond(bond: Bond, c: HostContext) -> Unit:
    settings = [("Mode", bond.mode.value)]
    if bond.mode is BondMode.lacp:
        settings += [("LACPTransmitRate", bond.lacp_rate or "slow"), ("TransmitHashPolicy", LACP_HASH)]
    settings.append(("MIIMonitorSec", MII_MONITOR))
    return Unit(
        f"{c.interface} is a bond ({bond.mode.value}) of {', '.join(bond.members)}, with this host's MAC.",
        (
            Section("NetDev", (("Name", c.interface), ("Kind", "bond"), ("MACAddress", c.mac))),
            Section("Bond", tuple(settings)),
        ),
    )


def _members(bond: Bond, interface: str) -> list[NetworkdFile]:
    out = []
    for i, member in enumerate(bond.members):
        name = member_name(interface, i)
        match = Section("Match", (("PermanentMACAddress", member),))
        enslave = [("Bond", interface)]
        if member == bond.primary:
            enslave.append(("PrimarySlave", "yes"))
        link = Unit(
            f"the NIC {member} is named {name}, a member of {interface}.", (match, Section("Link", (("Name", name),)))
        )
        network = Unit(
            f"the NIC {member} ({name}) is a member of the bond {interface}.",
            (match, Section("Network", (*enslave, ("LinkLocalAddressing", "no"), ("IPv6AcceptRA", "no")))),
        )
        out += [
            NetworkdFile(FileSpec(f"{DIRECTORY}/10-{name}.link", TEMPLATE), link),
            NetworkdFile(FileSpec(f"{DIRECTORY}/10-{name}.network", TEMPLATE), network),
        ]
    return out


def _vlan(name: str, vlan: Vlan, routes: tuple[Route, ...], parent_mtu: int | None) -> list[NetworkdFile]:
    parent = name.rsplit(".", 1)[0]
    netdev = Unit(
        f"VLAN {vlan.id}, tagged on {parent}.",
        (Section("NetDev", (("Name", name), ("Kind", "vlan"))), Section("VLAN", (("Id", str(vlan.id)),))),
    )
    network = Unit(
        f"the addresses and routes of VLAN {vlan.id}.",
        (
            Section("Match", (("Name", name),)),
            # without its own, kiln0's: the kernel copies the parent's MTU only when it creates the VLAN
            *_mtu(vlan.mtu or parent_mtu),
            Section(
                "Network",
                (*(("Address", str(a)) for a in vlan.addresses), ("LinkLocalAddressing", "no"), ("IPv6AcceptRA", "no")),
            ),
            *_routes(routes, vlan.addresses),
        ),
    )
    return [
        NetworkdFile(FileSpec(f"{DIRECTORY}/10-{name}.netdev", TEMPLATE), netdev),
        NetworkdFile(FileSpec(f"{DIRECTORY}/10-{name}.network", TEMPLATE), network),
    ]
