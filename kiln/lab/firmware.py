"""A QEMU guest's firmware: SeaBIOS (QEMU's default, a BIOS server), OVMF (UEFI) or OVMF with Secure Boot
enforcing and Microsoft's keys enrolled, as servers ship with Secure Boot on. OVMF is Debian's `ovmf` package;
each guest gets its own copy of the variable store (boot entries, keys), as a machine has its own NVRAM."""

from __future__ import annotations

import shutil
from enum import StrEnum
from pathlib import Path

OVMF_DIR = Path("/usr/share/OVMF")


class Firmware(StrEnum):
    BIOS = "bios"
    UEFI = "uefi"
    SECURE_BOOT = "secureboot"


# (code, the variable store it starts from): the 4 MiB builds, Debian's default since bookworm
_OVMF = {
    Firmware.UEFI: ("OVMF_CODE_4M.fd", "OVMF_VARS_4M.fd"),
    # secboot: Secure Boot built in, SMM guarding the variable store; ms: PK/KEK/db hold Microsoft's keys
    # (db: the UEFI CA that signs shim) and Secure Boot is on
    Firmware.SECURE_BOOT: ("OVMF_CODE_4M.secboot.fd", "OVMF_VARS_4M.ms.fd"),
}


def check(firmware: Firmware) -> tuple[Path, Path] | None:
    """OVMF's code and variable store template for `firmware` (None for BIOS: QEMU's own SeaBIOS). Raises
    FileNotFoundError naming the missing file when OVMF is not installed (apt-get install ovmf)."""
    if firmware is Firmware.BIOS:
        return None
    code_name, vars_name = _OVMF[firmware]
    code, template = OVMF_DIR / code_name, OVMF_DIR / vars_name
    for path in (code, template):
        if not path.exists():
            raise FileNotFoundError(f"{path}: no OVMF for {firmware} firmware (Debian package ovmf)")
    return code, template


def qemu_args(firmware: Firmware, workdir: Path) -> list[str]:
    """QEMU arguments for `firmware`; its variable store is copied to `workdir`/efivars.fd on the first call and
    kept after (a reboot keeps its NVRAM). Raises FileNotFoundError as check() does."""
    files = check(firmware)
    if files is None:
        return []
    code, template = files
    store = workdir / "efivars.fd"
    if not store.exists():
        shutil.copyfile(template, store)
    args = []
    if firmware is Firmware.SECURE_BOOT:
        # Secure Boot's variables are only safe behind SMM: OVMF's secboot build needs q35 with SMM and a
        # flash only SMM code may write
        args += ["-machine", "q35,smm=on", "-global", "driver=cfi.pflash01,property=secure,value=on"]
    # OVMF's own PXE (IPv4 and IPv6) beside the NIC's iPXE: when iPXE exits to the next boot option, as an
    # installed host's script does, OVMF tried those first (minutes of timeouts under TCG) before the disk. Under
    # Secure Boot there is no iPXE (unsigned: see nic_options) and OVMF's PXE over IPv4 is the network boot: it
    # loads Debian's signed shim over TFTP (kiln/server/netboot.py)
    pxe4 = "y" if firmware is Firmware.SECURE_BOOT else "n"
    args += ["-fw_cfg", f"name=opt/org.tianocore/IPv4PXESupport,string={pxe4}"]
    args += ["-fw_cfg", "name=opt/org.tianocore/IPv6PXESupport,string=n"]
    args += [
        "-drive",
        f"if=pflash,format=raw,unit=0,readonly=on,file={code}",
        "-drive",
        f"if=pflash,format=raw,unit=1,file={store}",
    ]
    return args


def nic_options(firmware: Firmware) -> str:
    """What a boot NIC's -device option adds for `firmware`: under Secure Boot no option ROM (`romfile=`), so
    OVMF's own virtio-net driver and PXE run; QEMU's ROM is iPXE, which Secure Boot refuses (unsigned)."""
    return ",romfile=" if firmware is Firmware.SECURE_BOOT else ""
