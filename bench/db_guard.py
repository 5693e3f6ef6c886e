#!/usr/bin/env python3
"""What the db guard (`firstboot db-guard`) costs a db host: CPU seconds per minute, on a writable MariaDB (the
db role's config) whose monitor connection speaks every second, as on a lab or production primary. Under QEMU's
emulation (the lab, CI) the same work costs many times more: the figure is what to multiply.

Prints and writes bench/results/db_guard.json; never asserted.

    python bench/db_guard.py             60 s
    python bench/db_guard.py --quick     20 s
"""

from __future__ import annotations

import argparse
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pymysql

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent)]  # the project, for the test helpers that start a server

from firstboot.dbguard import MONITOR_USER, GuardConfig  # noqa: E402
from kiln.benchrun import record  # noqa: E402
from kiln.project import Project  # noqa: E402
from kiln.secrets import SecretStore  # noqa: E402
from tests.integration.agent_mariadb import start, template_datadir  # noqa: E402
from tests.integration.hostroot import applied_bundles  # noqa: E402

CNF = "/etc/mysql/mariadb.conf.d/60-kiln.cnf"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=60)
    p.add_argument("--quick", action="store_true")
    opts = p.parse_args()
    seconds = 20 if opts.quick else opts.seconds
    cluster = Project().load_or_report()
    if cluster is None:
        return 1
    base = Path(tempfile.mkdtemp(prefix="kiln-bench-guard-"))
    base.chmod(0o711)
    secrets = SecretStore(base / "secrets")
    secrets.ensure(cluster)
    bundle = applied_bundles(cluster, secrets)["db1"]
    cnf = next(f.content for f in bundle.files if f.path == CNF).replace("read_only = ON", "read_only = OFF")
    server = start("db1", base, template_datadir(base), cnf)
    stop = threading.Event()
    try:
        server.root().execute(
            f"CREATE USER {MONITOR_USER}@'127.0.0.1' IDENTIFIED BY 'pw'; GRANT PROCESS ON *.* TO "
            f"{MONITOR_USER}@'127.0.0.1';"
        )

        def monitor() -> None:  # the monitor's kept connection, a statement a second
            conn = pymysql.connect(host="127.0.0.1", port=server.port, user=MONITOR_USER, password="pw")
            while not stop.wait(1.0):
                conn.cursor().execute("SELECT @@read_only")
            conn.close()

        threading.Thread(target=monitor, daemon=True).start()
        (base / "pw").write_text("unused\n")
        config = GuardConfig(
            address="127.0.0.1", port=server.port, peers=(), peer_user="repl", password_file=str(base / "pw")
        )
        (base / "guard.json").write_text(config.to_json())
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        guard = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "firstboot",
                "db-guard",
                "--config",
                str(base / "guard.json"),
                "--db-socket",
                server.socket,
            ],
            cwd=HERE.parent,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(seconds)
        guard.terminate()
        guard.wait(30)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        writable = server.root().value("SELECT @@read_only") == "0"
    finally:
        stop.set()
        server.stop()
        shutil.rmtree(base, ignore_errors=True)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    figures = [
        {
            "name": "guard CPU per minute (its own and its children's)",
            "value": round(cpu * 60 / seconds, 2),
            "unit": "s",
        },
        {"name": "share of one core", "value": round(100 * cpu / seconds, 1), "unit": "%"},
        {"name": "the primary stayed writable (no fence)", "value": writable, "unit": ""},
    ]
    record("db_guard", figures, seconds=seconds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
