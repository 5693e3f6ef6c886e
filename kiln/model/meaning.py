"""Meaning checks across fields: uniqueness, addresses inside the subnet, the tiers' invariants.

Each check is a named function over the raw data (Facts) that yields (path, message, expected) for every
problem it sees; its name is the stable code the Problem carries. They run even when shape checks failed,
so every problem is reported at once; each looks only at values whose shape is right. Role modules add
their own checks (kiln/roles/<role>.py, RoleSpec.meaning) next to the ones here.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from kiln import mac
from kiln.model import access, monitoring, netcheck
from kiln.model.cluster import parse_size
from kiln.model.problems import Problem
from kiln.model.shape import schema
from kiln.model.yamlmarks import Marked

Found = Iterator[tuple[str, str, str]]  # (JSON path, what is wrong, what is expected)
Check = Callable[["Facts"], Found]


def _ip(value: object) -> ipaddress.IPv4Address | None:
    return _parse_ip(value) if isinstance(value, str) else None


@lru_cache(maxsize=65536)  # several checks read each host's address: parsed once, not four times (10,000 hosts: 0.3 s)
def _parse_ip(value: str) -> ipaddress.IPv4Address | None:
    try:
        return ipaddress.IPv4Address(value)
    except ValueError:
        return None


def _net(value: object) -> ipaddress.IPv4Network | None:
    try:
        return ipaddress.IPv4Network(value, strict=True) if isinstance(value, str) and "/" in value else None
    except ValueError:
        return None


def _mac_or_text(value: str) -> str:
    """A MAC the way every part of kiln compares it; text that is no MAC as it is (the shape check says why)."""
    try:
        return mac.normalize(value)
    except ValueError:
        return value


def _mapping(value: object) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


@dataclass(frozen=True)
class Facts:
    """The parts of the raw document the checks look at, each already of the right kind or empty."""

    network: dict[str, Any]
    roles: dict[str, Any] | None  # None: the roles section is missing or not a mapping
    raw_hosts: list[Any]
    hosts: list[tuple[int, dict[str, Any]]]  # (position in the list, the host) for every host that is a mapping
    subnet: ipaddress.IPv4Network | None
    access: dict[str, Any]
    image: dict[str, Any]
    provisioning: dict[str, Any] = field(default_factory=dict)
    monitoring: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def of(cls, data: object) -> Facts:
        d = _mapping(data)
        raw_hosts = d.get("hosts") if isinstance(d.get("hosts"), list) else []
        assert isinstance(raw_hosts, list)
        network = _mapping(d.get("network"))
        return cls(
            network=network,
            roles=d.get("roles") if isinstance(d.get("roles"), dict) else None,
            raw_hosts=raw_hosts,
            hosts=[(i, h) for i, h in enumerate(raw_hosts) if isinstance(h, dict)],
            subnet=_net(network.get("subnet")),
            access=_mapping(d.get("access")),
            image=_mapping(d.get("image")),
            provisioning=_mapping(d.get("provisioning")),
            monitoring=_mapping(d.get("monitoring")),
        )

    def hosts_of(self, role: str) -> list[tuple[int, dict[str, Any]]]:
        return [(i, h) for i, h in self.hosts if h.get("role") == role]

    @property
    def vip(self) -> ipaddress.IPv4Address | None:
        return _ip(self.network.get("vip"))

    @property
    def gateway(self) -> ipaddress.IPv4Address | None:
        return _ip(self.network.get("gateway"))

    def reserved(self, addr: ipaddress.IPv4Address) -> bool:
        """The subnet's network or broadcast address (a /31 or /32 has none)."""
        s = self.subnet
        return s is not None and s.num_addresses > 2 and addr in (s.network_address, s.broadcast_address)


def network_outside_subnet(facts: Facts) -> Found:
    if facts.subnet:
        for key in ("gateway", "vip"):
            addr = _ip(facts.network.get(key))
            if addr and addr not in facts.subnet:
                yield (
                    f"$.network.{key}",
                    f"{addr} is outside the subnet {facts.subnet}",
                    f"an address in {facts.subnet}",
                )


