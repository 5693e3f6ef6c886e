"""The PXE installer under QEMU (TCG): booted with the kernel command line iPXE gives it, it streams an
image from an HTTP server onto the disk, checks its sha256, writes /etc/kiln/seed.json into the
installed root, reports install events, and reboots; with a wrong sha256 it wipes the disk and stops."""

from __future__ import annotations

import hashlib
import http.server
import json
import re
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from kiln.build import commands, installer
from kiln.build.imagefs import mounted
from kiln.build.progress import Display
from kiln.model import load_roles
from tests.e2e.image_helpers import HOST_LOOPBACK, Vm

pytestmark = pytest.mark.slow

PROJECT = Path(__file__).resolve().parents[2]
MAC = "52:54:00:12:34:56"
IMAGE_SIZE = 48 << 20


@pytest.fixture(scope="module")
def installer_dir() -> Path:
    env = commands.prepare(load_roles(PROJECT / "roles.yaml"))
    with Display(["installer"]) as display:
        assert installer.build(env, display).state in ("built", "up to date")
    return env.images / "installer"


@pytest.fixture(scope="module")
def test_image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small disk image: MBR, one ext4 partition from 1 MiB holding a marker file."""
    raw = tmp_path_factory.mktemp("image") / "small.raw"
    with raw.open("wb") as f:
        f.truncate(IMAGE_SIZE)
    subprocess.run(["sfdisk", "-q", str(raw)], input="start=2048, type=83\n", text=True, check=True)
    subprocess.run(
        ["mkfs.ext4", "-q", "-F", "-L", "kiln-img-test", "-E", "offset=1048576", str(raw), "40M"], check=True
    )
    return raw


class Server:
    """Serves the image at /small.raw and records POSTed events (loopback only). `cut` serves only that many
    bytes (a broken download); `pace` sleeps that long after every MiB (a slow network)."""

    def __init__(self, image: Path, *, cut: int | None = None, pace: float = 0.0) -> None:
        events: list[dict[str, object]] = []
        data = image.read_bytes()[:cut]

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                if self.path != "/small.raw":
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                for at in range(0, len(data), 1 << 20):
                    self.wfile.write(data[at : at + (1 << 20)])
                    time.sleep(pace)

            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                events.append({"path": self.path, **json.loads(body)})
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


def _boot(tmp_path: Path, installer_dir: Path, server: Server, sha: str, extra: str = "") -> tuple[Vm, Path]:
    disk = tmp_path / "disk.raw"
    with disk.open("wb") as f:
        f.truncate(64 << 20)
    base = f"http://{HOST_LOOPBACK}:{server.port}"  # the test's server on the host's loopback
    append = (f"kiln.image={base}/small.raw kiln.sha256={sha} kiln.disk=/dev/vda kiln.url={base} kiln.host=web1 "
              f"kiln.size={IMAGE_SIZE} BOOTIF=01-{MAC.replace(':', '-')} console=ttyS0 {extra}")  # fmt: skip
    vm = Vm(tmp_path, disk=disk, disk_format="raw", kernel=installer_dir / "vmlinuz",
            initrd=installer_dir / "initrd.img", append=append, mac=MAC, memory=512,
            isolated=False)  # fmt: skip  # the installer only goes to the URLs given on its command line
    return vm, disk


def test_installs_the_image_and_writes_the_seed(tmp_path: Path, installer_dir: Path, server: Server,
                                                test_image: Path) -> None:  # fmt: skip
    sha = hashlib.sha256(test_image.read_bytes()).hexdigest()
    vm, disk = _boot(tmp_path, installer_dir, server, sha)
    with vm:
        vm.wait_for(r"kiln-installer: installed; rebooting", 300)
        assert vm.wait_exit(60) == 0, "-no-reboot: the installer's reboot ends QEMU"
    assert disk.read_bytes()[:512] == test_image.read_bytes()[:512]
    with mounted(disk) as root:
        seed = json.loads((root / "etc" / "kiln" / "seed.json").read_text())
    assert seed == {"host": "web1", "mac": MAC, "url": f"http://{HOST_LOOPBACK}:{server.port}"}
    steps = [(e["path"], e["step"], e["status"]) for e in server.events]
    assert steps == [("/v1/hosts/web1/events", "install", "start"), ("/v1/hosts/web1/events", "install", "ok")]
    assert sha in str(server.events[-1]["detail"])
    assert isinstance(server.events[-1]["duration"], int), "the installer times its own step"


def test_reports_progress_while_it_writes(tmp_path: Path, installer_dir: Path, test_image: Path) -> None:
    slow = Server(test_image, pace=0.25)  # 48 MiB in 12 s or more
    try:
        sha = hashlib.sha256(test_image.read_bytes()).hexdigest()
        vm, _ = _boot(tmp_path, installer_dir, slow, sha, "kiln.progress=2")
        with vm:
            vm.wait_for(r"kiln-installer: installed; rebooting", 300)
    finally:
        slow.close()
    statuses = [e["status"] for e in slow.events]
    assert statuses[0] == "start" and statuses[-1] == "ok" and "fail" not in statuses
    progress = [str(e["detail"]) for e in slow.events[1:-1]]
    assert progress, "at least one progress event during a 12 s write"
    assert all(re.fullmatch(r"writing: \d+ of 48 MB written", d) for d in progress), progress


def test_refuses_a_short_download(tmp_path: Path, installer_dir: Path, test_image: Path) -> None:
    broken = Server(test_image, cut=20 << 20)
    try:
        vm, disk = _boot(tmp_path, installer_dir, broken, hashlib.sha256(test_image.read_bytes()).hexdigest())
        with vm:
            vm.wait_for(r"FAILED: received 20971520 of 50331648 bytes", 300)
            vm.wait_for(r"not rebooting", 60)
    finally:
        broken.close()
    assert [e["status"] for e in broken.events] == ["start", "fail"]
    assert disk.read_bytes()[: 2 << 20] == b"\0" * (2 << 20), "the partial image is wiped"


def test_refuses_a_sha256_mismatch(tmp_path: Path, installer_dir: Path, server: Server) -> None:
    vm, disk = _boot(tmp_path, installer_dir, server, "0" * 64)
    with vm:
        vm.wait_for(r"FAILED: sha256 mismatch", 300)
        vm.wait_for(r"not rebooting", 60)  # printed once the fail event went out
    assert disk.read_bytes()[: 2 << 20] == b"\0" * (2 << 20), "the unverified image is wiped"
    assert [(e["step"], e["status"]) for e in server.events] == [("install", "start"), ("install", "fail")]
    assert "mismatch" in str(server.events[-1]["detail"])
