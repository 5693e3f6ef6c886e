"""Which disk the PXE installer writes the image to: a host's disk rule (roles.yaml `hosts[].disk`) applied to the
disks the machine has, as `lsblk --json -b` reports them. No side effects: the server runs it on what the installer
saw (POST /v1/hosts/NAME/disk) and answers with the disk, or refuses with everything it saw.

It never guesses: a rule that matches no disk, or several, is a refusal that lists every disk with why it was or
was not taken. A disk that is read-only, removable, holds a mounted filesystem (or swap), is smaller than the
image or is a RAM disk is never chosen, whatever the rule says.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Any

from kiln.model import DiskRule
from kiln.model.cluster import format_size

MAX_MESSAGE = 3500  # a refusal travels as an install event's detail (4000 characters at most)
_VIRTUAL = re.compile(r"^(zram|ram|nbd|loop)[0-9]+$")  # lsblk calls zram and RAM disks "disk" too


class NoDisk(Exception):
    """The rule matches no usable disk, or several: the message names the rule and every disk seen."""


@dataclass(frozen=True)
class Disk:
    """One whole disk as lsblk reports it (its partitions folded into `mounted`)."""

    name: str  # kernel name: sda, nvme0n1, vda
    size: int  # bytes
    kind: str = "disk"  # lsblk TYPE: disk, rom, loop, ...
    removable: bool = False
    read_only: bool = False
    model: str = ""
    serial: str = ""
    wwn: str = ""  # as lsblk prints it: 0x5002538e40a1b2c3, eui.0025388b91c0f1a2
    by_path: tuple[str, ...] = ()  # its names under /dev/disk/by-path
    mounted: tuple[str, ...] = ()  # mountpoints on it or on its partitions ([SWAP] for swap)

    @property
    def device(self) -> str:
        return f"/dev/{self.name}"

    def seen(self) -> str:
        """What an operator needs to write a rule for it: `sda 447.1G model "X" serial S wwn W path P`."""
        parts = [self.name, format_size(self.size)]
        for key, value in (("model", self.model), ("serial", self.serial), ("wwn", self.wwn)):
            if value:
                parts.append(f'{key} "{value}"' if " " in value else f"{key} {value}")
        parts += [f"path {p}" for p in self.by_path]
        return " ".join(parts)


def _text(value: object) -> str:
    return value.strip() if isinstance(value, str) else ""


def _flag(value: object) -> bool:
    """lsblk ≥ 2.37 prints RM and RO as JSON booleans, older ones as "0"/"1"."""
    return value is True or value in ("1", 1)


def _mounts(device: Mapping[str, Any]) -> Iterator[str]:
    points = device.get("mountpoints", [device.get("mountpoint")])  # MOUNTPOINTS (≥ 2.37) or MOUNTPOINT
    yield from (p for p in points or () if isinstance(p, str) and p)
    for child in device.get("children") or ():
        yield from _mounts(child)


def disks_from_lsblk(doc: Mapping[str, Any], by_path: Mapping[str, str] | None = None) -> list[Disk]:
    """The whole disks of `lsblk --json -b -o NAME,SIZE,TYPE,RM,RO,MODEL,SERIAL,WWN,MOUNTPOINTS` output (MOUNTPOINT
    works too). `by_path`: /dev/disk/by-path link name -> the kernel name it points to (sda), as `readlink` shows.
    Raises ValueError when `doc` is not lsblk's shape."""
    devices = doc.get("blockdevices")
    if not isinstance(devices, list):
        raise ValueError('expected lsblk --json output: {"blockdevices": [...]}')
    links: dict[str, list[str]] = {}
    for link, target in sorted((by_path or {}).items()):
        links.setdefault(target.rsplit("/", 1)[-1], []).append(link)
    disks = []
    for d in devices:
        if not isinstance(d, dict) or not isinstance(d.get("name"), str):
            raise ValueError(f"an lsblk device without a name: {d!r:.80}")
        name = d["name"].rsplit("/", 1)[-1]  # NAME, or PATH (/dev/sda) when asked for
        try:
            size = int(d.get("size") or 0)  # -b: bytes (a string in lsblk < 2.33)
        except (TypeError, ValueError):
            raise ValueError(f"{name}: size {d.get('size')!r} is not a number of bytes (lsblk -b)") from None
        disks.append(
            Disk(
                name=name,
                size=size,
                kind=_text(d.get("type")) or "disk",
                removable=_flag(d.get("rm")),
                read_only=_flag(d.get("ro")),
                model=_text(d.get("model")),
                serial=_text(d.get("serial")),
                wwn=_text(d.get("wwn")),
                by_path=tuple(links.get(name, ())),
                mounted=tuple(dict.fromkeys(_mounts(d))),
            )
        )
    return disks


