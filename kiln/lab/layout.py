"""Names, addresses and paths of the lab: one place, so up, down, status and the tests agree."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from kiln.model import Cluster, Host
from kiln.project import ROOT as PROJECT

NETNS = "kiln-lab"
BRIDGE = "kiln-lab-br"
HTTP_PORT = 8080
TFTP_PORT = 69  # firmware PXE knows no other
# An address on the bridge that is no cluster host and outside every admin network: "the outside".
OUTSIDE = "198.51.100.10"
DISK_SIZE = 6 * 1024**3  # each VM's disk (sparse qcow2): the image, then growroot grows the root filesystem
# The roles whose hosts the lab boots, in the order it powers them on: each serving tier's join asks the one behind
# it (db, app, web, lb); mon needs none of them to join and none needs it, so it takes the last boot slot. A host of
# any other role is left off: no VM, no DHCP lease, nothing waits for it, and verify, audit and the drills leave it
# out.
BOOT_ORDER = ("db", "app", "web", "lb", "mon")
BOOTED_ROLES = frozenset(BOOT_ORDER)


def tap_name(host: Host) -> str:
    return f"kiln-lab-{host.name}"[:15]  # IFNAMSIZ


@dataclass(frozen=True)
class Lab:
    """The lab of one cluster: parsed once; `roles_file` goes only to the processes the lab starts."""

    cluster: Cluster
    roles_file: Path | None = None  # None: the project's roles.yaml
    root: Path = PROJECT / "state" / "lab"
    images: Path = PROJECT / "images"
    secrets: Path = PROJECT / "secrets"

    @property
    def hosts(self) -> tuple[Host, ...]:
        """The hosts the lab boots (BOOTED_ROLES), in roles.yaml order."""
        return tuple(h for h in self.cluster.hosts if h.role in BOOTED_ROLES)

    @property
    def gateway(self) -> str:
        """The namespace's own address on the cluster network: the provisioning URL's host."""
        return urlsplit(self.cluster.provisioning_url).hostname or str(self.cluster.network.gateway)

    @property
    def prefix(self) -> int:
        return self.cluster.network.subnet.prefixlen

    @property
    def tls_port(self) -> int:
        return urlsplit(self.cluster.provisioning_url).port or 443

    @property
    def server_url(self) -> str:
        return f"https://{self.gateway}:{self.tls_port}"

    @property
    def http_url(self) -> str:
        return f"http://{self.gateway}:{HTTP_PORT}"

    @property
    def vip(self) -> str:
        return str(self.cluster.network.vip)

    def check(self) -> None:
        subnet = self.cluster.network.subnet
        if ipaddress.ip_address(self.gateway) not in subnet:
            raise ValueError(f"the provisioning URL's host {self.gateway} is not in the cluster subnet {subnet}")

    # paths
    @property
    def run(self) -> Path:
        return self.root / "run"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def disks(self) -> Path:
        return self.root / "disks"

    @property
    def database(self) -> Path:
        return self.root / "kiln.db"

    @property
    def admin_user(self) -> str:
        """The account the lab logs in as: the cluster's admin account (roles.yaml access.admin_user)."""
        return self.cluster.access.admin_user

    @property
    def ssh_key(self) -> Path:
        return self.root / "ssh" / "id_ed25519"

    @property
    def known_hosts(self) -> Path:
        return self.root / "ssh" / "known_hosts"

    @property
    def boot_record(self) -> Path:
        return self.root / "boot.json"

    def serial_log(self, host: Host) -> Path:
        return self.logs / f"{host.name}.serial.log"

    def monitor(self, host: Host) -> Path:
        return self.run / f"{host.name}.monitor"

    def qmp(self, host: Host) -> Path:
        """QEMU's machine protocol socket (./inv power's lab driver: status, off, reset, boot order)."""
        return self.run / f"{host.name}.qmp"

    def disk(self, host: Host) -> Path:
        return self.disks / f"{host.name}.qcow2"
