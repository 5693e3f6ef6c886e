"""A write loop through the demo app's own writer logic (kilnapp.db.add_note): one note at a time, each printed
when MariaDB acknowledged it ("ack SENT TIME TEXT DB") or not ("err TIME TEXT ERROR"), until SIGTERM. Run in a
host's network namespace by the failover tests; they compare what was acknowledged with what the surviving primary
holds."""

from __future__ import annotations

import argparse
import signal
import sys
import time
from pathlib import Path

import pymysql

import kilnapp.db
from kilnapp.config import Config
from kilnapp.db import Connections, add_note


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--tag", required=True)
    p.add_argument("--hosts", required=True, help="db addresses, the named primary first")
    p.add_argument("--port", type=int, default=3306)
    p.add_argument("--database", required=True)
    p.add_argument("--password-file", type=Path, required=True)
    p.add_argument("--interval", type=float, default=0.05)
    p.add_argument("--count", type=int, default=100000, help="at most this many writes")
    p.add_argument(
        "--query-timeout",
        type=float,
        default=kilnapp.db.QUERY_TIMEOUT,
        help="seconds a statement may take (above the semi-sync timeout: a commit acknowledged without a replica "
        "once the timeout ran out is seen as acknowledged, and the test can catch it)",
    )
    args = p.parse_args()
    kilnapp.db.QUERY_TIMEOUT = args.query_timeout
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    hosts = args.hosts.split(",")
    config = Config(
        host=args.tag,
        db_name=args.database,
        db_user="app",
        db_password_file=args.password_file,
        db_write_host=hosts[0],
        db_read_host=hosts[0],
        db_port=args.port,
        db_hosts=tuple(hosts),
    )
    db = Connections(config)
    for i in range(args.count):
        if stop:
            break
        text = f"{args.tag}-{i}"
        sent = time.time()
        try:
            note = add_note(db, text)
            print(f"ack {sent:.3f} {time.time():.3f} {text} {note['db']}", flush=True)
        except (pymysql.MySQLError, OSError) as e:
            print(f"err {time.time():.3f} {text} {str(e)[:120]!r}", flush=True)
        time.sleep(args.interval)
    print("done", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
