"""Real MariaDB servers for the agent's join tests: own datadirs, sockets and loopback ports (13306 on, per worker).

Each server runs the db role's rendered 60-kiln.cnf (binlog, GTID, server_id, read_only on replicas),
with only its address, port and paths moved onto this machine.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from firstboot.steps.join.sql import Server

# each pytest-xdist worker its own 100 ports: free_port() only checks a port before mariadbd binds it, so two
# workers starting servers at once could both pick the same one (seen: setup errors in test_agent_db beside
# test_db_backup)
_WORKER = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw") or 0)
PORTS = range(13306 + 100 * _WORKER, 13406 + 100 * _WORKER)


def free_port() -> int:
    for port in PORTS:
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port in {PORTS.start}-{PORTS.stop - 1}")


def template_datadir(directory: Path) -> Path:
    """A freshly initialised datadir (anonymous users and the test database included), copied for each server."""
    datadir = directory / "template"
    subprocess.run(
        [
            "mariadb-install-db",
            "--no-defaults",
            f"--datadir={datadir}",
            "--auth-root-authentication-method=socket",
            "--user=root",
        ],
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        timeout=120,
    )
    return datadir


@dataclass
class Mariadb:
    name: str
    directory: Path
    port: int
    process: subprocess.Popen[bytes]

    @property
    def socket(self) -> str:
        return str(self.directory / "mysqld.sock")

    def root(self) -> Server:
        return Server(socket=self.socket)

    def stop(self) -> None:
        """Stop the server and remove its datadir (about 100 MB each)."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        shutil.rmtree(self.directory / "data", ignore_errors=True)


def start(
    name: str, base: Path, template: Path, rendered_cnf: str, *, netns: str = "", address: tuple[str, int] | None = None
) -> Mariadb:
    """On loopback with a free port (or at `address`, e.g. 127.0.0.2 and a port other servers share); or, in a
    network namespace, at the rendered address and port unchanged."""
    directory = base / name
    directory.mkdir(parents=True)
    shutil.copytree(template, directory / "data", symlinks=True)
    (directory / "files").mkdir()
    cnf = rendered_cnf
    if netns:
        port = int(re.search(r"(?m)^port = (\d+)$", cnf)[1])
    else:
        ip, port = address or ("127.0.0.1", free_port())
        cnf = re.sub(r"(?m)^bind_address = .*$", f"bind_address = {ip}", cnf)
        cnf = re.sub(r"(?m)^port = .*$", f"port = {port}", cnf)
    cnf = re.sub(r"(?m)^secure_file_priv = .*$", f"secure_file_priv = {directory / 'files'}", cnf)
    cnf += (
        f"user = root\ndatadir = {directory / 'data'}\nsocket = {directory / 'mysqld.sock'}\n"
        f"pid_file = {directory / 'mysqld.pid'}\nlog_error = {directory / 'error.log'}\n"
        "innodb_buffer_pool_size = 32M\nperformance_schema = OFF\n"
    )
    (directory / "my.cnf").write_text(cnf)
    argv = ["mariadbd", f"--defaults-file={directory / 'my.cnf'}"]
    process = subprocess.Popen(
        ["ip", "netns", "exec", netns, *argv] if netns else argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    server = Mariadb(name, directory, port, process)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"mariadbd {name} exited {process.returncode}:\n{(directory / 'error.log').read_text()}")
        if Path(server.socket).exists():
            try:
                server.root().value("SELECT 1")
                return server
            except Exception:
                pass
        time.sleep(0.1)
    server.stop()
    raise RuntimeError(f"mariadbd {name} did not start:\n{(directory / 'error.log').read_text()}")
