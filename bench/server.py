#!/usr/bin/env python3
"""Boot storm against ./inv serve on loopback: 1000 simulated hosts, each fetching its iPXE script and its
bundle and posting 10 events, through a bounded client pool. Prints req/s and latency percentiles.

Goal (issue 4), on a 2-core machine: all done in under 30 s, bundle fetch p99 under 100 ms. The server
and this client share the two cores. Results: bench/results/server.json. Timings are reported, never asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
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

import aiohttp

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent)]  # the project, for the test helper that runs ./inv serve

from render import generate  # noqa: E402  (bench/render.py: the 1000-host roles.yaml)

from tests.integration.kiln_server import loopback_roles, running_server  # noqa: E402

EVENTS = [(step, status) for step in ("install", "fetch", "files", "services", "done") for status in ("start", "ok")]


def fake_images(root: Path, roles: list[str]) -> None:
    """Small stand-ins: the scripts need the installer and each role's raw image and manifest to exist."""
    (root / "installer").mkdir(parents=True)
    (root / "installer" / "vmlinuz").write_bytes(b"k" * 4096)
    (root / "installer" / "initrd.img").write_bytes(b"i" * 4096)
    for role in roles:
        raw = role.encode() * 1024
        (root / role).mkdir()
        (root / role / f"{role}.raw").write_bytes(raw)
        files = {f"{role}.raw": {"sha256": hashlib.sha256(raw).hexdigest(), "size": len(raw)}}
        (root / role / "manifest.json").write_text(json.dumps({"role": role, "files": files}))


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (the server's, whatever else the machine runs)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


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

        async def boot(name: str, mac: str) -> None:
            async with gate:
                script = await timed("ipxe", plain, "GET", f"{http_url}/ipxe", 200, params={"mac": mac})
                if "kernel " not in script:
                    raise SystemExit(f"{name}: expected an install script, got:\n{script}")
                await timed("bundle", secure, "GET", f"{tls_url}/v1/bundle", 200, params={"mac": mac})
                for step, status in EVENTS:
                    body = {"step": step, "status": status, "detail": f"bench {step}"}
                    await timed("event", secure, "POST", f"{tls_url}/v1/hosts/{name}/events", 201, json=body)

        started = time.perf_counter()
        await asyncio.gather(*(boot(name, mac) for name, mac in hosts))
        elapsed = time.perf_counter() - started
    return latencies, elapsed, errors


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="200 hosts instead of 1000")
    parser.add_argument("--pool", type=int, default=32, help="connections (and hosts in flight) per listener")
    opts = parser.parse_args()
    counts = {"lb": 2, "web": 60, "app": 100, "db": 38} if opts.quick else {"lb": 4, "web": 300, "app": 500, "db": 196}
    total = sum(counts.values())
    load_before = [round(x, 2) for x in os.getloadavg()]
    with tempfile.TemporaryDirectory(prefix="kiln-srv-bench-") as tmp:
        top = Path(tmp)
        roles = loopback_roles(top, generate(counts))
        hosts = re.findall(r"name: (\w+), role: \w+, mac: \"([0-9a-f:]+)\"", roles.read_text())
        assert len(hosts) == total
        fake_images(top / "images", list(counts))
        with running_server(top / "serve", roles=roles, images=top / "images", secrets=top / "secrets") as server:
            server_cpu, client_cpu = cpu_seconds(server.process.pid), os.times()
            latencies, elapsed, errors = asyncio.run(
                storm(server.http_url, server.tls_url, server.secrets.ca_pem, hosts, opts.pool)
            )
            server_cpu = cpu_seconds(server.process.pid) - server_cpu
            client_cpu = sum(os.times()[:2]) - sum(client_cpu[:2])
            with server.client() as c:
                states = [
                    h["state"] for h in c.get(f"{server.tls_url}/v1/hosts", params={"timeline": "0"}).json()["hosts"]
                ]
    requests = sum(len(v) for v in latencies.values())
    ms = {kind: {p: round(1000 * percentile(v, p), 1) for p in (50, 95, 99)} for kind, v in latencies.items()}
    figures = [
        {"name": f"boot storm, {total} hosts", "value": round(elapsed, 2), "unit": "s", "goal": "< 30 s"},
        {"name": "requests per second", "value": round(requests / elapsed), "unit": "req/s", "goal": ""},
        {"name": "bundle fetch p99", "value": ms["bundle"][99], "unit": "ms", "goal": "< 100 ms"},
        {"name": "bundle fetch p50", "value": ms["bundle"][50], "unit": "ms", "goal": ""},
        {"name": "ipxe script p99", "value": ms["ipxe"][99], "unit": "ms", "goal": ""},
        {"name": "event post p50", "value": ms["event"][50], "unit": "ms", "goal": ""},
        {"name": "event post p99", "value": ms["event"][99], "unit": "ms", "goal": ""},
        {"name": "server CPU per request", "value": round(1000 * server_cpu / requests, 2), "unit": "ms", "goal": ""},
        {"name": "client CPU per request", "value": round(1000 * client_cpu / requests, 2), "unit": "ms", "goal": ""},
        {"name": "hosts joined", "value": states.count("joined"), "unit": f"of {total}", "goal": f"{total}"},
        {"name": "failed requests", "value": errors, "unit": "", "goal": "0"},
    ]
    print(
        f"{requests} requests from {total} hosts in {elapsed:.2f}s ({requests / elapsed:.0f} req/s), pool {opts.pool}"
    )
    for kind in ("ipxe", "bundle", "event"):
        v, mean = ms[kind], 1000 * statistics.mean(latencies[kind])
        spread = "  ".join(f"p{p} {v[p]:>6} ms" for p in (50, 95, 99))
        print(f"  {kind:<7} n={len(latencies[kind]):<6} {spread}  mean {mean:.1f} ms")
    for f in figures:
        print(f"{f['name']:<26} {f['value']} {f['unit']}")
    load = [round(x, 2) for x in os.getloadavg()]  # the machine is shared: a busy one slows both sides
    print(f"load average before/after: {load_before} / {load}")
    result = {
        "machine": platform.node(), "cpus": os.cpu_count(), "hosts": total, "pool": opts.pool,
        "load_average": {"before": load_before, "after": load}, "figures": figures,
    }  # fmt: skip
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / "server.json").write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
