"""A built raw image's root filesystem, mounted read-only for inspection (image checks, installed size).

A read-only loop device over the root partition's bytes alone (`losetup --offset --sizelimit`, from the table
sfdisk reads), mounted `ro,noload` (no journal replay: the image file is never written). No partition device
nodes: those the kernel adds for a loop device appear asynchronously, and a mount racing them failed in CI.
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from kiln.disklabel import partition_table
from kiln.run import run

ROOT_PARTNAME = "root"  # the GPT partition name of the root filesystem (elements/kiln-base/block-device-kiln.yaml)


def _partitions(disk: Path) -> tuple[int, list[tuple[int, dict[str, Any]]]]:
    """(sector size in bytes, [(partition number, sfdisk's partition object)]) of `disk`'s table."""
    table = partition_table(disk)
    parts = []
    for index, part in enumerate(table.get("partitions", []), start=1):
        number = re.search(r"(\d+)$", part.get("node", ""))
        parts.append((int(number.group(1)) if number else index, part))
    return int(table.get("sectorsize", 512)), parts


def partition_named(disk: Path, name: str) -> int | None:
    """The number of the partition of `disk` (an image file or a block device) whose GPT name is `name`, as
    `sfdisk --json` reads the table; None when none is (an MBR disk has no names)."""
    return next((number for number, part in _partitions(disk)[1] if part.get("name") == name), None)


def _span(raw: Path, partition: int | None) -> tuple[int, int]:
    """(offset, size) in bytes of `raw`'s partition number `partition`, by default the root filesystem's (the
    partition named root, else the first: images before GPT). Raises LookupError when `raw` has no such partition."""
    sector, parts = _partitions(raw)
    if partition is None:
        partition = next((n for n, part in parts if part.get("name") == ROOT_PARTNAME), None) or 1
    found = next((part for n, part in parts if n == partition), None)
    if found is None:
        raise LookupError(f"{raw}: no partition {partition} (it has {[n for n, _ in parts]})")
    return int(found["start"]) * sector, int(found["size"]) * sector


def root_uuid(raw: Path) -> str:
    """The UUID of `raw`'s root filesystem (blkid's low-level probe at its offset): each build makes the filesystem
    anew, so it names the build a host was installed from (`findmnt -no UUID /` on the host). Raises LookupError
    when there is no root partition or no filesystem UUID in it."""
    offset, size = _span(raw, None)
    probed = run(["blkid", "-p", "-O", str(offset), "-S", str(size), "-o", "value", "-s", "UUID", raw], check=False)
    if not probed.stdout.strip():
        raise LookupError(f"{raw}: blkid finds no filesystem UUID in the root partition (at byte {offset})")
    return probed.stdout.strip()


@contextlib.contextmanager
def mounted(
    raw: Path, partition: int | None = None, *, writable: bool = False, fstype: str | None = None
) -> Iterator[Path]:
    """Mount `raw`'s partition number `partition` read-only; by default the root filesystem's (the partition
    named root, else the first: images before GPT). `writable`: read-write, for a copy of an image a test changes
    before it boots it (never an image as built). `fstype` (ext4): what mount would not guess, e.g. a RAID1
    member's filesystem, which blkid reports as linux_raid_member. Raises LookupError when `raw` has no such
    partition."""
    offset, size = _span(raw, partition)
    loop = run(
        ["losetup", "--find", "--show", *([] if writable else ["--read-only"]), "--offset", str(offset),
         "--sizelimit", str(size), raw]
    ).stdout.strip()  # fmt: skip
    mnt = Path(tempfile.mkdtemp(prefix="kiln-img-mnt-"))
    try:
        run(["mount", *(["-t", fstype] if fstype else []), "-o", "rw" if writable else "ro,noload", loop, mnt])
        try:
            yield mnt
        finally:
            run(["umount", mnt])
    finally:
        run(["losetup", "-d", loop], check=False)
        os.rmdir(mnt)


def used_bytes(root: Path) -> int:
    st = os.statvfs(root)
    return (st.f_blocks - st.f_bfree) * st.f_frsize
