"""(slow) The Secure Boot network boot as the lab runs it, on a machine with Secure Boot enforcing (OVMF's secboot
build, Microsoft's keys enrolled): the lab's own dnsmasq config, server command line and QEMU command line, in a
network namespace of the test's own. OVMF's PXE gets shimx64.efi from kiln serve's TFTP listener (the NIC has no
iPXE ROM: Secure Boot would refuse it), shim loads Debian's signed GRUB, GRUB asks kiln for kiln/grub/MAC and boots
the installer's Debian-signed kernel, which starts with Secure Boot on; the installer installs and reports over
HTTPS, reboots, and the next network boot's config chainloads the installed disk's shim, which starts its GRUB:
Secure Boot lets each of them run. The first config GRUB gets says wait (the web image's manifest is held back):
the stub's loop asks again and installs once it is there."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from kiln.lab import access, dnsmasq, server, vm
from kiln.lab.firmware import Firmware
from kiln.lab.firmware import check as check_firmware
from kiln.lab.layout import BRIDGE, Lab, tap_name
from kiln.model import load_roles
from kiln.run import run
from kiln.server import netboot
from tests.integration.kiln_server import PROJECT, write_manifest
from tests.integration.processes import stop_group


def _firmware_missing() -> str | None:
    try:
        check_firmware(Firmware.SECURE_BOOT)
        netboot.signed_files()
    except (FileNotFoundError, netboot.Missing) as e:
        return str(e)
    return None


pytestmark = [
    pytest.mark.integration,
    pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces, taps and TFTP's port 69 need root"),
    pytest.mark.skipif(not shutil.which("qemu-system-x86_64"), reason="needs qemu-system-x86"),
    pytest.mark.skipif(bool(_firmware_missing()), reason=_firmware_missing() or ""),
]

MAC = "52:54:00:10:00:21"  # web1 in the shipped roles.yaml (10.10.0.21; the server on 10.10.0.1)
DISK_BOOTED = "KILN-SECURE-BOOT-DISK-BOOTED"
MIB = 1024 * 1024


def uefi_disk(path: Path) -> None:
    """A 16 MiB stand-in for a role image, laid out as one in small: GPT, an ESP whose EFI/BOOT/BOOTX64.EFI is
    Debian's signed shim beside Debian's signed GRUB (grubx64.efi, whose grub.cfg there says DISK_BOOTED), and an
    ext4 partition named root, where the installer writes the host's seed."""
    path.write_bytes(bytes(16 * MIB))
    esp_type, linux_type = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B", "0FC63DAF-8483-4772-8E79-3D69D8477DE4"
    table = (
        f"label: gpt\nstart=2048, size=16384, type={esp_type}, name=esp\nstart=18432, type={linux_type}, name=root\n"
    )
    run(["sfdisk", "--quiet", "--no-reread", str(path)], input=table)
    esp = path.with_suffix(".esp")
    run(["mkfs.vfat", "-C", str(esp), "8192"])
    config = path.with_suffix(".cfg")
    config.write_text(f"echo {DISK_BOOTED}\nsleep 600\n")
    run(["mmd", "-i", str(esp), "::/EFI", "::/EFI/BOOT"])
    shim, _ = netboot.SIGNED["shimx64.efi"]
    for source, name in (
        (shim, "BOOTX64.EFI"),
        (Path("/usr/lib/grub/x86_64-efi-signed/grubx64.efi.signed"), "grubx64.efi"),
        (config, "grub.cfg"),
    ):
        run(["mcopy", "-i", str(esp), str(source), f"::/EFI/BOOT/{name}"])
    with path.open("r+b") as disk:
        disk.seek(2048 * 512)
        disk.write(esp.read_bytes())
    run(["mkfs.ext4", "-q", "-F", "-E", f"offset={18432 * 512}", str(path), "6144k"])


def wait_until(condition: Callable[[], object], timeout: float, what: str, log: Path | None = None) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if result := condition():
            return result
        time.sleep(0.5)
    tail = log.read_text(errors="replace")[-3000:] if log and log.exists() else ""
    raise AssertionError(f"timed out after {timeout}s waiting for {what}\n{tail}")


