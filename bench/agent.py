#!/usr/bin/env python3
"""The first-boot agent's figures (issue 3): frozen start, offline apply, no-op re-run, replica join with 100k rows.

Goals: frozen start (--version) < 0.25 s; offline apply of the db bundle < 1 s; no-op re-run of a done host
< 0.3 s; the replica join is reported in seconds. Printed, not asserted. Results: bench/results/agent.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

HERE = Path(__file__).resolve().parent
PROJECT = HERE.parent
sys.path.insert(0, str(PROJECT))

from kiln.bundle import Bundle, DbPrimaryJoin, DbReplicaJoin  # noqa: E402
from kiln.freeze import OUT, freeze  # noqa: E402
from kiln.model import load_roles  # noqa: E402
from kiln.render import render  # noqa: E402
from kiln.secrets import SecretStore  # noqa: E402


def best(runs: int, argv: list[str], setup: Callable[[], None] | None = None) -> float:
    times = []
    for _ in range(runs):
        if setup:
            setup()
        started = time.perf_counter()
        result = subprocess.run(argv, capture_output=True, text=True, check=False)
        times.append(time.perf_counter() - started)
        if result.returncode != 0:
            raise SystemExit(f"{' '.join(argv)} exited {result.returncode}: {result.stdout}{result.stderr}")
    return min(times)


def replica_join_seconds(tmp: Path, bundles: dict[str, Bundle], rows: int, secrets: dict[str, str]) -> float:
    from firstboot.steps.join import db as join_db
    from tests.integration.agent_mariadb import start, template_datadir

    template = template_datadir(tmp)
    cnf = next(f.content for f in bundles["db1"].files if f.path.endswith("60-kiln.cnf"))
    replica_cnf = next(f.content for f in bundles["db2"].files if f.path.endswith("60-kiln.cnf"))
    primary_join, replica_join = bundles["db1"].join, bundles["db2"].join
    assert isinstance(primary_join, DbPrimaryJoin) and isinstance(replica_join, DbReplicaJoin)
    primary = start("primary", tmp, template, cnf)
    replica = None
    try:
        loopback = replace(primary_join, replica_hosts=("127.0.0.1",), app_hosts=("127.0.0.1",))
        join_db.join_primary(loopback, secrets.__getitem__, primary.root())
        p = primary.root()
        p.execute(
            "CREATE TABLE foobar.notes (id INT PRIMARY KEY, text VARCHAR(100), created TIMESTAMP DEFAULT NOW());\n"
        )
        batch = 10_000
        for start_id in range(0, rows, batch):
            values = ",".join(
                f"({i}, 'note number {i} with some text')" for i in range(start_id, min(rows, start_id + batch))
            )
            p.execute(f"INSERT INTO foobar.notes (id, text) VALUES {values};\n")
        replica = start("replica", tmp, template, replica_cnf)
        following = replace(replica_join, primary="127.0.0.1", port=primary.port)
        started = time.perf_counter()
        join_db.join_replica(following, secrets.__getitem__, replica.root())
        seconds = time.perf_counter() - started
        assert replica.root().value("SELECT COUNT(*) FROM foobar.notes") == str(rows)
        return seconds
    finally:
        for server in (replica, primary):
            if server:
                server.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="one run each and 10k rows instead of 100k")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "agent.json", help="where the figures go")
    opts = parser.parse_args()
    runs, rows = (1, 10_000) if opts.quick else (5, 100_000)
    if freeze(OUT) != 0:
        return 1
    binary = str(OUT / "firstboot")
    cluster = load_roles(PROJECT / "roles.yaml")
    with tempfile.TemporaryDirectory(prefix="kiln-agt-bench-") as tmp_name:
        tmp = Path(tmp_name)
        store = SecretStore(tmp / "secrets")
        store.ensure(cluster)
        rendered = render(cluster)
        bundles = rendered.bundles
        secrets = {n: store.value(n) for b in bundles.values() for n in b.secret_names()}
        (tmp / "db1.json").write_bytes(bundles["db1"].with_secret_values(secrets).to_json())
        (tmp / "_shared").mkdir()  # as ./inv render --out keeps them: the contents the bundle names by sha256
        for digest in bundles["db1"].shared_digests():
            (tmp / "_shared" / digest).write_text(rendered.shared[digest])
        start = best(runs, [binary, "--version"])

        def fresh_tree() -> None:
            shutil.rmtree(tmp / "root", ignore_errors=True)

        apply_argv = [binary, "apply", "--bundle", str(tmp / "db1.json"), "--root", str(tmp / "root"), "--no-services"]
        apply = best(runs, apply_argv, setup=fresh_tree)
        done = tmp / "done-host"
        (done / "var/lib/firstboot").mkdir(parents=True)
        (done / "var/lib/firstboot/state.json").write_text(json.dumps({"outcome": "done", "steps": {}}))
        (done / "var/lib/firstboot/done").write_text("{}\n")
        noop = best(runs, [binary, "run", "--root", str(done)])
        join = replica_join_seconds(tmp, bundles, rows, secrets)
    figures = [
        {"name": "frozen start (--version)", "value": round(start, 3), "unit": "s", "goal": "< 0.25 s"},
        {"name": "offline apply, db bundle", "value": round(apply, 3), "unit": "s", "goal": "< 1 s"},
        {"name": "no-op re-run, done host", "value": round(noop, 3), "unit": "s", "goal": "< 0.3 s"},
        {"name": f"replica join, {rows // 1000}k rows", "value": round(join, 2), "unit": "s", "goal": "reported"},
    ]
    for f in figures:
        print(f"{f['name']:<28} {f['value']} {f['unit']}  (goal {f['goal']})")
    result = {"machine": platform.node(), "cpus": os.cpu_count(), "runs": runs, "figures": figures}
    opts.out.parent.mkdir(parents=True, exist_ok=True)
    opts.out.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
