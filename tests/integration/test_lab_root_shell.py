"""kiln.lab.ssh.RootShell on this machine: the same `sudo -n sh` the lab keeps on each host, reached through a
local `sh -c` instead of ssh (the lab test drives it over ssh on every host)."""

from __future__ import annotations

import os

import pytest

from kiln.lab.ssh import RootShell, ShellError

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="sudo -n as root needs no password"),
]


@pytest.fixture()
def shell() -> RootShell:
    s = RootShell(["sh", "-c"], timeout=2)
    yield s
    s.close()


def test_status_and_both_streams_come_back_byte_for_byte(shell: RootShell) -> None:
    assert shell.run("id -u; echo oops >&2; exit 3") == (3, b"0\n", b"oops\n")
    # no trailing newline, a NUL, output that looks like a frame without its marker
    assert shell.run("printf 'a\\0b'; printf '\\nkiln-0 0\\n' >&2") == (0, b"a\x00b", b"\nkiln-0 0\n")
    rc, out, _ = shell.run("head -c 300000 /dev/zero")
    assert rc == 0 and out == b"\0" * 300000


def test_a_command_cannot_read_the_shells_own_input(shell: RootShell) -> None:
    assert shell.run("cat; echo after") == (0, b"after\n", b"")
    assert shell.run("echo still here") == (0, b"still here\n", b"")


def test_a_command_over_its_time_ends_the_shell_and_the_next_starts_a_new_one(shell: RootShell) -> None:
    before = shell.run("echo $PPID")[1]
    with pytest.raises(ShellError, match="no answer within 2 s"):
        shell.run("sleep 30")
    assert shell.run("true")[0] == 0
    assert shell.run("echo $PPID")[1] != before


def test_a_shell_that_cannot_start_says_why() -> None:
    s = RootShell(["sh", "-c", "echo 'sudo: a password is required' >&2; exit 1;"], timeout=5)
    with pytest.raises(ShellError, match="a password is required"):
        s.run("true")
    s.close()
