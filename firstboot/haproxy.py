"""HAProxy's runtime API on this load balancer (its admin socket, `stats socket ... level admin`), for rolling
updates: `firstboot haproxy show | drain SERVER | ready SERVER`. The operator runs these over SSH under sudo
(kiln/roll/runtime.py), so the images need no socat.

    servers(sock)                        -> [Server(backend, name, status, sessions)]
    drain(sock, "web_pool", "web1", 30)  -> Drained(seconds, sessions)   state drain, sessions to 0, state maint
    ready(sock, "web_pool", "web1", 30)  -> seconds until HAProxy's checks report it UP

RuntimeError subclasses say what failed, naming the server: NoSuchServer, SocketError, Bound (the bound ran out:
the server is left as it was then: draining, or not yet UP).
"""

from __future__ import annotations

import csv
import io
import socket
import time
from dataclasses import asdict, dataclass

ADMIN_SOCKET = "/run/haproxy/admin.sock"  # kiln/render/templates/haproxy.cfg.j2
BACKEND = "web_pool"
POLL = 0.2  # seconds between two looks at a server's sessions or status


class RuntimeApiError(Exception):
    """A runtime API call failed; the message names the server or the socket."""


class SocketError(RuntimeApiError):
    pass


class NoSuchServer(RuntimeApiError):
    pass


class Bound(RuntimeApiError):
    """The wait ran out; the server stays as it is (draining, or not UP yet)."""


@dataclass(frozen=True)
class Server:
    backend: str
    name: str
    status: str  # HAProxy's: UP, DOWN, DRAIN, MAINT, "UP 1/2", "no check", ...
    sessions: int  # current sessions (scur)

    def as_json(self) -> dict[str, object]:
        return asdict(self)


@dataclass(frozen=True)
class Drained:
    seconds: float  # from `state drain` until no session was left
    sessions: int  # the sessions open when the drain began


def command(sock: str, line: str, timeout: float = 5.0) -> str:
    """One runtime API command, its whole answer. SocketError when the socket cannot be reached; RuntimeApiError
    when HAProxy refuses the command (its answer is a complaint, not empty)."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(timeout)
            s.connect(sock)
            s.sendall(line.encode() + b"\n")
            chunks = []
            while chunk := s.recv(65536):
                chunks.append(chunk)
    except OSError as e:
        raise SocketError(f"HAProxy's admin socket {sock}: {e} (is haproxy running?)") from None
    return b"".join(chunks).decode(errors="replace")


def servers(sock: str = ADMIN_SOCKET) -> list[Server]:
    """Every server of every backend, as `show stat` reports them now."""
    text = command(sock, "show stat -1 4 -1")
    rows = csv.DictReader(io.StringIO(text.lstrip("# ")))
    return [
        Server(r["pxname"], r["svname"], r["status"], int(r["scur"] or 0))
        for r in rows
        if r.get("svname") not in (None, "FRONTEND", "BACKEND")
    ]


def server(sock: str, backend: str, name: str) -> Server:
    """The server NAME of BACKEND; NoSuchServer when HAProxy has none."""
    for s in servers(sock):
        if s.backend == backend and s.name == name:
            return s
    raise NoSuchServer(f"{name}: HAProxy has no server {backend}/{name}")


def set_state(sock: str, backend: str, name: str, state: str) -> None:
    """`set server BACKEND/NAME state ready|drain|maint`; NoSuchServer, or RuntimeApiError with HAProxy's answer."""
    server(sock, backend, name)
    answer = command(sock, f"set server {backend}/{name} state {state}").strip()
    if answer:
        raise RuntimeApiError(f"{name}: HAProxy refused `set server {backend}/{name} state {state}`: {answer}")


def drain(sock: str, backend: str, name: str, timeout: float) -> Drained:
    """Stop new sessions to the server (state drain), wait until its current sessions are 0, then state maint.
    `timeout`: seconds to wait for the sessions; Bound (naming the server and how many sessions remain) when
    they outlast it, the server left draining (no new sessions, the open ones kept)."""
    before = server(sock, backend, name).sessions
    started = time.monotonic()
    set_state(sock, backend, name, "drain")
    while (left := server(sock, backend, name).sessions) > 0:
        if time.monotonic() - started >= timeout:
            raise Bound(
                f"{name}: {left} session(s) still open on {backend} after {timeout:g} s; left draining "
                "(no new sessions), not in maint"
            )
        time.sleep(POLL)
    set_state(sock, backend, name, "maint")
    return Drained(time.monotonic() - started, before)


def ready(sock: str, backend: str, name: str, timeout: float) -> float:
    """Return the server to rotation (state ready) and wait until HAProxy's health checks report it UP; the
    seconds that took. Bound (naming the server and its status) after `timeout` seconds; it stays in rotation."""
    started = time.monotonic()
    set_state(sock, backend, name, "ready")
    while not (now := server(sock, backend, name)).status.startswith("UP"):
        if time.monotonic() - started >= timeout:
            raise Bound(
                f"{name}: back in rotation on {backend} but HAProxy reports it {now.status} after {timeout:g} s"
            )
        time.sleep(POLL)
    return time.monotonic() - started
