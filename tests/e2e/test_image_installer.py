"""The PXE installer under QEMU (TCG): booted with the kernel command line iPXE gives it, it fetches the
image's block map, streams the data chunks onto the disk and writes zeros over the rest (over a disk that
held other bytes before), checks the digest of what it wrote, writes /etc/kiln/seed.json into the
installed root, reports install events, and reboots; with a wrong digest it wipes the disk and stops."""

from __future__ import annotations

import http.server
import json
import re
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from kiln import blockmap
from kiln.build import cli as build_cli
from kiln.build import installer
from kiln.build.imagefs import mounted
from kiln.build.progress import Display
from kiln.project import Project
from tests.e2e.image_helpers import GUEST_MAC, HOST_LOOPBACK, Vm

pytestmark = pytest.mark.slow

PROJECT = Path(__file__).resolve().parents[2]
MAC = GUEST_MAC
TOKEN = "enrol-" + "x" * 37  # the host's one-time enrolment token, as ./inv reprovision mints it
IMAGE_SIZE = 48 << 20


@pytest.fixture(scope="module")
def installer_dir() -> Path:
    project = Project()
    env = build_cli.prepare(project.cluster(), images=project.images, secrets=project.secrets)
    with Display(["installer"]) as display:
        assert installer.build(env, display).state in ("built", "up to date")
    return env.images / "installer"


