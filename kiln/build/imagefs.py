"""A built raw image's root filesystem, mounted read-only for inspection (image checks, installed size).

A read-only loop device, its partitions added with `partx` (no device-mapper needed), the first
partition mounted `ro,noload` (no journal replay: the image file is never written).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from kiln.run import run


@contextlib.contextmanager
def mounted(raw: Path, partition: int = 1) -> Iterator[Path]:
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
