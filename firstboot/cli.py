"""firstboot run | converge [--once] | status [--json] [--wait [--timeout S]] | apply --bundle FILE --root DIR
[--no-services] | db-guard --config FILE | haproxy show|drain|ready [SERVER] | --version"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from firstboot import __version__, haproxy

if TYPE_CHECKING:
    from firstboot.steps.context import Tuning

IMDS_ENV = "FIRSTBOOT_IMDS_ENDPOINT"  # tests point the EC2 provider at a stand-in on loopback


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="firstboot",
        description="kiln's first-boot agent: fetch this host's signed bundle, apply it, join the cluster.",
    )
    p.add_argument("--version", action="version", version=f"firstboot {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="do what is left, report, exit 0 when provisioned (the systemd oneshot)")
    run.add_argument("--root", type=Path, default=Path("/"), help="prefix for every path the agent uses (tests)")
    run.add_argument(
        "--imds-endpoint", default=os.environ.get(IMDS_ENV, "http://169.254.169.254"), help="EC2 metadata service"
    )
    run.add_argument("--fetch-deadline", type=float, default=600.0, help="seconds to keep retrying the bundle fetch")
    run.add_argument("--check-deadline", type=float, help="seconds each health check may take to pass (default 300)")
    run.add_argument("--db-socket", default="/run/mysqld/mysqld.sock", help="the local MariaDB socket (db joins)")
    run.add_argument("-v", "--verbose", action="store_true")

    converge = sub.add_parser(
        "converge", help="after the first boot, keep following this host's bundle (the kiln-converge unit)"
    )
    converge.add_argument("--root", type=Path, default=Path("/"), help="prefix for every path the agent uses (tests)")
    converge.add_argument(
        "--once",
        action="store_true",
        help="one poll and, when there is a newer generation, one apply; exit 0 (nothing newer, or applied) or 1",
    )
    converge.add_argument(
        "--interval",
        type=float,
        default=10.0,
        help="seconds between polls when the server names none (it does, with Retry-After, when nothing is newer)",
    )
    converge.add_argument("--check-deadline", type=float, help=argparse.SUPPRESS)
    converge.add_argument("--db-socket", default="/run/mysqld/mysqld.sock", help=argparse.SUPPRESS)
    converge.add_argument("-v", "--verbose", action="store_true")

    status = sub.add_parser(
        "status",
        help="what is done, what failed and why",
        description="What the first-boot agent did on this host: each step, and for a failure the reason and the "
        "next action.",
        epilog="exit codes: 0 provisioned (joined the cluster), 1 failed, 2 usage error, 3 in progress (with "
        "--wait: still running at the timeout), 4 not run yet (with --wait: still not started at the timeout)",
    )
    status.add_argument("--root", type=Path, default=Path("/"))
    status.add_argument("--json", action="store_true", help="print the status as one JSON object (docs/agent.md)")
    status.add_argument(
        "--wait", action="store_true", help="first wait until the agent finished: provisioned, or failed"
    )
    status.add_argument(
        "--timeout",
        type=_seconds,
        default=None,
        metavar="S",
        help="with --wait: give up after S seconds (default 1800) and report the state as it is then",
    )

    apply = sub.add_parser("apply", help="apply a bundle file to a directory tree (offline: files, secrets)")
    apply.add_argument("--bundle", type=Path, required=True, help="bundle.json (as ./inv render writes it)")
    apply.add_argument("--root", type=Path, required=True, help="the tree to write into")
    apply.add_argument(
        "--no-services", action="store_true", help="write files only: no firewall, services, join or checks"
    )
    apply.add_argument(
        "--only",
        default="",
        help="comma-separated steps to run; live steps into a tree other than / "
        "run only when named here (e.g. --only firewall,join inside a network namespace)",
    )
    apply.add_argument("--join-deadline", type=float, default=300.0, help=argparse.SUPPRESS)
    apply.add_argument("--db-socket", default="/run/mysqld/mysqld.sock", help=argparse.SUPPRESS)

    guard = sub.add_parser(
        "db-guard",
        help="on a db host: fence this MariaDB when it is writable and cut off (the kiln-db-guard unit)",
        description="Keeps at most one writable db host: a writable server that sees neither the failover monitor "
        "nor a replica hearing it for a few seconds turns read-only (docs/database.md).",
    )
    guard.add_argument("--config", type=Path, default=Path("/etc/kiln/db-guard.json"))
    guard.add_argument("--db-socket", default="/run/mysqld/mysqld.sock")

    hap = sub.add_parser(
        "haproxy",
        help="on a load balancer: show the servers, drain one out of rotation, or return it (./inv roll)",
        description="HAProxy's runtime API through its admin socket. drain: no new sessions to SERVER, wait until "
        "its open ones finish (at most --timeout), then maint. ready: back in rotation, wait until its checks pass.",
        epilog="exit codes: 0 done, 1 failed (no such server, no socket, refused), 2 usage error, "
        "3 the --timeout ran out (drain: left draining; ready: in rotation, not UP yet)",
    )
    hap.add_argument("action", choices=("show", "drain", "ready"))
    hap.add_argument("server", nargs="?", help="drain, ready: the server, by its host name (e.g. web1)")
    hap.add_argument("--backend", default=haproxy.BACKEND)
    hap.add_argument("--timeout", type=_seconds, default=30.0, metavar="S", help="seconds to wait (default 30)")
    hap.add_argument("--socket", default=haproxy.ADMIN_SOCKET, help=argparse.SUPPRESS)
    hap.add_argument("--json", action="store_true", help="show: one JSON list")
    return p


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds, got {text!r}") from None
    if not 0 <= value <= 86400:
        raise argparse.ArgumentTypeError("expected 0 to 86400 seconds")
    return value


def main(argv: list[str] | None = None) -> int:
    p = parser()
    args = p.parse_args(argv)
    if args.command == "status":
        return _status(p, args)
    from firstboot import log
    from firstboot.steps.context import Tuning

    if args.command == "apply":
        from firstboot.apply import apply

        log.setup(None)
        only = tuple(s for s in args.only.split(",") if s)
        tuning = Tuning(join_deadline=args.join_deadline, db_socket=args.db_socket)
        return apply(args.bundle, args.root, live=not args.no_services, only=only, tuning=tuning)
    if args.command == "converge":
        return _converge(args)
    if args.command == "db-guard":
        return _db_guard(args)
    if args.command == "haproxy":
        return _haproxy(p, args)
    from firstboot.backoff import Backoff
    from firstboot.paths import Paths
    from firstboot.run import RunOptions, run
    from firstboot.sources import Settings

    paths = Paths(args.root)
    if paths.done.exists():
        return run(RunOptions(paths=paths))  # the done check comes before any set-up
    log.setup(paths.log, verbose=args.verbose)
    opts = RunOptions(
        paths=paths,
        sources=Settings(imds_endpoint=args.imds_endpoint),
        tuning=_tuning(args),
        fetch=Backoff(deadline=args.fetch_deadline),
    )
    return run(opts)


def _status(p: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    from firstboot import status
    from firstboot.paths import Paths

    if args.timeout is not None and not args.wait:
        p.error("status: --timeout goes with --wait")  # exits 2
    paths = Paths(args.root)
    if args.wait:
        status.wait(paths, status.WAIT_TIMEOUT if args.timeout is None else args.timeout)
    text, code = status.to_json(paths) if args.json else status.render(paths)
    print(text)
    return code


def _tuning(args: argparse.Namespace) -> Tuning:
    """The step tuning from the command line; Tuning's own defaults where an option is not given."""
    from firstboot.steps.context import Tuning

    given = {} if args.check_deadline is None else {"check_deadline": args.check_deadline}
    return Tuning(db_socket=args.db_socket, **given)


