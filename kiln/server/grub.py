"""GRUB configs: the network boot of UEFI machines with Secure Boot enforcing, where iPXE (signed by no one the
firmware trusts) is refused.

The chain is Debian's, every stage signed: the firmware's own PXE loads shim (signed by Microsoft's UEFI CA) over
TFTP, shim loads Debian's signed GRUB network image (grubnetx64, as grubx64.efi from the same TFTP directory), GRUB
reads grub/grub.cfg from that directory (its prefix, `/grub` on the TFTP server it came from) and that file sends
it here, to the host's own config, by the MAC of the NIC it booted from (`$net_default_mac`). Debian 12's signed
GRUB has TFTP but no HTTP built in, so everything it fetches comes over TFTP: kiln serve's own TFTP listener
(kiln/server/tftp.py) answers `kiln/grub/MAC` with this config and serves the installer's kernel and initrd.
GRUB's `linux` has shim verify the kernel: the installer's kernel is Debian's signed one; the initrd is not
verified (what it installs is pinned by the sha256 on the command line, as with iPXE).

A machine told to wait sleeps RETRY_SECONDS, then reads its config again (`configfile`, which nests: each retry
holds a few KiB of GRUB's memory, a day of retries every 30 s a few MiB of the GBs a server has). An installed host's
config ends in `exit`: GRUB returns to shim, shim to the firmware, which boots its next boot option, the disk when
network boot comes first in the order.
"""

from __future__ import annotations

import re

from kiln.server.bootplan import RETRY_SECONDS, Install, LocalDisk, Plan, Unknown, Wait, install_args

CONFIG_DIR = "kiln/grub"  # TFTP: kiln/grub/MAC is that machine's config
KERNEL = "/images/installer/vmlinuz"  # TFTP paths of the installer, on kiln serve's TFTP listener
INITRD = "/images/installer/initrd.img"
_PLAIN = re.compile(r"^[A-Za-z0-9_@%+=:,./-]+$")


def quote(word: str) -> str:
    """`word` as one literal GRUB script word: single quotes, in which GRUB expands nothing ($, globs)."""
    if _PLAIN.match(word):
        return word
    return "'" + word.replace("'", "'\\''") + "'"


def again() -> str:
    """Read this machine's config again, by the MAC of the NIC GRUB booted from, on the TFTP server it reads from."""
    return f"configfile /{CONFIG_DIR}/${{net_default_mac}}"


def _config(lines: list[str]) -> str:
    return "\n".join(["# kiln: this machine's GRUB config (kiln/server/grub.py)", *lines]) + "\n"


def _echo(text: str) -> str:
    return "echo " + quote(f"kiln: {text}")


def retry_config(lines: list[str] | tuple[str, ...], seconds: int = RETRY_SECONDS) -> str:
    return _config([*(_echo(line) for line in lines), _echo(f"retrying in {seconds} s"), f"sleep {seconds}", again()])


def install_config(plan: Install) -> str:
    """The installer's kernel and initrd from kiln serve's TFTP listener (GRUB's $root: the TFTP server that gave
    it this config), the same command line as iPXE's but for `initrd=` (GRUB hands the kernel its initrd)."""
    return _config(
        [
            _echo(plan.message()),
            " ".join(["linux", KERNEL, *(quote(a) for a in install_args(plan))]),
            f"initrd {INITRD}",
            "boot",
        ]
    )


def disk_config(plan: LocalDisk) -> str:
    return _config([_echo(f"{plan.host.name} is installed, booting from its local disk"), "exit"])


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
    """grub/grub.cfg, what GRUB reads first: on to this machine's config. `server`: kiln serve's TFTP address when
    another TFTP server hands out shim and GRUB (an operator's own); None when kiln serve's TFTP does it all."""
    lines = ["# kiln: Debian's signed GRUB reads this first; each machine's own config comes from kiln serve"]
    if server is not None:
        lines.append(f"set root=(tftp,{server})")
    lines.append(again())
    return "\n".join(lines) + "\n"
