#!/usr/bin/env python3
"""What monitoring costs: scrape duration per target, series in Prometheus's head, Prometheus's memory.

    .venv/bin/python bench/monitoring.py --lab            the running lab's mon1 (./inv lab up first; run as root)
    .venv/bin/python bench/monitoring.py --hosts 200      a generated 200-host cluster, on this machine

--lab asks mon1's Prometheus (from the lab's namespace, the admin network): each job's mean and worst scrape duration
over the last 10 minutes, samples per scrape, the head's series, Prometheus's resident memory and mon1's memory in
use (its node exporter).

--hosts N renders the mon role's prometheus.yml for a generated cluster of N hosts (bench/render.py's mix) and runs
Debian's Prometheus with it for --minutes, every node job target pointed at one real node exporter on loopback with
the images' collector flags (each target keeps its own host label, so Prometheus scrapes and stores it as its own).
The role exporters (HAProxy, nginx, mysqld, the app) are left out: their series come from the lab's figures. What it
says: Prometheus's cost for N hosts' node series; the scrape durations include one exporter answering all N targets'
scrapes, which on a real cluster N exporters share.

Numbers, not assertions; results in bench/results/monitoring.json.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import yaml

PROJECT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT))
sys.path.insert(0, str(PROJECT / "bench"))

RESULTS = PROJECT / "bench" / "results" / "monitoring.json"


def query(base: str, promql: str) -> list[dict[str, Any]]:
    """An instant query's result vector."""
    url = f"{base}/api/v1/query?{urllib.parse.urlencode({'query': promql})}"
    with urllib.request.urlopen(url, timeout=30) as r:
        return list(json.load(r)["data"]["result"])


def scalar(base: str, promql: str) -> float:
    found = query(base, promql)
    return float(found[0]["value"][1]) if found else float("nan")


def own_metric(base: str, name: str) -> float:
    """A metric of Prometheus's own /metrics (it does not scrape itself in kiln's config)."""
    with urllib.request.urlopen(f"{base}/metrics", timeout=30) as r:
        for line in r.read().decode().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
    return float("nan")


def per_job(base: str, window: str) -> list[dict[str, Any]]:
    """[{job, targets, mean_s, worst_s, samples}] over `window` (a PromQL range, "10m")."""
    mean = {
        r["metric"]["job"]: r for r in query(base, f"avg by (job) (avg_over_time(scrape_duration_seconds[{window}]))")
    }
    worst = {
        r["metric"]["job"]: r for r in query(base, f"max by (job) (max_over_time(scrape_duration_seconds[{window}]))")
    }
    count = {r["metric"]["job"]: r for r in query(base, "count by (job) (up)")}
    samples = {r["metric"]["job"]: r for r in query(base, "sum by (job) (scrape_samples_scraped)")}
    rows = []
    for job in sorted(mean):
        rows.append(
            {
                "job": job,
                "targets": int(float(count[job]["value"][1])),
                "mean_s": round(float(mean[job]["value"][1]), 3),
                "worst_s": round(float(worst[job]["value"][1]), 3),
                "samples": int(float(samples[job]["value"][1])),
            }
        )
    return rows


def print_rows(title: str, rows: list[dict[str, Any]], totals: dict[str, Any]) -> None:
    print(title)
    print(f"  {'job':<12} {'targets':>7} {'mean s':>8} {'worst s':>8} {'samples/scrape':>15}")
    for r in rows:
        print(f"  {r['job']:<12} {r['targets']:>7} {r['mean_s']:>8.3f} {r['worst_s']:>8.3f} {r['samples']:>15}")
    for k, v in totals.items():
        print(f"  {k}: {v}")


