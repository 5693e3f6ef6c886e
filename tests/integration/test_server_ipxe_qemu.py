"""The iPXE scripts in QEMU's own iPXE ROM (Debian's ipxe-qemu, SeaBIOS, TCG): an installed two-NIC host that
boots from its second NIC, chained by that NIC's MAC to a script that boots its disk through
`sanboot --no-describe --drive 0x80` (or the next drive with a boot sector); (slow) the same with one NIC, an
unknown machine, and the whole PXE install on a machine with two NICs and two disks: the installer kernel booted
with the contract command line from the second NIC, the disk the default rule picks (the second), the image's
block map and data chunks over HTTP, "install" events over HTTPS from busybox wget, then the reboot served a disk
boot.

The guest reaches the server through QEMU's user networking: 10.0.2.2 is the host's loopback."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from kiln.lab.firmware import Firmware
from kiln.lab.firmware import qemu_args as firmware_args
from kiln.run import run
from tests.integration.kiln_server import RunningServer, loopback_roles, running_server, write_manifest

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not shutil.which("qemu-system-x86_64"), reason="needs qemu-system-x86 (with ipxe-qemu)"),
]

GUEST_HOST = "10.0.2.2"  # QEMU user networking: the host's 127.0.0.1 as the guest sees it
MARKER = b"KILN-DISK-BOOTED"


def boot_sector() -> bytes:
    """A 512-byte MBR that writes MARKER to COM1 and halts: proof the disk itself was booted."""
    code = bytes.fromhex(
        "31c0"  # xor ax, ax
        "8ed8"  # mov ds, ax
        "fc"  # cld
        "baf803"  # mov dx, 0x3f8
        "be1b7c"  # mov si, 0x7c1b (the message, 27 bytes in)
        "ac"  # next: lodsb
        "84c0"  # test al, al
        "7403"  # jz halt
        "ee"  # out dx, al
        "ebf8"  # jmp next
        "fa"  # halt: cli
        "f4"  # hlt
        "ebfd"  # jmp hlt
        "90909090"
    )
    sector = code + MARKER + b"\r\n\0"
    return sector.ljust(510, b"\0") + b"\x55\xaa"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def qemu(tmp_path: Path) -> Iterator[Callable[..., tuple[subprocess.Popen[bytes], Path]]]:
    started: list[subprocess.Popen[bytes]] = []

    def start(
        server: RunningServer,
        mac: str,
        disk: Path | None = None,
        memory: int = 256,
        first_nic: str | None = None,
        first_disk: Path | None = None,
        firmware: Firmware = Firmware.BIOS,
    ) -> tuple[subprocess.Popen[bytes], Path]:
        """`first_nic`: the MAC of another NIC before the boot NIC, on a network of its own with no boot file;
        the firmware's boot order then names the second NIC (bootindex), as a server set to boot from it.
        `first_disk`: another disk before `disk`. `firmware`: under UEFI (OVMF: it takes its boot order from
        bootindex only) the boot NIC comes first, then `disk`, as a server set to boot from the network first.
        `disk` may be a qcow2 file (by its suffix)."""
        port = server.http_url.rsplit(":", 1)[1]
        serial = tmp_path / f"serial-{mac.replace(':', '')}.log"
        args = [
            "qemu-system-x86_64",
            "-accel",
            "tcg",
            "-m",
            str(memory),
            "-nodefaults",
            "-vga",
            "std",
            "-display",
            "none",
            "-serial",
            f"file:{serial}",
            "-boot",
            "order=n",
        ]
        workdir = tmp_path / f"vm-{mac.replace(':', '')}"
        workdir.mkdir(exist_ok=True)
        args += firmware_args(firmware, workdir)
        uefi = firmware is not Firmware.BIOS
        if first_nic is not None:
            args += [
                "-netdev",
                "user,id=other,net=10.0.3.0/24",
                "-device",
                f"virtio-net-pci,netdev=other,mac={first_nic}",
            ]
        args += [
            "-netdev",
            f"user,id=n0,restrict=off,bootfile=http://{GUEST_HOST}:{port}/boot.ipxe",
            "-device",
            f"virtio-net-pci,netdev=n0,mac={mac}" + (",bootindex=1" if first_nic is not None or uefi else ""),
        ]
        for n, path in enumerate((first_disk, disk)):
            if path is not None:
                fmt = "qcow2" if path.suffix == ".qcow2" else "raw"
                index = f",bootindex={3 - n}" if uefi else ""  # `disk` right after the NIC, then `first_disk`
                args += ["-drive", f"file={path},format={fmt},if=none,id=disk{n}"]
                args += ["-device", f"virtio-blk-pci,drive=disk{n}{index}"]
        process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        started.append(process)
        return process, serial

    yield start
    for process in started:
        process.kill()
        process.wait()


def wait_until(condition: Callable[[], object], timeout: float, what: str) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if result := condition():
            return result
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def host(server: RunningServer, name: str) -> dict:
    with server.client(check_hostname=False) as c:  # its certificate names 10.0.2.2, the guest's view of us
        return next(h for h in c.get(f"{server.tls_url}/v1/hosts").json()["hosts"] if h["name"] == name)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    with running_server(tmp_path_factory.mktemp("serve")) as s:
        yield s


@pytest.mark.slow  # the disk-boot test below already runs the chain by MAC in the quick tier
@pytest.mark.parametrize(
    ("firmware", "mac"),
    [(Firmware.BIOS, "52:54:00:0e:0e:01"), (Firmware.UEFI, "52:54:00:0e:0e:04")],
    ids=["bios", "uefi"],
)
def test_unknown_machine_chains_by_its_mac(server: RunningServer, qemu, firmware: Firmware, mac: str) -> None:
    """SeaBIOS's iPXE ROM, and under OVMF the same ROM's EFI driver (efi-virtio.rom): one chain, by ${netX/mac}."""
    qemu(server, mac, memory=512, firmware=firmware)

    def seen() -> bool:
        with server.client() as c:
            return any(u["mac"] == mac for u in c.get(f"{server.tls_url}/v1/hosts").json()["unknown_machines"])

    wait_until(seen, 180, f"iPXE to ask for /ipxe?mac={mac}")


def installed(server: RunningServer, name: str, tmp_path: Path) -> Path:
    """`name` reported its install ok (as its installer does, with its token); a disk holding our boot sector."""
    installer = {"Authorization": f"Bearer {server.token(name)}"}
    with server.client(operator=False, headers=installer) as c:
        assert c.post(f"{server.tls_url}/v1/hosts/{name}/events", json={"step": "install", "status": "ok"}).is_success
    disk = tmp_path / "disk.raw"
    disk.write_bytes(boot_sector() + b"\0" * (1024 * 1024 - 512))
    return disk


@pytest.mark.slow  # the two-NIC test below boots a disk through sanboot in the quick tier
def test_installed_host_boots_its_disk_through_sanboot(server: RunningServer, qemu, tmp_path: Path) -> None:
    _, serial = qemu(server, "52:54:00:10:00:22", installed(server, "web2", tmp_path))
    wait_until(lambda: serial.exists() and MARKER in serial.read_bytes(), 60, "the disk's boot sector to run")


def test_a_host_booting_from_its_second_nic_gets_its_own_script(server: RunningServer, qemu, tmp_path: Path) -> None:
    """iPXE asks by the MAC of the NIC it booted from (${netX/mac}): by the first NIC's (${net0/mac}) this machine
    would be an unknown machine, told to retry every 30 s, forever."""
    other = "52:54:00:0e:0e:02"  # the first NIC, on another network: not in roles.yaml
    _, serial = qemu(server, "52:54:00:10:00:31", installed(server, "app1", tmp_path), first_nic=other)
    wait_until(lambda: serial.exists() and MARKER in serial.read_bytes(), 60, "app1's disk to boot")
    with server.client() as c:
        unknown = c.get(f"{server.tls_url}/v1/hosts").json()["unknown_machines"]
    assert other not in [u["mac"] for u in unknown], "the script was asked for by the first NIC's MAC"


@pytest.mark.slow
def test_an_installed_uefi_host_leaves_ipxe_for_its_disk(
    server: RunningServer, qemu, images: Path, tmp_path: Path
) -> None:
    """Under UEFI there are no BIOS drives to sanboot: the installed host's script ends in `exit`, the firmware
    goes on to the next boot option, the disk, and a role image boots from it (shim, GRUB, the kernel)."""
    installed(server, "web2", tmp_path)  # its install reported ok: the script now boots the disk
    disk = tmp_path / "web.qcow2"
    run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", images / "web" / "web.qcow2", disk])
    _, serial = qemu(server, "52:54:00:10:00:22", disk, memory=768, firmware=Firmware.UEFI)
    wait_until(lambda: serial.exists() and b"Linux version" in serial.read_bytes(), 300, "the image's kernel to start")
    text = serial.read_bytes()
    assert b"kiln: web2 is installed, booting from its local disk" in text, "the server's disk script sent it on"


def installable_disk(path: Path) -> bytes:
    """What the installer writes: our boot sector, one partition, ext4 in it (for /etc/kiln/seed.json)."""
    path.write_bytes(boot_sector() + b"\0" * (16 * 1024 * 1024 - 512))
    run(["sfdisk", "--quiet", "--no-reread", path], input="start=2048, type=83\n")
    run(["mkfs.ext4", "-q", "-F", "-E", f"offset={2048 * 512}", path, f"{(16 - 1) * 1024}k"])
    return path.read_bytes()


@pytest.mark.slow
def test_installer_installs_reports_and_the_host_then_boots_its_disk(tmp_path: Path, qemu, images: Path) -> None:
    """The whole PXE path: chain, install script, the real installer kernel with the contract command line,
    the image over HTTP, "install" events over HTTPS, then the reboot served a disk boot. The machine has two NICs
    and boots from the second; it has two disks and the first is the larger, so the default rule (the smallest
    usable disk) picks the second: neither "the first NIC" nor "the first disk" would do."""
    tls_port = free_port()
    roles = loopback_roles(tmp_path)
    roles.write_text(roles.read_text().replace("https://127.0.0.1:8443", f"https://{GUEST_HOST}:{tls_port}"))
    served = tmp_path / "images"
    (served / "installer").mkdir(parents=True)
    for name in ("vmlinuz", "initrd.img"):
        shutil.copyfile(images / "installer" / name, served / "installer" / name)
    (served / "web").mkdir()
    raw = installable_disk(served / "web" / "web.raw")
    block_map = write_manifest(served, "web")
    target = tmp_path / "target.raw"
    target.write_bytes(b"\0" * len(raw))
    larger = tmp_path / "larger.raw"
    larger.write_bytes(b"\0" * 2 * len(raw))

    with running_server(tmp_path / "serve", roles=roles, images=served, tls_port=tls_port) as server:
        port = server.http_url.rsplit(":", 1)[1]
        _, serial = qemu(
            server, "52:54:00:10:00:21", target, memory=512, first_nic="52:54:00:0e:0e:03", first_disk=larger
        )
        wait_until(
            lambda: host(server, "web1")["state"] in ("installing", "failed"), 180, "the installer's first event"
        )
        text = serial.read_bytes()
        base = f"http://{GUEST_HOST}:{port}/images/web"  # the Host the machine used
        assert f"kiln.image={base}/web.data kiln.map={base}/web.map kiln.sha256={block_map.digest}".encode() in text
        assert b"kiln.host=web1" in text and b"BOOTIF=01-52-54-00-10-00-21" in text
        with server.client(check_hostname=False) as c:
            token = c.get(f"{server.tls_url}/v1/hosts/web1/seed").json()["token"]
        assert f"kiln.token={token}".encode() in text, "the installer carries the host's token"
        wait_until(
            lambda: host(server, "web1")["installed"] or host(server, "web1")["state"] == "failed", 240, "install ok"
        )
        web1 = host(server, "web1")
        assert web1["state"] != "failed", web1["last_event"]
        assert b"the disk rule picked /dev/vdb" in serial.read_bytes()
        assert [(e["step"], e["status"]) for e in web1["timeline"]][:3] == [
            ("pxe", "ok"),
            ("install", "start"),
            ("install", "ok"),
        ]
        # the installer rebooted the machine: this time its script boots the disk it wrote
        wait_until(lambda: MARKER in serial.read_bytes(), 120, "the installed disk to boot")
    assert target.read_bytes()[:446] == raw[:446]
    assert larger.read_bytes() == b"\0" * 2 * len(raw), "the larger disk was not the rule's, nothing was written there"
