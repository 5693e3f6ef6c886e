"""What one client may cost the server (kiln/server/limits.py), on real sockets: uvicorn with kiln's protocol and
settings on loopback (in this process, so its deadlines can be shortened), and the real ./inv serve for rates.

Timings are not asserted: the tests check that a limit acts (a connection closed, a request refused) and that
the other clients are answered meanwhile; bench/server.py measures how long they wait."""

from __future__ import annotations

import asyncio
import concurrent.futures
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from kiln.server import limits
from tests.integration.kiln_server import RunningServer, running_server

pytestmark = pytest.mark.integration


async def _hello(request: object) -> PlainTextResponse:
    return PlainTextResponse("hello\n")


async def _refuse(request: object) -> PlainTextResponse:
    return PlainTextResponse("too large\n", status_code=413)  # answered before the body is read, as kiln's _body


@pytest.fixture()
def guarded(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, int]]:
    """uvicorn with kiln's limits (a 1 s head deadline, 1 s idle timeout) on a loopback port, in a thread."""
    monkeypatch.setattr(limits, "HEADER_TIMEOUT", 1.0)
    settings = {**limits.uvicorn_limits(), "timeout_keep_alive": 1}
    sock = socket.create_server(("127.0.0.1", 0))
    config = uvicorn.Config(
        Starlette(routes=[Route("/", _hello), Route("/refuse", _refuse, methods=["POST"])]),
        lifespan="off",
        log_level="critical",
        **settings,
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=lambda: asyncio.run(server.serve([sock])), daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.02)
    try:
        yield sock.getsockname()
    finally:
        server.should_exit = True
        thread.join(10)


def _closed_within(s: socket.socket, seconds: float) -> bytes | None:
    """What the server sent before closing the connection, or None when it was still open after `seconds`."""
    s.settimeout(seconds)
    data = b""
    try:
        while chunk := s.recv(65536):
            data += chunk
    except TimeoutError:
        return None
    except ConnectionResetError:
        pass
    return data


def test_a_slow_head_is_cut_off_and_others_are_answered_meanwhile(guarded: tuple[str, int]) -> None:
    host, port = guarded
    with socket.create_connection((host, port)) as slow:
        slow.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n")  # ... and the rest never comes
        for _ in range(3):
            assert httpx.get(f"http://{host}:{port}/", timeout=5).text == "hello\n"
        assert _closed_within(slow, 5) is not None, "the slow client is disconnected at its deadline"


def test_a_connection_that_sends_nothing_is_closed(guarded: tuple[str, int]) -> None:
    with socket.create_connection(guarded) as idle:
        assert _closed_within(idle, 5) is not None


def test_a_kept_alive_connection_gets_a_new_deadline_for_its_next_head(guarded: tuple[str, int]) -> None:
    with socket.create_connection(guarded) as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        time.sleep(0.3)
        assert b"hello" in s.recv(65536)
        s.sendall(b"GET / HTTP/1.1\r\n")  # a second request that stalls half-way
        assert _closed_within(s, 5) is not None


def test_a_huge_head_is_refused_without_reading_it_all(guarded: tuple[str, int]) -> None:
    host, port = guarded
    with socket.create_connection((host, port)) as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: ")
        sent = 0
        try:
            for _ in range(160):  # up to 10 MB
                s.sendall(b"a" * 65536)
                sent += 65536
        except (BrokenPipeError, ConnectionResetError):
            pass
        answer = _closed_within(s, 5)
    assert answer is not None and answer.startswith(b"HTTP/1.1 431"), answer
    assert sent < 10 * 1024 * 1024, "the server closed the connection before taking 10 MB"
    assert httpx.get(f"http://{host}:{port}/", timeout=5).text == "hello\n"


def test_reports_wait_for_the_boot_path_and_keep_their_order() -> None:
    """Five events ready before a bundle fetch: the fetch runs first (arrival order had it last), the events after
    it one at a time, in the order they came."""

    async def storm() -> list[str]:
        reports, done = limits.ReportQueue(1), []

        async def event(n: int) -> None:
            async with reports.turn():
                done.append(f"event {n}")

        async def bundle() -> None:
            done.append("bundle")

        await asyncio.gather(*[event(n) for n in range(5)], bundle())
        return done

    assert asyncio.run(storm()) == ["bundle", *(f"event {n}" for n in range(5))]


