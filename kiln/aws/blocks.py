"""A disk file as EBS snapshot blocks: 512 KiB each, the last one zero-padded, all-zero blocks skipped.

Checksums follow the EBS direct APIs: each block carries the base64 SHA256 of its 512 KiB, and
CompleteSnapshot carries the LINEAR aggregate, the base64 SHA256 of the concatenated raw block
digests in ascending block index order (written blocks only).
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Iterator, Mapping
from typing import BinaryIO

BLOCK_SIZE = 512 * 1024  # the EBS direct APIs' fixed block size (StartSnapshot reports it as BlockSize)
GIB = 1024**3
_ZERO = bytes(BLOCK_SIZE)


def block_count(size: int) -> int:
    return -(-size // BLOCK_SIZE)


def volume_gib(size: int) -> int:
    """The snapshot's volume size: whole GiB, at least 1 (StartSnapshot's VolumeSize)."""
    return max(1, -(-size // GIB))


def is_zero(block: bytes | memoryview) -> bool:
    return block == _ZERO


def read_blocks(f: BinaryIO, size: int) -> Iterator[tuple[int, bytes]]:
    """(index, 512 KiB of data) for every block of the first `size` bytes of `f`; the last block zero-padded."""
    for index in range(block_count(size)):
        expected = min(BLOCK_SIZE, size - index * BLOCK_SIZE)
        data = f.read(expected)
        if len(data) < expected:
            raise OSError(
                f"{getattr(f, 'name', 'file')}: ended at byte {index * BLOCK_SIZE + len(data)}, expected {size}"
            )
        if expected < BLOCK_SIZE:
            data += bytes(BLOCK_SIZE - expected)
        yield index, data


def block_digest(block: bytes) -> bytes:
    return hashlib.sha256(block).digest()


def b64(digest: bytes) -> str:
    return base64.b64encode(digest).decode("ascii")


def linear_aggregate(digests: Mapping[int, bytes]) -> str:
    """CompleteSnapshot's Checksum for ChecksumAggregationMethod LINEAR."""
    h = hashlib.sha256()
    for index in sorted(digests):
        h.update(digests[index])
    return b64(h.digest())
