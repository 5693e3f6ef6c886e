"""The typed cluster model: what roles.yaml means, once it is valid. No side effects."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from enum import StrEnum


class Role(StrEnum):
    lb = "lb"
    web = "web"
    app = "app"
    db = "db"


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


@dataclass(frozen=True)
class LbSettings:
    balance: str
    virtual_router_id: int


@dataclass(frozen=True)
class WebSettings:
    static_root: str


@dataclass(frozen=True)
class AppSettings:
    port: int
    workers: int


@dataclass(frozen=True)
class DbSettings:
    database: str


@dataclass(frozen=True)
class Host:
    name: str
    role: Role
    mac: str  # lower case, colon separated
    ip: ipaddress.IPv4Address
    disk: str
    priority: int | None = None
    db_role: DbRole | None = None
    index: int = 0  # position in roles.yaml; gives stable ids such as MariaDB server_id

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
    lb: LbSettings | None
    web: WebSettings | None
    app: AppSettings | None
    db: DbSettings | None
    hosts: tuple[Host, ...]

    def by_role(self, role: Role) -> tuple[Host, ...]:
        return tuple(h for h in self.hosts if h.role is role)

    def host(self, name: str) -> Host:
        for h in self.hosts:
            if h.name == name:
                return h
        raise KeyError(name)

    def host_by_mac(self, mac: str) -> Host | None:
        mac = mac.lower().replace("-", ":")
        return next((h for h in self.hosts if h.mac == mac), None)

    @property
    def db_primary(self) -> Host | None:
        return next((h for h in self.hosts if h.is_primary), None)

    @property
    def db_replicas(self) -> tuple[Host, ...]:
        return tuple(h for h in self.hosts if h.db_role is DbRole.replica)
