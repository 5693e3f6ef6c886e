"""Block maps: which chunks of a raw image the installer downloads, and the digest it checks."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from kiln import blockmap
from kiln.blockmap import CHUNK, BlockMapError, Extent


def _image(path: Path, layout: str) -> Path:
    """One chunk per character: D random data, 0 zeros, z zeros but for one byte at the end (not a zero chunk)."""
    with path.open("wb") as f:
        for kind in layout:
            if kind == "D":
                f.write(os.urandom(CHUNK))
            elif kind == "z":
                f.write(bytes(CHUNK - 1) + b"\1")
            else:
                f.write(bytes(CHUNK))
    return path


def test_extents_follow_the_data_and_fold_short_zero_runs(tmp_path: Path) -> None:
    raw = _image(tmp_path / "a.raw", "DD00DD000000zD0000")
    block_map = blockmap.scan(raw)
    assert block_map.extents == (
        Extent("data", 0, 6),  # two zero chunks are not worth a process of their own
        Extent("zero", 6, 6),
        Extent("data", 12, 2),
        Extent("zero", 14, 4),
    )
    assert block_map.text == "data 0 6\nzero 6 6\ndata 12 2\nzero 14 4\n"
    assert block_map.data_bytes == 8 * CHUNK
    assert blockmap.parse(block_map.text) == block_map.extents


def test_the_digest_is_the_data_in_map_order_then_the_map(tmp_path: Path) -> None:
    raw = _image(tmp_path / "a.raw", "D000000D00D")
    content = raw.read_bytes()
    block_map = blockmap.scan(raw)
    data = b"".join(blockmap.read_data(raw, block_map.extents))
    assert data == content[:CHUNK] + content[7 * CHUNK :]  # chunks 7..10: D, 0, 0, D folded into one data run
    assert block_map.digest == hashlib.sha256(data + block_map.text.encode()).hexdigest()


def test_a_changed_byte_or_a_moved_chunk_changes_the_digest(tmp_path: Path) -> None:
    first = blockmap.scan(_image(tmp_path / "a.raw", "D00000"))
    moved = tmp_path / "b.raw"
    moved.write_bytes(bytes(4 * CHUNK) + (tmp_path / "a.raw").read_bytes()[:CHUNK] + bytes(CHUNK))
    second = blockmap.scan(moved)
    assert second.extents == (Extent("zero", 0, 4), Extent("data", 4, 2))
    first_data = b"".join(blockmap.read_data(tmp_path / "a.raw", first.extents))
    assert b"".join(blockmap.read_data(moved, second.extents)) == first_data + bytes(CHUNK)
    assert first.digest != second.digest, "same data, other place: the map's text is in the digest"
    with (tmp_path / "a.raw").open("r+b") as f:
        f.seek(CHUNK - 1)
        f.write(b"\xff" if first_data[-1:] != b"\xff" else b"\0")
    assert blockmap.scan(tmp_path / "a.raw").digest != first.digest


def test_all_zero_and_all_data_images(tmp_path: Path) -> None:
    assert blockmap.scan(_image(tmp_path / "z.raw", "00000")).extents == (Extent("zero", 0, 5),)
    assert blockmap.scan(_image(tmp_path / "d.raw", "DDD")).extents == (Extent("data", 0, 3),)


def test_an_image_of_no_whole_mib_is_refused(tmp_path: Path) -> None:
    raw = tmp_path / "odd.raw"
    raw.write_bytes(bytes(CHUNK + 512))
    with pytest.raises(BlockMapError, match="whole number of MiB"):
        blockmap.scan(raw)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("data 0 2\nzero 3 1\n", "expected start 2"),
        ("data 1 2\n", "expected start 0"),
        ("data 0 0\n", "expected start 0"),
        ("hole 0 2\n", "is not 'data|zero START COUNT'"),
        ("data 0 -1\n", "is not"),
        ("data 0\n", "is not"),
    ],
)
def test_parse_refuses_what_is_not_a_map(text: str, message: str) -> None:
    with pytest.raises(BlockMapError, match=message):
        blockmap.parse(text)


def test_read_data_notices_a_shorter_image(tmp_path: Path) -> None:
    raw = _image(tmp_path / "a.raw", "DD")
    with pytest.raises(BlockMapError, match="shorter than its block map"):
        list(blockmap.read_data(raw, (Extent("data", 0, 3),)))
