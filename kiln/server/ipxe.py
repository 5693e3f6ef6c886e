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
from pathlib import Path

from kiln import blockmap
from kiln.build.manifest import built_for_another
from kiln.model import Host
from kiln.server.bootplan import (
    CONSOLES,
    RETRY_SECONDS,
    Install,
    Installer,
    InstallImage,
    LocalDisk,
    Plan,
    Unknown,
    Wait,
    install_args,
)

__all__ = ["CONSOLES", "RETRY_SECONDS", "Installer", "InstallImage"]  # kept here too: what callers import

BIOS_DISKS = 4  # BIOS drives 0x80.. the disk script tries in turn


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


def retry_script(lines: list[str] | tuple[str, ...], base: str, seconds: int = RETRY_SECONDS) -> str:
    body = [_echo(f"kiln: {line}") for line in lines]
    return "\n".join(["#!ipxe", *body, _echo(f"kiln: retrying in {seconds} s"), f"sleep {seconds}", chain(base)]) + "\n"


def install_script(plan: Install) -> str:
    """The installer kernel and initrd over HTTP; `initrd=initrd.img` names the initrd for the kernel's EFI stub
    when iPXE boots it under UEFI."""
    base = plan.installer.http_base
    cmdline = " ".join(["initrd=initrd.img", *install_args(plan)])
    return (
        "\n".join(
            [
                "#!ipxe",
                _echo(f"kiln: {plan.message()}"),
                f"kernel {base}/images/installer/vmlinuz {cmdline}",
                f"initrd {base}/images/installer/initrd.img",
                "boot",
            ]
        )
        + "\n"
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


def script(plan: Plan, base: str) -> str:
    """`plan` as an iPXE script; `base`: the http://ADDR:PORT the machine reached us on (its retries chain there)."""
    match plan:
        case Unknown():
            return retry_script(plan.lines(), base)
        case LocalDisk(host=host):
            return disk_script(host)
        case Wait(lines=lines):
            return retry_script(lines, base)
        case Install():
            return install_script(plan)


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
