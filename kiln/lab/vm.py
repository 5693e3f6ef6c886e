"""One QEMU VM per host (-accel tcg): its disk, its tap, its MAC, its serial log, monitor and QMP sockets."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import time
import urllib.error
from pathlib import Path

from kiln import roles
from kiln.fsutil import write_atomic
from kiln.lab import client, procs
from kiln.lab.firmware import Firmware, nic_options
from kiln.lab.firmware import qemu_args as firmware_args
from kiln.lab.layout import DISK_SIZE, Lab, tap_name
from kiln.model import Host
from kiln.run import run

DISK = "disk"
PXE = "pxe"
FW_CFG_SEED = "opt/org.kiln/seed"  # what firstboot/sources/fwcfg.py reads


def proc_name(host: Host) -> str:
    return f"vm-{host.name}"


def image(lab: Lab, host: Host) -> str:
    role = host.role
    return str(lab.images / role / f"{role}.qcow2")


def base(lab: Lab, host: Host) -> Path:
    """The lab's own hard link to the role image as it is now, named by the image file's inode: a rebuild renames a
    new image into images/<role>/ (a new inode, so a new link for the overlays made from then on), and the overlays
    of running and restarted VMs keep the image they were made on."""
    role = host.role
    source = Path(image(lab, host))
    link = lab.disks / f"base-{role}-{source.stat().st_ino}.qcow2"
    if not link.exists():
        lab.disks.mkdir(parents=True, exist_ok=True)
        try:
            os.link(source, link)
        except OSError:  # another filesystem: a copy
            shutil.copyfile(source, link)
    return link


def raw_size(lab: Lab, host: Host) -> int:
    role = host.role
    manifest = json.loads((lab.images / role / "manifest.json").read_text())
    return int(manifest["files"][f"{role}.raw"]["size"])


def qemu_info(path: Path) -> dict:
    """`qemu-img info` of a disk image, also while a VM has it open (-U)."""
    return json.loads(run(["qemu-img", "info", "--output=json", "-U", str(path)]).stdout)


def disk_size(lab: Lab, host: Host, boot: str) -> int:
    """Each VM's disk: room beyond the image (growroot fills it on first boot), as a real server's disk has."""
    image_size = int(qemu_info(base(lab, host))["virtual-size"]) if boot == DISK else raw_size(lab, host)
    return max(image_size, DISK_SIZE)


def make_disk(lab: Lab, host: Host, boot: str) -> None:
    """A copy-on-write overlay of the role image (boot from disk), or an empty disk (PXE); sparse either way."""
    lab.disks.mkdir(parents=True, exist_ok=True)
    disk = lab.disk(host)
    disk.unlink(missing_ok=True)
    size = str(disk_size(lab, host, boot))
    if boot == DISK:
        run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", str(base(lab, host)), str(disk), size])
    else:
        run(["qemu-img", "create", "-q", "-f", "qcow2", str(disk), size])


def firmware_of(lab: Lab) -> Firmware:
    """The firmware the running lab's VMs boot with (lab up --firmware), from its boot record; BIOS by default."""
    try:
        return Firmware(json.loads(lab.boot_record.read_text()).get("firmware", Firmware.BIOS))
    except (FileNotFoundError, ValueError):
        return Firmware.BIOS


