"""A read-only TFTP server (RFC 1350, with the blksize, tsize and timeout options of RFC 2347-2349) on asyncio:
what UEFI firmware's PXE and GRUB's `tftp` fetch files with. Which name holds what is the caller's: `files(name,
client)` returns the bytes or raises NotFound; kiln/server/netboot.py is kiln's.

Each read runs on a socket of its own (the transfer ID), one block in flight (no windowsize: clients that ask are
answered without it, as the RFCs allow), each block resent up to RETRIES times when its ACK does not come within
the timeout, then the transfer is dropped. Writes are refused. At most MAX_TRANSFERS run at once; a request over
that gets an error, and the client asks again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import struct
import time
from collections.abc import Awaitable, Callable

LOG = logging.getLogger("kiln.server")

RRQ, WRQ, DATA, ACK, ERROR, OACK = 1, 2, 3, 4, 5, 6
NOT_FOUND, ACCESS_VIOLATION, ILLEGAL, UNKNOWN_TID, BAD_OPTION = 1, 2, 4, 5, 8
DEFAULT_BLOCK = 512
MAX_BLOCK = 1468  # an Ethernet frame's worth: 1500 - IP 20 - UDP 8 - TFTP 4
DEFAULT_TIMEOUT = 1.0
RETRIES = 5
MAX_TRANSFERS = 64


class NotFound(Exception):
    """No such file; the message goes to the client in the ERROR packet."""


Files = Callable[[str, str], Awaitable[bytes]]  # (name, client address) -> the file's bytes; raises NotFound


def parse_request(packet: bytes) -> tuple[int, str, str, dict[str, str]]:
    """(opcode, file name, mode, options with lower-case names) of an RRQ or WRQ packet. Raises ValueError when
    the packet is not one."""
    if len(packet) < 4:
        raise ValueError("short packet")
    opcode = struct.unpack("!H", packet[:2])[0]
    if opcode not in (RRQ, WRQ):
        raise ValueError(f"opcode {opcode} is not a request")
    fields = packet[2:].split(b"\0")
    if len(fields) < 3 or fields[-1] != b"":
        raise ValueError("malformed request")
    fields = fields[:-1]
    name, mode = fields[0].decode("utf-8", "replace"), fields[1].decode("ascii", "replace").lower()
    rest = [f.decode("ascii", "replace") for f in fields[2:]]
    options = {rest[i].lower(): rest[i + 1] for i in range(0, len(rest) - 1, 2)}
    return opcode, name, mode, options


def error_packet(code: int, message: str) -> bytes:
    return struct.pack("!HH", ERROR, code) + message.encode("utf-8", "replace")[:400] + b"\0"


def negotiate(options: dict[str, str], size: int) -> tuple[int, float, dict[str, str]]:
    """(block size, timeout, the options answered in an OACK) for a client's `options` and a file of `size` bytes;
    options this server does not know or values out of range are left out of the answer (the client then uses its
    default), as RFC 2347 says."""
    block, timeout, answered = DEFAULT_BLOCK, DEFAULT_TIMEOUT, {}
    with contextlib.suppress(ValueError):
        if "blksize" in options and int(options["blksize"]) >= 8:
            block = min(int(options["blksize"]), MAX_BLOCK)
            answered["blksize"] = str(block)
    with contextlib.suppress(ValueError):
        if "timeout" in options and 1 <= int(options["timeout"]) <= 255:
            timeout = float(int(options["timeout"]))
            answered["timeout"] = options["timeout"]
    if "tsize" in options:
        answered["tsize"] = str(size)
    return block, timeout, answered


class _Transfer(asyncio.DatagramProtocol):
    """The socket of one transfer: hands the client's packets to the coroutine sending the file."""

    def __init__(self, client: tuple[str, int]) -> None:
        self.client = client
        self.packets: asyncio.Queue[bytes] = asyncio.Queue()
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        if addr[:2] != self.client[:2]:
            assert self.transport is not None
            self.transport.sendto(error_packet(UNKNOWN_TID, "unknown transfer ID"), addr)
            return
        self.packets.put_nowait(data)


