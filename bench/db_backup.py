#!/usr/bin/env python3
"""Backup and restore of a sizeable database (issue 15: 1 GB): a primary and its replica (the db role's rendered
config) on loopback, a moto S3 server, and kiln's own backup runner and restore-test (kiln/db/): fill the primary
to --mb of table data, back the replica up (streamed, zstd, sealed, uploaded), write on, archive the binlogs, then
restore-test the backup plus binlogs into a scratch server and compare with the checkpoint.

Prints and writes bench/results/db_backup.json: data size, backup time and stored size, restore time per phase,
the RPO at the end. Never asserted. Needs root (restore-test runs the scratch server as the OS user mysql).

    python bench/db_backup.py             1024 MB
    python bench/db_backup.py --quick     100 MB
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent)]  # the project, for the test helpers that start the servers and moto

from kiln.benchrun import record  # noqa: E402
from kiln.db.backup import Retention, archive, run_backup  # noqa: E402
from kiln.db.restore import plan_restore, restore_test  # noqa: E402
from kiln.db.store import Store, Target  # noqa: E402
from kiln.project import Project  # noqa: E402
from kiln.secrets import SecretStore  # noqa: E402
from tests.integration.agent_mariadb import Mariadb, start, template_datadir  # noqa: E402
from tests.integration.hostroot import applied_bundles  # noqa: E402
from tests.integration.test_db_backup import BUCKET, CNF, caught_up, follow, source_of  # noqa: E402
from tests.moto_server import create_bucket, moto_server  # noqa: E402

ROW = "CONCAT(MD5(RAND()), REPEAT(' the quick brown fox jumps over the lazy dog', 20))"  # ~900 bytes, like text


def data_mb(server: Mariadb) -> float:
    value = server.root().value(
        "SELECT SUM(DATA_LENGTH + INDEX_LENGTH) FROM information_schema.TABLES WHERE TABLE_SCHEMA = 'foobar'"
    )
    return int(value or 0) / 2**20


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mb", type=int, default=1024, help="table data to fill the primary with")
    p.add_argument("--quick", action="store_true", help="100 MB")
    opts = p.parse_args()
    target_mb = 100 if opts.quick else opts.mb
    cluster = Project().load_or_report()
    if cluster is None:
        return 1
    base = Path(tempfile.mkdtemp(prefix="kiln-bench-backup-"))
    base.chmod(0o711)
    secrets = SecretStore(base / "secrets")
    secrets.ensure(cluster)
    bundles = applied_bundles(cluster, secrets)
    cnf = {name: next(f.content for f in bundles[name].files if f.path == CNF) for name in ("db1", "db2")}
    figures: list[dict[str, object]] = []
    started = []
    try:
        with moto_server() as endpoint:
            create_bucket(endpoint, BUCKET)
            store = Store(
                Target(bucket=BUCKET, endpoint=endpoint, access_key_id="testing", secret_access_key="testing")
            )
            template = template_datadir(base)
            primary = start("db1", base, template, cnf["db1"].replace("read_only = ON", "read_only = OFF"))
            started.append(primary)
            replica = start("db2", base, template, cnf["db2"])
            started.append(replica)
            follow(primary, replica)
            primary.root().execute(
                "CREATE DATABASE foobar; CREATE TABLE foobar.notes (id BIGINT AUTO_INCREMENT PRIMARY KEY, "
                f"text VARCHAR(1000)) ENGINE=InnoDB; INSERT INTO foobar.notes (text) SELECT {ROW} "
                "FROM foobar.seq_1_to_1000;"
            )
            began = time.monotonic()
            while data_mb(primary) < target_mb:  # doubling, each copy with a new random prefix per row
                primary.root().execute(f"INSERT INTO foobar.notes (text) SELECT {ROW} FROM foobar.notes LIMIT 500000;")
            caught_up(primary, replica, seconds=3600)
            size = data_mb(replica)
            figures.append({"name": "table data on the replica", "value": round(size), "unit": "MiB"})
            figures.append({"name": "fill and replicate", "value": round(time.monotonic() - began), "unit": "s"})
            key = secrets.backup_key()
            t = time.monotonic()
            manifest = run_backup(store, source_of(replica), key, Retention(keep=3, keep_days=0), workdir=base)
            figures.append(
                {"name": "backup (stream, zstd, seal, upload)", "value": round(time.monotonic() - t, 1), "unit": "s"}
            )
            figures.append({"name": "backup raw stream", "value": round(manifest["raw_bytes"] / 2**20), "unit": "MiB"})
            figures.append({"name": "backup stored", "value": round(manifest["stored_bytes"] / 2**20), "unit": "MiB"})
            primary.root().execute(f"INSERT INTO foobar.notes (text) SELECT {ROW} FROM foobar.seq_1_to_20000;")
            caught_up(primary, replica)
            t = time.monotonic()
            archive(store, source_of(replica), key, workdir=base)
            figures.append(
                {"name": "archive (checkpoint + binlogs)", "value": round(time.monotonic() - t, 1), "unit": "s"}
            )
            report = restore_test(store, key, plan_restore(store), workdir=base)
            for phase, seconds in report["seconds"].items():
                figures.append(
                    {"name": f"restore-test: {phase.replace('_', ' ')}", "value": round(seconds, 1), "unit": "s"}
                )
            figures.append({"name": "RPO at the end", "value": report["rpo_seconds"], "unit": "s"})
    finally:
        for server in started:
            server.stop()
        shutil.rmtree(base, ignore_errors=True)
    record("db_backup", figures, target_mb=target_mb)
    return 0


if __name__ == "__main__":
    sys.exit(main())
