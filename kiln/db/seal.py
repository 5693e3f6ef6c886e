"""The stored form of backups and binlogs: zstd-compressed, then sealed with AES-256-GCM in chunks.

Format kiln-seal-v1 (the STREAM construction: each chunk authenticated on its own, its place and the end fixed):

    header   b"kiln-seal-v1\\n" | key id (8 bytes) | nonce prefix (7 random bytes)
    chunk    length of the ciphertext (4 bytes, big-endian) | AES-256-GCM(compressed bytes, at most CHUNK)
    nonce    nonce prefix | chunk number (4 bytes, big-endian) | 1 for the last chunk, else 0
    AAD      header | the object's name (backups/<id>/data: an object cannot pass for another)

Unsealing refuses, before releasing any of its bytes, a chunk that was altered, reordered or swapped from another
object, a stream cut short (no last chunk) or extended, and a key other than the one it was sealed with
(WrongKey, from the key id, before any decryption). The key is 32 bytes (secrets/backup.key, kiln.secrets).
"""

from __future__ import annotations

import hashlib
import os
import struct
from collections.abc import Iterable, Iterator
from typing import Any

import zstandard
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

FORMAT = "kiln-seal-v1"
MAGIC = b"kiln-seal-v1\n"
CHUNK = 1 << 20  # bytes of compressed data per sealed chunk
ZSTD_LEVEL = 3
_KEY_ID_BYTES = 8
_PREFIX_BYTES = 7
HEADER_BYTES = len(MAGIC) + _KEY_ID_BYTES + _PREFIX_BYTES
_TAG = 16


class SealError(Exception):
    """The object cannot be unsealed; the message says which object and why."""


class WrongKey(SealError):
    pass


class Tampered(SealError):
    pass


def key_id(key: bytes) -> bytes:
    """8 bytes naming the key without revealing it (a hash of it under a fixed label)."""
    return hashlib.sha256(b"kiln-backup-key-id\0" + key).digest()[:_KEY_ID_BYTES]


def parameters(key: bytes) -> dict[str, Any]:
    """What a manifest records of how its object was stored."""
    return {
        "compression": {"algorithm": "zstd", "level": ZSTD_LEVEL},
        "encryption": {"format": FORMAT, "algorithm": "AES-256-GCM", "chunk_bytes": CHUNK, "key_id": key_id(key).hex()},
    }


def _nonce(prefix: bytes, number: int, last: bool) -> bytes:
    return prefix + struct.pack(">IB", number, 1 if last else 0)


def seal(data: Iterable[bytes], key: bytes, name: str) -> Iterator[bytes]:
    """The sealed form of the byte stream `data` (compressed, encrypted, authenticated), as it is produced."""
    aead = AESGCM(key)
    header = MAGIC + key_id(key) + os.urandom(_PREFIX_BYTES)
    prefix = header[len(MAGIC) + _KEY_ID_BYTES :]
    aad = header + name.encode()
    yield header
    compressor = zstandard.ZstdCompressor(level=ZSTD_LEVEL).compressobj()
    pending = bytearray()
    number = 0

    def sealed(piece: bytes, last: bool) -> bytes:
        box = aead.encrypt(_nonce(prefix, number, last), piece, aad)
        return struct.pack(">I", len(box)) + box

    for block in data:
        pending += compressor.compress(block)
        while len(pending) > CHUNK:  # keep at least one byte back: the last chunk must carry the end mark
            yield sealed(bytes(pending[:CHUNK]), False)
            del pending[:CHUNK]
            number += 1
    pending += compressor.flush()
    while len(pending) > CHUNK:
        yield sealed(bytes(pending[:CHUNK]), False)
        del pending[:CHUNK]
        number += 1
    yield sealed(bytes(pending), True)


class _Reader:
    def __init__(self, data: Iterable[bytes]) -> None:
        self._it = iter(data)
        self._buf = bytearray()

    def read(self, n: int) -> bytes:
        """Exactly n bytes, or fewer at the end of the stream."""
        while len(self._buf) < n:
            block = next(self._it, None)
            if block is None:
                break
            self._buf += block
        out = bytes(self._buf[:n])
        del self._buf[:n]
        return out


def unseal(data: Iterable[bytes], key: bytes, name: str) -> Iterator[bytes]:
    """The original bytes of a sealed stream; SealError (WrongKey, Tampered) as soon as something is wrong."""
    reader = _Reader(data)
    header = reader.read(HEADER_BYTES)
    if len(header) < HEADER_BYTES or not header.startswith(MAGIC):
        raise Tampered(f"{name}: not a {FORMAT} object (its header is missing or altered)")
    sealed_with = header[len(MAGIC) : len(MAGIC) + _KEY_ID_BYTES]
    if sealed_with != key_id(key):
        raise WrongKey(
            f"{name} was sealed with key {sealed_with.hex()}, the key given is {key_id(key).hex()}: "
            "use the secrets/backup.key it was made with"
        )
    prefix = header[len(MAGIC) + _KEY_ID_BYTES :]
    aad = header + name.encode()
    aead = AESGCM(key)
    decompressor = zstandard.ZstdDecompressor().decompressobj()
    number = 0
    while True:
        size = reader.read(4)
        if len(size) < 4:
            raise Tampered(f"{name}: cut short after chunk {number} (no last chunk)")
        (length,) = struct.unpack(">I", size)
        if length < _TAG or length > CHUNK + _TAG:
            raise Tampered(f"{name}: chunk {number} has an impossible length {length}")
        box = reader.read(length)
        if len(box) < length:
            raise Tampered(f"{name}: cut short in chunk {number}")
        piece = None
        for last in (False, True):
            try:
                piece = aead.decrypt(_nonce(prefix, number, last), box, aad)
            except InvalidTag:
                continue
            break
        if piece is None:
            raise Tampered(f"{name}: chunk {number} fails authentication (altered, reordered or from another object)")
        out = decompressor.decompress(piece)
        if out:
            yield out
        number += 1
        if last:
            if reader.read(1):
                raise Tampered(f"{name}: bytes after the last chunk")
            return
