"""How the operator's machine runs a command on a host: over SSH as the cluster's admin account (roles.yaml
access.admin_user), the same code for the lab (its key, known_hosts, inside its network namespace) and a real fleet
(the operator's own SSH setup). Swappable: anything with `run(host, argv, timeout)` is a Transport (tests run the
agent on this machine with Local).

    transport.run(host, ["sudo", "-n", "firstboot", "haproxy", "show", "--json"], timeout=60) -> Ran
"""

from __future__ import annotations

import shlex
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from kiln.model import Host

CONNECT_TIMEOUT = 20  # seconds for SSH to connect


@dataclass(frozen=True)
class Ran:
    argv: list[str]
    code: int  # the remote command's exit code (255: ssh itself failed)
    stdout: str
    stderr: str

    def tail(self, lines: int = 3) -> str:
        text = (self.stderr or self.stdout).strip().splitlines()
        return " | ".join(text[-lines:]) or f"exit {self.code}, no output"


class Transport(Protocol):
    def run(self, host: Host, argv: Sequence[str], timeout: float) -> Ran:
        """Run ARGV on HOST, at most TIMEOUT seconds; a Ran whatever the exit code. TimeoutError naming the host."""
        ...


def _run(host: Host, argv: list[str], shown: Sequence[str], timeout: float) -> Ran:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise TimeoutError(f"{host.name}: `{shlex.join(shown)}` did not finish within {timeout:g} s") from None
    return Ran(list(shown), done.returncode, done.stdout, done.stderr)


@dataclass(frozen=True)
class Ssh:
    """ssh USER@ADDRESS COMMAND; `options` come first (the lab's key and known_hosts; empty: ~/.ssh/config)."""

    user: str
    options: tuple[str, ...] = ()

    def argv(self, host: Host, argv: Sequence[str]) -> list[str]:
        batch = ("-o", "BatchMode=yes", "-o", f"ConnectTimeout={CONNECT_TIMEOUT}")
        return ["ssh", *batch, *self.options, f"{self.user}@{host.ip}", shlex.join(argv)]

    def run(self, host: Host, argv: Sequence[str], timeout: float) -> Ran:
        return _run(host, self.argv(host, argv), argv, timeout)


@dataclass(frozen=True)
class Local:
    """ARGV on this machine (tests: the agent against a local haproxy); `per_host` adds arguments for a host."""

    per_host: Mapping[str, Sequence[str]]
    prefix: tuple[str, ...] = ()

    def run(self, host: Host, argv: Sequence[str], timeout: float) -> Ran:
        return _run(host, [*self.prefix, *argv, *self.per_host.get(host.name, ())], argv, timeout)
