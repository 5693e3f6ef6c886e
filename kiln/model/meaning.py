"""Meaning checks across fields: uniqueness, addresses inside the subnet, the tiers' invariants.

They run on the raw data even when shape checks failed, so every problem is reported at once;
each check looks only at values whose shape is right.
"""

from __future__ import annotations

import ipaddress
from collections import Counter

from kiln.model.problems import Problem
from kiln.model.yamlmarks import Marked


def _ip(value: object) -> ipaddress.IPv4Address | None:
    try:
        return ipaddress.IPv4Address(value) if isinstance(value, str) else None
    except ValueError:
        return None


def _net(value: object) -> ipaddress.IPv4Network | None:
    try:
        return ipaddress.IPv4Network(value, strict=True) if isinstance(value, str) and "/" in value else None
    except ValueError:
        return None


def check_meaning(marked: Marked, file: str) -> list[Problem]:
    data = marked.data if isinstance(marked.data, dict) else {}
    problems: list[Problem] = []

    def add(path: str, message: str, expected: str = "") -> None:
        problems.append(Problem(marked.line_of(path), path, message, expected, file))

    network = data.get("network") if isinstance(data.get("network"), dict) else {}
    roles = data.get("roles") if isinstance(data.get("roles"), dict) else None
    raw_hosts = data.get("hosts") if isinstance(data.get("hosts"), list) else []
    hosts = [(i, h) for i, h in enumerate(raw_hosts) if isinstance(h, dict)]
    subnet = _net(network.get("subnet"))

    # Addresses of the network section inside the subnet.
    if subnet:
        for key in ("gateway", "vip"):
            addr = _ip(network.get(key))
            if addr and addr not in subnet:
                add(f"$.network.{key}", f"{addr} is outside the subnet {subnet}", f"an address in {subnet}")
        for key in ("gateway", "vip"):
            addr = _ip(network.get(key))
            if addr and subnet.num_addresses > 2 and addr in (subnet.network_address, subnet.broadcast_address):
                add(f"$.network.{key}", f"{addr} is the subnet's network or broadcast address", "a usable host address")
    vip, gateway = _ip(network.get("vip")), _ip(network.get("gateway"))
    if vip and gateway and vip == gateway:
        add("$.network.vip", f"the VIP {vip} is the gateway's address", "an address no machine uses")

    # Uniqueness of names, MACs and addresses; each duplicate names the first holder.
    seen: dict[str, dict[object, int]] = {"name": {}, "mac": {}, "ip": {}}
    for i, host in hosts:
        for key, seen_key in seen.items():
            value = host.get(key)
            if not isinstance(value, str):
                continue
            norm = value.lower() if key == "mac" else value
            if norm in seen_key:
                what = {"name": "name", "mac": "MAC", "ip": "address"}[key]
                add(
                    f"$.hosts[{i}].{key}",
                    f"duplicate {what} {value!r}, also used by $.hosts[{seen_key[norm]}]",
                    "unique per host",
                )
            else:
                seen_key[norm] = i
        addr = _ip(host.get("ip"))
        if addr and subnet and addr not in subnet:
            add(f"$.hosts[{i}].ip", f"{addr} is outside the subnet {subnet}", f"an address in {subnet}")
        elif (
            addr and subnet and addr in (subnet.network_address, subnet.broadcast_address) and subnet.num_addresses > 2
        ):
            add(f"$.hosts[{i}].ip", f"{addr} is the subnet's network or broadcast address", "a usable host address")
        if addr and vip and addr == vip:
            add(f"$.hosts[{i}].ip", f"{addr} is the VIP", "an address other than network.vip")
        if addr and gateway and addr == gateway:
            add(f"$.hosts[{i}].ip", f"{addr} is the gateway", "an address other than network.gateway")

    # Roles used must have settings; per-role keys belong to their role.
    reported_roles: set[str] = set()
    for i, host in hosts:
        role = host.get("role")
        if (
            roles is not None
            and isinstance(role, str)
            and role in ("lb", "web", "app", "db")
            and role not in roles
            and role not in reported_roles
        ):
            reported_roles.add(role)
            add(f"$.hosts[{i}].role", f"role {role!r} is not defined in $.roles", f"a $.roles.{role} section")
        if "priority" in host and role != "lb":
            add(f"$.hosts[{i}].priority", "priority is only for lb hosts", "remove it, or make the host an lb")
        if "db_role" in host and role != "db":
            add(f"$.hosts[{i}].db_role", "db_role is only for db hosts", "remove it, or make the host a db")

    by_role = Counter(h.get("role") for _, h in hosts)

    # Load balancers: two or more, each with a distinct priority.
    lbs = [(i, h) for i, h in hosts if h.get("role") == "lb"]
    if len(lbs) < 2 and raw_hosts:
        add(
            "$.hosts",
            f"{len(lbs)} lb host{'s' if len(lbs) != 1 else ''}, the VIP needs a pair",
            "at least two hosts with role: lb",
        )
    priorities: dict[int, int] = {}
    for i, h in lbs:
        prio = h.get("priority")
        if "priority" not in h:
            add(f"$.hosts[{i}]", "lb host without a priority", "priority: 1..254, the highest is the VRRP master")
        elif isinstance(prio, int) and not isinstance(prio, bool):
            if prio in priorities:
                add(
                    f"$.hosts[{i}].priority",
                    f"priority {prio} is also used by $.hosts[{priorities[prio]}]",
                    "a distinct priority per lb host",
                )
            else:
                priorities[prio] = i

    # Databases: exactly one primary; replicas need it.
    dbs = [(i, h) for i, h in hosts if h.get("role") == "db"]
    primaries = [i for i, h in dbs if h.get("db_role") == "primary"]
    for i, h in dbs:
        if "db_role" not in h:
            add(f"$.hosts[{i}]", "db host without a db_role", "db_role: primary or replica")
    if len(primaries) > 1:
        for i in primaries[1:]:
            add(
                f"$.hosts[{i}].db_role",
                f"a second db primary, $.hosts[{primaries[0]}] is already primary",
                "exactly one primary, the others replica",
            )
    if dbs and not primaries:
        replicas = [i for i, h in dbs if h.get("db_role") == "replica"]
        if replicas:
            add(f"$.hosts[{replicas[0]}].db_role", "a replica without a primary", "one db host with db_role: primary")
        else:
            add("$.hosts", "no db primary", "one db host with db_role: primary")

    # Each tier needs the tier behind it.
    for front, back, why in (
        ("lb", "web", "the load balancers forward to web hosts"),
        ("web", "app", "nginx proxies to app hosts"),
        ("app", "db", "the app needs a database"),
    ):
        if by_role[front] and not by_role[back]:
            add("$.hosts", f"{front} hosts but no {back} host: {why}", f"at least one host with role: {back}")
    return problems
