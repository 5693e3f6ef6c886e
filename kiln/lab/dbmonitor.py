"""The db failover monitor in the lab: `python -m kiln.lab.dbmonitor [--roles PATH]`, started by `lab up` inside the
lab's namespace, whose address is in the admin network (so the db hosts let it in, as kiln_monitor), with the lab's
secrets; its memory, lock and events (db-events.jsonl) under state/lab, its log in state/lab/logs/db-monitor.log; its
view and events go to the lab's provisioning server (the dashboard's database panel).
It is the production monitor (kiln.db.topology.monitor), only started by the lab instead of systemd."""

from __future__ import annotations

import argparse
import signal
import sys
import threading

from kiln.db import topology
from kiln.lab.cli import lab_of
from kiln.project import Project
from kiln.secrets import SecretStore

NAME = "db-monitor"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kiln.lab.dbmonitor")
    parser.add_argument("--roles")
    args = parser.parse_args(argv)
    lab = lab_of(Project(roles=args.roles))
    if lab is None:
        return 1
    stopping = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stopping.set())
    secrets = SecretStore(lab.secrets)
    r = topology.replication_of(lab.cluster, secrets)
    reporter = topology.reporter_for(lab.cluster, secrets, lab.server_url)  # the lab's server: its dashboard
    try:
        return topology.monitor(lab.root, r, stopping, reporter)
    finally:
        r.close()
        reporter.close()


if __name__ == "__main__":
    sys.exit(main())
