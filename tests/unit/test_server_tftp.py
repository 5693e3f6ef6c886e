"""kiln serve's TFTP listener (kiln/server/tftp.py: tftpy on a thread) over loopback, read by a client of the
test's own (RFC 1350 and the option extension, packet by packet), and what netboot.TftpFiles answers for each name."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from kiln.server import grub, netboot, tftp
from kiln.server.inputs import BadInput

RRQ, WRQ, DATA, ACK, ERROR, OACK = 1, 2, 3, 4, 5, 6
KERNEL = bytes(range(251)) * 400  # 100,400 bytes: 68 blocks of 1468 and a part
CONFIG = b"c" * 1024  # two blocks of 512: the transfer ends with an empty third


def request(opcode: int, name: str, **options: int) -> bytes:
    fields = [name, "octet", *(s for k, v in options.items() for s in (k, str(v)))]
    return struct.pack("!H", opcode) + b"".join(f.encode() + b"\0" for f in fields)


def first_answer(port: int, packet: bytes) -> tuple[int, int, bytes]:
    """(opcode, block number or error code, the rest) of the listener's answer to `packet`."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(5)
        sock.sendto(packet, ("127.0.0.1", port))
        answer = sock.recv(65536)
    opcode, number = struct.unpack("!HH", answer[:4])
    return opcode, number, answer[4:]


def fetch(port: int, name: str, **options: int) -> tuple[bytes, dict[str, str]]:
    """`name`'s bytes and the options the listener answered, block by block in lockstep; the request is sent again
    each second it gets no answer, five times at most, as firmware does."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(1)
        for _ in range(5):
            sock.sendto(request(RRQ, name, **options), ("127.0.0.1", port))
            with contextlib.suppress(TimeoutError):
                first = sock.recvfrom(65536)
                break
        else:
            raise TimeoutError(f"no answer to {name}")
        sock.settimeout(5)
        answered: dict[str, str] = {}
        block, content, expected = 512, b"", 1
        for _ in range(10_000):  # more blocks than any file here has
            packet, server = first if first else sock.recvfrom(65536)
            first = None
            opcode, number = struct.unpack("!HH", packet[:4])
            if opcode == ERROR:
                raise FileNotFoundError(f"error {number}: {packet[4:-1].decode()}")
            if opcode == OACK:
                words = packet[2:-1].decode().split("\0")
                answered = dict(zip(words[::2], words[1::2], strict=True))
                block = int(answered.get("blksize", block))
                sock.sendto(struct.pack("!HH", ACK, 0), server)
                continue
            assert (opcode, number) == (DATA, expected)
            content += packet[4:]
            sock.sendto(struct.pack("!HH", ACK, number), server)
            if len(packet) - 4 < block:
                return content, answered
            expected += 1
    raise AssertionError("the transfer did not end")


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Callable[[tftp.Files], tftp.Listener]]:
    started: list[tftp.Listener] = []

    def start(files: tftp.Files) -> tftp.Listener:
        listener = tftp.Listener("127.0.0.1", 0, files)
        listener.start()
        started.append(listener)
        return listener

    yield start
    for listener in started:
        listener.stop()


def _files(tmp_path: Path) -> tftp.Files:
    kernel = tmp_path / "vmlinuz"
    kernel.write_bytes(KERNEL)

    def files(name: str, client: str) -> bytes | Path:
        if name == "vmlinuz":
            return kernel
        if name == "config":
            return CONFIG
        if name == "broken":
            raise RuntimeError("a bug in the hook")
        raise tftp.NotFound(f"no such file: {name}")

    return files


def test_serves_files_and_bytes_with_the_block_size_and_size_asked(serve, tmp_path: Path) -> None:
    port = serve(_files(tmp_path)).port
    content, answered = fetch(port, "vmlinuz", blksize=1468, tsize=0)
    assert content == KERNEL and answered == {"blksize": "1468", "tsize": str(len(KERNEL))}
    assert fetch(port, "config") == (CONFIG, {}), "no options: 512-byte blocks, then the empty one"


def test_unknown_names_are_not_found_and_writes_are_refused(
    serve, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="kiln.server")
    listener = serve(_files(tmp_path))
    assert first_answer(listener.port, request(RRQ, "kiln/grub/nothing"))[:2] == (ERROR, 1)
    assert "tftp kiln/grub/nothing from 127.0.0.1: not found (no such file: kiln/grub/nothing)" in caplog.text
    assert first_answer(listener.port, request(RRQ, "broken"))[:2] == (ERROR, 1), "a failing hook: not found"
    assert "tftp broken from 127.0.0.1 failed" in caplog.text and "a bug in the hook" in caplog.text
    assert first_answer(listener.port, request(WRQ, "vmlinuz"))[:2] == (ERROR, 2), "read-only: access violation"
    assert first_answer(listener.port, request(WRQ, "new-file"))[:2] == (ERROR, 2)
    # a name out of the root never reaches the hook: tftpy answers it as an illegal operation
    assert first_answer(listener.port, request(RRQ, "../../etc/passwd"))[:2] == (ERROR, 4)
    assert list(Path(listener._root.name).iterdir()) == [], "nothing was written"
    assert fetch(listener.port, "vmlinuz")[0] == KERNEL, "still serving"


MALFORMED = (
    request(RRQ, "vmlinuz") + b"blksize\0many\0",  # a block size that is no number
    struct.pack("!H", RRQ) + b"\xe9\0octet\0",  # a name that is not ASCII
    request(RRQ, "vmlinuz") + b"blksize\0\xff\0",  # an option value that is not ASCII
    struct.pack("!H", RRQ) + b"vmlinuz",  # no terminating zero, no mode
    b"\0",  # shorter than an opcode
    struct.pack("!H", 9) + b"x\0",  # no such opcode
)


def test_a_malformed_request_ends_itself_not_the_transfers_under_way(
    serve, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Each packet alone, with a transfer half done: that transfer goes on to its end, the listener never restarts
    (tftpy 0.8.7's loop would have ended at the first three, dropping every transfer under way)."""
    listener = serve(_files(tmp_path))
    with (
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client,
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as bad,
    ):
        client.settimeout(5)
        client.sendto(request(RRQ, "vmlinuz"), ("127.0.0.1", listener.port))
        content, block = b"", 1
        for packet in MALFORMED:
            data, server = client.recvfrom(65536)
            assert struct.unpack("!HH", data[:4]) == (DATA, block)
            content += data[4:]
            bad.sendto(packet, ("127.0.0.1", listener.port))
            time.sleep(0.2)  # tftpy's loop reads it before the ACK below
            client.sendto(struct.pack("!HH", ACK, block), server)
            block += 1
        for _ in range(1000):
            data, server = client.recvfrom(65536)
            content += data[4:]
            client.sendto(struct.pack("!HH", ACK, struct.unpack("!H", data[2:4])[0]), server)
            if len(data) - 4 < 512:
                break
    assert content == KERNEL, "the transfer under way went on through every malformed packet"
    assert "tftpy's loop failed" not in caplog.text, "the listener never had to listen again"
    assert fetch(listener.port, "config")[0] == CONFIG