def test_rates_are_limited_per_key_and_refill() -> None:
    rate = limits.RateLimit(rate=2, burst=3, keys=2)
    assert [rate.take("a", now=0.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert rate.take("a", now=0.0) == pytest.approx(0.5)
    assert rate.take("b", now=0.0) == 0.0, "another key has its own bucket"
    assert rate.take("a", now=1.0) == 0.0, "two more a second"
    rate.take("c", now=1.0)
    assert len(rate._buckets) == 2, "the least recently used key is forgotten past `keys`"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    with running_server(tmp_path_factory.mktemp("serve")) as s:
        yield s


def test_a_host_that_posts_too_fast_is_told_to_wait(server: RunningServer) -> None:
    """From eight connections at once: one after another, a loaded machine answering slower than the bucket
    refills (10 a second) never empties it."""
    token = server.token("web1")
    headers = {"Authorization": f"Bearer {token}"}
    per_client = int(limits.Limits().per_host.burst) // 2  # 4x the burst in all: the refill cannot keep up
    told = threading.Event()

    def send(_: int) -> list[httpx.Response]:
        replies = []
        with server.client(operator=False, headers=headers) as c:
            for _ in range(per_client):
                event = {"step": "files", "status": "start"}
                replies.append(c.post(f"{server.tls_url}/v1/hosts/web1/events", json=event))
                if replies[-1].status_code == 429:
                    told.set()
                if told.is_set():
                    break
        return replies

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        codes = [r for replies in pool.map(send, range(8)) for r in replies]
    refused = [r for r in codes if r.status_code == 429]
    assert refused and int(refused[0].headers["retry-after"]) >= 1
    assert {r.status_code for r in codes} == {201, 429}
    with server.client() as c:
        assert c.get(f"{server.tls_url}/v1/hosts").status_code == 200, "others are not held up"


def test_the_limits_are_what_the_server_runs_with(server: RunningServer, tmp_path: Path) -> None:
    """A real ./inv serve refuses a head over 16 KiB and keeps serving."""
    big = {"X-Big": "a" * (limits.MAX_HEAD_BYTES + 1024)}
    with server.client() as c:
        assert c.get(f"{server.tls_url}/v1/hosts", headers=big).status_code == 431
        assert c.get(f"{server.tls_url}/v1/hosts").status_code == 200


def test_a_huge_head_over_tls_is_not_read_to_its_end(server: RunningServer) -> None:
    """Over TLS the cut is an abort: a TLS close waits for the client's close_notify, and OpenSSL decrypted all
    the client sent meanwhile to find it (a 10 MB head cost the server 9 ms of CPU, 87 such clients a second
    saturated it). Refused, the client cannot send the 10 MB; others are answered."""
    parts = urlsplit(server.tls_url)
    context = server.tls_context()
    sent = 0
    with socket.create_connection((parts.hostname, parts.port), timeout=10) as raw:
        with context.wrap_socket(raw, server_hostname=parts.hostname) as s:
            s.sendall(b"GET /v1/hosts HTTP/1.1\r\nHost: x\r\nX-Big: ")
            try:
                for _ in range(160):  # up to 10 MB
                    s.sendall(b"a" * 65536)
                    sent += 65536
            except OSError:  # the reset, or TLS's view of it
                pass
    assert sent < 10 * 1024 * 1024, "the server read the whole 10 MB head after refusing it"
    with server.client() as c:
        assert c.get(f"{server.tls_url}/v1/hosts").status_code == 200


def _responses(s: socket.socket, count: int, seconds: float = 5) -> list[bytes]:
    """The status lines of the next `count` responses on `s` (fewer if the server closes first)."""
    s.settimeout(seconds)
    data = b""
    try:
        while data.count(b"HTTP/1.1 ") < count and (chunk := s.recv(65536)):
            data += chunk
    except (TimeoutError, ConnectionResetError):
        pass
    return [b"HTTP/1.1 " + part.split(b"\r\n", 1)[0] for part in data.split(b"HTTP/1.1 ")[1:]]


def test_a_body_refused_before_it_is_read_is_not_taken_for_the_next_head(guarded: tuple[str, int]) -> None:
    """The rest of a refused body is drained as body, not counted as the next request's head (which once answered
    the next request on a kept-alive connection 431)."""
    body = b"x" * 200_000  # over MAX_HEAD_BYTES many times
    with socket.create_connection(guarded) as s:
        s.sendall(b"POST /refuse HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
        s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert _responses(s, 2) == [b"HTTP/1.1 413 Request Entity Too Large", b"HTTP/1.1 200 OK"]


def test_a_refused_body_that_never_ends_is_cut_off(guarded: tuple[str, int]) -> None:
    with socket.create_connection(guarded) as s:
        s.sendall(b"POST /refuse HTTP/1.1\r\nHost: x\r\nContent-Length: 10000000\r\n\r\n" + b"x" * 1000)
        assert _responses(s, 1) == [b"HTTP/1.1 413 Request Entity Too Large"]
        s.sendall(b"x" * 1000)  # ... and the rest never comes
        assert _closed_within(s, 5) is not None
