"""The installer's kiln-disks reads sysfs the way lsblk would and its report is what the server's disk rule reads:
run over a made-up /sys of a server with a SATA SSD, two NVMe disks (one behind native multipath), a mounted USB
stick and RAM disks."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from kiln.model import DiskRule
from kiln.targetdisk import choose, disks_from_installer

SCRIPT = Path(__file__).resolve().parents[2] / "elements" / "kiln-installer" / "static" / "bin" / "kiln-disks"
SHELLS = [["sh"], *([["busybox", "sh"]] if shutil.which("busybox") else [])]  # the installer runs busybox's


def _write(path: Path, content: str | bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content if isinstance(content, bytes) else content.encode())


def _block(sys: Path, devpath: str, sectors: int, removable: int = 0, device: str | None = None, **files: str) -> Path:
    """/sys/devices/DEVPATH with size, removable, ro and `files`; /sys/block/NAME links to it; `device` (relative
    to it) is where the driver's model, serial and wwid live."""
    block = sys / devpath.lstrip("/")
    _write(block / "size", f"{sectors}\n")
    _write(block / "removable", f"{removable}\n")
    _write(block / "ro", "0\n")
    for name, text in files.items():
        _write(block / name, text)
    if device is not None:
        (block / "device").symlink_to(device)
    (sys / "block").mkdir(exist_ok=True)
    (sys / "block" / block.name).symlink_to(Path("..") / devpath.lstrip("/"))
    return block


@pytest.fixture
def machine(tmp_path: Path) -> tuple[Path, Path]:
    sys = tmp_path / "sys"
    ata = "devices/pci0000:00/0000:00:17.0/ata2/host1/target1:0:0/1:0:0:0"
    _block(sys, f"{ata}/block/sda", 937703088, device="../..")
    _write(sys / ata / "model", "SAMSUNG MZ7LH480HAHQ-00005\n")  # ATA pads its model; lsblk trims it
    _write(sys / ata / "vpd_pg80", b"\x00\x80\x00\x14      S45PNA0M123456")
    _write(sys / ata / "wwid", "naa.5002538e40a1b2c3\n")
    _write(sys / "class" / "ata_port" / "ata2" / "port_no", "2\n")
    ctrl = "devices/pci0000:5d/0000:5d:02.0/0000:5e:00.0/nvme/nvme0"
    _block(sys, f"{ctrl}/nvme0n1", 7501476528, device="..", wwid="eui.36344630529012340025384500000001\n")
    _write(sys / ctrl / "model", "SAMSUNG MZQL23T8HCLS-00A07               \n")
    _write(sys / ctrl / "serial", "S64HNE0T501234      \n")
    # native NVMe multipath, Debian's default: the namespace hangs off its subsystem, which links its controller
    subsys = sys / "devices" / "virtual" / "nvme-subsystem" / "nvme-subsys1"
    _block(sys, "devices/virtual/nvme-subsystem/nvme-subsys1/nvme1n1", 7501476528, wwid="eui.0025384500000002\n")
    _write(subsys / "model", "SAMSUNG MZQL23T8HCLS-00A07\n")
    _write(subsys / "serial", "S64HNE0T509999\n")
    (sys / "devices/pci0000:d7/0000:d7:00.0/0000:d8:00.0/nvme/nvme1").mkdir(parents=True)
    (subsys / "nvme1").symlink_to("../../../pci0000:d7/0000:d7:00.0/0000:d8:00.0/nvme/nvme1")
    usb = "devices/pci0000:00/0000:00:14.0/usb1/1-4/1-4:1.0/host6/target6:0:0/6:0:0:0"
    _block(sys, f"{usb}/block/sdc", 30031250, removable=1, device="../..")
    _write(sys / usb / "model", 'Ultra "Fit"\n')  # a quote would break the JSON: dropped
    _block(sys, "devices/virtual/block/zram0", 8388608)
    _block(sys, "devices/virtual/block/loop0", 0)
    mounts = tmp_path / "mounts"
    mounts.write_text(
        "rootfs / rootfs rw 0 0\nproc /proc proc rw 0 0\n/dev/sdc1 /run/live/medium vfat ro 0 0\n"
        "/dev/sdcard1 /media/other vfat ro 0 0\n"  # another device whose name begins with sdc: not sdc's
    )
    return sys, mounts


@pytest.mark.parametrize("shell", SHELLS, ids=lambda s: " ".join(s))
def test_what_the_installer_reports_is_lsblk_shaped_and_the_rule_reads_it(machine: tuple[Path, Path], shell: list[str]):
    sys, mounts = machine
    out = subprocess.run([*shell, str(SCRIPT), str(sys), str(mounts)], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    by_name = {d["name"]: d for d in report["blockdevices"]}
    assert by_name["sda"] == {
        "name": "sda",
        "size": 480103981056,
        "type": "disk",
        "rm": False,
        "ro": False,
        "model": "SAMSUNG MZ7LH480HAHQ-00005",
        "serial": "S45PNA0M123456",
        "wwn": "0x5002538e40a1b2c3",
        "mountpoints": [],
        "devpath": "/devices/pci0000:00/0000:00:17.0/ata2/host1/target1:0:0/1:0:0:0/block/sda",
        "ata_port": 2,
    }
    assert (by_name["nvme0n1"]["serial"], by_name["nvme0n1"]["wwn"]) == (
        "S64HNE0T501234",
        "eui.36344630529012340025384500000001",
    )
    assert (by_name["nvme1n1"]["model"], by_name["nvme1n1"]["serial"], by_name["nvme1n1"]["devpath"]) == (
        "SAMSUNG MZQL23T8HCLS-00A07",
        "S64HNE0T509999",
        "/devices/pci0000:d7/0000:d7:00.0/0000:d8:00.0/nvme/nvme1/nvme1n1",
    )
    assert (by_name["sdc"]["rm"], by_name["sdc"]["model"], by_name["sdc"]["mountpoints"]) == (
        True,
        "Ultra Fit",
        ["/run/live/medium"],
    )
    assert (by_name["loop0"]["type"], by_name["zram0"]["model"]) == ("loop", None)

    disks = {d.name: d for d in disks_from_installer(report)}
    assert disks["sda"].by_path == ("pci-0000:00:17.0-ata-2", "pci-0000:00:17.0-ata-2.0")
    assert disks["nvme0n1"].by_path == ("pci-0000:5e:00.0-nvme-1",)
    assert disks["nvme1n1"].by_path == ("pci-0000:d8:00.0-nvme-1",)
    assert choose(list(disks.values()), DiskRule(), 2 << 30).name == "sda"
    assert choose(list(disks.values()), DiskRule(path="pci-0000:5e:00.0-nvme-*"), 2 << 30).name == "nvme0n1"
    assert choose(list(disks.values()), DiskRule(wwn="0x5002538e40a1b2c3"), 2 << 30).name == "sda"
