"""A small cluster in network namespaces (prefix kiln-agt-): a switch namespace with a bridge at the gateway
address, one namespace per host with its cluster NIC named kiln0 and its address from roles.yaml.

Every namespace and process made here is removed by `close()`, also when a test fails.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

PREFIX = "kiln-agt-"
SWITCH = f"{PREFIX}sw"


def sh(*argv: str, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout, check=False)
    if check and result.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} exited {result.returncode}: {result.stdout}{result.stderr}")
    return result


@dataclass
class Lab:
    base: Path
    gateway: str
    prefix: int
    namespaces: list[str] = field(default_factory=list)
    processes: list[tuple[str, subprocess.Popen[bytes]]] = field(default_factory=list)
    names: str = PREFIX  # each test module its own, so two xdist workers never share a namespace

    def ns(self, host: str) -> str:
        return f"{self.names}{host}"

    @property
    def switch(self) -> str:
        return f"{self.names}sw"

    def open(self) -> None:
        self._add_ns(self.switch)
        sh("ip", "-n", self.switch, "link", "add", "br0", "type", "bridge")
        sh("ip", "-n", self.switch, "addr", "add", f"{self.gateway}/{self.prefix}", "dev", "br0")
        sh("ip", "-n", self.switch, "link", "set", "br0", "up")

    def _add_ns(self, name: str) -> None:
        sh("ip", "netns", "del", name, check=False)  # left over from a killed run
        sh("ip", "netns", "add", name)
        self.namespaces.append(name)
        sh("ip", "-n", name, "link", "set", "lo", "up")

    def host(self, name: str, address: str) -> str:
        ns = self.ns(name)
        self._add_ns(ns)
        port = f"p-{name}"[:15]
        sh("ip", "-n", self.switch, "link", "add", port, "type", "veth", "peer", "name", "kiln0", "netns", ns)
        sh("ip", "-n", self.switch, "link", "set", port, "master", "br0", "up")
        sh("ip", "-n", ns, "addr", "add", f"{address}/{self.prefix}", "dev", "kiln0")
        sh("ip", "-n", ns, "link", "set", "kiln0", "up")
        return ns

    def exec(self, ns: str, *argv: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["ip", "netns", "exec", ns, *argv], capture_output=True, text=True, timeout=timeout, check=False
        )

    def start(self, name: str, ns: str, argv: list[str], env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        log = (self.base / f"{name}.log").open("wb")
        process = subprocess.Popen(
            ["ip", "netns", "exec", ns, *argv],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
            start_new_session=True,
        )
        self.processes.append((name, process))
        return process

    def log(self, name: str) -> str:
        return (self.base / f"{name}.log").read_text(errors="replace")

    def close(self) -> None:
        for _, process in reversed(self.processes):
            if process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + 15
        for _, process in self.processes:
            try:
                process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        for ns in reversed(self.namespaces):
            sh("ip", "netns", "del", ns, check=False)


@contextlib.contextmanager
def lab(base: Path, gateway: str, prefix: int, names: str = PREFIX) -> Iterator[Lab]:
    the_lab = Lab(base, gateway, prefix, names=names)
    try:
        the_lab.open()
        yield the_lab
    finally:
        the_lab.close()


def firstboot(*args: str) -> list[str]:
    return [sys.executable, "-m", "firstboot", *args]


def host_tree(root: Path) -> Path:
    """A tree whose /etc/passwd and /etc/group are this machine's, so owners resolve as on a built image."""
    (root / "etc").mkdir(parents=True, exist_ok=True)
    for name in ("passwd", "group"):
        shutil.copy(f"/etc/{name}", root / "etc" / name)
    return root
