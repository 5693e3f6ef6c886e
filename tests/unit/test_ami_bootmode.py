"""The boot mode RegisterImage gets comes from the disk's partition table (sfdisk) and its MBR boot code."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from kiln.aws.bootmode import NotBootable, boot_mode, decide

ESP = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"
BIOS_BOOT = "21686148-6449-6E6F-744E-656564454649"
LINUX = "0FC63DAF-8483-4772-8E79-3D69D8477DE4"


def disk(tmp_path: Path, script: str | None, *, boot_code: bool) -> Path:
    path = tmp_path / "kiln-ami-disk.raw"
    with path.open("wb") as f:
        f.truncate(64 * 1024**2)
    if script is not None:
        subprocess.run(["sfdisk", "-q", str(path)], input=script, text=True, check=True)
    if boot_code:
        with path.open("r+b") as f:
            f.write(b"\xeb\x63\x90" + b"\x11" * 100)
    return path


@pytest.mark.parametrize(
    ("script", "boot_code", "mode"),
    [
        ("label: dos\nstart=2048, type=83, bootable\n", True, "legacy-bios"),
        ("label: dos\nstart=2048, size=16M, type=ef\ntype=83\n", False, "uefi"),
        ("label: dos\nstart=2048, size=16M, type=ef\ntype=83, bootable\n", True, "uefi-preference"),
        (f"label: gpt\nsize=1M, type={BIOS_BOOT}\ntype={LINUX}\n", True, "legacy-bios"),
        (f"label: gpt\nsize=16M, type={ESP}\ntype={LINUX}\n", False, "uefi"),
        (f"label: gpt\nsize=1M, type={BIOS_BOOT}\nsize=16M, type={ESP}\ntype={LINUX}\n", True, "uefi-preference"),
    ],
    ids=["mbr-grub", "mbr-esp", "mbr-both", "gpt-bios-boot", "gpt-esp", "gpt-both"],
)
def test_boot_mode_follows_the_partition_table(tmp_path, script, boot_code, mode):
    assert boot_mode(disk(tmp_path, script, boot_code=boot_code)) == mode


def test_gpt_boot_code_without_a_bios_boot_partition_is_not_bios_bootable(tmp_path):
    path = disk(tmp_path, f"label: gpt\nsize=16M, type={ESP}\ntype={LINUX}\n", boot_code=True)
    assert boot_mode(path) == "uefi"


@pytest.mark.parametrize(
    ("script", "boot_code", "says"),
    [
        ("label: dos\nstart=2048, type=83, bootable\n", False, "dos disk with no boot code in the MBR and no EFI"),
        (f"label: gpt\ntype={LINUX}\n", True, "gpt disk with no BIOS boot partition"),
        (None, False, "no partition table sfdisk can read"),
    ],
    ids=["mbr-no-boot-code", "gpt-nothing-bootable", "no-table"],
)
def test_a_disk_ec2_cannot_boot_is_refused_with_the_reason(tmp_path, script, boot_code, says):
    path = disk(tmp_path, script, boot_code=boot_code)
    with pytest.raises(NotBootable, match=says) as caught:
        boot_mode(path)
    assert str(caught.value).startswith(str(path))


def test_an_unknown_label_is_refused():
    with pytest.raises(NotBootable, match="'sun'"):
        decide({"label": "sun", "partitions": []}, boot_code=True)
