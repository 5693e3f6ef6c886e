"""`firstboot haproxy drain|ready|show` (the agent's runtime API subcommand ./inv roll runs on every LB) against a
real HAProxy on loopback with two real HTTP backends: a drain waits for a slow request in flight to finish before
maint, ready brings the server back UP, and the bound is honoured and reported."""

from __future__ import annotations

import http.server
import json
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from firstboot import haproxy
from tests.integration.bmc import free_port
from tests.integration.processes import stop_group

pytestmark = pytest.mark.integration


class Backend(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, name: str, started: dict[str, float], release: threading.Event) -> None:
        self.name = name
        server = self

        class H(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path == "/slow":  # held until the test releases it
                    started[server.name] = time.monotonic()
                    release.wait(30)
                body = server.name.encode()
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        super().__init__(("127.0.0.1", 0), H)
        self.handle_error = lambda *_: None  # type: ignore[method-assign]  # health checks hang up early
        threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()


@dataclass
class Proxy:
    url: str
    sock: Path
    slow_started: dict[str, float]  # backend name -> when a slow request began there
    release: threading.Event  # set: the slow requests are answered

    def agent(self, *args: str) -> subprocess.CompletedProcess[str]:
        argv = [sys.executable, "-m", "firstboot", "haproxy", *args, "--socket", str(self.sock)]
        return subprocess.run(argv, capture_output=True, text=True, timeout=60)

    def status(self, server: str) -> dict[str, object]:
        """The server as the runtime API reports it (the agent's module itself, no process per look)."""
        return haproxy.server(str(self.sock), "web_pool", server).as_json()

    def shown(self, server: str) -> dict[str, object]:
        """The server as `firstboot haproxy show --json` prints it."""
        shown = json.loads(self.agent("show", "--json").stdout)
        return next(s for s in shown if s["backend"] == "web_pool" and s["name"] == server)

    def get(self, path: str) -> str:
        with urllib.request.urlopen(self.url + path, timeout=30) as r:
            return r.read().decode()

    def wait_up(self, server: str) -> None:
        deadline = time.monotonic() + 10
        while not str(self.status(server)["status"]).startswith("UP"):
            assert time.monotonic() < deadline, self.status(server)
            time.sleep(0.1)


@pytest.fixture
def proxy(tmp_path: Path) -> Iterator[Proxy]:
    started: dict[str, float] = {}
    release = threading.Event()
    web1, web2 = Backend("web1", started, release), Backend("web2", started, release)
    port = free_port()
    sock = tmp_path / "admin.sock"
    cfg = tmp_path / "haproxy.cfg"
    cfg.write_text(
        f"""global
    stats socket {sock} mode 600 level admin
defaults
    mode http
    timeout connect 2s
    timeout client 30s
    timeout server 30s
frontend www
    bind 127.0.0.1:{port}
    default_backend web_pool
backend web_pool
    balance roundrobin
    option httpchk GET /health
    default-server inter 200ms fall 2 rise 1
    server web1 127.0.0.1:{web1.server_address[1]} check
    server web2 127.0.0.1:{web2.server_address[1]} check
"""
    )
    process = subprocess.Popen(["haproxy", "-db", "-f", str(cfg)], start_new_session=True)
    p = Proxy(f"http://127.0.0.1:{port}", sock, started, release)
    try:
        deadline = time.monotonic() + 10
        while not sock.exists():
            assert process.poll() is None and time.monotonic() < deadline, "haproxy did not start"
            time.sleep(0.05)
        p.wait_up("web1")
        p.wait_up("web2")
        yield p
    finally:
        release.set()
        stop_group(process)
        web1.shutdown()
        web2.shutdown()


def slow_request(p: Proxy) -> tuple[threading.Thread, dict[str, object], str]:
    """A request held at its backend until p.release is set, in flight on return with the backend serving it; the
    dict gets who answered it and when."""
    seen: dict[str, object] = {}

    def go() -> None:
        seen["by"] = p.get("/slow")
        seen["done"] = time.monotonic()

    t = threading.Thread(target=go)
    t.start()
    deadline = time.monotonic() + 10
    while not p.slow_started:
        assert time.monotonic() < deadline, "the slow request never reached a backend"
        time.sleep(0.02)
    return t, seen, next(iter(p.slow_started))


def test_drain_waits_for_the_request_in_flight_then_maint_and_ready_brings_it_back(proxy: Proxy) -> None:
    t, seen, server = slow_request(proxy)
    other = "web2" if server == "web1" else "web1"
    argv = [
        sys.executable,
        "-m",
        "firstboot",
        "haproxy",
        "drain",
        server,
        "--timeout",
        "30",
        "--socket",
        str(proxy.sock),
    ]
    drain = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 20
    while proxy.status(server)["status"] != "DRAIN":
        assert drain.poll() is None and time.monotonic() < deadline, drain.communicate()
        time.sleep(0.05)
    assert {proxy.get("/") for _ in range(4)} == {other}, "a draining server still gets new requests"
    assert drain.poll() is None, "drain returned with a request in flight"
    released = time.monotonic()
    proxy.release.set()
    out, err = drain.communicate(timeout=30)
    t.join()
    assert drain.returncode == 0, err
    assert seen["by"] == server, "the request in flight was cut or moved"
    assert float(seen["done"]) >= released  # type: ignore[arg-type]
    assert "1 session(s) open at the start" in out
    assert proxy.shown(server)["status"] == "MAINT"
    assert {proxy.get("/") for _ in range(4)} == {other}, "a server in maint still gets requests"

    ready = proxy.agent("ready", server, "--timeout", "20")
    assert ready.returncode == 0, ready.stderr
    assert str(proxy.status(server)["status"]).startswith("UP")
    assert {proxy.get("/") for _ in range(4)} == {"web1", "web2"}


def test_drain_honours_its_bound_and_leaves_the_server_draining(proxy: Proxy) -> None:
    t, seen, server = slow_request(proxy)
    drained = proxy.agent("drain", server, "--timeout", "0.5")
    assert drained.returncode == 3, drained.stderr
    assert f"{server}: 1 session(s) still open on web_pool after 0.5 s; left draining" in drained.stderr
    assert proxy.status(server)["status"] == "DRAIN"
    assert t.is_alive(), "the request was answered: the bound was not what ended the drain"
    proxy.release.set()
    t.join()
    assert seen["by"] == server  # the bound cuts nothing


def test_an_unknown_server_and_a_missing_socket_are_named(proxy: Proxy, tmp_path: Path) -> None:
    unknown = proxy.agent("drain", "web9")
    assert unknown.returncode == 1 and "web9: HAProxy has no server web_pool/web9" in unknown.stderr
    gone = subprocess.run(
        [sys.executable, "-m", "firstboot", "haproxy", "show", "--socket", str(tmp_path / "none.sock")],
        capture_output=True,
        text=True,
    )
    assert gone.returncode == 1 and "none.sock" in gone.stderr and "is haproxy running?" in gone.stderr


def test_the_operator_side_drains_on_every_lb_and_names_the_one_that_fails(proxy: Proxy, tmp_path: Path) -> None:
    """kiln.roll.runtime through the Local transport (SSH's stand-in here): lb1 is the real HAProxy; lb2's socket
    is missing."""
    from ipaddress import IPv4Address

    from kiln.model import Host
    from kiln.roll.runtime import Haproxies, RuntimeFailed
    from kiln.roll.transport import Local

    lbs = [Host(n, "lb", f"52:54:00:00:00:0{i}", IPv4Address(f"127.0.0.{i}")) for i, n in enumerate(["lb1", "lb2"], 1)]
    socket_of = {"lb1": ("--socket", str(proxy.sock)), "lb2": ("--socket", str(proxy.sock))}
    agent = (sys.executable, "-m", "firstboot", "haproxy")
    one = Haproxies(Local(socket_of), lbs[:1], agent=agent)  # each call starts the agent: one LB for the happy path
    one.drain("web1", timeout=10)
    assert one.up_everywhere() == {"web2"}
    one.ready("web1", timeout=10)
    assert str(proxy.status("web1")["status"]).startswith("UP")

    broken = Haproxies(Local({**socket_of, "lb2": ("--socket", str(tmp_path / "gone.sock"))}), lbs, agent=agent)
    with pytest.raises(RuntimeFailed, match=r"web2: on lb2: .*gone.sock.*is haproxy running\?"):
        broken.drain("web2", timeout=10)
    assert proxy.status("web2")["status"] == "MAINT"  # lb1 drained it before lb2 failed: out of rotation
