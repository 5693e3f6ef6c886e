"""A mirrored root on a real role image under QEMU (TCG): the PXE installer writes the web image onto two disks
(kiln.disk=/dev/vda,/dev/vdb, what the server's `raid1` answer to a `disk: {raid: 1}` host sets), then the first
disk is taken out and the machine boots from the second alone, on UEFI (that disk's own ESP: shim, GRUB): GRUB reads
its root partition as a plain filesystem (metadata 1.0 is at its end), the initramfs starts the array with one of
its two mirrors, root is mounted from the array, growroot grows the filesystem into it (first boot), and the agent
runs on the seed the installer wrote. Then on BIOS (its own MBR boot code and BIOS boot partition) as far as root
mounted from the array. The first disk's layout is the image's own, which every image test and the lab boot."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from kiln.build.imagefs import mounted
from kiln.lab.firmware import Firmware
from tests.e2e.image_helpers import GUEST_MAC, HOST_LOOPBACK, ImageServer, Vm, journal

pytestmark = pytest.mark.slow

ROLE = "web"
TOKEN = "enrol-" + "r" * 37
INSTALL_TIMEOUT = 900  # TCG: a 2 GiB image written, checked, copied and checked again
BOOT_TIMEOUT = 900
# the agent ran from the mirrored root and read the seed the installer wrote there: its URL is the test's plain-HTTP
# server, which the agent refuses (the cluster CA is pinned), and the guest is isolated anyway
AGENT_RAN = r"firstboot: provisioning server http://10\.0\.2\.2:\d+ from the seed file \(host web1\)"


def _disk(path: Path, gib: float) -> Path:
    with path.open("wb") as f:
        f.truncate(int(gib * (1 << 30)))
    return path


def test_either_disk_of_a_mirrored_root_boots_alone(tmp_path: Path, images: Path) -> None:
    installer = images / "installer"
    image = images / ROLE / f"{ROLE}.raw"
    gib = image.stat().st_size / (1 << 30)
    first, second = _disk(tmp_path / "a.raw", gib + 0.5), _disk(tmp_path / "b.raw", gib + 1)  # root sized to a
    server = ImageServer(image, name=ROLE)
    try:
        base = f"http://{HOST_LOOPBACK}:{server.port}"
        append = (
            f"kiln.image={base}/{ROLE}.data kiln.map={base}/{ROLE}.map kiln.sha256={server.block_map.digest} "
            f"kiln.disk=/dev/vda,/dev/vdb kiln.url={base} kiln.host={ROLE}1 kiln.token={TOKEN} "
            f"kiln.size={image.stat().st_size} BOOTIF=01-{GUEST_MAC.replace(':', '-')} console=ttyS0"
        )
        work = tmp_path / "install"
        work.mkdir()
        with Vm(
            work,
            disk=first,
            disk_format="raw",
            more_disks=(second,),
            kernel=installer / "vmlinuz",
            initrd=installer / "initrd.img",
            append=append,
            memory=512,
            isolated=False,
        ) as vm:
            vm.wait_for(r"kiln-installer: installed; rebooting", INSTALL_TIMEOUT)
            assert vm.wait_exit(60) == 0
    finally:
        server.close()
    assert "on /dev/vda and /dev/vdb (RAID1)" in str(server.events[-1]["detail"])

    os.unlink(first)  # the first disk is gone: the second boots alone, from its own ESP, then its own MBR and BSP
    work = tmp_path / "uefi"
    work.mkdir()
    with Vm(work, disk=second, disk_format="raw", cpus=1, firmware=Firmware.UEFI) as vm:
        try:
            vm.wait_for(AGENT_RAN, BOOT_TIMEOUT)
        finally:
            console = vm.text()
            vm.powerdown()
    with mounted(second, fstype="ext4") as root:
        log = journal(root)
        stat = os.statvfs(root)
    boots = re.findall(r"md/raid1:(md\d+): active with 1 out of 2 mirrors", log)
    assert len(boots) == 1, "the initramfs started the array with the one disk left:\n" + console[-3000:]
    array = boots[0]
    assert re.search(rf"EXT4-fs \({array}\): mounted filesystem", log), "root is mounted from the array"
    assert "efi: EFI v" in log, "booted on UEFI, from the second disk's own ESP"
    assert re.search(rf"The filesystem on /dev/{array} is now \d+ \(4k\) blocks long", log), "growroot grew it"
    with mounted(image) as built:
        before = os.statvfs(built)
    grown = (stat.f_blocks * stat.f_frsize - before.f_blocks * before.f_frsize) / (1 << 30)
    assert grown > 0.4, f"the filesystem fills the mirror (0.5 GiB more than the image): grew {grown:.2f} GiB"

    # BIOS: the same disk's MBR boot code and BIOS boot partition; the boot is proven once root is mounted from the
    # array (the agent's run after it is the UEFI boot's, above): the kernel's console says so
    work = tmp_path / "bios"
    work.mkdir()
    with Vm(work, disk=second, disk_format="raw", cpus=1, firmware=Firmware.BIOS) as vm:
        try:
            mount = vm.wait_for(r"EXT4-fs \((md\d+)\): mounted filesystem", BOOT_TIMEOUT)
        finally:
            console = vm.text()
            vm.kill()
    assert f"md/raid1:{mount.group(1)}: active with 1 out of 2 mirrors" in console, console[-3000:]
    assert "efi: EFI v" not in console, "booted on SeaBIOS"
