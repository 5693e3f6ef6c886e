#!/usr/bin/env python3
"""The data tier's failover, measured on three real MariaDB servers in network namespaces (the failover tests'
cluster, tests/integration/db_cluster.py), while the demo app's writer logic writes every 50 ms:

- replica lag under the write loop (Seconds_Behind_Master, sampled every 0.5 s);
- switchover there and back: the write pause (from the old primary's read_only to the new one's writable);
- the primary's mariadbd killed: seconds to the promotion, the writer's longest gap (its write unavailability),
  acknowledged against present rows, seconds until the old primary follows the new one after its restart;
- last (it leaves the old primary errant): the primary's network cut: when its guard fenced it, when a replica was
  promoted, samples with two writable hosts (the goal: none).

Goals (issue 15): write unavailability on a lost primary < 30 s (the detection threshold, 10 s, reported apart),
acknowledged = present, switchover pause < 5 s. Prints the figures and writes bench/results/db.json; never asserted.
Needs root (network namespaces). Takes about 2 minutes per round.

    python bench/db.py               3 rounds of switchover and kill, then the split
    python bench/db.py --quick       1 round
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent)]  # the project, for the test helpers that build the cluster

from kiln.benchrun import record  # noqa: E402
from kiln.db.failover import DETECT_SECONDS, switchover  # noqa: E402
from kiln.project import Project  # noqa: E402
from kiln.secrets import SecretStore  # noqa: E402
from tests.integration.db_cluster import (  # noqa: E402
    Cluster3,
    caught_up,
    follows,
    kill_drill,
    split_drill,
    there_and_back,
    three_servers,
)


def lag_under_writes(c: Cluster3, seconds: float = 20) -> float:
    """The highest Seconds_Behind_Master of any replica while the writer runs."""
    r = c.replication()
    c.start_writer("lag", c.lab.ns("app1"))
    worst = 0
    try:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            for s in r.see_all():
                if s.lag is not None:
                    worst = max(worst, s.lag)
            time.sleep(0.5)
    finally:
        c.stop_writers()
        r.close()
    return float(worst)


def switchover_pauses(c: Cluster3) -> tuple[float, float, int]:
    there, (back, _), writes = there_and_back(c, "db2", "db1")
    caught_up(c, "db1", writes.texts)
    return there.pause, back.pause, len(writes.failed)


def killed_primary(c: Cluster3) -> dict[str, float]:
    d = kill_drill(c)
    lost = len(d.writes.texts - c.notes(d.new))
    r = c.replication()
    try:  # back to the first primary for the next round
        follows(c, d.new)
        switchover(r, d.old)
        follows(c, d.old)
    finally:
        r.close()
    return {
        "promoted_s": d.promoted - d.began,
        "write_gap_s": d.writes.longest_gap("kill"),
        "acknowledged": len(d.writes.acked),
        "lost": lost,
        "rejoined_s": d.after - d.back,
    }


def split_primary(c: Cluster3) -> dict[str, float]:
    d = split_drill(c)
    return {
        "fenced_s": d.fenced - d.began,
        "promoted_s": d.promoted - d.began,
        "double_writable_samples": len(d.sampler.double),
        "samples": d.sampler.samples,
        "lost": len(d.writes.texts - c.notes(d.new)),
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="one round")
    p.add_argument("--rounds", type=int, default=3)
    opts = p.parse_args()
    rounds = 1 if opts.quick else opts.rounds
    cluster = Project().load_or_report()
    if cluster is None:
        return 1
    secrets = SecretStore(Path(tempfile.mkdtemp(prefix="kiln-bench-db-")) / "secrets")
    secrets.ensure(cluster)
    began = time.monotonic()
    with three_servers(cluster, secrets) as c:
        lag = lag_under_writes(c)
        pauses, kills = [], []
        for n in range(rounds):
            there, back, failed = switchover_pauses(c)
            pauses += [there, back]
            kills.append(killed_primary(c))
            print(f"round {n + 1}: switchover {there:.3f}/{back:.3f}s ({failed} writes failed); kill {kills[-1]}")
        split = split_primary(c)
    figures: list[dict[str, object]] = [
        {"name": "replica lag under the write loop (max)", "value": lag, "unit": "s"},
        {
            "name": "switchover write pause (median)",
            "value": round(statistics.median(pauses), 3),
            "unit": "s",
            "goal": "< 5 s",
        },
        {"name": "switchover write pause (max)", "value": round(max(pauses), 3), "unit": "s"},
        {"name": "detection threshold", "value": DETECT_SECONDS, "unit": "s"},
        {
            "name": "killed primary: promoted after (median)",
            "value": round(statistics.median(k["promoted_s"] for k in kills), 1),
            "unit": "s",
        },
        {
            "name": "killed primary: write unavailability (max)",
            "value": round(max(k["write_gap_s"] for k in kills), 1),
            "unit": "s",
            "goal": "< 30 s",
        },
        {
            "name": "killed primary: acknowledged rows lost",
            "value": sum(k["lost"] for k in kills),
            "unit": "rows",
            "goal": "0",
        },
        {
            "name": "killed primary: old primary follows the new one after its restart (median)",
            "value": round(statistics.median(k["rejoined_s"] for k in kills), 1),
            "unit": "s",
        },
        {"name": "split primary: fenced by its guard after", "value": round(split["fenced_s"], 1), "unit": "s"},
        {"name": "split primary: replica promoted after", "value": round(split["promoted_s"], 1), "unit": "s"},
        {
            "name": "split primary: samples with two writable hosts",
            "value": split["double_writable_samples"],
            "unit": f"of {split['samples']}",
            "goal": "0",
        },
        {"name": "split primary: acknowledged rows lost", "value": split["lost"], "unit": "rows", "goal": "0"},
    ]
    record("db", figures, rounds=rounds, seconds=round(time.monotonic() - began))
    return 0


if __name__ == "__main__":
    sys.exit(main())
