"""The block map the PXE installer installs a raw image by: which 1 MiB chunks hold data, which are all zeros.

About half of a role image is zeros. The installer downloads only the data chunks (the server streams them
from the raw file, in order, as GET /images/<role>/<role>.data), writes zeros itself over the zero
chunks (so a disk that held something before ends up byte for byte the image), then reads the data chunks
back and checks one digest: sha256 of the data chunks in order followed by the map's text. The map's text
is in that digest, so a map that moved or dropped a chunk fails the check like a changed byte does.

The map (images/<role>/<role>.map) is text a busybox shell can read, one extent a line in disk order:

    data START COUNT    COUNT chunks of data from chunk START
    zero START COUNT    COUNT chunks of zeros from chunk START

Zero runs shorter than MIN_ZERO_RUN chunks count as data: each extent costs the installer a process, and
a short run of zeros saves next to nothing.
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CHUNK = 1 << 20
MIN_ZERO_RUN = 4
_ZERO = bytes(CHUNK)


class BlockMapError(Exception):
    """A map that does not fit its image, or text that is not a map."""


@dataclass(frozen=True)
class Extent:
    kind: str  # data | zero
    start: int  # in chunks
    count: int  # in chunks

    @property
    def line(self) -> str:
        return f"{self.kind} {self.start} {self.count}"


@dataclass(frozen=True)
class BlockMap:
    extents: tuple[Extent, ...]
    digest: str  # sha256 of the data chunks, then the map's text

    @property
    def text(self) -> str:
        return render(self.extents)

    @property
    def data_bytes(self) -> int:
        return data_bytes(self.extents)

    def manifest_entry(self, map_name: str) -> dict[str, Any]:
        return {"file": map_name, "sha256": self.digest, "chunk": CHUNK, "data_bytes": self.data_bytes}


def data_bytes(extents: tuple[Extent, ...]) -> int:
    """Bytes the installer downloads for these extents."""
    return sum(e.count for e in extents if e.kind == "data") * CHUNK


def render(extents: tuple[Extent, ...] | list[Extent]) -> str:
    return "".join(e.line + "\n" for e in extents)


def parse(text: str) -> tuple[Extent, ...]:
    extents: list[Extent] = []
    at = 0
    for number, line in enumerate(text.splitlines(), 1):
        words = line.split()
        if len(words) != 3 or words[0] not in ("data", "zero") or not (words[1] + words[2]).isdigit():
            raise BlockMapError(f"line {number}: {line!r} is not 'data|zero START COUNT'")
        extent = Extent(words[0], int(words[1]), int(words[2]))
        if extent.start != at or extent.count < 1:
            raise BlockMapError(f"line {number}: extents must follow each other from chunk 0 (expected start {at})")
        extents.append(extent)
        at += extent.count
    return tuple(extents)


def scan(raw: Path) -> BlockMap:
    """Read the image: its extents, then (a second read, from the page cache) the digest the installer checks."""
    size = raw.stat().st_size
    if size == 0 or size % CHUNK:
        raise BlockMapError(f"{raw.name} is {size} bytes: a block map needs a whole number of MiB")
    zeros: list[bool] = []
    with raw.open("rb") as f:
        for _ in range(size // CHUNK):
            zeros.append(f.read(CHUNK) == _ZERO)
    extents = _extents(zeros)
    h = hashlib.sha256()
    for block in read_data(raw, extents):
        h.update(block)
    h.update(render(extents).encode())
    return BlockMap(extents, h.hexdigest())


def _extents(zeros: list[bool]) -> tuple[Extent, ...]:
    extents: list[Extent] = []
    start = 0
    for zero, run in itertools.groupby(zeros):
        count = sum(1 for _ in run)
        kind = "zero" if zero and count >= MIN_ZERO_RUN else "data"  # short zero runs fold into data
        if extents and extents[-1].kind == kind:
            extents[-1] = Extent(kind, extents[-1].start, extents[-1].count + count)
        else:
            extents.append(Extent(kind, start, count))
        start += count
    return tuple(extents)


def read_data(raw: Path, extents: tuple[Extent, ...]) -> Iterator[bytes]:
    """The data chunks of `raw` in map order, a chunk at a time: what the installer downloads."""
    with raw.open("rb") as f:
        for e in extents:
            if e.kind != "data":
                continue
            f.seek(e.start * CHUNK)
            for _ in range(e.count):
                block = f.read(CHUNK)
                if len(block) != CHUNK:
                    raise BlockMapError(f"{raw.name} is shorter than its block map")
                yield block


def write(raw: Path, map_path: Path) -> BlockMap:
    """Scan `raw` and write its map next to it (the caller renames both into place)."""
    block_map = scan(raw)
    map_path.write_text(block_map.text)
    return block_map
