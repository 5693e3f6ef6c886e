"""SSH to a lab host with the lab's key, as the cluster's admin account (roles.yaml access.admin_user; the lab's
server adds its key to the operators' keys), from the lab's address; host keys learned on first contact.

Root cannot log in. Every command the lab runs on a host goes through sudo, here and only here: `sudo -n` (never
a prompt: the account has no password, sudoers gives it NOPASSWD), so sudo logs it like an operator's. `as_root`
wraps one command; `RootShell` keeps one `sudo -n sh` per host for many (what an operator's `sudo -s` is), since
sudo's own start costs 1.2-2 s on an emulated host (PAM, NSS, audit, its logs) and lab verify runs hundreds.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import select
import shlex
import subprocess
import time
from pathlib import Path

from kiln.fsutil import write_atomic
from kiln.lab.layout import Lab
from kiln.run import run


def as_root(command: str) -> str:
    """The remote command line that runs the shell command `command` as root through sudo, never prompting."""
    return f"sudo -n sh -c {shlex.quote(command)}"


def options(lab: Lab) -> list[str]:
    return [
        "-i",
        str(lab.ssh_key),
        "-o",
        "IdentitiesOnly=yes",
        "-o",
        "BatchMode=yes",
        "-o",
        "StrictHostKeyChecking=accept-new",
        "-o",
        f"UserKnownHostsFile={lab.known_hosts}",
        "-o",
        "ConnectTimeout=10",
        "-o",
        "LogLevel=ERROR",
    ]


def ssh_argv(lab: Lab, address: str) -> list[str]:
    """ssh to `address` as the admin account; a command after it runs as that account (`sudo ...` for root)."""
    return ["ssh", *options(lab), f"{lab.admin_user}@{address}"]


def config_path(lab: Lab) -> Path:
    """Where config_file() writes the lab's ssh_config."""
    return lab.ssh_key.parent / "config"


def config_file(lab: Lab) -> str:
    """An ssh_config naming every host (testinfra's ssh backend reads it): `ssh -F FILE lb1`."""
    path = config_path(lab)
    blocks = []
    for h in lab.hosts:
        blocks.append(
            f"Host {h.name}\n    HostName {h.ip}\n    User {lab.admin_user}\n    IdentityFile {lab.ssh_key}\n"
            f"    IdentitiesOnly yes\n    BatchMode yes\n    StrictHostKeyChecking accept-new\n"
            f"    UserKnownHostsFile {lab.known_hosts}\n    ConnectTimeout 10\n    LogLevel ERROR\n"
            # an emulated guest starved of CPU for 15 s is slow, not gone: the shared connection every test
            # command rides on (ControlMaster) is dropped only after a minute without an answer
            "    ServerAliveInterval 10\n    ServerAliveCountMax 6\n"
            f"    ControlMaster auto\n    ControlPath {lab.ssh_key.parent}/cm-%h\n    ControlPersist 120\n"
        )
    write_atomic(path, "\n".join(blocks).encode(), mode=0o600)
    return str(path)


def forget(lab: Lab, address: str) -> None:
    """Drop a host's key from the lab's known_hosts: a re-provisioned host makes new host keys."""
    if lab.known_hosts.exists():
        run(["ssh-keygen", "-R", address, "-f", str(lab.known_hosts)], check=False)


class ShellError(Exception):
    """A RootShell that did not answer: it ended (the host went away, ssh failed) or a command ran out of time."""