def lab_figures(window: str) -> dict[str, Any]:
    from kiln.lab import netns
    from kiln.lab.layout import Lab
    from kiln.model import load_roles
    from kiln.roles import mon

    lab = Lab(load_roles(PROJECT / "roles.yaml"))
    mons = lab.cluster.by_role(mon.NAME)
    if not mons:
        raise SystemExit("roles.yaml has no mon host")
    netns.enter()
    base = f"http://{mons[0].ip}:{mon.PROMETHEUS_PORT}"
    host = mons[0].name
    used = scalar(
        base, f'node_memory_MemTotal_bytes{{host="{host}"}} - node_memory_MemAvailable_bytes{{host="{host}"}}'
    )
    totals = {
        "head series": int(own_metric(base, "prometheus_tsdb_head_series")),
        "Prometheus resident MiB": round(own_metric(base, "process_resident_memory_bytes") / 2**20, 1),
        f"{host} memory in use MiB": round(used / 2**20, 1),
        "Prometheus up for s": round(time.time() - own_metric(base, "process_start_time_seconds")),
    }
    rows = per_job(base, window)
    print_rows(f"the lab's {host} ({len(lab.cluster.hosts)} hosts), scrapes over the last {window}", rows, totals)
    return {"where": "lab", "hosts": len(lab.cluster.hosts), "window": window, "jobs": rows, **totals}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_ready(url: str, what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(OSError):
            with urllib.request.urlopen(url, timeout=2):
                return
        if time.monotonic() > deadline:
            raise SystemExit(f"{what} not ready within {timeout:.0f} s")
        time.sleep(0.5)


def generated_figures(hosts: int, minutes: float) -> dict[str, Any]:
    from render import counts_for, generate  # bench/render.py

    from kiln.model import parse_roles
    from kiln.monitoring.config import prometheus_config

    cluster = parse_roles(generate(counts_for(hosts)))
    exporter_port, prometheus_port = _free_port(), _free_port()
    document = yaml.safe_load(prometheus_config(cluster))
    document["rule_files"] = []
    document["alerting"] = {"alertmanagers": []}
    node = next(j for j in document["scrape_configs"] if j["job_name"] == "node")
    for static in node["static_configs"]:
        static["targets"] = [f"127.0.0.1:{exporter_port}"]
    document["scrape_configs"] = [node]
    units = "(firstboot|nginx|prometheus-node-exporter)[.]service"
    with tempfile.TemporaryDirectory(prefix="kiln-bench-mon-") as tmp:
        config = Path(tmp) / "prometheus.yml"
        config.write_text(yaml.safe_dump(document))
        exporter = subprocess.Popen(
            [
                "prometheus-node-exporter",
                f"--web.listen-address=127.0.0.1:{exporter_port}",
                "--collector.systemd",
                f"--collector.systemd.unit-include={units}",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        prometheus = subprocess.Popen(
            [
                "prometheus",
                f"--config.file={config}",
                f"--storage.tsdb.path={tmp}/data",
                f"--web.listen-address=127.0.0.1:{prometheus_port}",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        base = f"http://127.0.0.1:{prometheus_port}"
        try:
            _wait_ready(f"http://127.0.0.1:{exporter_port}/metrics", "the node exporter")
            _wait_ready(f"{base}/-/ready", "Prometheus")
            every = node.get("scrape_interval", document["global"]["scrape_interval"])
            print(f"{hosts} node targets, scraped every {every} for {minutes:g} min ...", flush=True)
            time.sleep(minutes * 60)
            window = f"{max(1, int(minutes))}m"
            rows = per_job(base, window)
            totals = {
                "head series": int(own_metric(base, "prometheus_tsdb_head_series")),
                "Prometheus resident MiB": round(own_metric(base, "process_resident_memory_bytes") / 2**20, 1),
                "targets up": int(scalar(base, "sum(up)")),
            }
        finally:
            for p in (prometheus, exporter):
                p.terminate()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    p.wait(timeout=30)
                if p.poll() is None:
                    p.kill()
    print_rows(f"a generated {hosts}-host cluster's node job, one exporter on loopback", rows, totals)
    return {"where": "generated", "hosts": hosts, "minutes": minutes, "jobs": rows, **totals}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lab", action="store_true", help="the running lab's mon1")
    parser.add_argument("--hosts", type=int, default=0, help="a generated cluster of this many hosts")
    parser.add_argument("--minutes", type=float, default=3.0, help="how long the generated cluster is scraped")
    parser.add_argument("--window", default="10m", help="--lab: the PromQL range the scrape figures cover")
    args = parser.parse_args()
    if not args.lab and not args.hosts:
        parser.error("--lab or --hosts N")
    figures = []
    if args.lab:
        figures.append(lab_figures(args.window))
    if args.hosts:
        figures.append(generated_figures(args.hosts, args.minutes))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    kept = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    for f in figures:
        kept[f"{f['where']}-{f['hosts']}"] = {**f, "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    RESULTS.write_text(json.dumps(kept, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
