"""A built raw image's root filesystem, mounted read-only for inspection (image checks, installed size).

A read-only loop device, its partitions added with `partx` (no device-mapper needed), the root partition
mounted `ro,noload` (no journal replay: the image file is never written).
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from kiln.disklabel import partition_table
from kiln.run import run

ROOT_PARTNAME = "root"  # the GPT partition name of the root filesystem (elements/kiln-base/block-device-kiln.yaml)


def partition_named(disk: Path, name: str) -> int | None:
    """The number of the partition of `disk` (an image file or a block device) whose GPT name is `name`, as
    `sfdisk --json` reads the table; None when none is (an MBR disk has no names)."""
    table = partition_table(disk)
    for index, part in enumerate(table.get("partitions", []), start=1):
        if part.get("name") == name:
            number = re.search(r"(\d+)$", part.get("node", ""))
            return int(number.group(1)) if number else index
    return None


@contextlib.contextmanager
def mounted(raw: Path, partition: int | None = None) -> Iterator[Path]:
    """Mount `raw`'s partition number `partition` read-only; by default the root filesystem's (the partition
    named root, else the first: images before GPT)."""
    if partition is None:
        partition = partition_named(raw, ROOT_PARTNAME) or 1
    loop = run(["losetup", "--find", "--show", "--read-only", raw]).stdout.strip()
    mnt = Path(tempfile.mkdtemp(prefix="kiln-img-mnt-"))
    try:
        run(["partx", "-a", loop], check=False)  # already there when the kernel scanned the table itself
        part = Path(f"{loop}p{partition}")
        for _ in range(50):
            if part.exists():
                break
            time.sleep(0.1)
        run(["mount", "-o", "ro,noload", part, mnt])
        try:
            yield mnt
        finally:
            run(["umount", mnt])
    finally:
        run(["partx", "-d", loop], check=False)
        run(["losetup", "-d", loop], check=False)
        os.rmdir(mnt)


def used_bytes(root: Path) -> int:
    st = os.statvfs(root)
    return (st.f_blocks - st.f_bfree) * st.f_frsize
