"""A real Alertmanager (Debian's prometheus-alertmanager) on a loopback port, with a config rendered by
kiln.monitoring.config and the files it names beside it, as the mon role will install them."""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx

from kiln.monitoring.config import ALERTS_TOKEN_FILE, CA_FILE
from tests.integration.processes import stop_group

BINARY = "prometheus-alertmanager"


@dataclass
class RunningAlertmanager:
    url: str  # http://127.0.0.1:PORT
    directory: Path  # alertmanager.yml and the files it names
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def amtool(self, *args: str) -> subprocess.CompletedProcess[str]:
        """amtool against this Alertmanager; raises with its output when it fails."""
        done = subprocess.run(
            ["amtool", f"--alertmanager.url={self.url}", *args], capture_output=True, text=True, timeout=30
        )
        assert done.returncode == 0, f"amtool {' '.join(args)} exited {done.returncode}: {done.stderr}{done.stdout}"
        return done

    def set_token(self, token: str) -> None:
        """What the webhook sends as its bearer token (read again at each notification)."""
        path = self.directory / ALERTS_TOKEN_FILE
        path.write_text(token + "\n")
        path.chmod(0o600)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def running_alertmanager(
    directory: Path, config: str, *, ca: Path, token: str, timeout: float = 20
) -> Iterator[RunningAlertmanager]:
    """Alertmanager with `config` (alertmanager.yml's text), the cluster CA and the alert token beside it, listening
    on 127.0.0.1 only (its cluster gossip off: nothing binds another address); stopped on exit."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "alertmanager.yml").write_text(config)
    shutil.copy(ca, directory / CA_FILE)
    port = _free_port()
    am = RunningAlertmanager(f"http://127.0.0.1:{port}", directory, directory / "alertmanager.log")
    am.set_token(token)
    args = [
        BINARY,
        f"--config.file={directory / 'alertmanager.yml'}",
        f"--storage.path={directory / 'data'}",
        f"--web.listen-address=127.0.0.1:{port}",
        "--cluster.listen-address=",
        "--log.level=debug",
    ]
    with am.log.open("wb") as out:
        process = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + timeout
        while True:
            assert process.poll() is None, f"{BINARY} exited {process.returncode}:\n{am.output()}"
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{am.url}/-/ready", timeout=2).status_code == 200:
                    break
            assert time.monotonic() < deadline, f"{BINARY} not ready within {timeout} s:\n{am.output()}"
            time.sleep(0.1)
        yield am
    finally:
        stop_group(process, timeout=10)
