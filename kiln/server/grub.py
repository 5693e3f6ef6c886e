"""GRUB configs: the network boot of UEFI machines with Secure Boot enforcing, where iPXE (signed by no one the
firmware trusts) is refused.

The chain is Debian's, every stage signed: the firmware's own PXE loads shim (signed by Microsoft's UEFI CA) over
TFTP, shim loads Debian's signed GRUB network image (grubnetx64, as grubx64.efi from the same TFTP directory), GRUB
reads grub/grub.cfg from that directory (its prefix, `/grub` on the TFTP server it came from) and that file sends
it here, to the host's own config, by the MAC of the NIC it booted from (`$net_default_mac`). Debian 12's signed
GRUB has TFTP but no HTTP built in, so everything it fetches comes over TFTP: kiln serve's TFTP listener
(tftpy on a thread, kiln/server/tftp.py) answers `kiln/grub/MAC` with this config and serves the installer's kernel
and initrd.
GRUB's `linux` has shim verify the kernel: the installer's kernel is Debian's signed one; the initrd is not
verified (what it installs is pinned by the sha256 on the command line, as with iPXE).

The stub loops: it reads the machine's config (`source`), and when that returns (a machine told to wait, a fetch
that failed, a kernel that did not start) it sleeps RETRY_SECONDS and reads it again, so no failure leaves the
machine at GRUB's prompt and a wait of days keeps one level of GRUB's stack (a config that read the next one
itself would nest). An installed host's config chainloads the shim on its local disk (the role image's ESP,
EFI/BOOT/BOOTX64.EFI) through the firmware, which Secure Boot checks (disk_config says why not `exit`).
"""

from __future__ import annotations

import re

from kiln.server.bootplan import RETRY_SECONDS, Install, LocalDisk, Plan, Unknown, Wait, install_args

CONFIG_DIR = "kiln/grub"  # TFTP: kiln/grub/MAC is that machine's config
KERNEL = "/images/installer/vmlinuz"  # TFTP paths of the installer, on kiln serve's TFTP listener
INITRD = "/images/installer/initrd.img"
DISK_LOADER = "/EFI/BOOT/BOOTX64.EFI"  # the removable-media path, where a role image's ESP holds shim
_PLAIN = re.compile(r"^[A-Za-z0-9_@%+=:,./-]+$")


def quote(word: str) -> str:
    """`word` as one literal GRUB script word: single quotes, in which GRUB expands nothing ($, globs)."""
    if _PLAIN.match(word):
        return word
    return "'" + word.replace("'", "'\\''") + "'"


def _config(lines: list[str]) -> str:
    return "\n".join(["# kiln: this machine's GRUB config (kiln/server/grub.py)", *lines]) + "\n"


def _echo(text: str) -> str:
    return "echo " + quote(f"kiln: {text}")


def retry_config(lines: list[str] | tuple[str, ...]) -> str:
    """Say why, and return to the stub's loop, which asks again in RETRY_SECONDS."""
    return _config([*(_echo(line) for line in lines), _echo(f"asking again in {RETRY_SECONDS} s")])


def install_config(plan: Install) -> str:
    """The installer's kernel and initrd from kiln serve's TFTP listener (GRUB's $root: the TFTP server that gave
    it this config), the same command line as iPXE's but for `initrd=` (GRUB hands the kernel its initrd)."""
    return _config(
        [
            _echo(plan.message()),
            " ".join(["linux", KERNEL, *(quote(a) for a in install_args(plan))]),
            f"initrd {INITRD}",
            "boot",
            _echo(f"the installer did not start; asking again in {RETRY_SECONDS} s"),  # back to the stub's loop
        ]
    )


def disk_config(plan: LocalDisk) -> str:
    """Boot the first local disk holding the removable-media boot path (shim in a role image's ESP) through the
    firmware's LoadImage, which Secure Boot checks. Not `exit`: GRUB 2.06 exits with EFI_SUCCESS, and EDK2 firmware
    (OVMF, most servers' UEFI) answers a boot option that returned success with its boot menu, not the next option.
    No disk with it: `exit` all the same, to the firmware's own order or menu."""
    return _config(
        [
            _echo(f"{plan.host.name} is installed, booting from its local disk"),
            # root, not a variable of our own: GRUB 2.06's chainloader gives the image the device path of $root
            f"search --no-floppy --file --set=root {DISK_LOADER}",
            f"chainloader {DISK_LOADER}",
            "boot",
            _echo(f"no local disk holds {DISK_LOADER}: back to the firmware"),
            "exit",
        ]
    )


def config(plan: Plan) -> str:
    """`plan` as a GRUB config (text ending in a newline)."""
    match plan:
        case Unknown():
            return retry_config(plan.lines())
        case LocalDisk():
            return disk_config(plan)
        case Wait(lines=lines):
            return retry_config(lines)
        case Install():
            return install_config(plan)


def stub(server: str | None = None) -> str:
    """grub/grub.cfg, what GRUB reads first: this machine's config from kiln, again every RETRY_SECONDS for as long
    as the config returns (module docstring). `server`: kiln serve's TFTP address when another TFTP server hands
    out shim and GRUB (an operator's own); None when kiln serve's TFTP does it all."""
    lines = ["# kiln: Debian's signed GRUB reads this first; each machine's own config comes from kiln serve"]
    if server is not None:
        lines.append(f"set root=(tftp,{server})")
    lines += [
        "while true; do",
        f"    source /{CONFIG_DIR}/${{net_default_mac}}",
        f"    sleep {RETRY_SECONDS}",
        "done",
    ]
    return "\n".join(lines) + "\n"