def test_a_late_ack_is_one_timeout_while_other_transfers_run(serve, tmp_path: Path) -> None:
    """A client silent for one TIMEOUT gets its block again and goes on, while another transfer keeps tftpy's loop
    turning (0.8.7 counted a timeout at each turn: RETRIES turns in milliseconds, and the transfer was dropped)."""
    listener = serve(_files(tmp_path))
    busy = threading.Event()

    def other_transfers() -> None:
        while not busy.is_set():
            fetch(listener.port, "vmlinuz", blksize=512)

    background = threading.Thread(target=other_transfers, daemon=True)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as slow:
        slow.settimeout(10)
        slow.sendto(request(RRQ, "config"), ("127.0.0.1", listener.port))
        first, server = slow.recvfrom(65536)
        background.start()
        time.sleep(tftp.TIMEOUT + 1.5)  # late: one timeout, one resend of block 1
        again, _ = slow.recvfrom(65536)
        assert again == first, "block 1 resent once the client was silent for TIMEOUT"
        slow.sendto(struct.pack("!HH", ACK, 1), server)
        second, _ = slow.recvfrom(65536)
        busy.set()
        background.join(30)
    assert struct.unpack("!HH", second[:4]) == (DATA, 2), "the transfer went on"


def test_stop_closes_the_sockets_and_ends_the_thread(tmp_path: Path) -> None:
    descriptors = len(list(Path("/proc/self/fd").iterdir()))
    listener = tftp.Listener("127.0.0.1", 0, _files(tmp_path))
    port = listener.start()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as hanging:  # a transfer that never ACKs its first block
        hanging.sendto(request(RRQ, "vmlinuz"), ("127.0.0.1", port))
        hanging.settimeout(5)
        assert hanging.recv(65536)[:4] == struct.pack("!HH", DATA, 1)
        started = time.monotonic()
        listener.stop()
    assert time.monotonic() - started < 0.5, "woken, not waiting out tftpy's one-second timeout"
    assert not [t for t in threading.enumerate() if t.name == "kiln-tftp"]
    assert not Path(listener._root.name).exists()
    assert len(list(Path("/proc/self/fd").iterdir())) == descriptors, (
        "the listener's and the transfer's sockets, the file"
    )
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as again:
        again.bind(("127.0.0.1", port))  # the port is free again
    listener.stop()  # twice is fine


