"""The Secure Boot network boot's server side over real sockets: kiln serve --tftp-listen read by curl's TFTP
client (Debian's signed shim and GRUB, the stub, each machine's GRUB config by its MAC, the installer) and the same
configs over HTTP at /grub?mac=MAC; what the state records of them."""

from __future__ import annotations

import re
import socket
import struct
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from kiln.server import grub, netboot
from tests.integration.kiln_server import INV, RunningServer, running_server, write_manifest

pytestmark = pytest.mark.integration

RRQ, WRQ, ERROR = 1, 2, 5  # TFTP opcodes
ILLEGAL, ACCESS_VIOLATION = 4, 2  # TFTP error codes
RAW = bytes(range(256)) * 4096 + bytes(1 << 20)
KERNEL = bytes(range(251)) * 400  # 100,400 bytes: 68 blocks of 1468 and a part
INITRD = b"i" * (1468 * 3)  # an exact number of blocks: the transfer ends with an empty one


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("images")
    (root / "installer").mkdir()
    (root / "installer" / "vmlinuz").write_bytes(KERNEL)
    (root / "installer" / "initrd.img").write_bytes(INITRD)
    (root / "web").mkdir()
    (root / "web" / "web.raw").write_bytes(RAW)
    write_manifest(root, "web")
    return root


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, images: Path) -> Iterator[RunningServer]:
    with running_server(tmp_path_factory.mktemp("serve"), images=images, extra=("--tftp-listen", "127.0.0.1:0")) as s:
        yield s


def tftp_port(server: RunningServer) -> int:
    found = re.search(r"network boot\s+tftp://127\.0\.0\.1:(\d+)/shimx64\.efi", server.output())
    assert found, server.output()
    return int(found[1])


def tftp_get(server: RunningServer, name: str, blksize: int = 1468) -> subprocess.CompletedProcess[bytes]:
    """`name` through curl's TFTP client (it asks for tsize and blksize, as firmware does)."""
    return subprocess.run(
        ["curl", "--silent", "--show-error", "--max-time", "20", "--tftp-blksize", str(blksize),
         f"tftp://127.0.0.1:{tftp_port(server)}/{name}"],
        capture_output=True,
        timeout=30,
        check=False,
    )  # fmt: skip


def fetched(server: RunningServer, name: str, blksize: int = 1468) -> bytes:
    done = tftp_get(server, name, blksize)
    assert done.returncode == 0, done.stderr.decode()
    return done.stdout


def timeline(server: RunningServer, name: str) -> list[str]:
    with server.client() as c:
        return [e["detail"] for e in c.get(f"{server.tls_url}/v1/hosts/{name}").json()["timeline"]]


def test_tftp_serves_debians_signed_chain_and_the_stub(server: RunningServer) -> None:
    for name, (path, _) in netboot.SIGNED.items():
        assert fetched(server, name) == path.read_bytes(), name
    assert fetched(server, "grub/grub.cfg", blksize=512).decode() == grub.stub()


def test_an_armed_host_gets_the_installer_over_tftp(server: RunningServer) -> None:
    config = fetched(server, "kiln/grub/52:54:00:10:00:21").decode()
    kernel = next(line for line in config.splitlines() if line.startswith("linux "))
    words = kernel.split()
    assert words[1] == "/images/installer/vmlinuz"
    assert f"kiln.token={server.token('web1')}" in words and "kiln.host=web1" in words
    assert f"kiln.image={server.http_url}/images/web/web.data" in words  # the image itself comes over HTTP
    assert "BOOTIF=01-52-54-00-10-00-21" in words
    assert any("installer GRUB config served (web image" in d and "to 127.0.0.1" in d for d in timeline(server, "web1"))
    # what it points at, byte for byte: blocks and a part, then blocks and the empty block that ends them
    assert fetched(server, "images/installer/vmlinuz") == KERNEL
    assert fetched(server, "/images/installer/initrd.img") == INITRD
    # the same decision over HTTP (a GRUB with HTTP, an operator looking)
    over_http = httpx.get(f"{server.http_url}/grub", params={"mac": "52-54-00-10-00-21"})
    assert over_http.status_code == 200 and over_http.text == config


