"""What a network-booting machine is told to do, decided once and written in two syntaxes: iPXE's script
(kiln/server/ipxe.py, for machines whose firmware runs iPXE) and GRUB's config (kiln/server/grub.py, for UEFI
machines with Secure Boot enforcing, which boot Debian's signed shim and GRUB instead).

A plan is one of:

- `Unknown(mac)`: no host in roles.yaml has this MAC; the machine waits and asks again.
- `LocalDisk(host)`: the host reported its install ok; it boots from its own disk.
- `Wait(host, lines)`: a known host that cannot install now (not armed, an image not built); it waits and asks
  again, `lines` saying why and what the operator does about it.
- `Install(host, image, installer, token)`: the installer kernel with its command line (install_args).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from kiln.model import Host

RETRY_SECONDS = 30  # how long a machine told to wait waits before it asks again

# The installer's kernel messages on the screen and on the first serial port at the speed BMCs' serial-over-LAN
# uses (115200 8N1, as the installed images' GRUB sets it; the kernel's default, 9600, garbles SOL); the last one
# named is /dev/console, where the installer's progress goes.
CONSOLES = ("console=tty0", "console=ttyS0,115200n8")

_HOST_HEADER = re.compile(r"^(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.-]{1,253})(:[0-9]{1,5})?$")


@dataclass(frozen=True)
class Installer:
    """What the kernel command line needs that does not come from roles.yaml."""

    http_base: str  # http://ADDR:PORT of this server's HTTP listener, from --listen (or the provisioning host)
    provisioning_url: str  # the HTTPS URL the installer reports to and the agent fetches from

    def reached_as(self, host_header: str | None) -> Installer:
        """The same, with the image and kernel URLs on the address the machine used to reach us (its Host
        header), so a script never points a host at an address it cannot reach (NAT, 0.0.0.0, several
        interfaces). Anything that is not a plain host[:port] is ignored."""
        if not host_header or not _HOST_HEADER.match(host_header):
            return self
        return Installer(f"http://{host_header}", self.provisioning_url)


@dataclass(frozen=True)
class InstallImage:
    """What the installer needs to know of a role image: its block map's digest and the raw size."""

    role: str
    digest: str  # sha256 of the data chunks in map order, then the map's text (kiln/blockmap.py)
    size: int  # bytes of the raw image: what ends up on the disk, data and zeros


@dataclass(frozen=True)
class Unknown:
    mac: str  # as parse_mac returns it

    def lines(self) -> list[str]:
        return [
            f"this machine (MAC {self.mac}) is not in roles.yaml, so there is nothing to install on it.",
            "add it under hosts: with its MAC and restart ./inv serve, or check that this is the right network.",
        ]


@dataclass(frozen=True)
class LocalDisk:
    host: Host


@dataclass(frozen=True)
class Wait:
    host: Host
    lines: tuple[str, ...]


@dataclass(frozen=True)
class Install:
    host: Host
    image: InstallImage
    installer: Installer
    token: str

    def message(self) -> str:
        return (
            f"installing {self.host.name} (role {self.image.role}) onto the disk its rule picks "
            f"({self.host.disk.text()})"
        )


Plan = Unknown | LocalDisk | Wait | Install


def install_args(plan: Install) -> list[str]:
    """The installer's kernel command line, one argument per item: where the map and the data chunks are, what they
    must hash to, and the host's enrolment token (the installer reports with it and writes it into the installed
    disk's seed). No disk: the installer asks (POST /v1/hosts/NAME/disk) with what it sees, and the host's disk rule
    picks one. BOOTIF is the host's MAC, the one the boot loader asked with: the NIC it booted from."""
    role, base, host = plan.image.role, plan.installer.http_base, plan.host
    return [
        f"kiln.image={base}/images/{role}/{role}.data",
        f"kiln.map={base}/images/{role}/{role}.map",
        f"kiln.sha256={plan.image.digest}",
        f"kiln.size={plan.image.size}",
        f"kiln.url={plan.installer.provisioning_url}",
        f"kiln.host={host.name}",
        f"kiln.token={plan.token}",
        "BOOTIF=01-" + host.mac.replace(":", "-"),
        *CONSOLES,
    ]