class RootShell:
    """One root shell (`sudo -n sh`) on a host over `argv` (an ssh command line up to the host), kept open for many
    commands. Each command runs in its own `sh -c` with stdin from /dev/null, so it cannot read the shell's own
    input. After it, the shell writes a newline, a marker only this shell knows and the exit status to stdout, and
    the newline and marker to stderr: what came before on each is the command's output, byte for byte (only
    builtins frame it: every process started costs about 0.2 s on an emulated host). A command not done within
    `timeout` seconds ends the shell (ShellError); the next command starts a new one, as it does after the shell
    ended between commands."""

    def __init__(self, argv: list[str], *, timeout: float = 120.0) -> None:
        self.argv = [*argv, as_root("exec sh")]
        self.timeout = timeout
        self._process: subprocess.Popen[bytes] | None = None
        self._marker = b""
        self._buffers: dict[int, bytes] = {}

    def run(self, command: str) -> tuple[int, bytes, bytes]:
        """`command` (a shell command line) as root: (exit status, stdout, stderr). ShellError when the shell ends
        before it answers or `timeout` passes."""
        process = self._started()
        assert process.stdin is not None and process.stdout is not None and process.stderr is not None
        marker = self._marker.decode()
        script = (
            f"sh -c {shlex.quote(command)} </dev/null; r=$?\n"
            f"printf '\\n%s %d\\n' {marker} \"$r\"; printf '\\n%s\\n' {marker} >&2\n"
        )
        try:
            process.stdin.write(script.encode())
            process.stdin.flush()
        except BrokenPipeError as e:
            raise self._ended() from e
        deadline = time.monotonic() + self.timeout
        out, status = self._read_frame(process.stdout.fileno(), deadline)
        err, _ = self._read_frame(process.stderr.fileno(), deadline)
        try:
            return int(status), out, err
        except ValueError as e:
            self.close()
            raise ShellError(f"the root shell framed {status[:50]!r}, not an exit status") from e

    def close(self) -> None:
        """End the shell (a no-op when none runs)."""
        if self._process is not None:
            if self._process.poll() is None:
                self._process.kill()
            self._process.wait()
            for stream in (self._process.stdin, self._process.stdout, self._process.stderr):
                if stream is not None:
                    with contextlib.suppress(OSError):  # stdin's last bytes to a shell that is gone
                        stream.close()
            self._process = None
        self._buffers = {}

    def _started(self) -> subprocess.Popen[bytes]:
        if self._process is not None and self._process.poll() is not None:
            self.close()  # ended between commands (ssh dropped): start afresh
        if self._process is None:
            self._marker = f"kiln-{secrets.token_hex(8)}".encode()
            self._process = subprocess.Popen(
                self.argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE
            )
            assert self._process.stdout is not None and self._process.stderr is not None
            self._buffers = {self._process.stdout.fileno(): b"", self._process.stderr.fileno(): b""}
        return self._process

    def _ended(self) -> ShellError:
        said = b""
        if self._process is not None and self._process.stderr is not None:
            fd = self._process.stderr.fileno()
            said = self._buffers.get(fd, b"")
            while select.select([fd], [], [], 1.0)[0] and (chunk := os.read(fd, 65536)):  # what ssh or sudo said
                said += chunk
                if len(said) > 65536:
                    break
        self.close()
        detail = said.decode(errors="replace").strip()[-300:]
        why = "the root shell ended (the host went away or ssh or sudo failed)"
        return ShellError(f"{why}: {detail}" if detail else why)

    def _read_frame(self, fd: int, deadline: float) -> tuple[bytes, bytes]:
        """What came on `fd` before the next newline + marker, and the rest of the marker's line."""
        tag = b"\n" + self._marker
        while True:
            buffer = self._buffers[fd]
            at = buffer.find(tag)
            if at >= 0:
                end = buffer.find(b"\n", at + len(tag))
                if end >= 0:
                    self._buffers[fd] = buffer[end + 1 :]
                    return buffer[:at], buffer[at + len(tag) : end].strip()
            self._fill(deadline)

    def _fill(self, deadline: float) -> None:
        """Read what either pipe has (both, so neither fills up and blocks the shell) by `deadline`."""
        left = deadline - time.monotonic()
        ready = select.select(list(self._buffers), [], [], left)[0] if left > 0 else []
        if not ready:
            self.close()
            raise ShellError(f"no answer within {self.timeout:.0f} s")
        for fd in ready:
            chunk = os.read(fd, 65536)
            if not chunk:
                raise self._ended()
            self._buffers[fd] += chunk
