"""Small bootable-looking raw disks for the upload-ami tests and bench/ami.py: sparse, with an MBR and one
bootable Linux partition (sfdisk), GRUB-like boot code, random data in chosen 512 KiB blocks, zeros elsewhere."""

from __future__ import annotations

import os
import random
from collections.abc import Iterable
from pathlib import Path

from kiln.aws.blocks import BLOCK_SIZE
from kiln.run import run


def write_test_disk(path: Path, *, blocks: int, data_at: Iterable[int], tail: int = 0, boot_code: bool = True) -> Path:
    """`blocks` * 512 KiB + `tail` bytes; each listed block gets a third random, a third zeros, a third random
    (block 0 holds the partition table and, with `boot_code`, the first bytes of a boot loader)."""
    size = blocks * BLOCK_SIZE + tail
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as f:
        f.truncate(size)
    run(["sfdisk", "-q", path], input="label: dos\nstart=2048, type=83, bootable\n", timeout=30)
    rng = random.Random(os.urandom(8))
    with path.open("r+b") as f:
        if boot_code:
            f.write(b"\xeb\x63\x90" + rng.randbytes(200))  # jmp + code, inside the MBR's 440 bytes of boot code
        for index in sorted(set(data_at) - {0}):
            f.seek(index * BLOCK_SIZE)
            length = min(BLOCK_SIZE, size - index * BLOCK_SIZE)
            third = length // 3
            f.write(rng.randbytes(third) + bytes(third) + rng.randbytes(length - 2 * third))
    return path