@pytest.fixture(scope="module")
def test_image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small disk image laid out as kiln's are (elements/kiln-base/block-device-kiln.yaml): GPT, a BIOS boot
    partition, an ESP, and root last, named root; the installer must find root by that name to write the seed."""
    raw = tmp_path_factory.mktemp("image") / "small.raw"
    with raw.open("wb") as f:
        f.truncate(IMAGE_SIZE)
    table = (
        "label: gpt\n"
        "start=2048, size=2048, type=21686148-6449-6E6F-744E-656564454649, name=BSP\n"
        "start=4096, size=8192, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B, name=ESP\n"
        "start=12288, type=0FC63DAF-8483-4772-8E79-3D69D8477DE4, name=root\n"
    )
    subprocess.run(["sfdisk", "-q", str(raw)], input=table, text=True, check=True)
    subprocess.run(
        ["mkfs.ext4", "-q", "-F", "-L", "kiln-img-test", "-E", f"offset={12288 * 512}", str(raw), "36M"], check=True
    )
    return raw


@pytest.fixture(scope="module")
def image_map(test_image: Path) -> blockmap.BlockMap:
    block_map = blockmap.scan(test_image)
    kinds = {e.kind for e in block_map.extents}
    assert kinds == {"data", "zero"}, "the test image has both kinds of extent"
    return block_map


class Server:
    """Serves the image's block map at /small.map and its data chunks at /small.data (as kiln serve does, from
    kiln.blockmap) and records POSTed events (loopback only). `cut` serves only that many bytes of data (a broken
    download); `pace` sleeps that long after every MiB (a slow network)."""

    def __init__(self, image: Path, *, cut: int | None = None, pace: float = 0.0) -> None:
        events: list[dict[str, object]] = []
        block_map = blockmap.scan(image)
        files = {
            "/small.map": block_map.text.encode(),
            "/small.data": b"".join(blockmap.read_data(image, block_map.extents))[:cut],
        }

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                data = files.get(self.path)
                if data is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                for at in range(0, len(data), 1 << 20):
                    self.wfile.write(data[at : at + (1 << 20)])
                    time.sleep(pace)

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                events.append({"path": self.path, "auth": self.headers.get("Authorization"), **json.loads(body)})
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.events = events
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture()
def server(test_image: Path) -> Iterator[Server]:
    s = Server(test_image)
    yield s
    s.close()


DIRTY = b"\xa5" * (1 << 20)  # what a disk that held something else reads as


def _boot(tmp_path: Path, installer_dir: Path, server: Server, sha: str, extra: str = "") -> tuple[Vm, Path]:
    disk = tmp_path / "disk.raw"
    with disk.open("wb") as f:
        for _ in range(64):
            f.write(DIRTY)
    base = f"http://{HOST_LOOPBACK}:{server.port}"  # the test's server on the host's loopback
    append = (
        f"kiln.image={base}/small.data kiln.map={base}/small.map kiln.sha256={sha} kiln.disk=/dev/vda "
        f"kiln.url={base} kiln.host=web1 kiln.token={TOKEN} "
        f"kiln.size={IMAGE_SIZE} BOOTIF=01-{MAC.replace(':', '-')} console=ttyS0 {extra}"
    )
    # not isolated: the installer only goes to the URLs given on its command line
    vm = Vm(
        tmp_path,
        disk=disk,
        disk_format="raw",
        kernel=installer_dir / "vmlinuz",
        initrd=installer_dir / "initrd.img",
        append=append,
        mac=MAC,
        memory=512,
        isolated=False,
    )
    return vm, disk


def test_installs_the_image_and_writes_the_seed(
    tmp_path: Path, installer_dir: Path, server: Server, test_image: Path, image_map: blockmap.BlockMap
) -> None:
    vm, disk = _boot(tmp_path, installer_dir, server, image_map.digest)
    with vm:
        vm.wait_for(r"kiln-installer: installed; rebooting", 300)
        assert vm.wait_exit(60) == 0, "-no-reboot: the installer's reboot ends QEMU"
    written, image = disk.read_bytes(), test_image.read_bytes()
    assert written[:512] == image[:512]
    for e in image_map.extents:  # the seed changed some data chunks; the zero chunks must be zeros again
        if e.kind == "zero":
            at, end = e.start * blockmap.CHUNK, (e.start + e.count) * blockmap.CHUNK
            assert written[at:end] == image[at:end] == bytes(end - at), f"chunks {e.start}+{e.count} zeroed"
    assert written[IMAGE_SIZE:] == DIRTY * 16, "nothing past the image is touched"
    with mounted(disk) as root:
        seed = json.loads((root / "etc" / "kiln" / "seed.json").read_text())
    assert seed == {"host": "web1", "mac": MAC, "url": f"http://{HOST_LOOPBACK}:{server.port}", "token": TOKEN}
    assert {e["auth"] for e in server.events} == {f"Bearer {TOKEN}"}, "the events carry the host's token"
    steps = [(e["path"], e["step"], e["status"]) for e in server.events]
    assert steps == [("/v1/hosts/web1/events", "install", "start"), ("/v1/hosts/web1/events", "install", "ok")]
    assert image_map.digest in str(server.events[-1]["detail"])
    assert isinstance(server.events[-1]["duration"], int), "the installer times its own step"


def test_reports_progress_while_it_writes(
    tmp_path: Path, installer_dir: Path, test_image: Path, image_map: blockmap.BlockMap
) -> None:
    slow = Server(test_image, pace=1.0)  # a second per MiB of data
    try:
        vm, _ = _boot(tmp_path, installer_dir, slow, image_map.digest, "kiln.progress=2")
        with vm:
            vm.wait_for(r"kiln-installer: installed; rebooting", 300)
    finally:
        slow.close()
    statuses = [e["status"] for e in slow.events]
    assert statuses[0] == "start" and statuses[-1] == "ok" and "fail" not in statuses
    progress = [str(e["detail"]) for e in slow.events[1:-1]]
    writing = [d for d in progress if d.startswith("writing")]
    assert writing, f"at least one progress event while {image_map.data_bytes >> 20} MiB arrive at 1 MiB/s"
    assert all(re.fullmatch(r"(writing: \d+ of 48|checking: \d+ of \d+) MB", d) for d in progress), progress


def test_refuses_a_short_download(
    tmp_path: Path, installer_dir: Path, test_image: Path, image_map: blockmap.BlockMap
) -> None:
    broken = Server(test_image, cut=image_map.data_bytes - (1 << 20))
    try:
        vm, disk = _boot(tmp_path, installer_dir, broken, image_map.digest)
        with vm:
            vm.wait_for(r"FAILED: wrote 49283072 of 50331648 bytes: the download of \S+ ended early", 300)
            vm.wait_for(r"not rebooting", 60)
    finally:
        broken.close()
    assert [e["status"] for e in broken.events] == ["start", "fail"]
    assert disk.read_bytes()[: 2 << 20] == b"\0" * (2 << 20), "the partial image is wiped"


def test_refuses_a_digest_mismatch(tmp_path: Path, installer_dir: Path, server: Server) -> None:
    vm, disk = _boot(tmp_path, installer_dir, server, "0" * 64)
    with vm:
        vm.wait_for(r"FAILED: sha256 mismatch", 300)
        vm.wait_for(r"not rebooting", 60)  # printed once the fail event went out
    assert disk.read_bytes()[: 2 << 20] == b"\0" * (2 << 20), "the unverified image is wiped"
    assert [(e["step"], e["status"]) for e in server.events] == [("install", "start"), ("install", "fail")]
    assert "mismatch" in str(server.events[-1]["detail"])
