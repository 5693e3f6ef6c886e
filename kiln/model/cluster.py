"""The typed cluster model: what roles.yaml means, once it is valid. No side effects."""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum
from functools import cached_property

from kiln.model.access import Access
from kiln.model.monitoring import Monitoring


class DbRole(StrEnum):
    primary = "primary"
    replica = "replica"


@dataclass(frozen=True)
class Network:
    subnet: ipaddress.IPv4Network
    gateway: ipaddress.IPv4Address
    dns: tuple[ipaddress.IPv4Address, ...]
    vip: ipaddress.IPv4Address
    admin: tuple[ipaddress.IPv4Network, ...]


@dataclass(frozen=True)
class Image:
    release: str
    mirror: str
    size: str


_UNITS = {"M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def parse_size(text: str) -> int:
    """Bytes of a roles.yaml size: digits then M, G or T, binary units as qemu-img's (2G: 2 GiB). ValueError else."""
    if len(text) < 2 or text[-1] not in _UNITS or not text[:-1].isdigit():
        raise ValueError(f"{text!r} is not a size like 500G")
    return int(text[:-1]) * _UNITS[text[-1]]


def format_size(size: int) -> str:
    """Bytes as lsblk prints them: the largest binary unit with at most one decimal (447.1G, 2T, 512M)."""
    for unit, factor in (("T", 1 << 40), ("G", 1 << 30), ("M", 1 << 20)):
        if size >= factor:
            return f"{size / factor:.1f}".removesuffix(".0") + unit
    return f"{size}B"


@dataclass(frozen=True)
class DiskRule:
    """Which disk the PXE installer writes the image to (roles.yaml hosts[].disk; kiln/targetdisk.py applies it).
    Every key given must hold; none given is the default rule: the smallest usable disk."""

    name: str | None = None  # kernel name (sda), from the older `disk: /dev/sda`: names can change between boots
    min_size: int | None = None  # bytes
    max_size: int | None = None  # bytes
    model: str | None = None  # shell glob over lsblk's MODEL
    serial: str | None = None
    wwn: str | None = None
    path: str | None = None  # shell glob over the disk's /dev/disk/by-path names
    raid: int | None = None  # 1: the root mirrored across the two disks the rule picks (mdadm RAID1)

    @property
    def is_default(self) -> bool:
        """No key picks the disks (raid says how many, not which): the smallest usable one(s)."""
        return replace(self, raid=None) == DiskRule()

    @property
    def disks(self) -> int:
        """How many disks the rule must pick: 2 for RAID1, else 1."""
        return 2 if self.raid == 1 else 1

    def text(self) -> str:
        """Its keys as an operator wrote them: `model "X*", min_size 500G`; `smallest usable disk` by default."""
        if self.is_default:
            return "two smallest usable disks, raid 1" if self.raid else "smallest usable disk"
        keys = []
        for key in ("name", "min_size", "max_size", "model", "serial", "wwn", "path"):
            value = getattr(self, key)
            if isinstance(value, int):
                keys.append(f"{key} {format_size(value)}")
            elif value is not None:
                keys.append(f'{key} "{value}"' if " " in value else f"{key} {value}")
        if self.raid is not None:
            keys.append(f"raid {self.raid}")
        return ", ".join(keys)

    def describe(self) -> str:
        """`the rule model "X*", min_size 500G` or `the default rule (the smallest usable disk)`."""
        return f"the default rule (the {self.text()})" if self.is_default else f"the rule {self.text()}"


class BmcDriver(StrEnum):
    ipmi = "ipmi"
    redfish = "redfish"
    lab = "lab"


@dataclass(frozen=True)
class Bmc:
    """How kiln reaches a host's power and boot device (kiln/power). Names a secret, never holds one."""

    driver: BmcDriver
    address: str | None = None  # ipmi: HOST[:PORT]; redfish: http(s)://HOST[:PORT]; lab: None
    credentials: str | None = None  # a file under secrets/ (kiln.secrets.SecretStore.bmc_credentials)
    system: str | None = None  # redfish: the ComputerSystem id (None: the only one)
    cipher_suite: int | None = None  # ipmi: ipmitool -C (None: what the BMC offers)
    ca: str | None = None  # redfish: a CA certificate file under secrets/ (None: the system's)


class BondMode(StrEnum):
    lacp = "802.3ad"
    active_backup = "active-backup"


@dataclass(frozen=True)
class Bond:
    """kiln0 as a bond of NICs (roles.yaml hosts[].network.bond); the host's MAC is a member and the bond's."""

    mode: BondMode
    members: tuple[str, ...]  # MACs, lower case, colon separated, in roles.yaml order
    lacp_rate: str | None = None  # 802.3ad: fast | slow (None: the kernel's, slow)
    primary: str | None = None  # active-backup: the member MAC preferred while its link is up


@dataclass(frozen=True)
class Vlan:
    id: int  # 1..4094; the interface is kiln0.<id>
    addresses: tuple[ipaddress.IPv4Interface, ...]
    mtu: int | None = None  # bytes; None: kiln0's


@dataclass(frozen=True)
class Route:
    to: ipaddress.IPv4Network
    via: ipaddress.IPv4Address


class Direction(StrEnum):
    """Which way an allow rule opens: `in` from the peers to the host's added addresses, `out` to the peers."""

    inbound = "in"  # `in` is a Python keyword
    outbound = "out"


class Transport(StrEnum):
    tcp = "tcp"
    udp = "udp"


@dataclass(frozen=True)
class Allow:
    """One firewall rule over the host's added addresses and VLANs (roles.yaml hosts[].network.allow)."""

    direction: Direction
    proto: Transport
    ports: tuple[int, ...]  # destination ports, in roles.yaml order
    peers: tuple[ipaddress.IPv4Network, ...]


@dataclass(frozen=True)
class HostNetwork:
    """What roles.yaml hosts[].network declares beyond `mac` and `ip` (kiln/roles/networkd.py renders it)."""

    mtu: int | None = None  # kiln0's, in bytes; None: the NIC's
    bond: Bond | None = None
    addresses: tuple[ipaddress.IPv4Interface, ...] = ()  # on kiln0 after `ip`
    vlans: tuple[Vlan, ...] = ()
    routes: tuple[Route, ...] = ()
    allow: tuple[Allow, ...] = ()

    @property
    def added_addresses(self) -> tuple[ipaddress.IPv4Interface, ...]:
        """Every address beyond `ip`: kiln0's added ones, then each VLAN's, in roles.yaml order."""
        return self.addresses + tuple(a for vlan in self.vlans for a in vlan.addresses)


@dataclass(frozen=True)
class Host:
    name: str
    role: str  # a registered role's name (kiln.roles)
    mac: str  # lower case, colon separated
    ip: ipaddress.IPv4Address
    disk: DiskRule = field(default_factory=DiskRule)
    priority: int | None = None
    db_role: DbRole | None = None
    server_id: int | None = None  # db only: MariaDB's server_id when roles.yaml sets it (kiln.roles.db.server_id)
    bmc: Bmc | None = None  # power control (./inv power); None: roles.yaml names none
    network: HostNetwork | None = None  # bonds, VLANs, more addresses, routes, MTU; None: one NIC, `ip` only

    @property
    def is_primary(self) -> bool:
        return self.db_role is DbRole.primary


@dataclass(frozen=True)
class Cluster:
    name: str
    domain: str
    network: Network
    provisioning_url: str
    image: Image
    settings: Mapping[str, object]  # role name -> its typed settings (the role module's accessor types them)
    hosts: tuple[Host, ...]
    access: Access = field(default_factory=Access)  # the admin account and its keys (kiln/model/access.py)
    monitoring: Monitoring = field(default_factory=Monitoring)  # where alerts go (kiln/model/monitoring.py)

    @cached_property
    def _by_role(self) -> dict[str, tuple[Host, ...]]:
        groups: dict[str, list[Host]] = {}
        for h in self.hosts:
            groups.setdefault(h.role, []).append(h)
        return {role: tuple(hosts) for role, hosts in groups.items()}

    @cached_property
    def _by_name(self) -> dict[str, Host]:
        return {h.name: h for h in self.hosts}

    @cached_property
    def names(self) -> frozenset[str]:
        return frozenset(self._by_name)

    def by_role(self, role: str) -> tuple[Host, ...]:
        """The role's hosts in roles.yaml order (computed once: renders ask for every host)."""
        return self._by_role.get(role, ())

    @property
    def roles_used(self) -> tuple[str, ...]:
        """The roles some host has, in registry order."""
        from kiln import roles

        return tuple(r for r in roles.names() if self.by_role(r))

    def host(self, name: str) -> Host:
        """The host of that name; KeyError when roles.yaml has none."""
        return self._by_name[name]

    @cached_property
    def db_primary(self) -> Host | None:
        return next((h for h in self.by_role("db") if h.is_primary), None)

    @cached_property
    def db_replicas(self) -> tuple[Host, ...]:
        return tuple(h for h in self.by_role("db") if h.db_role is DbRole.replica)