def test_an_unknown_machine_waits_and_shows_on_the_dashboard(server: RunningServer) -> None:
    config = fetched(server, "kiln/grub/52:54:00:0a:0b:0c").decode()
    assert "MAC 52:54:00:0a:0b:0c) is not in roles.yaml" in config and "linux" not in config
    assert config.rstrip().splitlines()[-1] == "echo 'kiln: asking again in 30 s'"
    with server.client() as c:
        unknown = c.get(f"{server.tls_url}/v1/hosts").json()["unknown_machines"]
    assert "52:54:00:0a:0b:0c" in [u["mac"] for u in unknown]
    metrics = httpx.get(f"{server.http_url}/metrics").text  # counted as GRUB's, not iPXE's
    assert 'kiln_server_refusals_total{action="grub",reason="unknown_machine"} 1.0' in metrics


def test_an_installed_host_boots_its_disk(server: RunningServer) -> None:
    token = server.token("web2")
    with server.client(operator=False, headers={"Authorization": f"Bearer {token}"}) as c:
        assert c.post(f"{server.tls_url}/v1/hosts/web2/events", json={"step": "install", "status": "ok"}).is_success
    config = fetched(server, "kiln/grub/52:54:00:10:00:22").decode()
    assert "chainloader /EFI/BOOT/BOOTX64.EFI" in config and "linux" not in config


def test_tftp_refuses_what_is_not_the_boot_path(server: RunningServer) -> None:
    for name in ("images/web/web.raw", "../etc/passwd", "grub/../../etc/passwd", "kiln/grub/not-a-mac"):
        done = tftp_get(server, name)
        assert done.returncode == 68 and done.stdout == b"", name  # curl's "TFTP: file not found"
    # raw requests curl would not send: a path out of the root (curl normalizes it away) is an ERROR, tftpy's
    # "illegal operation"; a write an ERROR, "access violation"
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as raw:
        raw.settimeout(5)
        for opcode, name, code in ((RRQ, b"../../etc/passwd", ILLEGAL), (WRQ, b"shimx64.efi", ACCESS_VIOLATION)):
            raw.sendto(struct.pack("!H", opcode) + name + b"\0octet\0", ("127.0.0.1", tftp_port(server)))
            answer = raw.recv(1024)
            assert struct.unpack("!HH", answer[:4]) == (ERROR, code), answer
    assert fetched(server, "shimx64.efi") == netboot.SIGNED["shimx64.efi"][0].read_bytes(), "still serving"
    bad = httpx.get(f"{server.http_url}/grub", params={"mac": "zz"})
    assert bad.status_code == 400


def test_tftp_root_lays_out_the_signed_chain_for_another_tftp_server(tmp_path: Path) -> None:
    """./inv tftp-root: what an operator's own TFTP server hands out, with grub.cfg sending GRUB on to kiln."""
    done = subprocess.run(
        [*INV, "tftp-root", "--out", str(tmp_path / "root"), "--server", "192.0.2.7"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    for name, (path, _) in netboot.SIGNED.items():
        assert (tmp_path / "root" / name).read_bytes() == path.read_bytes(), name
    assert (tmp_path / "root" / "grub" / "grub.cfg").read_text() == grub.stub("192.0.2.7")
    assert "set root=(tftp,192.0.2.7)" in grub.stub("192.0.2.7")
    for bad in ("2001:db8::7", "kiln.example"):  # GRUB's device and the listener take an IPv4 address
        refused = subprocess.run(
            [*INV, "tftp-root", "--out", str(tmp_path / "other"), "--server", bad],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert refused.returncode == 1 and "expected the IPv4 address" in refused.stderr, refused.stderr
    assert not (tmp_path / "other").exists()


def test_listening_on_all_addresses_the_banner_names_the_one_machines_reach(tmp_path: Path, images: Path) -> None:
    """--tftp-listen 0.0.0.0:PORT: the banner gives the provisioning URL's host (what a DHCP option would name), as
    it does for the boot scripts, and that address answers."""
    with running_server(tmp_path, images=images, address="0.0.0.0", extra=("--tftp-listen", "0.0.0.0:0")) as s:
        assert "tftp://0.0.0.0" not in s.output()
        assert tftp_get(s, "shimx64.efi").returncode == 0, "the address the banner names answers"
