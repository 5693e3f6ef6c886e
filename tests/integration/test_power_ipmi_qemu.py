"""ipmitool → ipmi_sim → a real QEMU VM: the BMC simulator's chassis control starts, stops and resets a VM that
carries QEMU's ipmi-bmc-extern device connected to that simulator (so the guest has the BMC on a KCS interface), and
starts it with `-boot once=n` when the boot device was set to PXE (the BIOS consumes a one-time boot flag). Proof
that `./inv power HOST cycle --pxe` through the ipmi driver really resets the machine into a network boot, once."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from kiln.lab.qmp import Qmp
from kiln.power import control
from kiln.power.ipmi import Ipmi
from tests.integration.bmc import PASSWORD, USER, IpmiSim, free_port, ipmi_sim
from tests.integration.test_power_lab import DISK_BOOT, NET_BOOT, wait_boots
from tests.integration.test_server_ipxe_qemu import boot_sector

pytestmark = [
    pytest.mark.integration,
    pytest.mark.slow,  # three QEMU starts and ipmi_sim's power-cycle interval: 4 s alone, far more on a busy runner
    pytest.mark.skipif(
        not all(shutil.which(c) for c in ("ipmi_sim", "ipmitool", "qemu-system-x86_64")),
        reason="needs openipmi, ipmitool and qemu-system-x86",
    ),
]

# The chassis-control program (OpenIPMI's ipmi_sim_chassiscontrol contract: DIR get|set PARM [VALUE]...) that makes
# the simulated chassis a QEMU VM: power is the VM's process, reset is QMP system_reset, boot pxe starts it once
# from the network. QEMU runs in its own session with its output in files: ipmi_sim waits for the program's output.
CHASSIS = r"""#!PYTHON
import json, os, signal, socket, subprocess, sys, time
from pathlib import Path

d, op, args = Path(sys.argv[1]), sys.argv[2], sys.argv[3:]
vm = json.loads((d / "vm.json").read_text())
with open(d / "calls", "a") as f:
    f.write(f"{op} {' '.join(args)}\n")

def pid():
    try:
        p = int((d / "pid").read_text())
        with open(f"/proc/{p}/stat") as f:
            return p if f.read().rsplit(")", 1)[1].split()[0] != "Z" else None
    except (OSError, ValueError):
        return None

def qmp(command):
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(5)
        s.connect(vm["qmp"])
        f = s.makefile("rw")
        f.readline()
        for name in ("qmp_capabilities", command):
            f.write(json.dumps({"execute": name}) + "\n")
            f.flush()
            while "return" not in json.loads(f.readline()):
                pass

def power(on):
    running = pid()
    if on and running is None:
        boot = (d / "boot").read_text().strip() if (d / "boot").exists() else "default"
        (d / "boot").write_text("default\n")  # a one-time boot flag: the BIOS consumed it
        order = "order=c,once=n" if boot == "pxe" else "order=c"
        with open(d / "qemu.log", "ab") as log:
            p = subprocess.Popen(vm["argv"] + ["-boot", order], stdin=subprocess.DEVNULL, stdout=log,
                                 stderr=subprocess.STDOUT, start_new_session=True)
        (d / "pid").write_text(f"{p.pid}\n")
        for _ in range(100):
            if os.path.exists(vm["qmp"]):
                break
            time.sleep(0.05)
    elif not on and running is not None:
        os.kill(running, signal.SIGKILL)
        for _ in range(100):
            if pid() is None:
                break
            time.sleep(0.05)
        Path(vm["qmp"]).unlink(missing_ok=True)

if op == "get":
    for parm in args:
        if parm == "power":
            print(f"power:{1 if pid() else 0}")
        elif parm == "boot":
            print("boot:" + ((d / "boot").read_text().strip() if (d / "boot").exists() else "default"))
elif op == "set":
    for parm, value in zip(args[::2], args[1::2]):
        if parm == "power":
            power(value == "1")
        elif parm == "reset" and pid():
            qmp("system_reset")
        elif parm == "boot":
            (d / "boot").write_text(value + "\n")
"""


@pytest.fixture
def bmc(tmp_path: Path) -> Iterator[IpmiSim]:
    serial = free_port()
    disk = tmp_path / "disk.raw"
    disk.write_bytes(boot_sector().ljust(1024 * 1024, b"\0"))
    qemu = ["qemu-system-x86_64", "-nodefaults", "-display", "none", "-accel", "tcg", "-m", "64", "-smp", "1"]
    qemu += ["-qmp", f"unix:{tmp_path / 'vm.qmp'},server=on,wait=off"]
    qemu += ["-drive", f"file={disk},if=virtio,format=raw", "-device", "virtio-net-pci"]
    qemu += ["-chardev", f"file,id=dbg,path={tmp_path / 'seabios.log'},append=on"]
    qemu += ["-device", "isa-debugcon,iobase=0x402,chardev=dbg"]
    # the BMC the guest sees: ipmi_sim itself, over its VM serial interface
    qemu += ["-chardev", f"socket,id=ipmi0,host=127.0.0.1,port={serial},reconnect=1"]
    qemu += ["-device", "ipmi-bmc-extern,id=bmc0,chardev=ipmi0", "-device", "isa-ipmi-kcs,bmc=bmc0"]
    program = CHASSIS.replace("#!PYTHON", f"#!{sys.executable}")
    with ipmi_sim(tmp_path / "ipmi", program, f"  serial 15 127.0.0.1 {serial} codec VM\n") as sim:
        (sim.dir / "vm.json").write_text(json.dumps({"argv": qemu, "qmp": str(tmp_path / "vm.qmp")}))
        try:
            yield sim
        finally:
            pid = (sim.dir / "pid").read_text().strip() if (sim.dir / "pid").exists() else ""
            if pid:
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except ProcessLookupError:
                    pass


def test_ipmi_cycle_with_pxe_resets_the_vm_into_one_network_boot(bmc: IpmiSim, tmp_path: Path):
    # ipmitool's usual patience (-R 3 -N 2): the chassis control here is a Python program, slow on a busy machine
    chassis = Ipmi("web1", bmc.address, USER, PASSWORD, cipher_suite=3)
    debug = tmp_path / "seabios.log"
    assert control.run(chassis, "status") == "off"
    assert control.run(chassis, "on", timeout=30) == "on"
    assert wait_boots(debug, 1) == [DISK_BOOT]
    with Qmp(tmp_path / "vm.qmp") as q:
        [ipmi] = [c for c in q.command("query-chardev") if c["label"] == "ipmi0"]
    assert not ipmi["filename"].startswith("disconnected"), f"the VM's BMC device is not connected: {ipmi}"
    assert control.run(chassis, "cycle", pxe=True, timeout=30) == "on"
    assert wait_boots(debug, 2) == [DISK_BOOT, NET_BOOT]
    assert control.run(chassis, "cycle", timeout=30) == "on"
    assert wait_boots(debug, 3) == [DISK_BOOT, NET_BOOT, DISK_BOOT], "the PXE boot was for one boot only"
    assert control.run(chassis, "off", timeout=30) == "off"
    assert bmc.changes()[:3] == ["set power 1", "set boot pxe", "set power 0"]
