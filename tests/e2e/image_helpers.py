"""Helpers of the image tests: the built images (the same code as ./inv build-all), QEMU (TCG) boots
with a serial console log and a clean ACPI power-down, and a booted overlay's root filesystem."""

from __future__ import annotations

import contextlib
import http.server
import json
import os
import re
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from kiln import blockmap
from kiln.build import cli as build_cli
from kiln.build.imagefs import mounted
from kiln.build.plan import IMAGES_DIR
from kiln.lab.firmware import Firmware
from kiln.lab.firmware import qemu_args as firmware_args
from kiln.lab.vm import FW_CFG_SEED
from kiln.project import Project

ROLES = ("lb", "web", "app", "db", "mon")
GUEST_MAC = "52:54:00:12:34:56"  # QEMU's own default; the tests' seeds and BOOTIF name it
HOST_LOOPBACK = "10.0.2.2"  # the host's 127.0.0.1 as a non-isolated guest sees it
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def build_all_images() -> Path:
    """Build what is not up to date (a no-op taking seconds when nothing changed); return images/."""
    assert build_cli.build_all(Project()) == 0, "./inv build-all failed; see images/<role>/build.log"
    return IMAGES_DIR


class Vm:
    """One QEMU guest (-accel tcg), its serial console in a file, its monitor on a unix socket."""

    def __init__(
        self,
        workdir: Path,
        *,
        disk: Path,
        disk_format: str = "qcow2",
        kernel: Path | None = None,
        initrd: Path | None = None,
        append: str | None = None,
        mac: str = GUEST_MAC,
        memory: int = 1024,
        isolated: bool = True,
        seed: Path | None = None,
        cpus: int = 2,
        firmware: Firmware = Firmware.BIOS,
        nics: list[str] | None = None,
        more_disks: tuple[Path, ...] = (),
    ) -> None:
        """QEMU user networking. `isolated` (restrict=on): DHCP works and the guest reaches nothing at all; a
        role image must be isolated, since its agent would try the provisioning URL baked into it. Otherwise
        the guest reaches the host's loopback as 10.0.2.2 (for a guest that only goes where the test sends it).
        `seed`: a JSON file the guest reads through fw_cfg, as the lab gives a disk-booted VM its enrolment.
        `firmware`: SeaBIOS, OVMF, or OVMF with Secure Boot enforcing (kiln.lab.firmware). `nics`: QEMU's network
        arguments instead of user networking (`mac` and `isolated` then unused), e.g. taps in a test's namespace.
        `more_disks`: raw disks after `disk` (vdb, vdc, ...)."""
        self.workdir = workdir
        self.console = workdir / "console.log"
        self.monitor = workdir / "monitor.sock"
        argv = [
            "qemu-system-x86_64",
            "-accel",
            "tcg",
            "-m",
            str(memory),
            "-smp",
            str(cpus),
            "-nographic",
            "-serial",
            f"file:{self.console}",
            "-monitor",
            f"unix:{self.monitor},server,nowait",
            "-drive",
            f"file={disk},if=virtio,format={disk_format}",
            *(a for more in more_disks for a in ("-drive", f"file={more},if=virtio,format=raw")),
            "-no-reboot",
            *firmware_args(firmware, workdir),
        ]
        if nics is None:
            argv += ["-nic", f"user,model=virtio-net-pci,mac={mac}" + (",restrict=on" if isolated else "")]
        else:
            argv += nics
        if seed is not None:
            argv += ["-fw_cfg", f"name={FW_CFG_SEED},file={seed}"]
        if kernel is not None:
            argv += ["-kernel", str(kernel), "-initrd", str(initrd), "-append", append or ""]
        self.argv = argv
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Vm:
        self.proc = subprocess.Popen(
            self.argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=open(self.workdir / "qemu.err", "wb"),
            start_new_session=True,
        )
        return self

    def __exit__(self, *exc: object) -> None:
        self.kill()

    def text(self) -> str:
        """The console so far, colour codes removed."""
        try:
            return _ANSI.sub("", self.console.read_bytes().decode(errors="replace"))
        except FileNotFoundError:
            return ""

    def wait_for(self, pattern: str, timeout: float) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        regex = re.compile(pattern)
        while time.monotonic() < deadline:
            m = regex.search(self.text())
            if m:
                return m
            if self.proc is not None and self.proc.poll() is not None:
                break
            time.sleep(1)
        tail = "\n".join(self.text().splitlines()[-40:])
        raise AssertionError(f"console never showed {pattern!r} within {timeout:.0f}s; last lines:\n{tail}")

    def wait_exit(self, timeout: float) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout=timeout)

    def powerdown(self, timeout: float = 180) -> None:
        """ACPI power button, then wait for the guest to halt (killed after `timeout`)."""
        with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.connect(str(self.monitor))
            s.sendall(b"system_powerdown\n")
            time.sleep(0.5)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.wait_exit(timeout)
        self.kill()

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)


def overlay(image: Path, path: Path) -> Path:
    """A qcow2 overlay on the image: the guest writes there, the image stays as built."""
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", str(image.resolve()), str(path)], check=True
    )
    return path


@contextlib.contextmanager
def booted_root(disk_qcow2: Path, workdir: Path) -> Iterator[Path]:
    """The root filesystem of a guest disk after it ran (converted to raw, mounted read-only)."""
    raw = workdir / "after-boot.raw"
    subprocess.run(["qemu-img", "convert", "-O", "raw", str(disk_qcow2), str(raw)], check=True)
    try:
        with mounted(raw) as root:
            yield root
    finally:
        raw.unlink(missing_ok=True)


def journal(root: Path) -> str:
    """The guest's persistent journal, as `journalctl -o short` lines."""
    result = subprocess.run(
        ["journalctl", "-D", str(root / "var" / "log" / "journal"), "-o", "short", "--no-pager"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    return result.stdout


class ImageServer:
    """Serves a raw image's block map at /NAME.map and its data chunks at /NAME.data, streamed (as kiln serve does,
    from kiln.blockmap), and records POSTed events (loopback only). `cut` serves only that many bytes of data (a
    broken download); `pace` sleeps that long after every MiB (a slow network)."""

    def __init__(self, image: Path, *, name: str, cut: int | None = None, pace: float = 0.0) -> None:
        events: list[dict[str, object]] = []
        block_map = blockmap.scan(image)
        self.block_map = block_map
        length = block_map.data_bytes if cut is None else min(cut, block_map.data_bytes)

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path == f"/{name}.map":
                    chunks: Iterator[bytes] = iter([block_map.text.encode()])
                    size = len(block_map.text.encode())
                elif self.path == f"/{name}.data":
                    chunks, size = blockmap.read_data(image, block_map.extents), length
                else:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(size))
                self.end_headers()
                sent = 0
                for chunk in chunks:
                    part = chunk[: size - sent]
                    self.wfile.write(part)
                    sent += len(part)
                    if sent >= size:
                        break
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
