"""What the operator reads during and after a roll: one line per change off a terminal, the summary with each host's
time, and the probe loop's count of failed requests against a real HTTP server on loopback."""

from __future__ import annotations

import http.server
import threading
import time
from collections.abc import Iterator

import pytest
from rich.console import Console

from kiln.roll.probe import Probe
from kiln.roll.progress import Progress, summary


def test_progress_lines_and_summary() -> None:
    console = Console(record=True, width=200)
    view = Progress(["web1", "web2"], console, live=False)
    with view.shown():
        view.phase("web1", "drain", 300.0)
        view.done("web1", 312.0)
        view.phase("web2", "install", None)
        view.failed("web2", "web2: provisioning failed at join: no app reachable")
    text = console.export_text()
    assert "web1: drain (ETA 5:00)" in text and "web1: done in 5:12" in text
    assert "web2: failed in install: web2: provisioning failed at join: no app reachable" in text
    live = Console(record=True, width=200)
    live.print(view.table())  # what the live view shows on a terminal
    row = next(line for line in live.export_text().splitlines() if "web2" in line)
    assert "failed in install" in row
    console.print(summary({"web1": 312.0, "web3": 288.0}, None))
    table = console.export_text()
    assert "web1" in table and "5:12" in table and "mean" in table and "5:00" in table


@pytest.fixture
def flaky() -> Iterator[tuple[str, threading.Event]]:
    """An HTTP server answering 200, or 503 while the event is set."""
    broken = threading.Event()

    class H(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(503 if broken.is_set() else 200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
    threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/health", broken
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_the_probe_counts_failed_requests(flaky: tuple[str, threading.Event]) -> None:
    url, broken = flaky
    probe = Probe(url, interval=0.02, timeout=2).start()
    time.sleep(0.2)
    broken.set()
    time.sleep(0.2)
    broken.clear()
    time.sleep(0.1)
    tally = probe.stop()
    assert tally.sent > tally.failed > 0
    assert "HTTP 503" in tally.reasons[0] and f"{tally.failed} of {tally.sent} requests failed" in tally.line()
    assert Probe("http://127.0.0.1:9/", interval=0.02, timeout=1).start().stop().failed == 1  # refused: failed