def network_reserved_address(facts: Facts) -> Found:
    for key in ("gateway", "vip"):
        addr = _ip(facts.network.get(key))
        if addr and facts.reserved(addr):
            yield f"$.network.{key}", f"{addr} is the subnet's network or broadcast address", "a usable host address"


def vip_is_gateway(facts: Facts) -> Found:
    if facts.vip and facts.vip == facts.gateway:
        yield "$.network.vip", f"the VIP {facts.vip} is the gateway's address", "an address no machine uses"


def _duplicates(facts: Facts, key: str, what: str) -> Found:
    """Each duplicate names the first holder."""
    seen: dict[str, int] = {}
    for i, host in facts.hosts:
        value = host.get(key)
        if not isinstance(value, str):
            continue
        norm = _mac_or_text(value) if key == "mac" else value
        if norm in seen:
            yield (
                f"$.hosts[{i}].{key}",
                f"duplicate {what} {value!r}, also used by $.hosts[{seen[norm]}]",
                "unique per host",
            )
        else:
            seen[norm] = i


def duplicate_name(facts: Facts) -> Found:
    return _duplicates(facts, "name", "name")


def duplicate_mac(facts: Facts) -> Found:
    return _duplicates(facts, "mac", "MAC")


def duplicate_ip(facts: Facts) -> Found:
    return _duplicates(facts, "ip", "address")


def host_outside_subnet(facts: Facts) -> Found:
    for i, host in facts.hosts:
        addr = _ip(host.get("ip"))
        if addr and facts.subnet and addr not in facts.subnet:
            yield f"$.hosts[{i}].ip", f"{addr} is outside the subnet {facts.subnet}", f"an address in {facts.subnet}"
        elif addr and facts.reserved(addr):
            yield f"$.hosts[{i}].ip", f"{addr} is the subnet's network or broadcast address", "a usable host address"


def host_is_vip_or_gateway(facts: Facts) -> Found:
    for i, host in facts.hosts:
        addr = _ip(host.get("ip"))
        if addr and addr == facts.vip:
            yield f"$.hosts[{i}].ip", f"{addr} is the VIP", "an address other than network.vip"
        if addr and addr == facts.gateway:
            yield f"$.hosts[{i}].ip", f"{addr} is the gateway", "an address other than network.gateway"


def undefined_role(facts: Facts) -> Found:
    """Roles used must have settings (reported once per role, at its first host)."""
    from kiln import roles

    reported: set[str] = set()
    for i, host in facts.hosts:
        role = host.get("role")
        if facts.roles is not None and role in roles.names() and role not in facts.roles and role not in reported:
            reported.add(role)
            yield f"$.hosts[{i}].role", f"role {role!r} is not defined in $.roles", f"a $.roles.{role} section"


def key_of_another_role(facts: Facts) -> Found:
    """A host key a role brings (priority, db_role) belongs to that role's hosts only."""
    from kiln import roles

    owners = {key: r.name for r in roles.all_roles() for key in r.host_keys}
    for i, host in facts.hosts:
        for key, owner in owners.items():
            if key in host and host.get("role") != owner:
                yield f"$.hosts[{i}].{key}", f"{key} is only for {owner} hosts", f"remove it, or set role: {owner}"


def tier_needs(facts: Facts) -> Found:
    """Each tier needs the tier behind it (lb → web → app → db)."""
    from kiln import roles

    for role in roles.all_roles():
        for need in role.needs:
            if facts.hosts_of(role.name) and not facts.hosts_of(need.role):
                yield (
                    "$.hosts",
                    f"{role.name} hosts but no {need.role} host: {need.why}",
                    f"at least one host with role: {need.role}",
                )