def test_start_says_when_the_address_is_taken_or_ipv6(tmp_path: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("127.0.0.1", 0))
        listener = tftp.Listener("127.0.0.1", taken.getsockname()[1], _files(tmp_path))
        with pytest.raises(OSError, match="in use"):
            listener.start()
    assert not [t for t in threading.enumerate() if t.name == "kiln-tftp"]
    with pytest.raises(ValueError, match="IPv4 only"):
        tftp.Listener("::1", 0, _files(tmp_path))


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    """An event loop running on a thread of its own, as kiln serve's runs beside the TFTP thread."""
    running = asyncio.new_event_loop()
    thread = threading.Thread(target=running.run_forever, daemon=True)
    thread.start()
    yield running
    running.call_soon_threadsafe(running.stop)
    thread.join(5)
    running.close()


def test_tftp_files_name_what_is_served(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, loop) -> None:
    shim, grubnet = tmp_path / "shim.signed", tmp_path / "grubnet.signed"
    shim.write_bytes(b"shim")
    grubnet.write_bytes(b"grub")
    monkeypatch.setattr(
        netboot, "SIGNED", {"shimx64.efi": (shim, "shim-signed"), "grubx64.efi": (grubnet, "grub-efi-amd64-signed")}
    )
    asked: list[tuple[str, str, bool]] = []

    async def grub_config(provisioner: object, mac: str, client: str) -> str:
        asked.append((mac, client, asyncio.get_running_loop() is loop))
        if mac == "slow":
            await asyncio.sleep(60)
        if mac == "zz":
            raise BadInput("not a MAC address: 'zz'")
        return f"config of {mac}\n"

    monkeypatch.setattr(netboot, "grub_config", grub_config)
    monkeypatch.setattr(netboot, "CONFIG_WITHIN", 0.5)
    files = netboot.TftpFiles(object(), tmp_path / "images", loop)  # type: ignore[arg-type]
    assert files("/shimx64.efi", "10.0.0.5") == shim and files("./grubx64.efi", "10.0.0.5") == grubnet
    assert files("grub/grub.cfg", "10.0.0.5").decode() == grub.stub()
    assert files("kiln/grub/52:54:00:10:00:21", "10.0.0.5") == b"config of 52:54:00:10:00:21\n"
    assert asked == [("52:54:00:10:00:21", "10.0.0.5", True)], "decided on the server's loop"
    with pytest.raises(tftp.NotFound, match="not a MAC"):
        files("kiln/grub/zz", "10.0.0.5")
    with pytest.raises(tftp.NotFound, match="did not decide within 0.5 s"):
        files("kiln/grub/slow", "10.0.0.5")
    with pytest.raises(tftp.NotFound, match="not built yet: run ./inv build-all"):
        files("images/installer/vmlinuz", "10.0.0.5")
    (tmp_path / "images" / "installer").mkdir(parents=True)
    (tmp_path / "images" / "installer" / "vmlinuz").write_bytes(KERNEL)
    assert files("\\images\\installer\\vmlinuz", "10.0.0.5") == tmp_path / "images" / "installer" / "vmlinuz"
    for name in ("images/web/web.raw", "images/installer/../web/web.raw", "shimx64.efi.signed", ""):
        with pytest.raises(tftp.NotFound):
            files(name, "10.0.0.5")
