"""The EC2 boot mode a raw disk supports, decided from its partition table (read with sfdisk --json).

- BIOS: boot code in the MBR (the first 440 bytes are not all zero) and, on GPT, a BIOS boot partition
  for GRUB's core image;
- UEFI: an EFI system partition (MBR type ef, GPT C12A7328-F81F-11D2-BA4B-00A0C93EC93B).
Both gives `uefi-preference`, one gives `legacy-bios` or `uefi`, neither is an error.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from kiln.disklabel import partition_table
from kiln.run import CommandError

LEGACY_BIOS = "legacy-bios"
UEFI = "uefi"
UEFI_PREFERENCE = "uefi-preference"

ESP_TYPES = {"ef", "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"}
BIOS_BOOT_GPT = "21686148-6449-6E6F-744E-656564454649"
_BOOT_CODE = 440  # MBR bytes before the disk signature and the partition entries


class NotBootable(Exception):
    """The disk has no partition table, or nothing EC2 can boot from."""


def read_partition_table(path: str | os.PathLike[str]) -> dict[str, Any]:
    try:
        return partition_table(path)
    except CommandError as e:
        lines = e.output.strip().splitlines()
        raise NotBootable(
            f"no partition table sfdisk can read ({lines[-1] if lines else f'exit {e.returncode}'})"
        ) from None


def has_bios_boot_code(path: str | os.PathLike[str]) -> bool:
    with open(path, "rb") as f:
        return any(f.read(_BOOT_CODE))


def decide(table: Mapping[str, Any], *, boot_code: bool) -> str:
    """The boot mode for a partition table as sfdisk --json gives it, and whether the MBR holds boot code."""
    label = table.get("label")
    types = {str(p.get("type", "")).upper() for p in table.get("partitions", [])}
    uefi = bool(types & {t.upper() for t in ESP_TYPES})
    if label == "dos":
        bios = boot_code
    elif label == "gpt":
        bios = boot_code and BIOS_BOOT_GPT in types
    else:
        raise NotBootable(f"partition table {label!r} (expected dos or gpt)")
    if bios and uefi:
        return UEFI_PREFERENCE
    if bios:
        return LEGACY_BIOS
    if uefi:
        return UEFI
    what = "no boot code in the MBR" if label == "dos" else "no BIOS boot partition with MBR boot code"
    raise NotBootable(f"{label} disk with {what} and no EFI system partition: EC2 cannot boot it")


def boot_mode(path: str | os.PathLike[str]) -> str:
    """RegisterImage's BootMode for the disk at `path`."""
    try:
        return decide(read_partition_table(path), boot_code=has_bios_boot_code(path))
    except NotBootable as e:
        raise NotBootable(f"{Path(path)}: {e}") from None