def _key_lists(facts: Facts) -> Iterator[tuple[str, list[Any]]]:
    """(path, list) of every ssh_keys list: the top-level one, then each role's."""
    keys = facts.access.get("ssh_keys")
    if isinstance(keys, list):
        yield "$.access.ssh_keys", keys
    for role, settings in (facts.roles or {}).items():
        role_keys = _mapping(_mapping(settings).get("access")).get("ssh_keys")
        if isinstance(role_keys, list):
            yield f"$.roles.{role}.access.ssh_keys", role_keys


def ssh_key(facts: Facts) -> Found:
    """Each key line parses for real: the key data decodes, is the type the line says, RSA has 2048 bits or more."""
    for path, keys in _key_lists(facts):
        for i, line in enumerate(keys):
            why = access.check_key(line) if isinstance(line, str) else ""
            if why:
                yield f"{path}[{i}]", why, "an OpenSSH public key line: the content of a .pub file"


def ssh_key_duplicate(facts: Facts) -> Found:
    """A key listed twice (whatever the comments), in one list or in a role's list and the top-level one."""
    top: dict[bytes, str] = {}
    for path, keys in _key_lists(facts):
        seen = dict(top)
        for i, line in enumerate(keys):
            if not isinstance(line, str) or access.check_key(line):
                continue
            try:
                blob = access.key_blob(line)
            except (IndexError, ValueError):
                continue  # the shape check says why
            here = f"{path}[{i}]"
            if blob in seen:
                yield here, f"the same key as {seen[blob]}", "each key once; a role's keys add to access.ssh_keys"
            else:
                seen[blob] = here
        if path == "$.access.ssh_keys":
            top = seen


def admin_user(facts: Facts) -> Found:
    """The admin account is a person's: not root, no system account, no daemon a rendered file belongs to."""
    from kiln import roles
    from kiln.roles import common

    name = facts.access.get("admin_user")
    if not isinstance(name, str):
        return
    owned = [(f.owner, f.group) for f in common.FILES] + [(d.owner, d.group) for d in common.DIRECTORIES]
    for r in roles.all_roles():
        owned += [(f.owner, f.group) for f in r.files] + [(d.owner, d.group) for d in r.directories]
        owned += [(s.owner, s.group) for s in r.secrets]
    daemons = frozenset(name for pair in owned for name in pair)
    why = access.account_problem(name, daemons)
    if why:
        yield "$.access.admin_user", why, "an account name of its own for operators, e.g. kiln"


def alerts_to_provisioning_url(facts: Facts) -> Found:
    """The provisioning server is named `provisioning`, not by its URL: only that receiver carries its token."""
    server = facts.provisioning.get("url")
    receivers = facts.monitoring.get("alerts_to")
    if not isinstance(server, str) or not isinstance(receivers, list):
        return
    for i, url in enumerate(receivers):
        if isinstance(url, str) and url != monitoring.PROVISIONING and monitoring.same_server(url, server):
            yield (
                f"$.monitoring.alerts_to[{i}]",
                f"{url} is the provisioning server (provisioning.url): sent there, alerts would carry no token and "
                "be refused",
                f"{monitoring.PROVISIONING} (Alertmanager then sends its token from secrets/alertmanager.token)",
            )


def _size(value: object) -> int | None:
    try:
        return parse_size(value) if isinstance(value, str) else None
    except ValueError:
        return None


def disk_size(facts: Facts) -> Found:
    """A disk rule's sizes can hold: min_size not above max_size, max_size not below the image it must take."""
    image_size = facts.image.get("size", schema()["properties"]["image"]["properties"]["size"]["default"])
    image = _size(image_size)
    for i, host in facts.hosts:
        rule = _mapping(host.get("disk"))
        low, high = _size(rule.get("min_size")), _size(rule.get("max_size"))
        if low is not None and high is not None and low > high:
            yield (
                f"$.hosts[{i}].disk.max_size",
                f"max_size {rule['max_size']} is below min_size {rule['min_size']}: no disk fits",
                "max_size at least min_size",
            )
        elif high is not None and image is not None and high < image:
            yield (
                f"$.hosts[{i}].disk.max_size",
                f"max_size {rule['max_size']} is below the image size {image_size}: no disk fits",
                "max_size at least image.size",
            )


