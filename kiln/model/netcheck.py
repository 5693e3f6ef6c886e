"""Meaning checks of hosts[].network: bonds, VLANs, more addresses, routes (kiln/model/meaning.py runs them).

Each looks only at values whose shape is right (the schema reports the rest) and yields (path, message, expected)
like every meaning check. A host's interfaces are kiln0 (its NIC, or the bond) with `ip` and network.addresses,
and kiln0.ID per VLAN: what kiln/roles/networkd.py renders. A bond member carries no address and a VLAN's parent
is always kiln0, by the shape of the section, so neither needs a check.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from kiln import mac

if TYPE_CHECKING:
    from kiln.model.meaning import Facts

Found = Iterator[tuple[str, str, str]]

INTERFACE = "kiln0"  # kiln.roles.context.INTERFACE (the model imports nothing from the roles' side)
DEFAULT_MTU = 1500  # an Ethernet NIC's until told otherwise


@dataclass(frozen=True)
class Iface:
    """One interface the host's network section gives it, with each well-formed address and where it was written."""

    name: str  # kiln0 | kiln0.ID
    path: str  # of its roles.yaml entry: the host, or its VLAN
    addresses: tuple[tuple[str, ipaddress.IPv4Interface], ...]


def _interface(value: object) -> ipaddress.IPv4Interface | None:
    if not isinstance(value, str) or "/" not in value:
        return None
    try:
        address = ipaddress.IPv4Interface(value)
    except ValueError:
        return None
    return address if address.network.prefixlen else None


def _address(value: object) -> ipaddress.IPv4Address | None:
    # meaning's parser, whose cache every host's `ip` is already in (imported here: meaning imports this module)
    from kiln.model.meaning import _ip

    return _ip(value)


def _cidr(value: object) -> ipaddress.IPv4Network | None:
    try:
        return ipaddress.IPv4Network(value) if isinstance(value, str) and "/" in value else None
    except ValueError:
        return None


def _mac(value: object) -> str | None:
    try:
        return mac.normalize(value) if isinstance(value, str) else None
    except ValueError:
        return None


def _list(value: object) -> list[Any]:
    return value if isinstance(value, list) else []


def _dict(value: object) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _section(host: dict[str, Any]) -> dict[str, Any]:
    return _dict(host.get("network"))


def _declaring(facts: Facts) -> Iterator[tuple[int, dict[str, Any]]]:
    """The hosts with a network section: the only ones a check of their own interfaces can fault (a host without
    one has kiln0 and its `ip` alone, which meaning's own checks cover). 10,000 hosts: each check 0.1 s less."""
    return ((i, host) for i, host in facts.hosts if _section(host))


