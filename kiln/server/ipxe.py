"""iPXE scripts: the chain script every machine loads first, then one per machine by its MAC.

Boot scripts and images go over plain HTTP: stock iPXE cannot verify a private CA unless it is
compiled in. What a host installs is pinned by the sha256 on the kernel command line instead, and
its bundle (with any secrets) comes later over HTTPS with the cluster CA pinned.

Once a host reported step "install" ok, its script boots the local disk with
`sanboot --no-describe --drive 0x80 || ... --drive 0x83`: under BIOS (SeaBIOS in QEMU, most physical servers in
legacy mode) iPXE boots the first hard disk that holds a boot sector itself, whatever the firmware's boot order
says. The installer's disk rule may have picked the second disk, and a disk with no boot sector fails sanboot, so
the next one is tried; a disk before it that holds another system's boot sector would still win (docs/server.md).
Under UEFI no drive 0x80 exists, so the script falls back to `exit`, which hands control back to the
firmware to boot its next entry (the disk, when network boot comes first in the order).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from kiln import blockmap
from kiln.build.manifest import built_for_another
from kiln.model import Host

RETRY_SECONDS = 30
BIOS_DISKS = 4  # BIOS drives 0x80.. the disk script tries in turn

# The installer's kernel messages on the screen and on the first serial port at the speed BMCs' serial-over-LAN
# uses (115200 8N1, as the installed images' GRUB sets it; the kernel's default, 9600, garbles SOL); the last one
# named is /dev/console, where the installer's progress goes.
CONSOLES = ("console=tty0", "console=ttyS0,115200n8")


def chain(base: str) -> str:
    """Chain to this machine's own script, asked for by the MAC of the NIC iPXE booted from (`netX`, the last
    one it opened), not the first NIC's: a machine that boots from its second NIC is known by that NIC's MAC.
    The URL is absolute: the iPXE in QEMU's ROM (Debian's ipxe-qemu, 2019) fails a relative chain after a
    DHCP-given boot file with "Operation not supported"."""
    return f"chain --replace --autofree {base}/ipxe?mac=${{netX/mac}}"


_SHA256 = re.compile(r"^[0-9a-f]{64}$")


def boot_script(base: str) -> str:
    return "#!ipxe\n# kiln: every machine starts here; its own script is picked by its MAC\n" + chain(base) + "\n"


def _echo(text: str) -> str:
    # iPXE expands ${...} in echo arguments; nothing in our messages starts a setting, but keep it literal
    return "echo " + text.replace("$", "")


def retry_script(lines: list[str], base: str, seconds: int = RETRY_SECONDS) -> str:
    body = [_echo(f"kiln: {line}") for line in lines]
    return "\n".join(["#!ipxe", *body, _echo(f"kiln: retrying in {seconds} s"), f"sleep {seconds}", chain(base)]) + "\n"


def unknown_script(mac: str, base: str) -> str:
    return retry_script(
        [
            f"this machine (MAC {mac}) is not in roles.yaml, so there is nothing to install on it.",
            "add it under hosts: with its MAC and restart ./inv serve, or check that this is the right network.",
        ],
        base,
    )


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


def install_script(host: Host, image: InstallImage, installer: Installer, token: str) -> str:
    """The installer's kernel command line: where the map and the data chunks are, what they must hash to, and the
    host's enrolment token (the installer reports with it and writes it into the installed disk's seed). No disk:
    the installer asks (POST /v1/hosts/NAME/disk) with what it sees, and the host's disk rule picks one. BOOTIF is
    the host's MAC, the one this script was asked for: the NIC iPXE booted from."""
    role = image.role
    base = installer.http_base
    bootif = "01-" + host.mac.replace(":", "-")
    cmdline = " ".join(
        [
            "initrd=initrd.img",
            f"kiln.image={base}/images/{role}/{role}.data",
            f"kiln.map={base}/images/{role}/{role}.map",
            f"kiln.sha256={image.digest}",
            f"kiln.size={image.size}",
            f"kiln.url={installer.provisioning_url}",
            f"kiln.host={host.name}",
            f"kiln.token={token}",
            f"BOOTIF={bootif}",
            *CONSOLES,
        ]
    )
    return (
        "\n".join(
            [
                "#!ipxe",
                _echo(f"kiln: installing {host.name} (role {role}) onto the disk its rule picks ({host.disk.text()})"),
                f"kernel {base}/images/installer/vmlinuz {cmdline}",
                f"initrd {base}/images/installer/initrd.img",
                "boot",
            ]
        )
        + "\n"
    )


