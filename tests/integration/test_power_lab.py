"""The lab power driver against a real QEMU VM (TCG, no network, no lab): status, off and on through QMP and a start
function, cycle as system_reset, and the one-time PXE boot both ways (a VM that is off starts with the boot
option kiln.lab.vm.argv gives; a running one is stopped and started so). What the firmware booted
is read from SeaBIOS's debug console: "Booting from Hard Disk..." or "Booting from ROM..." (the NIC's iPXE ROM)."""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from kiln.lab import vm
from kiln.lab.layout import Lab
from kiln.power import control
from kiln.power.lab import LabVm
from tests.integration.test_server_ipxe_qemu import boot_sector

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not shutil.which("qemu-system-x86_64"), reason="needs qemu-system-x86 (with ipxe-qemu)"),
]

DISK_BOOT, NET_BOOT = "Booting from Hard Disk", "Booting from ROM"
NO_BOOT = "No bootable device"  # a self test that found nothing to boot: a boot that went wrong, kept as one


class Machine:
    """A tiny VM as the lab starts one: a disk whose boot sector halts, a virtio NIC with QEMU's iPXE ROM and no
    network behind it, the boot option kiln.lab.vm.argv gives a disk-booted lab host."""

    def __init__(self, directory: Path, lab: Lab) -> None:
        self.directory = directory
        self.lab = lab
        self.qmp = directory / "vm.qmp"
        self.debug = directory / "seabios.log"
        self.disk = directory / "disk.raw"
        self.disk.write_bytes(boot_sector().ljust(1024 * 1024, b"\0"))
        self.process: subprocess.Popen[bytes] | None = None
        self.starts: list[bool] = []

    def start(self, pxe_once: bool) -> None:
        self.starts.append(pxe_once)
        host = self.lab.cluster.host("web1")
        lab_argv = vm.argv(self.lab, host, vm.DISK, pxe_once=pxe_once)
        boot = lab_argv[lab_argv.index("-boot") + 1]
        self.debug.unlink(missing_ok=True)
        argv = ["qemu-system-x86_64", "-nodefaults", "-display", "none", "-accel", "tcg", "-m", "64", "-smp", "1"]
        argv += ["-qmp", f"unix:{self.qmp},server=on,wait=off"]
        argv += ["-drive", f"file={self.disk},if=virtio,format=raw", "-device", "virtio-net-pci"]
        argv += ["-chardev", f"file,id=dbg,path={self.debug}", "-device", "isa-debugcon,iobase=0x402,chardev=dbg"]
        argv += ["-boot", boot]
        with open(self.directory / "qemu.log", "ab") as log:
            self.process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 20
        while not self.qmp.exists():
            assert self.process.poll() is None, (self.directory / "qemu.log").read_text()
            assert time.monotonic() < deadline, "no QMP socket after 20 s"
            time.sleep(0.05)

    def wait_boots(self, count: int, timeout: float = 180) -> list[str]:
        return wait_boots(self.debug, count, timeout)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)


def boots(debug: Path) -> list[str]:
    """What the firmware booted from, one entry per boot, from SeaBIOS's debug console log ("": not yet known)."""
    text = debug.read_text(errors="replace") if debug.exists() else ""
    posts = text.split("\nBUILD: ")[1:]  # the second line of each power-on self test
    seen = [next((what for what in (DISK_BOOT, NET_BOOT, NO_BOOT) if what in post), "") for post in posts]
    # A self test cut short by another (a reset before the firmware chose a device) booted nothing: not a boot.
    return [choice for i, choice in enumerate(seen) if choice or i == len(seen) - 1]


def wait_boots(debug: Path, count: int, timeout: float = 180) -> list[str]:
    """The first `count` boots once SeaBIOS said what each booted from; AssertionError after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        seen = boots(debug)
        if len(seen) >= count and all(seen[:count]):
            return seen[:count]
        if time.monotonic() >= deadline:
            text = debug.read_text(errors="replace") if debug.exists() else ""
            said = [line for line in text.splitlines() if not line.startswith(" ")]
            raise AssertionError(f"{count} boots expected, SeaBIOS said: {seen}; its log's last lines: {said[-25:]}")
        time.sleep(0.2)


@pytest.fixture
def machine(tmp_path: Path, cluster) -> Iterator[Machine]:
    m = Machine(tmp_path, Lab(cluster, root=tmp_path / "lab"))
    try:
        yield m
    finally:
        m.stop()


def test_status_off_on_and_cycle_through_qmp(machine: Machine):
    chassis = LabVm("web1", machine.qmp, machine.start)
    assert control.run(chassis, "status") == "off", "no VM, no socket: off"
    assert control.run(chassis, "on", timeout=20) == "on"
    assert machine.starts == [False]
    assert machine.wait_boots(1) == [DISK_BOOT]
    assert control.run(chassis, "cycle", timeout=20) == "on"
    assert machine.wait_boots(2) == [DISK_BOOT, DISK_BOOT], "system_reset: the same VM boots again"
    assert machine.process is not None
    assert control.run(chassis, "off", timeout=20) == "off"
    assert machine.process.wait(10) == 0, "quit: QEMU exits at once"
    assert control.run(chassis, "on", timeout=20) == "on" and machine.starts == [False, False]


def test_cycle_with_pxe_boots_the_network_once_then_the_disk_again(machine: Machine):
    chassis = LabVm("web1", machine.qmp, machine.start)
    control.run(chassis, "on", timeout=20)
    assert machine.wait_boots(1) == [DISK_BOOT]
    assert control.run(chassis, "cycle", pxe=True, timeout=20) == "on"
    assert machine.starts == [False, True], "stopped, then started with -boot once=n"
    assert machine.wait_boots(1) == [NET_BOOT]
    control.run(chassis, "cycle", timeout=20)
    assert machine.wait_boots(2) == [NET_BOOT, DISK_BOOT], "QEMU's once=n: the usual order from the next reset"


def test_on_with_pxe_starts_with_a_network_boot_once(machine: Machine):
    chassis = LabVm("web1", machine.qmp, machine.start)
    control.run(chassis, "on", pxe=True, timeout=20)
    assert machine.starts == [True]
    assert machine.wait_boots(1) == [NET_BOOT]
    control.run(chassis, "cycle", timeout=20)
    assert machine.wait_boots(2) == [NET_BOOT, DISK_BOOT], "QEMU's once=n: the usual order from the first reset"
