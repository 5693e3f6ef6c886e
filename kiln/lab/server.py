"""The provisioning server in the lab namespace, on the gateway address, state in state/lab/kiln.db."""

from __future__ import annotations

import sys
import time

from kiln.lab import access, client, procs
from kiln.lab.layout import HTTP_PORT, TFTP_PORT, Lab

NAME = "server"


def argv(lab: Lab) -> list[str]:
    """The server's command line: HTTP, HTTPS and TFTP (the Secure Boot network boot) on the gateway address."""
    command = [
        sys.executable,
        "-m",
        "kiln.lab.serve",
        "--public-key",
        str(lab.ssh_key.with_suffix(".pub")),
        "--listen",
        f"{lab.gateway}:{HTTP_PORT}",
        "--tls-listen",
        f"{lab.gateway}:{lab.tls_port}",
        "--tftp-listen",
        f"{lab.gateway}:{TFTP_PORT}",
        "--database",
        f"sqlite:///{lab.database}",
        "--images",
        str(lab.images),
        "--secrets",
        str(lab.secrets),
    ]
    if lab.roles_file:
        command += ["--roles", str(lab.roles_file)]
    return command


def start(lab: Lab) -> int:
    access.ensure_key(lab.ssh_key)
    return procs.start(NAME, argv(lab), lab.run, lab.logs / "server.log")


def start_db_monitor(lab: Lab) -> int:
    """The failover monitor (kiln.lab.dbmonitor), as production runs it beside the cluster."""
    from kiln.lab import dbmonitor

    argv = [sys.executable, "-m", "kiln.lab.dbmonitor"]
    if lab.roles_file:
        argv += ["--roles", str(lab.roles_file)]
    return procs.start(dbmonitor.NAME, argv, lab.run, lab.logs / f"{dbmonitor.NAME}.log")


def wait_ready(lab: Lab, timeout: float = 60) -> None:
    """Wait for /v1/hosts to answer (the caller is inside the namespace)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if client.try_hosts(lab) is not None:
            return
        if procs.pid_of(NAME, lab.run) is None:
            raise RuntimeError(f"the provisioning server exited; see {lab.logs / 'server.log'}")
        time.sleep(0.5)
    raise RuntimeError(f"the provisioning server did not answer within {timeout:.0f}s; see {lab.logs / 'server.log'}")