def unarmed_script(host: Host, http_base: str) -> str:
    """A host that is neither installed nor holds a valid enrolment token: it waits for an operator."""
    return retry_script(
        [f"{host.name} is not armed (its enrolment token was spent or expired):", f"./inv reprovision {host.name}"],
        http_base,
    )


def disk_script(host: Host) -> str:
    return (
        "\n".join(
            [
                "#!ipxe",
                _echo(f"kiln: {host.name} is installed, booting from its local disk"),
                # the first BIOS disk is not always the one the installer wrote (its disk rule picks any): a disk
                # without a boot sector fails sanboot, so the next is tried; four, then the firmware's own order
                " || ".join([*(f"sanboot --no-describe --drive {0x80 + n:#x}" for n in range(BIOS_DISKS)), "exit"]),
            ]
        )
        + "\n"
    )


class NotBuilt(Exception):
    """An image the script needs is missing; the message says which and how to make it."""


class ImageCatalog:
    """Reads images/<role>/manifest.json (re-read when it changes) and checks the installer is there."""

    def __init__(self, root: Path, baked: Mapping[str, str] | None = None) -> None:
        """`baked`: the cluster the server serves (kiln.build.manifest.baked); an image baked for another is
        refused as not built, with the reason."""
        self.root = root
        self.baked = baked
        self._cache: dict[Path, tuple[tuple[int, int], InstallImage]] = {}

    def check_installer(self) -> None:
        for name in ("vmlinuz", "initrd.img"):
            if not (self.root / "installer" / name).is_file():
                raise NotBuilt(
                    f"the PXE installer (images/installer/{name}) is not built yet: run ./inv build-all on the server"
                )

    def install_image(self, role: str) -> InstallImage:
        """The role's image as the installer takes it: images/<role>/<role>.raw with its block map."""
        rebuild = f"rebuild with ./inv build --role {role} --force"
        raw = self.root / role / f"{role}.raw"
        manifest = self.root / role / "manifest.json"
        if not raw.is_file():
            raise NotBuilt(
                f"the {role} image (images/{role}/{role}.raw) is not built yet: run ./inv build --role {role}"
            )
        try:
            st = manifest.stat()
        except FileNotFoundError:
            raise NotBuilt(f"images/{role}/manifest.json is missing: {rebuild}") from None
        key = (st.st_mtime_ns, st.st_size)
        cached = self._cache.get(manifest)
        if cached and cached[0] == key:
            return cached[1]
        try:
            data = json.loads(manifest.read_text())
            entry = data["blockmap"]
            digest, map_name = entry["sha256"], entry["file"]
        except (ValueError, KeyError, TypeError):
            raise NotBuilt(
                f"images/{role}/manifest.json has no block map (built by an older kiln): "
                "run ./inv build-all, which adds it without rebuilding"
            ) from None
        if not isinstance(digest, str) or not _SHA256.match(digest) or map_name != f"{role}.map":
            raise NotBuilt(f"images/{role}/manifest.json: its block map entry is malformed: {rebuild}")
        if not (self.root / role / map_name).is_file():
            raise NotBuilt(f"images/{role}/{map_name} is missing: {rebuild}")
        other = None if self.baked is None else built_for_another(data, self.baked)
        if other is not None and self.baked is not None:
            raise NotBuilt(
                f"the {role} image cannot join this cluster ({other}): "
                f"rebuild it with ./inv build-all --roles {self.baked['roles']}"
            )
        image = InstallImage(role, digest, raw.stat().st_size)
        self._cache[manifest] = (key, image)
        return image

    def data_chunks(self, role: str) -> tuple[int, Iterator[bytes]]:
        """The data chunks of the role's raw image in map order (what GET /images/<role>/<role>.data sends):
        their total size and an iterator over them."""
        self.install_image(role)  # raises NotBuilt as the script would
        extents = blockmap.parse((self.root / role / f"{role}.map").read_text())
        return blockmap.data_bytes(extents), blockmap.read_data(self.root / role / f"{role}.raw", extents)
