#!/usr/bin/env python3
"""Boot storm against ./inv serve on loopback: 1000 simulated hosts, each fetching its iPXE script and its
bundle and posting 10 events, through a bounded client pool. Prints req/s and latency percentiles, the
server's memory, and what a dashboard poll sends (the whole list, then only what changed).

Goals on a 2-core machine: the storm done in under 30 s, bundle fetch p99 under 100 ms, 10 MB request heads
stall another client's request by under 100 ms; with a 10,000-host cluster the server stays under 400 MB. The
server and this client share the two cores. Results: bench/results/server.json (--hosts 10000:
server-10000.json). Never asserted.

    python bench/server.py                       1000 hosts, all of them boot
    python bench/server.py --hosts 10000         a 10,000-host cluster, 1000 of them boot
    python bench/server.py --quick               200 hosts
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import multiprocessing
import os
import platform
import re
import ssl
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import aiohttp

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent)]  # the project, for the test helper that runs ./inv serve

from render import counts_for, generate  # noqa: E402  (bench/render.py: the generated roles.yaml)

from kiln import blockmap, hostauth  # noqa: E402
from tests.integration.kiln_server import loopback_roles, running_server  # noqa: E402

EVENTS = [(step, status) for step in ("install", "fetch", "files", "services", "done") for status in ("start", "ok")]


def fake_images(root: Path, roles: list[str]) -> None:
    """Small stand-ins: the scripts need the installer and each role's raw image and manifest to exist."""
    (root / "installer").mkdir(parents=True)
    (root / "installer" / "vmlinuz").write_bytes(b"k" * 4096)
    (root / "installer" / "initrd.img").write_bytes(b"i" * 4096)
    for role in roles:
        raw = role.encode().ljust(1024 * 1024, b"\0")  # a block map counts whole MiB
        (root / role).mkdir()
        (root / role / f"{role}.raw").write_bytes(raw)
        block_map = blockmap.write(root / role / f"{role}.raw", root / role / f"{role}.map")  # as the build does
        files = {f"{role}.raw": {"sha256": hashlib.sha256(raw).hexdigest(), "size": len(raw)}}
        manifest = {"role": role, "files": files, "blockmap": block_map.manifest_entry(f"{role}.map")}
        (root / role / "manifest.json").write_text(json.dumps(manifest))


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (the server's, whatever else the machine runs)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _flood(host: str, port: int, stop: Any) -> None:
    """10 MB request heads, one connection after another (the server cuts each off at 16 KiB)."""
    import socket

    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    while not stop.is_set():
        try:
            with socket.create_connection((host, port), timeout=5) as raw:
                with context.wrap_socket(raw) as s:
                    s.sendall(b"GET /v1/hosts HTTP/1.1\r\nHost: x\r\nX-Big: ")
                    for _ in range(160):  # 10 MB
                        s.sendall(b"a" * 65536)
        except OSError:
            time.sleep(0.05)  # cut off: the next connection (a handshake flood is another attack)


def huge_header_stall(tls_url: str, client: object, rounds: int = 20) -> tuple[float, float]:
    """(median, worst) seconds of GET /v1/hosts while a client sends 10 MB request heads (before, httptools
    buffered and parsed all of it on the loop). The flood is another process, as an attacker is another machine:
    a thread here measured this interpreter's own lock handoffs (5 ms each) between the flood and the request."""
    from urllib.parse import urlsplit

    parts = urlsplit(tls_url)
    fork = multiprocessing.get_context("fork")
    stop = fork.Event()
    flood = fork.Process(target=_flood, args=(parts.hostname, parts.port, stop), daemon=True)
    flood.start()
    time.sleep(0.5)  # the flood under way
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        client.get(f"{tls_url}/v1/hosts", params={"timeline": "0"})  # type: ignore[attr-defined]
        times.append(time.perf_counter() - started)
    stop.set()
    flood.join(10)
    return statistics.median(times), max(times)


def rss_mb(pid: int) -> int:
    """Resident memory of a process, MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) / 1024)
    return 0


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(p / 100 * len(ordered)) - 1))]


async def storm(
    http_url: str, tls_url: str, ca: Path, hosts: list[tuple[str, str]], pool: int
) -> tuple[dict, float, int]:
    """Every host boots at once; `pool` bounds the connections per listener and so the requests in flight."""
    latencies: dict[str, list[float]] = defaultdict(list)
    errors = 0
    tls = ssl.create_default_context(cafile=str(ca))
    gate = asyncio.Semaphore(pool)  # hosts in flight at once, so latencies time the server, not a client queue

    async with (
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=pool)) as plain,
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=pool, ssl=tls)) as secure,
    ):

        async def timed(kind: str, session: aiohttp.ClientSession, method: str, url: str, expect: int, **kw) -> str:
            nonlocal errors
            started = time.perf_counter()
            try:
                async with session.request(method, url, **kw) as response:
                    body = await response.text()
                    status = response.status
            except aiohttp.ClientError:
                errors += 1
                return ""
            latencies[kind].append(time.perf_counter() - started)
            errors += status != expect
            return body

        started_enrols = 0

        async def boot(name: str, mac: str) -> None:
            nonlocal started_enrols
            """As a host does: its script (with its token), enrolment with its own key, then signed events."""
            async with gate:
                script = await timed("ipxe", plain, "GET", f"{http_url}/ipxe", 200, params={"mac": mac})
                token = re.search(r"kiln\.token=(\S+)", script)
                if "kernel " not in script or token is None:
                    raise SystemExit(f"{name}: expected an install script with a token, got:\n{script}")
                key = hostauth.generate_key()
                enrol = json.dumps({"host_key": hostauth.public_text(key.public_key()), "macs": [mac]})
                headers = {"Authorization": f"Bearer {token[1]}", "Content-Type": "application/json"}
                # the first `pool` enrolments open the TLS connections (a handshake each, all at once); the
                # rest reuse them, as "bundle, warm" shows apart
                started_enrols += 1
                kind = "bundle, cold" if started_enrols <= pool else "bundle, warm"
                await timed(kind, secure, "POST", f"{tls_url}/v1/enrol", 200, data=enrol, headers=headers)
                for step, status in EVENTS:
                    body = json.dumps({"step": step, "status": status, "detail": f"bench {step}"}).encode()
                    path = f"/v1/hosts/{name}/events"
                    auth = {"Authorization": hostauth.authorization(key, name, "POST", path, body)}
                    headers = {**auth, "Content-Type": "application/json"}
                    await timed("event", secure, "POST", f"{tls_url}{path}", 201, data=body, headers=headers)

        started = time.perf_counter()
        await asyncio.gather(*(boot(name, mac) for name, mac in hosts))
        elapsed = time.perf_counter() - started
    return latencies, elapsed, errors


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="200 hosts instead of 1000")
    parser.add_argument("--hosts", type=int, help="hosts in the cluster (default 1000, --quick 200)")
    parser.add_argument("--storm", type=int, default=1000, help="how many of them boot at once (default 1000)")
    parser.add_argument("--pool", type=int, default=32, help="connections (and hosts in flight) per listener")
    opts = parser.parse_args()
    size = opts.hosts or (200 if opts.quick else 1000)
    counts = counts_for(size)
    load_before = [round(x, 2) for x in os.getloadavg()]
    with tempfile.TemporaryDirectory(prefix="kiln-srv-bench-") as tmp:
        top = Path(tmp)
        roles = loopback_roles(top, generate(counts))
        every = re.findall(r"name: (\w+), role: \w+, mac: \"([0-9a-f:]+)\"", roles.read_text())
        assert len(every) == size
        hosts = every[:: max(1, size // opts.storm)][: opts.storm]
        total = len(hosts)
        fake_images(top / "images", list(counts))
        started = time.perf_counter()
        with running_server(
            top / "serve", roles=roles, images=top / "images", secrets=top / "secrets", start_timeout=300
        ) as server:
            startup = time.perf_counter() - started
            rss_started = rss_mb(server.process.pid)
            server_cpu, client_cpu = cpu_seconds(server.process.pid), os.times()
            latencies, elapsed, errors = asyncio.run(
                storm(server.http_url, server.tls_url, server.secrets.ca_pem, hosts, opts.pool)
            )
            server_cpu = cpu_seconds(server.process.pid) - server_cpu
            client_cpu = sum(os.times()[:2]) - sum(client_cpu[:2])
            with server.client(timeout=60) as c:  # the operator's view
                time.sleep(6)  # a quiet cluster: nothing changed within the overlap a delta poll reaches back
                full = c.get(f"{server.tls_url}/v1/hosts", params={"timeline": "0"})
                states = [h["state"] for h in full.json()["hosts"]]
                time.sleep(6)  # past the few seconds a delta poll reaches back: a quiet minute's poll
                delta = c.get(f"{server.tls_url}/v1/hosts", params={"timeline": "0", "since": full.json()["now"]})
                quiet = [0.0] * 20
                for i in range(20):
                    began = time.perf_counter()
                    c.get(f"{server.tls_url}/v1/hosts", params={"timeline": "0"})
                    quiet[i] = time.perf_counter() - began
                flooded_median, flooded_worst = huge_header_stall(server.tls_url, c)
            rss_after = rss_mb(server.process.pid)
    latencies["bundle"] = latencies["bundle, cold"] + latencies["bundle, warm"]
    requests = sum(len(v) for kind, v in latencies.items() if kind != "bundle")
    ms = {kind: {p: round(1000 * percentile(v, p), 1) for p in (50, 95, 99)} for kind, v in latencies.items()}
    figures = [
        {"name": f"server start, {size}-host cluster", "value": round(startup, 1), "unit": "s", "goal": ""},
        {"name": "server memory after start", "value": rss_started, "unit": "MB", "goal": "< 400 MB"},
        {"name": f"server memory after {total} hosts booted", "value": rss_after, "unit": "MB", "goal": "< 400 MB"},
        {"name": "dashboard poll, whole list", "value": round(len(full.content) / 1e3, 1), "unit": "kB", "goal": ""},
        {"name": "dashboard poll, changes only", "value": round(len(delta.content) / 1e3, 1), "unit": "kB", "goal": ""},
        {"name": "host list, quiet (median)", "value": round(1000 * statistics.median(quiet), 1), "unit": "ms"},
        {"name": "host list beside 10 MB heads (median)", "value": round(1000 * flooded_median, 1), "unit": "ms"},
        {
            "name": "stall from 10 MB heads (worst - quiet median)",
            "value": round(1000 * (flooded_worst - statistics.median(quiet)), 1),
            "unit": "ms",
            "goal": "< 100 ms",
        },
        {"name": f"boot storm, {total} hosts", "value": round(elapsed, 2), "unit": "s", "goal": "< 30 s"},
        {"name": "requests per second", "value": round(requests / elapsed), "unit": "req/s", "goal": ""},
        {"name": "bundle fetch p99", "value": ms["bundle"][99], "unit": "ms", "goal": "< 100 ms"},
        {"name": "bundle fetch p50", "value": ms["bundle"][50], "unit": "ms", "goal": ""},
        {"name": "bundle fetch p99, warm connection", "value": ms["bundle, warm"][99], "unit": "ms", "goal": ""},
        {"name": "bundle fetch p99, new connection", "value": ms["bundle, cold"][99], "unit": "ms", "goal": ""},
        {"name": "ipxe script p99", "value": ms["ipxe"][99], "unit": "ms", "goal": ""},
        {"name": "event post p50", "value": ms["event"][50], "unit": "ms", "goal": ""},
        {"name": "event post p99", "value": ms["event"][99], "unit": "ms", "goal": ""},
        {"name": "server CPU per request", "value": round(1000 * server_cpu / requests, 2), "unit": "ms", "goal": ""},
        {"name": "client CPU per request", "value": round(1000 * client_cpu / requests, 2), "unit": "ms", "goal": ""},
        {"name": "hosts joined", "value": states.count("joined"), "unit": f"of {size}", "goal": f"{total}"},
        {"name": "failed requests", "value": errors, "unit": "", "goal": "0"},
    ]
    print(
        f"{requests} requests from {total} hosts in {elapsed:.2f}s ({requests / elapsed:.0f} req/s), pool {opts.pool}"
    )
    for kind in ("ipxe", "bundle", "bundle, cold", "bundle, warm", "event"):
        v, mean = ms[kind], 1000 * statistics.mean(latencies[kind])
        spread = "  ".join(f"p{p} {v[p]:>6} ms" for p in (50, 95, 99))
        print(f"  {kind:<12} n={len(latencies[kind]):<6} {spread}  mean {mean:.1f} ms")
    for f in figures:
        print(f"{f['name']:<26} {f['value']} {f['unit']}")
    load = [round(x, 2) for x in os.getloadavg()]  # the machine is shared: a busy one slows both sides
    print(f"load average before/after: {load_before} / {load}")
    result = {
        "machine": platform.node(),
        "cpus": os.cpu_count(),
        "hosts": size,
        "booted": total,
        "pool": opts.pool,
        "load_average": {"before": load_before, "after": load},
        "figures": figures,
    }
    (HERE / "results").mkdir(exist_ok=True)
    name = "server.json" if size <= 1000 else f"server-{size}.json"
    (HERE / "results" / name).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
