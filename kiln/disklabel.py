"""A disk's partition table as sfdisk reads it (`sfdisk --json`), from an image file or a block device."""

from __future__ import annotations

import json
import os
from typing import Any

from kiln.run import CommandError, run


def partition_table(path: str | os.PathLike[str], timeout: float = 30) -> dict[str, Any]:
    """`sfdisk --json`'s "partitiontable" object (label, sectorsize, partitions with node, start, size, type and,
    on GPT, name). Its warnings stay out of the JSON: an image written onto a larger disk has its backup GPT short
    of the disk's end, and sfdisk says so on stderr. Raises CommandError when sfdisk finds no table or times out."""
    result = run(["sfdisk", "--json", path], timeout=timeout, stderr_apart=True)
    if not result.stdout.strip():
        raise CommandError(["sfdisk", "--json", os.fspath(path)], 1, result.stderr or "no partition table")
    return dict(json.loads(result.stdout)["partitiontable"])