def argv(lab: Lab, host: Host, boot: str, seed: Path | None = None, *, pxe_once: bool = False) -> list[str]:
    """QEMU's command line; `seed`: a JSON file the guest reads through fw_cfg (the disk boot's enrolment);
    `pxe_once`: the first boot is a network boot, the reboots after it use `boot`'s order (QEMU's -boot once=n)."""
    fw_cfg = ["-fw_cfg", f"name={FW_CFG_SEED},file={seed}"] if seed is not None else []
    firmware = firmware_of(lab)
    nvram = lab.disks / f"{host.name}.efi"  # a UEFI VM's own variable store, gone with its disk at lab down
    if firmware is Firmware.BIOS:
        order = ["-boot", ("order=n" if boot == PXE else "order=c") + (",once=n" if pxe_once else "")]
        disk_index = nic_index = ""
    else:
        # OVMF takes its boot order from bootindex alone (no -boot once): the NIC first for a network install,
        # and kept first while this QEMU runs, as on a server set to boot from the network; the server's script
        # for an installed host exits to the next option, the disk
        nic_first = boot == PXE or pxe_once
        nvram.mkdir(parents=True, exist_ok=True)
        order = []
        nic_index, disk_index = (",bootindex=1", ",bootindex=2") if nic_first else (",bootindex=2", ",bootindex=1")
    return [
        "qemu-system-x86_64",
        "-name",
        host.name,
        "-accel",
        "tcg",
        "-m",
        str(roles.get(host.role).lab_memory_mib),
        "-smp",
        "1",
        "-nographic",
        "-serial",
        f"file:{lab.serial_log(host)}",
        "-monitor",
        f"unix:{lab.monitor(host)},server,nowait",
        "-qmp",
        f"unix:{lab.qmp(host)},server=on,wait=off",
        *firmware_args(firmware, nvram),
        # zeros the installer writes become zero clusters, not gigabytes of qcow2 data
        "-drive",
        f"file={lab.disk(host)},if=none,id=disk0,format=qcow2,cache=unsafe,discard=unmap,detect-zeroes=unmap",
        "-device",
        f"virtio-blk-pci,drive=disk0{disk_index}",
        "-netdev",
        f"tap,id=net0,ifname={tap_name(host)},script=no,downscript=no",
        "-device",
        f"virtio-net-pci,netdev=net0,mac={host.mac}{nic_index}{nic_options(firmware)}",
        *order,
        *fw_cfg,
    ]


def start(lab: Lab, host: Host, boot: str, *, pxe_once: bool = False) -> int:
    """Power the VM on (its serial log starts afresh only when its disk does). Booted from its disk image, a host
    has no installer to hand it its enrolment token: the lab asks the server for its seed (as the operator) and
    gives it to the VM through QEMU's fw_cfg, as a cloud gives user-data. `pxe_once`: this boot from the network."""
    lab.logs.mkdir(parents=True, exist_ok=True)
    seed = None
    if boot == DISK:
        seed = _seed_file(lab, host)
    command = argv(lab, host, boot, seed, pxe_once=pxe_once)
    return procs.start(proc_name(host), command, lab.run, lab.logs / f"{host.name}.qemu.log")


def reinstall(lab: Lab, host: Host) -> bool:
    """A network boot of a VM in a lab booted from disk (lab up --boot disk), as the server would answer it: a host
    re-armed for a reinstall (./inv reprovision, a roll) gets a new disk, an overlay of its role image as it is now,
    and boots it with its new seed, the installer's work done the lab's way in seconds instead of streaming 2 GB
    under TCG; any other host boots its disk as it is. The VM must be off. Returns whether it was reinstalled.
    Raises urllib.error.HTTPError when the server refuses the seed for another reason than "enrolled already"."""
    try:
        client.seed(lab, host.name)
    except urllib.error.HTTPError as e:
        if e.code != 409:  # 409: installed and not re-armed, the server's "boot your disk"
            raise
        start(lab, host, DISK)
        return False
    make_disk(lab, host, DISK)
    start(lab, host, DISK)
    return True


def _seed_file(lab: Lab, host: Host) -> Path | None:
    """run/<host>.seed.json (0600) from the server; the one written before when its token is spent (a restart)."""
    path = lab.run / f"{host.name}.seed.json"
    try:
        data = client.seed(lab, host.name)
    except urllib.error.HTTPError as e:
        if e.code == 409 and path.exists():  # enrolled already: the guest no longer needs it
            return path
        raise
    write_atomic(path, json.dumps(data).encode(), 0o600)
    return path


def running(lab: Lab, host: Host) -> bool:
    return procs.pid_of(proc_name(host), lab.run) is not None


def monitor(lab: Lab, host: Host, command: str) -> None:
    with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(5)
        s.connect(str(lab.monitor(host)))
        s.sendall(command.encode() + b"\n")
        time.sleep(0.3)


def kill(lab: Lab, host: Host) -> bool:
    """Pull the plug: the VM stops at once, no shutdown."""
    return procs.stop(proc_name(host), lab.run, grace=3)
