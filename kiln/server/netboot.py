"""The files of the Secure Boot network boot (kiln/server/grub.py says the chain) and who serves them.

A TFTP root for it holds, from this machine's Debian packages:

    shimx64.efi     shim-signed: /usr/lib/shim/shimx64.efi.signed (the boot file DHCP names for UEFI clients)
    grubx64.efi     grub-efi-amd64-signed: /usr/lib/grub/x86_64-efi-signed/grubnetx64.efi.signed (shim loads it
                    by that name from the directory it came from)
    grub/grub.cfg   grub.stub(): on to kiln/grub/$net_default_mac

kiln serve --tftp-listen serves those and, beside them, what only it can answer: kiln/grub/MAC (the machine's
config, decided as its iPXE script is) and images/installer/{vmlinuz,initrd.img}. `layout` writes the three files
into a directory, for an operator whose own TFTP server hands out the boot file.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from pathlib import Path

from kiln.fsutil import write_atomic
from kiln.server import grub
from kiln.server.app import Provisioner, grub_config
from kiln.server.inputs import BadInput
from kiln.server.tftp import NotFound

# TFTP name -> (the file in this machine's Debian package, that package)
SIGNED: Mapping[str, tuple[Path, str]] = {
    "shimx64.efi": (Path("/usr/lib/shim/shimx64.efi.signed"), "shim-signed"),
    "grubx64.efi": (Path("/usr/lib/grub/x86_64-efi-signed/grubnetx64.efi.signed"), "grub-efi-amd64-signed"),
}
BOOT_FILE = "shimx64.efi"
STUB = "grub/grub.cfg"
INSTALLER_FILES = ("vmlinuz", "initrd.img")
PACKAGES = tuple(package for _, package in SIGNED.values())


class Missing(Exception):
    """A signed boot file is not on this machine; the message names the Debian package to install."""


def signed_files() -> dict[str, Path]:
    """TFTP name -> the signed file on this machine. Raises Missing naming each absent file and its package."""
    absent = [f"{path} (Debian package {package})" for path, package in SIGNED.values() if not path.is_file()]
    if absent:
        raise Missing(
            "the Secure Boot network boot needs "
            + ", ".join(absent)
            + ": apt-get install --no-install-recommends "
            + " ".join(PACKAGES)
        )
    return {name: path for name, (path, _) in SIGNED.items()}


def layout(directory: Path, server: str | None = None) -> list[Path]:
    """Write shimx64.efi, grubx64.efi and grub/grub.cfg into `directory` (created when missing; each file replaced
    whole, atomically). `server`: kiln serve's TFTP address, which grub.cfg then sends GRUB to (another
    TFTP server serves these three); None when kiln serve's TFTP serves them itself. Returns the paths written
    or already up to date. Raises Missing as signed_files does."""
    written = []
    for name, source in signed_files().items():
        write_atomic(directory / name, source.read_bytes())
        written.append(directory / name)
    write_atomic(directory / STUB, grub.stub(server).encode())
    written.append(directory / STUB)
    return written


CONFIG_WITHIN = 5.0  # seconds a machine's GRUB config may take to decide (the TFTP thread waits for it)


class TftpFiles:
    """What kiln serve's TFTP listener answers: a callable (name, client address) -> the content or the file that
    holds it, as kiln.server.tftp takes it, called on the listener's thread. A machine's GRUB config is decided on
    `loop`, the server's event loop, as GET /grub decides it. Names are taken relative (a leading / or ./ is
    dropped); anything else is NotFound."""

    def __init__(self, provisioner: Provisioner, images: Path, loop: asyncio.AbstractEventLoop) -> None:
        """Raises Missing (signed_files) when this machine lacks the signed boot files."""
        self.provisioner = provisioner
        self.images = images
        self.loop = loop
        self.signed = signed_files()
        self.stub = grub.stub().encode()

    def __call__(self, name: str, client: str) -> bytes | Path:
        name = name.replace("\\", "/").lstrip("/").removeprefix("./")
        if name in self.signed:
            return self.signed[name]
        if name == STUB:
            return self.stub
        prefix = grub.CONFIG_DIR + "/"
        if name.startswith(prefix):
            return self._config(name[len(prefix) :], client)
        parts = name.split("/")
        if len(parts) == 3 and parts[:2] == ["images", "installer"] and parts[2] in INSTALLER_FILES:
            path = self.images / "installer" / parts[2]
            if not path.is_file():
                raise NotFound(f"images/installer/{parts[2]} is not built yet: run ./inv build-all")
            return path
        raise NotFound(f"no such file: {name}")

    def _config(self, mac: str, client: str) -> bytes:
        deciding = asyncio.run_coroutine_threadsafe(grub_config(self.provisioner, mac, client), self.loop)
        try:
            return deciding.result(CONFIG_WITHIN).encode()
        except BadInput as e:
            raise NotFound(str(e)) from None
        except TimeoutError:
            deciding.cancel()
            raise NotFound(f"the server did not decide within {CONFIG_WITHIN:g} s") from None