class TftpServer(asyncio.DatagramProtocol):
    """The listener (port 69 for firmware, which knows no other): each read request starts a transfer task."""

    def __init__(self, files: Files, local_host: str) -> None:
        """`local_host`: the address transfers' own sockets bind to (the listener's)."""
        self.files = files
        self.local_host = local_host
        self.transfers: set[asyncio.Task[None]] = set()
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        assert self.transport is not None
        try:
            opcode, name, mode, options = parse_request(data)
        except ValueError as e:
            self.transport.sendto(error_packet(ILLEGAL, str(e)), addr)
            return
        if opcode == WRQ:
            self.transport.sendto(error_packet(ACCESS_VIOLATION, "this server is read-only"), addr)
            return
        if len(self.transfers) >= MAX_TRANSFERS:
            self.transport.sendto(error_packet(0, "too many transfers, try again"), addr)
            return
        task = asyncio.get_running_loop().create_task(self._send(name, options, addr))
        self.transfers.add(task)
        task.add_done_callback(self.transfers.discard)

    async def _send(self, name: str, options: dict[str, str], client: tuple[str, int]) -> None:
        loop = asyncio.get_running_loop()
        family = socket.AF_INET6 if ":" in self.local_host else socket.AF_INET
        transport, link = await loop.create_datagram_endpoint(
            lambda: _Transfer(client), local_addr=(self.local_host, 0), family=family
        )
        started = time.monotonic()
        try:
            try:
                content = await self.files(name, client[0])
            except NotFound as e:
                transport.sendto(error_packet(NOT_FOUND, str(e) or "file not found"), client)
                LOG.info("tftp %s from %s: not found (%s)", name, client[0], e)
                return
            block, timeout, answered = negotiate(options, len(content))
            if answered:
                oack = struct.pack("!H", OACK) + b"".join(f"{k}\0{v}\0".encode() for k, v in answered.items())
                if not await _exchange(transport, link, oack, 0, timeout):
                    return  # a size query (tsize, then an ERROR) ends here, as does a client that went away
            number = 1
            for offset in range(0, len(content) + 1, block):
                chunk = content[offset : offset + block]
                packet = struct.pack("!HH", DATA, number & 0xFFFF) + chunk
                if not await _exchange(transport, link, packet, number & 0xFFFF, timeout):
                    LOG.info("tftp %s to %s: stopped at block %d", name, client[0], number)
                    return
                number += 1
            LOG.info("tftp %s to %s: %d bytes in %.1fs", name, client[0], len(content), time.monotonic() - started)
        except Exception:
            LOG.exception("tftp %s to %s failed", name, client[0])
            transport.sendto(error_packet(0, "server error"), client)
        finally:
            transport.close()


async def _exchange(
    transport: asyncio.DatagramTransport, link: _Transfer, packet: bytes, expected: int, timeout: float
) -> bool:
    """Send `packet` until the client ACKs block `expected` (True), or errors out or stays silent (False)."""
    for _ in range(RETRIES + 1):
        transport.sendto(packet, link.client)
        deadline = asyncio.get_running_loop().time() + timeout
        while (left := deadline - asyncio.get_running_loop().time()) > 0:
            try:
                reply = await asyncio.wait_for(link.packets.get(), left)
            except TimeoutError:
                break
            if len(reply) < 4:
                continue
            opcode, number = struct.unpack("!HH", reply[:4])
            if opcode == ERROR:
                return False
            if opcode == ACK and number == expected:
                return True
            # an ACK of an earlier block (a duplicate): wait on, never resend for it (Sorcerer's Apprentice)
    return False


async def listen(sock: socket.socket, files: Files) -> asyncio.DatagramTransport:
    """Serve TFTP on the bound UDP socket `sock` until the returned transport is closed."""
    host = sock.getsockname()[0]
    transport, _ = await asyncio.get_running_loop().create_datagram_endpoint(lambda: TftpServer(files, host), sock=sock)
    return transport