def disks_from_installer(doc: Mapping[str, Any]) -> list[Disk]:
    """What the PXE installer reports (elements/kiln-installer/static/bin/kiln-disks): lsblk's shape, each device
    with its sysfs path ("devpath") and, for a SATA disk, its port ("ata_port"), which give its by-path names
    (busybox has no udev). Raises ValueError when `doc` is not that shape."""
    by_path: dict[str, str] = {}
    for d in doc.get("blockdevices") or ():
        if isinstance(d, dict) and isinstance(d.get("devpath"), str) and isinstance(d.get("name"), str):
            port = d.get("ata_port")
            for link in path_ids(d["devpath"], port if isinstance(port, int) else None):
                by_path[link] = d["name"]
    return disks_from_lsblk(doc, by_path)


def normal_wwn(value: str) -> str:
    """A WWN the way lsblk (0x5002...), sysfs (naa.5002...) and /dev/disk/by-id (wwn-0x5002...) each write it,
    reduced to one spelling for comparison."""
    v = value.strip().lower()
    for prefix in ("wwn-", "0x", "naa."):
        v = v.removeprefix(prefix)
    return v


def matches(rule: DiskRule, disk: Disk) -> bool:
    """Every key the rule gives holds for the disk (model and path are shell globs; serial and WWN exact)."""
    return (
        (rule.name is None or rule.name == disk.name)
        and (rule.min_size is None or disk.size >= rule.min_size)
        and (rule.max_size is None or disk.size <= rule.max_size)
        and (rule.model is None or fnmatchcase(disk.model, rule.model))
        and (rule.serial is None or rule.serial == disk.serial)
        and (rule.wwn is None or (bool(disk.wwn) and normal_wwn(rule.wwn) == normal_wwn(disk.wwn)))
        and (rule.path is None or any(fnmatchcase(p, rule.path) for p in disk.by_path))
    )


def unusable(disk: Disk, image_size: int) -> str:
    """Why the installer must not write to the disk whatever the rule says, or "" when it may."""
    if disk.kind != "disk":
        return f"not a disk ({disk.kind})"
    if _VIRTUAL.match(disk.name):
        return "in RAM, not a disk" if disk.name.startswith(("zram", "ram")) else "virtual, not a disk"
    if disk.read_only:
        return "read-only"
    if disk.removable:
        return "removable"
    if disk.mounted:
        return "holds a mounted filesystem: " + ", ".join(disk.mounted)
    if disk.size < image_size:
        return f"smaller than the image ({format_size(image_size)})"
    return ""


def choose(disks: Sequence[Disk], rule: DiskRule, image_size: int) -> Disk:
    """The one disk a rule without `raid` picks among `disks` for an image of `image_size` bytes (the first of
    `targets` otherwise). Raises NoDisk as `targets` does."""
    return targets(disks, rule, image_size)[0]