def _mtu(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def interfaces(facts: Facts, i: int, host: dict[str, Any]) -> list[Iface]:
    """kiln0 (with `ip` in the cluster subnet's prefix, then network.addresses), then kiln0.ID per VLAN."""
    here, section = f"$.hosts[{i}]", _section(host)
    own: list[tuple[str, ipaddress.IPv4Interface]] = []
    ip = _address(host.get("ip"))
    if ip is not None and facts.subnet is not None:
        own.append((f"{here}.ip", ipaddress.IPv4Interface(f"{ip}/{facts.subnet.prefixlen}")))
    for j, value in enumerate(_list(section.get("addresses"))):
        if (address := _interface(value)) is not None:
            own.append((f"{here}.network.addresses[{j}]", address))
    found = [Iface(INTERFACE, here, tuple(own))]
    for k, vlan in enumerate(_list(section.get("vlans"))):
        vid = _dict(vlan).get("id")
        if not isinstance(vid, int) or isinstance(vid, bool):
            continue
        at = f"{here}.network.vlans[{k}]"
        tagged = [
            (f"{at}.addresses[{j}]", a)
            for j, value in enumerate(_list(_dict(vlan).get("addresses")))
            if (a := _interface(value)) is not None
        ]
        found.append(Iface(f"{INTERFACE}.{vid}", at, tuple(tagged)))
    return found


def _networks(ifaces: list[Iface]) -> str:
    """`10.10.0.0/24 on kiln0, 10.20.0.0/24 on kiln0.20`, each network once."""
    seen = dict.fromkeys(f"{a.network} on {f.name}" for f in ifaces for _, a in f.addresses)
    return ", ".join(seen) or "none"


def bond_members(facts: Facts) -> Found:
    """The host's own MAC is a member (the NIC it PXE-boots from; the bond takes its MAC), each member once, the
    primary a member, each mode's own keys only."""
    for i, host in facts.hosts:
        bond = _dict(_section(host).get("bond"))
        if not bond:
            continue
        at = f"$.hosts[{i}].network.bond"
        members = [_mac(m) for m in _list(bond.get("members"))]
        first: dict[str, int] = {}
        for j, member in enumerate(members):
            if member is None:
                continue
            if member in first:
                twice = f"{member} is listed twice, also at members[{first[member]}]"
                yield f"{at}.members[{j}]", twice, "each NIC once"
            else:
                first[member] = j
        own = _mac(host.get("mac"))
        if own is not None and members and own not in first:
            yield (
                f"{at}.members",
                f"the host's mac {own} is not a member",
                "the NIC the host PXE-boots from among the members: kiln0 takes its MAC and keeps its identity",
            )
        mode = bond.get("mode")
        primary = _mac(bond.get("primary"))
        if primary is not None and first and primary not in first:
            yield f"{at}.primary", f"{primary} is not a member of the bond", "one of the members' MACs"
        if "primary" in bond and mode == "802.3ad":
            yield f"{at}.primary", "primary is only for active-backup bonds", "remove it: 802.3ad uses every member"
        if "lacp_rate" in bond and mode == "active-backup":
            yield f"{at}.lacp_rate", "lacp_rate is only for 802.3ad bonds", "remove it: active-backup runs no LACP"


def bond_member_taken(facts: Facts) -> Found:
    """A NIC belongs to one host: a member's MAC is no other host's `mac` nor another bond's member."""
    owner: dict[str, tuple[int, str]] = {}  # MAC -> (host index, path)
    for i, host in facts.hosts:
        own = _mac(host.get("mac"))
        if own is not None:
            owner.setdefault(own, (i, f"$.hosts[{i}].mac"))
    for i, host in facts.hosts:
        bond = _dict(_section(host).get("bond"))
        for j, value in enumerate(_list(bond.get("members"))):
            member = _mac(value)
            if member is None:
                continue
            holder = owner.setdefault(member, (i, f"$.hosts[{i}].network.bond.members[{j}]"))
            if holder[0] != i:
                yield (
                    f"$.hosts[{i}].network.bond.members[{j}]",
                    f"{member} is another host's NIC, at {holder[1]}",
                    "each NIC in one host only",
                )


def vlans(facts: Facts) -> Found:
    """Each VLAN ID once per host; a VLAN's MTU at most kiln0's (the kernel refuses a larger one)."""
    for i, host in facts.hosts:
        section = _section(host)
        parent = _mtu(section.get("mtu"))
        first: dict[int, int] = {}
        for k, vlan in enumerate(_list(section.get("vlans"))):
            vid, mtu = _dict(vlan).get("id"), _mtu(_dict(vlan).get("mtu"))
            at = f"$.hosts[{i}].network.vlans[{k}]"
            if isinstance(vid, int) and not isinstance(vid, bool):
                if vid in first:
                    yield (
                        f"{at}.id",
                        f"VLAN {vid} is declared twice, also at vlans[{first[vid]}]",
                        ("one entry per VLAN ID, with all its addresses"),
                    )
                else:
                    first[vid] = k
            if mtu is not None and mtu > (parent or DEFAULT_MTU):
                said = f"network.mtu {parent}" if parent else f"{DEFAULT_MTU}, network.mtu being unset"
                yield f"{at}.mtu", f"{mtu} is above kiln0's MTU ({said})", "at most kiln0's MTU: raise network.mtu too"


def host_addresses(facts: Facts) -> Found:
    """Each added address usable: not its network's network or broadcast address, not the VIP or the gateway."""
    for i, host in _declaring(facts):
        for iface in interfaces(facts, i, host):
            for path, address in iface.addresses:
                if path.endswith(".ip"):
                    continue  # `ip` has its own checks (meaning.host_outside_subnet, host_is_vip_or_gateway)
                net = address.network
                if net.num_addresses > 2 and address.ip in (net.network_address, net.broadcast_address):
                    yield path, f"{address} is its network's network or broadcast address", "a usable host address"
                for what, key in (("the VIP", facts.vip), ("the gateway", facts.gateway)):
                    if address.ip == key:
                        yield path, f"{address.ip} is {what}", "an address of this host's own"


def duplicate_address(facts: Facts) -> Found:
    """An address is one interface's, on one host: every added address against every `ip` and every other one."""
    seen: dict[ipaddress.IPv4Address, str] = {}
    for i, host in facts.hosts:
        if not _section(host):  # its `ip` alone, against the added addresses of the hosts around it
            if (ip := _address(host.get("ip"))) is not None and facts.subnet is not None:
                seen.setdefault(ip, f"$.hosts[{i}].ip")
            continue
        for iface in interfaces(facts, i, host):
            for path, address in iface.addresses:
                first = seen.setdefault(address.ip, path)
                if first != path and not (first.endswith(".ip") and path.endswith(".ip")):  # meaning.duplicate_ip's
                    yield path, f"duplicate address {address.ip}, also at {first}", "unique per interface and host"


def address_overlap(facts: Facts) -> Found:
    """Two interfaces of a host on overlapping networks: the kernel would route the shared part out of either."""
    for i, host in _declaring(facts):
        held: list[tuple[ipaddress.IPv4Network, str]] = []
        for iface in interfaces(facts, i, host):
            mine = {a.network for _, a in iface.addresses}
            for path, address in iface.addresses:
                overlapping = (f"{net} on {name}" for net, name in held if net.overlaps(address.network))
                other = next((o for o in overlapping if not o.endswith(f" on {iface.name}")), None)  # a VLAN twice
                if other:
                    yield path, f"{address} on {iface.name} overlaps {other}", "a network of its own per interface"
            held += [(net, iface.name) for net in mine]


def routes(facts: Facts) -> Found:
    """Each route to a network the host is not on, once, through a gateway on one of the host's networks."""
    for i, host in _declaring(facts):
        ifaces = interfaces(facts, i, host)
        connected = {a.network: f.name for f in ifaces for _, a in f.addresses}
        own = {a.ip for f in ifaces for _, a in f.addresses}
        first: dict[ipaddress.IPv4Network, int] = {}
        for k, route in enumerate(_list(_section(host).get("routes"))):
            at = f"$.hosts[{i}].network.routes[{k}]"
            to, via = _cidr(_dict(route).get("to")), _address(_dict(route).get("via"))
            if to is not None:
                if to.prefixlen == 0:
                    why = "a narrower network: the default route is network.gateway's"
                    yield f"{at}.to", f"{to} is the default route", why
                elif to in first:
                    yield f"{at}.to", f"a route to {to} is already at routes[{first[to]}]", "one route per network"
                elif to in connected:
                    yield f"{at}.to", f"{to} is reached directly on {connected[to]}", "a network the host is not on"
                first.setdefault(to, k)
            if via is None:
                continue
            if via in own:
                yield f"{at}.via", f"{via} is this host's own address", "another machine: the router to the network"
            elif not any(via in net for net in connected):
                yield (
                    f"{at}.via",
                    f"{via} is on none of the host's networks ({_networks(ifaces)})",
                    "a gateway on one of them, or an address on the gateway's network",
                )


def allow(facts: Facts) -> Found:
    """Each allow rule is about the host's added networks: its peers are off the cluster network (the tier matrix
    is kiln's) and reached over an added address or VLAN, directly or through a route's gateway there; an `in` rule
    needs an added address to accept on."""
    for i, host in _declaring(facts):
        ifaces = interfaces(facts, i, host)
        beyond_ip = [(f.name, a.network) for f in ifaces for path, a in f.addresses if not path.endswith(".ip")]
        added = [net for _, net in beyond_ip]
        routed = []
        for route in _list(_section(host).get("routes")):
            to, via = _cidr(_dict(route).get("to")), _address(_dict(route).get("via"))
            if to is not None and via is not None and any(via in net for net in added):
                routed.append(to)
        for k, rule in enumerate(_list(_section(host).get("allow"))):
            at = f"$.hosts[{i}].network.allow[{k}]"
            if _dict(rule).get("direction") == "in" and not added:
                yield (
                    f"{at}.direction",
                    "the host has no address beyond ip to accept on",
                    "network.addresses or vlans with the addresses the peers reach",
                )
            for j, value in enumerate(_list(_dict(rule).get("peers"))):
                peer = _cidr(value)
                if peer is None:
                    continue
                if facts.subnet is not None and peer.overlaps(facts.subnet):
                    yield (
                        f"{at}.peers[{j}]",
                        f"{peer} overlaps the cluster network {facts.subnet}",
                        "a network off the cluster's: kiln's tier matrix decides what crosses it",
                    )
                elif not any(peer.subnet_of(net) for net in (*added, *routed)):
                    yield (
                        f"{at}.peers[{j}]",
                        f"{peer} is on none of the host's added networks, nor routed through them ("
                        + (", ".join(dict.fromkeys(f"{net} on {name}" for name, net in beyond_ip)) or "none")
                        + ")",
                        "a network of network.addresses or vlans, or a route's `to` through a gateway there",
                    )
