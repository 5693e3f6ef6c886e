"""A disk file as EBS snapshot blocks, and the checksums the EBS direct APIs expect."""

from __future__ import annotations

import base64
import hashlib
import io

import pytest

from kiln.aws.blocks import BLOCK_SIZE, block_count, is_zero, linear_aggregate, read_blocks, volume_gib


def test_blocks_are_512_kib_and_the_last_is_zero_padded():
    data = b"\x01" * BLOCK_SIZE + b"\x02" * 10
    blocks = list(read_blocks(io.BytesIO(data), len(data)))
    assert [i for i, _ in blocks] == [0, 1]
    assert blocks[1][1] == b"\x02" * 10 + bytes(BLOCK_SIZE - 10)
    assert all(len(b) == BLOCK_SIZE for _, b in blocks)


def test_only_the_given_size_is_read_even_when_the_file_is_longer():
    data = b"\x01" * (2 * BLOCK_SIZE)
    (block,) = [b for _, b in read_blocks(io.BytesIO(data), 100)]
    assert block[:100] == b"\x01" * 100 and not any(block[100:])


def test_a_file_shorter_than_its_size_is_an_error():
    with pytest.raises(OSError, match=f"ended at byte {BLOCK_SIZE + 5}, expected {3 * BLOCK_SIZE}"):
        list(read_blocks(io.BytesIO(bytes(BLOCK_SIZE + 5)), 3 * BLOCK_SIZE))


def test_zero_detection_needs_every_byte_zero():
    assert is_zero(bytes(BLOCK_SIZE))
    assert not is_zero(bytes(BLOCK_SIZE - 1) + b"\x01")


def test_sizes():
    assert block_count(0) == 0 and block_count(1) == 1 and block_count(BLOCK_SIZE + 1) == 2
    assert volume_gib(1) == 1 and volume_gib(4 * 1024**3) == 4 and volume_gib(4 * 1024**3 + 1) == 5


def test_linear_aggregate_hashes_the_raw_digests_in_block_order():
    blocks = {7: b"seven" * 100, 2: b"two" * 100, 40: b"forty" * 100}
    digests = {i: hashlib.sha256(b).digest() for i, b in blocks.items()}
    expected = hashlib.sha256(digests[2] + digests[7] + digests[40]).digest()
    assert linear_aggregate(digests) == base64.b64encode(expected).decode()
    assert linear_aggregate(dict(reversed(list(digests.items())))) == linear_aggregate(digests)