# What each power driver needs and takes besides `driver` (kiln/power): a key another driver reads is an error,
# so a typo'd driver never leaves a setting silently unused.
_BMC_NEEDS = {"ipmi": ("address", "credentials"), "redfish": ("address", "credentials"), "lab": ()}
_BMC_TAKES = {"ipmi": {"cipher_suite"}, "redfish": {"system", "ca"}, "lab": set()}
_BMC_KEYS = {"address", "credentials", "system", "cipher_suite", "ca"}
_BMC_EXAMPLE = {
    "ipmi": "e.g. {driver: ipmi, address: 10.0.9.11, credentials: bmc_admin}",
    "redfish": "e.g. {driver: redfish, address: https://10.0.9.11, credentials: bmc_admin}",
    "lab": "{driver: lab}: the lab's own VM needs no address or credentials",
}


def bmc_settings(facts: Facts) -> Found:
    for i, host in facts.hosts:
        bmc = host.get("bmc")
        driver = bmc.get("driver") if isinstance(bmc, dict) else None
        if not isinstance(bmc, dict) or driver not in _BMC_NEEDS:
            continue  # the shape check says why
        here = f"$.hosts[{i}].bmc"
        for key in _BMC_NEEDS[driver]:
            if key not in bmc:
                yield here, f"the {driver} driver needs {key!r}", _BMC_EXAMPLE[driver]
        own = set(_BMC_NEEDS[driver]) | _BMC_TAKES[driver] | {"driver"}
        for key in sorted(k for k in bmc if isinstance(k, str) and k not in own and k in _BMC_KEYS):
            yield f"{here}.{key}", f"{key!r} is not read by the {driver} driver", _BMC_EXAMPLE[driver]
        address = bmc.get("address")
        if isinstance(address, str) and driver in ("ipmi", "redfish"):
            url = address.startswith(("http://", "https://"))
            if driver == "redfish" and not url:
                yield f"{here}.address", f"{address!r} is no URL", "the BMC's Redfish URL, like https://10.0.9.11"
            if driver == "ipmi" and url:
                yield f"{here}.address", f"{address!r} is a URL", "ipmi: HOST or HOST:PORT, like 10.0.9.11"


CHECKS: tuple[tuple[str, Check], ...] = (
    ("network-outside-subnet", network_outside_subnet),
    ("network-reserved-address", network_reserved_address),
    ("vip-is-gateway", vip_is_gateway),
    ("duplicate-name", duplicate_name),
    ("duplicate-mac", duplicate_mac),
    ("duplicate-ip", duplicate_ip),
    ("host-outside-subnet", host_outside_subnet),
    ("host-is-vip-or-gateway", host_is_vip_or_gateway),
    ("undefined-role", undefined_role),
    ("key-of-another-role", key_of_another_role),
    ("tier-needs", tier_needs),
    ("ssh-key", ssh_key),
    ("ssh-key-duplicate", ssh_key_duplicate),
    ("admin-user", admin_user),
    ("alerts-to-provisioning-url", alerts_to_provisioning_url),
    ("disk-size", disk_size),
    ("bmc-settings", bmc_settings),
    ("bond-members", netcheck.bond_members),
    ("bond-member-taken", netcheck.bond_member_taken),
    ("vlan", netcheck.vlans),
    ("host-address", netcheck.host_addresses),
    ("duplicate-address", netcheck.duplicate_address),
    ("address-overlap", netcheck.address_overlap),
    ("route", netcheck.routes),
    ("allow", netcheck.allow),
)


def all_checks() -> tuple[tuple[str, Check], ...]:
    """The checks here, then each role's, in registry order."""
    from kiln import roles

    return CHECKS + tuple(check for r in roles.all_roles() for check in r.meaning)


def check_meaning(marked: Marked, file: str) -> list[Problem]:
    facts = Facts.of(marked.data)
    return [
        Problem(marked.line_of(path), path, message, expected, file, code)
        for code, check in all_checks()
        for path, message, expected in check(facts)
    ]
