"""kiln serve's TFTP listener: tftpy's server (RFC 1350 reads with the blksize and tsize options, what UEFI
firmware's PXE and GRUB's `tftp` fetch files with) on a thread of its own beside the asyncio servers. Which name
holds what is the caller's: `files(name, client)` returns the file's bytes or its path, or raises NotFound;
kiln/server/netboot.py is kiln's.

tftpy serves a directory and asks its dyn_file_func hook for the names that directory lacks; the directory here is
an empty one of the listener's own, so every name goes to `files`. Writes are refused (an access violation). What
tftpy 0.8.7 needs and does not say, done here for it:

- the file object it gets must have a name and a descriptor: it flock-unlocks it when the transfer ends, and a
  BytesIO there ends its whole loop. Bytes are handed over in an unnamed temporary file.
- an exception out of the hook, or a malformed request (a `blksize` that is not a number, a name or option that
  is not ASCII), also ends its loop, and with it every transfer under way: the hook never raises, and each session
  is a `_Session`, which turns any error of a request into the TftpException tftpy ends that session alone for. A
  loop that ends all the same (a fault not seen yet) is logged and listens again on the same port.
- a session whose client was silent for TIMEOUT counts a timeout at each turn of tftpy's loop, so with other
  transfers under way a late ACK lost the transfer within milliseconds: `_Session` counts one per TIMEOUT.
- it logs each packet at INFO, and a client's expected moves (a name it probes and lacks, an abort after the size)
  as errors: its logger is kept to CRITICAL, and this module logs one line per request.

tftpy's sockets are IPv4 only, and one thread serves every transfer (the hook blocks it while it decides). The
session class is set on tftpy's server module at import: tftpy has no parameter for it.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import socket
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import tftpy
from tftpy.TftpContexts import TftpContextServer
from tftpy.TftpShared import TftpException, TftpTimeout

LOG = logging.getLogger("kiln.server")
# A block is resent when its ACK has not come within TIMEOUT (also how long tftpy's loop waits for a packet); a
# transfer is dropped at its RETRIES-th timeout in a row (_Session counts one per TIMEOUT): a client silent for
# 15 s. TIMEOUT is long enough for an emulated machine's slow ACK.
TIMEOUT = 3.0
RETRIES = 5
BOUND_WITHIN = 5.0  # seconds for the listener to bind its socket
STOPPED_WITHIN = 10.0  # seconds for tftpy's loop to end (a hook may be deciding: netboot waits 5 s at most)


class _Session(TftpContextServer):
    """tftpy 0.8.7's server session with two faults mended (module docstring): a request it cannot parse ends this
    session, not the server's loop; a silent client's timeouts are counted once per TIMEOUT."""

    def start(self, buffer: bytes) -> None:
        try:
            super().start(buffer)
        except TftpException:
            raise
        except Exception as e:  # UnicodeDecodeError, ValueError, struct.error: a malformed packet
            raise TftpException(f"malformed request: {type(e).__name__}: {e}") from e

    def cycle(self) -> None:
        try:
            super().cycle()
        except TftpException:
            raise
        except Exception as e:
            raise TftpException(f"malformed packet: {type(e).__name__}: {e}") from e

    def checkTimeout(self, now: float) -> None:  # tftpy's name
        if self.timeout_expectACK or now - self.last_update > self.timeout:  # type: ignore[has-type]
            # counted now, resent by tftpy's loop; the next one only after another TIMEOUT of silence
            self.timeout_expectACK = False
            self.last_update = now
            raise TftpTimeout("Timeout waiting for traffic")


# what tftpy's loop makes each session with (its module, which the package's TftpServer class shadows)
importlib.import_module("tftpy.TftpServer").TftpContextServer = _Session  # type: ignore[attr-defined]


class NotFound(Exception):
    """No such file. The message goes to the server's log; the client gets tftpy's "File not found"."""


Files = Callable[[str, str], "bytes | Path"]  # (name, client address) -> the content or its file; raises NotFound


class Listener:
    """TFTP on `host`:`port` (port 0: a free one) answered by `files`, from start() until stop()."""

    def __init__(self, host: str, port: int, files: Files) -> None:
        if ":" in host:
            raise ValueError(f"TFTP listens on IPv4 only (tftpy), not {host}")
        self.host, self.port, self.files = host, port, files
        self._root = tempfile.TemporaryDirectory(prefix="kiln-tftp-")  # stays empty: every name goes to _open
        self._server = tftpy.TftpServer(self._root.name, dyn_file_func=self._open, upload_open=self._refuse)
        self._stopping = threading.Event()
        self._error: OSError | None = None
        self._thread = threading.Thread(target=self._run, name="kiln-tftp", daemon=True)

    def start(self) -> int:
        """Bind and serve; returns the port. Raises OSError when the address cannot be bound."""
        logging.getLogger("tftpy").setLevel(logging.CRITICAL)
        self._thread.start()
        deadline = time.monotonic() + BOUND_WITHIN
        while not self._server.is_running.wait(0.05):
            if not self._thread.is_alive() or time.monotonic() > deadline:
                error = self._error or OSError(f"TFTP did not listen within {BOUND_WITHIN:.0f} s")
                self.stop()
                raise error
        self.port = self._server.listenport
        return self.port

    def stop(self) -> None:
        """Stop serving and wait for tftpy's loop to close its socket and every transfer's; remove the empty
        directory. Safe to call more than once, and before start()."""
        self._stopping.set()
        self._server.stop(now=True)
        if self._thread.ident is not None:
            self._wake()
            self._thread.join(STOPPED_WITHIN)
            if self._thread.is_alive():
                LOG.warning("tftp: the listener did not stop within %.0f s", STOPPED_WITHIN)
        self._root.cleanup()

    def _wake(self) -> None:
        """One byte to the listening socket: tftpy's loop sees stop() now, not at its next TIMEOUT (the byte is no
        request: tftpy drops it)."""
        if not self._server.is_running.is_set():
            return
        target = "127.0.0.1" if self.host in ("", "0.0.0.0") else self.host
        with contextlib.suppress(OSError), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.sendto(b"\0", (target, self.port))

    def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                self._server.listen(self.host, self.port, timeout=TIMEOUT, retries=RETRIES)
            except OSError as e:
                if not self._server.is_running.is_set():  # never bound: start() raises it
                    self._error = e
                    return
                self._restart(e)
            except Exception as e:
                self._restart(e)

    def _restart(self, error: Exception) -> None:
        """Close what tftpy's loop left open when `error` ended it; _run then listens again on the same port."""
        LOG.error(
            "tftp: tftpy's loop failed (%s: %s); listening again on port %d", type(error).__name__, error, self.port
        )
        server = self._server
        self.port = server.listenport or self.port
        if server.sock is not None:
            server.sock.close()
        for transfer in list(server.sessions.values()):
            with contextlib.suppress(Exception):
                transfer.end()
        server.sessions = {}
        self._stopping.wait(0.5)  # a loop failing again at once (its port taken since) logs twice a second

    def _open(self, name: str, raddress: str, rport: int) -> IO[bytes] | None:
        """tftpy's dyn_file_func: `name` for the client at `raddress`, or None (tftpy answers "File not found")."""
        try:
            found = self.files(name, raddress)
            if isinstance(found, Path):
                handle: IO[bytes] = found.open("rb")
                size = os.fstat(handle.fileno()).st_size
            else:
                handle = tempfile.TemporaryFile()  # tftpy closes it when the transfer ends
                handle.write(found)
                handle.seek(0)
                size = len(found)
        except NotFound as e:
            LOG.info("tftp %s from %s: not found (%s)", name, raddress, e)
            return None
        except Exception:
            LOG.exception("tftp %s from %s failed", name, raddress)
            return None
        LOG.info("tftp %s to %s: %d bytes", name, raddress, size)
        return handle

    def _refuse(self, path: str, context: Any) -> None:
        """tftpy's upload_open: every write is refused (tftpy answers "Access violation")."""
        LOG.info("tftp write of %s from %s: refused (read-only)", os.path.relpath(path, self._root.name), context.host)
