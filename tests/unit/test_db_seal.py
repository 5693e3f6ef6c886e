"""The stored form of backups: what goes in comes out, and nothing else does (wrong key, altered, cut, swapped)."""

from __future__ import annotations

import os

import pytest

from kiln.db.gtid import GtidError, Position
from kiln.db.seal import CHUNK, HEADER_BYTES, Tampered, WrongKey, seal, unseal

KEY = bytes(range(32))


def sealed(data: bytes, name: str = "backups/x/data", key: bytes = KEY) -> bytes:
    return b"".join(seal([data[i : i + 65536] for i in range(0, len(data), 65536)], key, name))


def opened(blob: bytes, name: str = "backups/x/data", key: bytes = KEY) -> bytes:
    return b"".join(unseal([blob[i : i + 1000] for i in range(0, len(blob), 1000)], key, name))


# incompressible, so that it spans several sealed chunks
DATA = os.urandom(CHUNK * 2 + 12345)


def test_what_is_sealed_opens_again_compressed_and_unreadable() -> None:
    text = b"INSERT INTO notes VALUES (1, 'a secret row');\n" * 20000
    blob = sealed(text)
    assert opened(blob) == text
    assert len(blob) < len(text) / 20  # compressed
    assert b"secret row" not in blob  # encrypted
    assert opened(sealed(DATA)) == DATA and opened(sealed(b"")) == b""


def test_another_key_is_refused_before_decrypting() -> None:
    with pytest.raises(WrongKey, match="sealed with key .* use the secrets/backup.key it was made with"):
        opened(sealed(b"data"), key=bytes(32))


@pytest.mark.parametrize("where", [HEADER_BYTES + 10, -5])
def test_an_altered_byte_is_refused(where: int) -> None:
    blob = bytearray(sealed(DATA))
    blob[where] ^= 0x01
    with pytest.raises(Tampered, match="fails authentication"):
        opened(bytes(blob))


def test_a_forged_key_id_does_not_help() -> None:
    """Someone with another key who writes our key id into the header still cannot make chunks that open."""
    blob = bytearray(sealed(b"forged", key=bytes(32)))
    good = sealed(b"x")
    blob[: HEADER_BYTES - 7] = good[: HEADER_BYTES - 7]
    with pytest.raises(Tampered):
        opened(bytes(blob))


def test_a_cut_or_extended_stream_and_another_objects_name_are_refused() -> None:
    blob = sealed(DATA)
    first_chunk_end = HEADER_BYTES + 4 + CHUNK + 16
    with pytest.raises(Tampered, match="cut short|no last chunk"):
        opened(blob[:first_chunk_end])  # whole chunks, the last one missing
    with pytest.raises(Tampered, match="after the last chunk"):
        opened(blob + b"\0")
    with pytest.raises(Tampered, match="fails authentication"):
        opened(blob, name="backups/y/data")


def test_gtid_positions_compare_per_domain() -> None:
    a, b = Position.parse("0-1-10,1-2-5"), Position.parse("0-3-12")
    assert str(a) == "0-1-10,1-2-5" and not a.covers(b) and b.advanced("1-2-5").covers(a)
    assert Position.parse("").covers(Position()) and b.transactions_after(a) == 2
    with pytest.raises(GtidError, match="is not a GTID"):
        Position.parse("0-1")
