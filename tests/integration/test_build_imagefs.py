"""A built image's root filesystem is found by its GPT partition name, not its number: kiln's GPT layout puts the
BIOS boot partition and the ESP before root (kiln-base/block-device-kiln.yaml), and the MBR images before it had
root first. Real sfdisk, loop devices and ext4, on disks laid out both ways."""

from __future__ import annotations

from pathlib import Path

import pytest

from kiln.build.imagefs import ROOT_PARTNAME, mounted, partition_named
from kiln.run import run

pytestmark = pytest.mark.integration

BIOS_BOOT = "21686148-6449-6E6F-744E-656564454649"
ESP = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"
LINUX = "0FC63DAF-8483-4772-8E79-3D69D8477DE4"


def _disk(tmp_path: Path, table: str, root_number: int) -> Path:
    """A 40 MiB disk laid out by `table` (sfdisk's script), an ext4 holding /marker in partition `root_number`."""
    raw = tmp_path / "disk.raw"
    with raw.open("wb") as f:
        f.truncate(40 << 20)
    run(["sfdisk", "-q", raw], input=table)
    layout = run(["sfdisk", "--dump", raw]).stdout
    line = next(x for x in layout.splitlines() if x.startswith(f"{raw}{root_number} "))
    start = int(line.split("start=")[1].split(",")[0]) * 512
    size = int(line.split("size=")[1].split(",")[0]) * 512
    content = tmp_path / "root"
    content.mkdir()
    (content / "marker").write_text(f"root is partition {root_number}\n")
    fs = tmp_path / "root.ext4"
    run(["mkfs.ext4", "-q", "-d", content, fs, f"{size // 1024}k"])
    run(["dd", f"if={fs}", f"of={raw}", "bs=512", f"seek={start // 512}", "conv=notrunc", "status=none"])
    return raw


def test_gpt_root_after_the_boot_partitions_is_mounted(tmp_path: Path) -> None:
    table = (
        "label: gpt\n"
        f"size=1MiB, type={BIOS_BOOT}, name=BSP\n"
        f"size=8MiB, type={ESP}, name=ESP\n"
        f"type={LINUX}, name={ROOT_PARTNAME}\n"
    )
    raw = _disk(tmp_path, table, 3)
    assert partition_named(raw, ROOT_PARTNAME) == 3
    with mounted(raw) as root:
        assert (root / "marker").read_text() == "root is partition 3\n"


def test_an_mbr_image_mounts_its_first_partition(tmp_path: Path) -> None:
    raw = _disk(tmp_path, "label: dos\ntype=83\n", 1)
    assert partition_named(raw, ROOT_PARTNAME) is None  # MBR partitions have no names
    with mounted(raw) as root:
        assert (root / "marker").read_text() == "root is partition 1\n"


def test_an_image_written_onto_a_larger_disk_is_read_despite_sfdisks_warnings(tmp_path: Path) -> None:
    """What the installer leaves: the image's GPT with its backup short of the disk's end. sfdisk warns (on
    stderr), the table is still read, and root still found by its name."""
    table = f"label: gpt\nsize=1MiB, type={BIOS_BOOT}, name=BSP\ntype={LINUX}, name={ROOT_PARTNAME}\n"
    raw = _disk(tmp_path, table, 2)
    with raw.open("r+b") as f:
        f.truncate(80 << 20)
    assert "backup GPT" in run(["sfdisk", "--json", raw]).stdout  # kiln.run: stdout and stderr together
    assert partition_named(raw, ROOT_PARTNAME) == 2
    with mounted(raw) as root:
        assert (root / "marker").read_text() == "root is partition 2\n"


def test_a_partition_the_table_lacks_is_named_in_the_error(tmp_path: Path) -> None:
    raw = _disk(tmp_path, "label: dos\ntype=83\n", 1)
    with pytest.raises(LookupError, match="no partition 4"), mounted(raw, partition=4):
        pass
