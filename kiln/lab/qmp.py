"""A minimal client of QEMU's machine protocol (QMP) over the VM's unix socket: JSON commands, bounded waits."""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any


class QmpError(Exception):
    """The socket is missing or silent, or QEMU answered a command with an error."""


class Qmp:
    """One QMP session: `with Qmp(path) as q: q.command("query-status")`. Events that arrive while waiting for an
    answer are kept in `events` (dicts as QEMU sends them)."""

    def __init__(self, path: Path, timeout: float = 5.0) -> None:
        self.path = path
        self.timeout = timeout
        self.events: list[dict[str, Any]] = []
        self._sock: socket.socket | None = None
        self._buffer = b""

    def __enter__(self) -> Qmp:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(str(self.path))
        except OSError as e:
            sock.close()
            raise QmpError(f"{self.path}: {e.strerror or e}") from None
        self._sock = sock
        try:
            self._read()  # the greeting
            self.command("qmp_capabilities")
        except BaseException:  # __exit__ is not called when __enter__ fails: the socket would be left open
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def _read(self) -> dict[str, Any]:
        assert self._sock is not None
        while b"\n" not in self._buffer:
            try:
                chunk = self._sock.recv(65536)
            except OSError as e:  # a timeout among them
                raise QmpError(f"{self.path}: no answer from QEMU ({e})") from None
            if not chunk:
                raise QmpError(f"{self.path}: QEMU closed the connection")
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        return json.loads(line)

    def command(self, name: str, **arguments: Any) -> Any:
        """Run one command; its `return` value, or QmpError with QEMU's description of what went wrong."""
        assert self._sock is not None
        message: dict[str, Any] = {"execute": name}
        if arguments:
            message["arguments"] = arguments
        try:
            self._sock.sendall(json.dumps(message).encode() + b"\n")
        except OSError as e:  # QEMU exiting (quit, a power-off) closes the socket under an open session
            raise QmpError(f"{self.path}: QEMU closed the connection ({e.strerror or e})") from None
        while True:
            reply = self._read()
            if "event" in reply:
                self.events.append(reply)
            elif "error" in reply:
                raise QmpError(f"{name}: {reply['error'].get('desc', reply['error'])}")
            elif "return" in reply:
                return reply["return"]
