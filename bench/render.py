#!/usr/bin/env python3
"""Validate and render generated roles.yaml files of 1,000 and 10,000 hosts; print the times and output sizes.

Goals: 1,000 hosts validate and render in under 3 s each (issue 2); 10,000 hosts render in under 15 s into
under 1 GB of output (the renovation issue). Results: bench/results/render.json. Timings are never asserted.

    python bench/render.py            both sizes, best of three for 1,000 hosts, one run for 10,000
    python bench/render.py --quick    1,000 hosts, one run
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
INV = [sys.executable, "-m", "invoke", "--search-root", str(HERE.parent)]
MIX = {"lb": 4 / 1000, "web": 300 / 1000, "app": 500 / 1000, "db": 196 / 1000}  # the 1,000-host mix: 4/300/500/196


def counts_for(hosts: int) -> dict[str, int]:
    """The mix scaled to `hosts`, with at least two LBs and whatever is left over as app hosts."""
    counts = {role: max(2 if role == "lb" else 1, round(share * hosts)) for role, share in MIX.items()}
    counts["app"] += hosts - sum(counts.values())
    return counts


def generate(counts: dict[str, int]) -> str:
    """A valid roles.yaml with these many hosts per role, on a subnet large enough for them."""
    total = sum(counts.values())
    prefix = 32 - max(8, (total + 4).bit_length())
    subnet = ipaddress.IPv4Network(f"10.64.0.0/{prefix}")
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


def timed(args: list[str]) -> tuple[float, int]:
    """Wall seconds and the peak resident memory (KiB) of the command."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    started = time.perf_counter()
    subprocess.run(args, check=True, stdout=subprocess.DEVNULL)
    took = time.perf_counter() - started
    return took, max(before, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)


def disk_usage(root: Path) -> tuple[int, int]:
    """(bytes on disk, files), each hard-linked file counted once, as du does."""
    seen: set[int] = set()
    used = files = 0
    for dirpath, _, names in os.walk(root):
        for name in names:
            st = os.lstat(os.path.join(dirpath, name))
            files += 1
            if st.st_ino not in seen:
                seen.add(st.st_ino)
                used += st.st_blocks * 512
    return used, files


def measure(hosts: int, runs: int, tmp: Path) -> list[dict[str, object]]:
    """Each render goes into a directory of its own: a second render into the same one writes nothing (measured
    apart, as the re-render). Nothing is deleted between runs: on ext4 a fresh file right after mass deletion
    costs several times more kernel time (the inode allocator skips recently freed inodes)."""
    roles = tmp / f"roles-{hosts}.yaml"
    roles.write_text(generate(counts_for(hosts)))
    validate = min(timed([*INV, "validate", "--roles", str(roles)])[0] for _ in range(runs))
    outs = [tmp / f"out-{hosts}-{i}" for i in range(runs)]
    render, rss = min(timed([*INV, "render", "--roles", str(roles), "--out", str(out)]) for out in outs)
    again = timed([*INV, "render", "--roles", str(roles), "--out", str(outs[0])])[0]
    used, files = disk_usage(outs[0])
    goal_render = "< 3 s" if hosts <= 1000 else "< 15 s"
    figures: list[dict[str, object]] = [
        {"name": f"validate {hosts} hosts", "value": round(validate, 2), "unit": "s", "goal": "< 3 s"},
        {"name": f"render {hosts} hosts", "value": round(render, 2), "unit": "s", "goal": goal_render},
        {"name": f"render {hosts} hosts again, nothing changed", "value": round(again, 2), "unit": "s"},
        {
            "name": f"render {hosts} hosts: output on disk",
            "value": round(used / 1e6, 1),
            "unit": "MB",
            "goal": "< 1000 MB" if hosts > 1000 else "",
        },
        {"name": f"render {hosts} hosts: files", "value": files, "unit": ""},
        {"name": f"render {hosts} hosts: peak memory", "value": round(rss / 1024), "unit": "MB"},
    ]
    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK):  # the same work without the disk: what kiln itself costs
        with tempfile.TemporaryDirectory(dir=shm) as memory:
            took = timed([*INV, "render", "--roles", str(roles), "--out", memory + "/out"])[0]
        figures.append({"name": f"render {hosts} hosts into memory (tmpfs)", "value": round(took, 2), "unit": "s"})
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1,000 hosts, one run")
    parser.add_argument("--hosts", type=int, nargs="*", help="cluster sizes (default: 1000 10000)")
    opts = parser.parse_args()
    sizes = opts.hosts or ([1000] if opts.quick else [1000, 10000])
    figures: list[dict[str, object]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for hosts in sizes:
            figures += measure(hosts, 1 if opts.quick or hosts > 1000 else 3, Path(tmp))
    for f in figures:
        print(f"{f['name']:<40} {f['value']} {f['unit']}")
    # a run of some sizes (--hosts 10000, --quick) keeps the recorded figures of the others
    path = HERE / "results" / "render.json"
    measured = {f["name"] for f in figures}
    kept = [f for f in json.loads(path.read_text())["figures"] if f["name"] not in measured] if path.exists() else []
    result = {"machine": platform.node(), "cpus": os.cpu_count(), "figures": kept + figures}
    path.parent.mkdir(exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
