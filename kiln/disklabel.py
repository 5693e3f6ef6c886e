"""A disk's partition table as sfdisk reads it (`sfdisk --json`), from an image file or a block device."""

from __future__ import annotations

import json
import os
import subprocess
from typing import Any

from kiln.run import CommandError


def partition_table(path: str | os.PathLike[str], timeout: float = 30) -> dict[str, Any]:
    """`sfdisk --json`'s "partitiontable" object (label, sectorsize, partitions with node, start, size, type and,
    on GPT, name). Its warnings stay out of the JSON: an image written onto a larger disk has its backup GPT short
    of the disk's end, and sfdisk says so on stderr. Raises CommandError when sfdisk finds no table."""
    argv = ["sfdisk", "--json", os.fspath(path)]
    try:
        result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    except FileNotFoundError:
        raise CommandError(argv, 127, "sfdisk: not found") from None
    if result.returncode != 0 or not result.stdout.strip():
        raise CommandError(argv, result.returncode or 1, result.stderr + result.stdout)
    return dict(json.loads(result.stdout)["partitiontable"])
