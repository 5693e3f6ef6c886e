"""QEMU's firmware configuration device: a VM booted straight from a disk image (the lab's disk boot) gets its
seed as `-fw_cfg name=opt/org.kiln/seed,file=SEED.json`, read from sysfs (the qemu_fw_cfg driver): the same JSON
as the installer's seed file. The convention Ignition uses on QEMU (opt/com.coreos/config)."""

from __future__ import annotations

from firstboot.paths import Paths
from firstboot.sources import Settings, Source, read_json_source
from kiln.run import run

NAME = "opt/org.kiln/seed"
SYSFS = "/sys/firmware/qemu_fw_cfg"


def source(paths: Paths, settings: Settings) -> Source | None:
    if paths.is_host and not paths.under(SYSFS).exists():
        # udev loads the driver for QEMU's ACPI device; early in boot it may not have yet (elsewhere: no device)
        run(["modprobe", "-q", "qemu_fw_cfg"], check=False, timeout=10)
    return read_json_source(paths.under(f"{SYSFS}/by_name/{NAME}/raw"), "QEMU fw_cfg")