class Namespace:
    """A network namespace of the test's own with the lab's bridge and the host's tap: the lab's own `kiln-lab`
    (another engineer's lab may run) is never touched."""

    def __init__(self, lab: Lab, taps: list[str]) -> None:
        self.name = f"kiln-sbt-{os.getpid()}"
        self.processes: list[subprocess.Popen[bytes]] = []
        run(["ip", "netns", "add", self.name])
        for args in (
            ["link", "set", "lo", "up"],
            ["link", "add", BRIDGE, "type", "bridge", "stp_state", "0", "forward_delay", "0"],
            ["addr", "add", f"{lab.gateway}/{lab.prefix}", "dev", BRIDGE],
            ["link", "set", BRIDGE, "up"],
        ):
            run(["ip", "-n", self.name, *args])
        for tap in taps:
            run(["ip", "-n", self.name, "tuntap", "add", "dev", tap, "mode", "tap"])
            run(["ip", "-n", self.name, "link", "set", tap, "master", BRIDGE, "up"])

    def start(self, argv: list[str], log: Path) -> subprocess.Popen[bytes]:
        with log.open("wb") as out:
            process = subprocess.Popen(
                ["ip", "netns", "exec", self.name, *argv], stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        self.processes.append(process)
        return process

    def run(self, argv: list[str]) -> str:
        return run(["ip", "netns", "exec", self.name, *argv]).stdout

    def close(self) -> None:
        for process in reversed(self.processes):
            stop_group(process, timeout=5)
        run(["ip", "netns", "del", self.name], check=False)


@pytest.fixture
def lab(tmp_path: Path, images: Path) -> Lab:
    """The shipped cluster's lab under tmp_path, set to boot with Secure Boot; its images: the real installer and a
    16 MiB stand-in web image (uefi_disk: it boots as far as Debian's signed GRUB, no system)."""
    roles = tmp_path / "roles.yaml"
    shutil.copyfile(PROJECT / "roles.yaml", roles)
    served = tmp_path / "images"
    (served / "installer").mkdir(parents=True)
    for name in ("vmlinuz", "initrd.img"):
        shutil.copyfile(images / "installer" / name, served / "installer" / name)
    (served / "web").mkdir()
    uefi_disk(served / "web" / "web.raw")
    write_manifest(served, "web")
    lab = Lab(load_roles(roles), roles_file=roles, root=tmp_path / "lab", images=served, secrets=tmp_path / "secrets")
    for path in (lab.run, lab.logs, lab.disks):
        path.mkdir(parents=True)
    lab.boot_record.write_text(json.dumps({"firmware": Firmware.SECURE_BOOT}))  # what lab up --firmware records
    access.ensure_key(lab.ssh_key)
    return lab


@pytest.fixture
def namespace(lab: Lab) -> Iterator[Namespace]:
    ns = Namespace(lab, [tap_name(lab.cluster.host("web1"))])
    try:
        yield ns
    finally:
        ns.close()


def test_secure_boot_machine_installs_through_shim_and_grub(lab: Lab, namespace: Namespace) -> None:
    web1 = lab.cluster.host("web1")
    assert web1.mac == MAC
    server_log = lab.logs / "server.log"
    namespace.start(dnsmasq.argv(lab), lab.logs / "dnsmasq.log")
    namespace.start(server.argv(lab), server_log)
    wait_until(lambda: "signing key" in server_log.read_text(errors="replace"), 60, "kiln serve", server_log)
    assert f"tftp://{lab.gateway}:69/shimx64.efi" in server_log.read_text()

    def api(path: str) -> dict:
        token = (lab.secrets / "operator.token").read_text().strip()
        out = namespace.run(
            ["curl", "--silent", "--fail", "--max-time", "10", "--cacert", str(lab.secrets / "ca.pem"),
             "-H", f"Authorization: Bearer {token}", f"{lab.server_url}{path}"]
        )  # fmt: skip
        return json.loads(out)

    run(["qemu-img", "create", "-q", "-f", "qcow2", str(lab.disk(web1)), "16M"])
    manifest = lab.images / "web" / "manifest.json"
    held = manifest.rename(manifest.with_suffix(".held"))  # not built yet: the first config says wait
    command = vm.argv(lab, web1, vm.PXE)
    assert any("romfile=" in arg for arg in command), "the lab's Secure Boot VM has no iPXE ROM"
    started = time.monotonic()
    namespace.start(command, lab.logs / "web1.qemu.log")
    serial = lab.serial_log(web1)

    def seen(marker: bytes) -> bool:
        return serial.exists() and marker in serial.read_bytes()

    # GRUB is told to wait, its config returns to the stub's loop, which asks again RETRY_SECONDS later
    wait_until(lambda: seen(b"kiln: cannot install web1 yet:"), 300, "GRUB told to wait", serial)
    held.rename(manifest)
    wait_until(lambda: seen(b"Kernel command line:"), 300, "the installer's kernel", serial)
    assert serial.read_bytes().count(b"kiln: asking again in 30 s") == 1, "one wait, then the install"
    kernel_started = time.monotonic() - started
    text = serial.read_bytes()
    assert b"NBP filename is shimx64.efi" in text, "OVMF's own PXE fetched shim"
    assert b"secureboot: Secure boot enabled" in text, "the kernel ran with Secure Boot enforcing"
    assert b"Kernel is locked down from EFI Secure Boot" in text
    command_line = next(line for line in text.splitlines() if b"Kernel command line:" in line).decode()
    token = api("/v1/hosts/web1/seed")["token"]
    assert f"kiln.token={token}" in command_line and "kiln.host=web1" in command_line
    assert f"kiln.image={lab.http_url}/images/web/web.data" in command_line
    assert "initrd=" not in command_line
    assert f"kiln/grub/{MAC} to {web1.ip}" in server_log.read_text(), "GRUB asked kiln by its MAC over TFTP"
    details = [e["detail"] for e in api("/v1/hosts/web1")["timeline"]]
    assert any("installer GRUB config served (web image" in d and f"to {web1.ip}" in d for d in details), details

    # the installer, booted that way, installs and reports over HTTPS; its reboot's network boot goes to the disk
    wait_until(lambda: api("/v1/hosts/web1")["installed"], 300, "the install to be reported ok", serial)
    installed = b"kiln: web1 is installed, booting from its local disk"
    wait_until(lambda: seen(installed), 240, "GRUB's disk config", serial)

    # GRUB chainloads the disk's shim (through the firmware: Secure Boot checks it), which starts the disk's GRUB
    wait_until(lambda: DISK_BOOTED.encode() in serial.read_bytes().split(installed, 1)[1], 120, "the disk", serial)
    back = time.monotonic() - started
    print(f"installer kernel at {kernel_started:.0f} s, installed and its disk booted at {back:.0f} s")