def _converge(args: argparse.Namespace) -> int:
    import signal
    import threading

    from firstboot import log
    from firstboot.converge import ConvergeOptions, converge, refusal
    from firstboot.paths import Paths

    paths = Paths(args.root)
    if refusal(paths) is None:  # a refused start writes no log
        log.setup(paths.log, verbose=args.verbose)
    stopping = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):  # stop between two steps, never in the middle of one
        signal.signal(signum, lambda *_: stopping.set())
    opts = ConvergeOptions(
        paths=paths,
        tuning=_tuning(args),
        interval=args.interval,
        once=args.once,
    )
    return converge(opts, stopping)


def _db_guard(args: argparse.Namespace) -> int:
    import signal
    import threading

    from firstboot import dbguard, log

    log.setup(None)  # the journal
    stopping = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stopping.set())
    return dbguard.run(args.config, args.db_socket, stopping.is_set)


def _haproxy(p: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    import json

    if args.action != "show" and not args.server:
        p.error(f"haproxy {args.action}: name the server (e.g. web1)")  # exits 2
    try:
        if args.action == "show":
            found = haproxy.servers(args.socket)
            if args.json:
                print(json.dumps([s.as_json() for s in found]))
            for s in [] if args.json else found:
                print(f"{s.backend}/{s.name} {s.status} sessions={s.sessions}")
        elif args.action == "drain":
            d = haproxy.drain(args.socket, args.backend, args.server, args.timeout)
            print(
                f"{args.server}: drained from {args.backend} in {d.seconds:.1f} s "
                f"({d.sessions} session(s) open at the start); in maint"
            )
        else:
            took = haproxy.ready(args.socket, args.backend, args.server, args.timeout)
            print(f"{args.server}: back in rotation on {args.backend}, UP after {took:.1f} s")
    except haproxy.Bound as e:
        print(f"firstboot haproxy {args.action}: {e}", file=sys.stderr)
        return 3
    except haproxy.RuntimeApiError as e:
        print(f"firstboot haproxy {args.action}: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
