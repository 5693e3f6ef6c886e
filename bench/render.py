#!/usr/bin/env python3
"""Validate and render a generated 1000-host roles.yaml (4 lb, 300 web, 500 app, 196 db); print the times.

Goal (issue 2): both under 3 s on a 2-core machine. Results: bench/results/render.json.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
INV = [sys.executable, "-m", "invoke", "--search-root", str(HERE.parent)]


def generate(counts: dict[str, int]) -> str:
    subnet = ipaddress.IPv4Network("10.20.0.0/20")
    addrs = subnet.hosts()
    gateway, vip = next(addrs), next(addrs)
    lines = [
        "version: 1",
        "cluster: {name: big, domain: www.big.example}",
        f"network: {{subnet: {subnet}, gateway: {gateway}, dns: [{gateway}], vip: {vip}, admin: [{subnet}]}}",
        f'provisioning: {{url: "https://{gateway}:8443"}}',
        "image: {release: bookworm}",
        "roles: {lb: {}, web: {}, app: {}, db: {database: big}}",
        "hosts:",
    ]
    n = 0
    for role, count in counts.items():
        for i in range(count):
            n += 1
            extra = ""
            if role == "lb":
                extra = f", priority: {200 - i}"
            elif role == "db":
                extra = f", db_role: {'primary' if i == 0 else 'replica'}"
            mac = f"52:54:00:{n >> 16 & 255:02x}:{n >> 8 & 255:02x}:{n & 255:02x}"
            lines.append(f'  - {{name: {role}{i + 1}, role: {role}, mac: "{mac}", ip: {next(addrs)}{extra}}}')
    return "\n".join(lines) + "\n"


def timed(args: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run(args, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="one run instead of the best of three")
    opts = parser.parse_args()
    counts = {"lb": 4, "web": 300, "app": 500, "db": 196}
    runs = 1 if opts.quick else 3
    with tempfile.TemporaryDirectory() as tmp:
        roles = Path(tmp) / "roles.yaml"
        roles.write_text(generate(counts))
        validate = min(timed([*INV, "validate", "--roles", str(roles)]) for _ in range(runs))
        render = min(timed([*INV, "render", "--roles", str(roles), "--out", f"{tmp}/out"]) for _ in range(runs))
        files = sum(1 for p in Path(tmp, "out").rglob("*") if p.is_file())
    figures = [
        {"name": "validate 1000 hosts", "value": round(validate, 2), "unit": "s", "goal": "< 3 s"},
        {"name": "render 1000 hosts", "value": round(render, 2), "unit": "s", "goal": "< 3 s"},
        {"name": "files written", "value": files, "unit": ""},
    ]
    for f in figures:
        print(f"{f['name']:<24} {f['value']} {f['unit']}")
    result = {"machine": platform.node(), "cpus": __import__("os").cpu_count(), "runs": runs, "figures": figures}
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / "render.json").write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
