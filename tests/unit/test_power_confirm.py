"""Waiting for the new power state: a status poll that finds QEMU mid-exit (its QMP socket closing under the
session, as CI once saw after `off`) is asked again, not a failure."""

from __future__ import annotations

import contextlib
import socket
import threading
from pathlib import Path

import pytest

from kiln.lab.qmp import Qmp, QmpError
from kiln.power import control
from kiln.power.lab import LabVm


def closing_qmp(path: Path, greetings: int) -> threading.Thread:
    """A unix socket that, like QEMU exiting, greets each connection and then closes it unread."""
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen(4)
    server.settimeout(10)

    def serve() -> None:
        with server:
            for _ in range(greetings):
                try:
                    conn, _ = server.accept()
                except OSError:
                    return
                with conn, contextlib.suppress(OSError):  # a probe that only connects is gone before the greeting
                    conn.sendall(b'{"QMP": {"version": {}, "capabilities": []}}\n')
                    conn.shutdown(socket.SHUT_RDWR)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return thread


def test_a_socket_closed_under_a_command_is_a_qmp_error_not_a_broken_pipe(tmp_path: Path) -> None:
    path = tmp_path / "vm.qmp"
    closing_qmp(path, greetings=1)
    with pytest.raises(QmpError):  # "closed the connection", or a reset when the close races the send
        with Qmp(path, timeout=5) as q:
            q.command("query-status")


def test_off_is_confirmed_once_qemu_is_gone_even_if_a_poll_caught_it_exiting(tmp_path: Path) -> None:
    """The first status poll meets the closing socket while something still listens there (its session, then the
    check whether QEMU is gone: Unreachable); by the next poll the socket is gone: off."""
    path = tmp_path / "vm.qmp"
    serving = closing_qmp(path, greetings=2)
    vm = LabVm("web1", path, start=lambda pxe: None)

    def exit_after_first_poll() -> None:
        serving.join(10)
        path.unlink()

    threading.Thread(target=exit_after_first_poll, daemon=True).start()
    control.confirm(vm, "off", timeout=10)