def targets(disks: Sequence[Disk], rule: DiskRule, image_size: int) -> tuple[Disk, ...]:
    """The disks the rule picks among `disks` for an image of `image_size` bytes: one, or two for `raid: 1` (the
    root mirrored across them), in the order seen. The default rule (no key but raid) picks the smallest usable
    disk, or the two smallest. Raises NoDisk, naming the rule and each disk seen, when fewer usable disks match or
    more do (for the default rule: when a disk of the same size as the last one picked is left over)."""
    usable = [d for d in disks if not unusable(d, image_size)]
    want = rule.disks
    if rule.is_default:
        by_size = sorted(usable, key=lambda d: d.size)
        picked = [d for d in usable if d.size <= by_size[want - 1].size] if len(by_size) >= want else usable
    else:
        picked = [d for d in usable if matches(rule, d)]
    if len(picked) == want:
        return tuple(picked)
    what = rule.describe()
    if not picked:
        head = f"no disk fits {what}"
    elif len(picked) < want:
        head = f"{what} needs {want} disks and only {', '.join(d.name for d in picked)} fits"
    else:
        names = ", ".join(d.name for d in picked)
        one = "them" if want > 1 else "one"
        hint = f"name {one} with serial, wwn or path" if rule.is_default else "narrow the rule with serial, wwn or path"
        head = f"{what} matches {len(picked)} disks ({names}), refusing to guess: {hint} in hosts[].disk"
    raise NoDisk(_bounded(head + "; seen: " + ("; ".join(_seen(disks, rule, image_size)) or "no disk at all")))


def _seen(disks: Sequence[Disk], rule: DiskRule, image_size: int) -> Iterator[str]:
    for d in disks:
        why = unusable(d, image_size) or ("" if rule.is_default or matches(rule, d) else "does not match")
        yield d.seen() + (f" ({why})" if why else "")


def _bounded(message: str) -> str:
    if len(message) <= MAX_MESSAGE:
        return message
    return message[: MAX_MESSAGE - 30].rsplit("; ", 1)[0] + "; ... (more disks, cut)"


_PCI = re.compile(r"^[0-9a-f]{4}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]$")
_SCSI = re.compile(r"^[0-9]+:[0-9]+:[0-9]+:[0-9]+$")


def path_ids(devpath: str, ata_port: int | None = None) -> tuple[str, ...]:
    """The /dev/disk/by-path names udev's path_id gives a disk, from its sysfs path (`readlink -f /sys/block/X`
    without /sys), for what servers boot from: virtio, NVMe, SATA (AHCI), SCSI and SAS HBAs seen as SCSI host 0.
    `ata_port`: /sys/class/ata_port/ataN/port_no (else N). Empty when the path is none of those."""
    parts = devpath.strip("/").split("/")
    pci = [i for i, p in enumerate(parts) if _PCI.match(p)]
    if not pci:
        return ()
    base = f"pci-{parts[pci[-1]]}"
    rest = parts[pci[-1] + 1 :]
    if len(rest) >= 3 and rest[0] == "nvme":  # nvme/nvme0/nvme0n1
        ns = re.match(r"^nvme[0-9]+(?:c[0-9]+)?n([0-9]+)$", rest[2])
        return (f"{base}-nvme-{ns.group(1)}",) if ns else ()
    ata = next((p for p in rest if re.match(r"^ata[0-9]+$", p)), None)
    if ata is not None:
        port = ata_port if ata_port is not None else int(ata[3:])
        device = next((p for p in rest if _SCSI.match(p)), "0:0:0:0")
        return (f"{base}-ata-{port}", f"{base}-ata-{port}.{device.split(':')[1]}")  # compat name, then systemd ≥ 253
    scsi = next((p for p in rest if _SCSI.match(p)), None)
    if scsi is not None:  # relative to the HBA's first host: an HBA with one host numbers it 0
        return (f"{base}-scsi-0:{scsi.split(':', 1)[1]}",)
    if rest and rest[0].startswith("virtio") and "block" in rest:  # virtio-blk
        return (base,)
    return ()
