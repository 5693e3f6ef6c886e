"""./inv db ACTION: functions that return an exit code and print for an operator.

    backup         a base backup of the replica, a checkpoint, its binary logs archived, old backups expired
    archive        a checkpoint and the binary logs closed since the last run (run it often: it bounds the RPO)
    backups        every backup: id, host, time, GTID, sizes; the archived binlogs and checkpoints
    restore-test   a backup and binlogs restored into a scratch server here, compared with a checkpoint
    schedule       the runner's systemd timers for backup and archive, written to --out DIR
    status         every db host: primary or replica, GTID position, whom it follows, lag, semi-sync
    switchover     --to HOST: a planned change of primary, no write lost
    monitor        the failover monitor, in the foreground (its systemd unit: schedule)

The runner (the machine this runs on) holds the store's credentials and the sealing key; it reaches the replica
with `ssh USER@ADDRESS` (the operator's ssh configuration and keys; USER is roles.yaml access.admin_user unless
--ssh-user names another) and runs mariadb-backup, mariadb and cat there through `sudo -n`.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import json
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from kiln.db.backup import BackupError, Retention, archive, list_backups, list_binlogs, list_checkpoints, run_backup
from kiln.db.gtid import GtidError
from kiln.db.replication import ReplicationError
from kiln.db.report import report_backup
from kiln.db.restore import RestoreError, plan_restore, restore_test
from kiln.db.schedule import ScheduleError, units
from kiln.db.scratch import ScratchError
from kiln.db.seal import SealError
from kiln.db.source import DbHost, SourceError
from kiln.db.store import Store, StoreError, Target
from kiln.fsutil import ensure_file
from kiln.model import Cluster, Host
from kiln.operator import Server
from kiln.project import Project
from kiln.roles.db import BackupSettings, backup_source, settings_of
from kiln.run import CommandError
from kiln.secrets import SecretMissing, SecretStore

ACTIONS = ("backup", "archive", "backups", "restore-test", "schedule", "status", "switchover", "monitor")
TOPOLOGY = ("status", "switchover", "monitor")  # need the db hosts, not the backup store
FAILURES = (
    BackupError,
    RestoreError,
    ScratchError,
    ScheduleError,
    SealError,
    SourceError,
    StoreError,
    SecretMissing,
    GtidError,
    CommandError,
    ReplicationError,
)


def _err(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return str(n)


def _settings(cluster: Cluster) -> BackupSettings:
    settings = settings_of(cluster).backup
    if settings is None:
        raise BackupError("roles.db.backup is not set: name the S3 bucket there first (docs/database.md)")
    return settings


def store_of(settings: BackupSettings, secrets: SecretStore) -> Store:
    key_id, secret = secrets.s3_credentials(settings.credentials)
    return Store(
        Target(
            bucket=settings.bucket,
            prefix=settings.prefix,
            endpoint=settings.endpoint,
            region=settings.region,
            access_key_id=key_id,
            secret_access_key=secret,
        )
    )


def _guarded(action: str, body: Callable[[], int]) -> int:
    try:
        return body()
    except FAILURES as e:
        _err(f"db {action}: {e}")
        return 1


def backups_table(store: Store) -> list[str]:
    """The lines ./inv db backups prints."""
    manifests = list_backups(store)
    lines = [f"backups in {store.target.where}:"]
    if not manifests:
        lines.append("  none yet: ./inv db backup takes one")
    else:
        lines.append(
            f"  {'ID':<26} {'HOST':<8} {'TIME (UTC)':<20} {'GTID':<16} {'SIZE':>10} {'STORED':>10} {'TOOK':>6}"
        )
        for m in manifests:
            lines.append(
                f"  {m['id']:<26} {m['host']:<8} {m['started']:<20} {m['gtid']:<16} {_size(m['raw_bytes']):>10} "
                f"{_size(m['stored_bytes']):>10} {m['seconds']:>5.1f}s"
            )
    binlogs = list_binlogs(store)
    if binlogs:
        first, last = binlogs[0], binlogs[-1]
        stored = sum(b["stored_bytes"] for b in binlogs)
        lines.append(
            f"binlogs: {len(binlogs)} files ({_size(stored)} stored), GTID {first['start'] or '-'} .. {last['end']}, "
            f"newest transaction {last['last_time'] or '-'}"
        )
    checkpoints = list_checkpoints(store)
    if checkpoints:
        lines.append(
            f"checkpoints: {len(checkpoints)}, newest at GTID {checkpoints[-1]['gtid']} ({checkpoints[-1]['time']})"
        )
    return lines


def run(
    project: Project,
    action: str,
    *,
    secrets: str | None = None,
    backup: str | None = None,
    to_gtid: str | None = None,
    to_time: str | None = None,
    workdir: str | None = None,
    as_json: bool = False,
    keep: bool = False,
    out: str | None = None,
    lab: bool = False,
    to: str | None = None,
    ssh_user: str | None = None,
) -> int:
    if action not in ACTIONS:
        _err(f"db: unknown action {action!r} (one of: {', '.join(ACTIONS)})")
        return 2
    if (action == "switchover") != bool(to):
        _err("db switchover needs --to HOST (and only switchover takes it)")
        return 2
    cluster = project.load_or_report()
    if cluster is None:
        return 1
    store_secrets = SecretStore(Path(secrets) if secrets else project.secrets)
    if action in TOPOLOGY:
        from kiln.db import topology

        return _guarded(
            action, lambda: topology.run(project, cluster, store_secrets, action, to=to, as_json=as_json, lab=lab)
        )

    def body() -> int:
        if action == "schedule":
            return _schedule(project, cluster, out)
        settings = _settings(cluster)
        store = store_of(settings, store_secrets)
        if action == "backups":
            store.check()
            if as_json:
                listing: dict[str, Any] = {
                    "backups": list_backups(store),
                    "binlogs": list_binlogs(store),
                    "checkpoints": [{k: c[k] for k in ("gtid", "time", "host")} for c in list_checkpoints(store)],
                }
                print(json.dumps(listing, indent=2))
            else:
                print("\n".join(backups_table(store)))
            return 0
        key = store_secrets.backup_key()
        if action in ("backup", "archive"):
            host = backup_source(cluster)
            user = ssh_user or cluster.access.admin_user
            source = _lab_host(cluster, host) if lab else DbHost.over_ssh(host.name, str(host.ip), user)
            with _runner_lock(project), tempfile.TemporaryDirectory(prefix="kiln-db-", dir=workdir) as tmp:
                if action == "backup":
                    retention = Retention(keep=settings.keep, keep_days=settings.keep_days)
                    server = Server.of(cluster, store_secrets.root)  # the dashboard shows the last backup
                    reported = functools.partial(report_backup, server, log=_err)
                    run_backup(store, source, key, retention, workdir=Path(tmp), report=reported)
                else:
                    store.check()
                    archive(store, source, key, workdir=Path(tmp))
            return 0
        store.check()
        plan = plan_restore(store, backup_id=backup, to_gtid=to_gtid, to_time=to_time)
        report = restore_test(store, key, plan, workdir=Path(workdir) if workdir else None, keep=keep)
        if as_json:
            print(json.dumps(report, indent=2))
        else:
            print(restore_summary(report))
        return 0

    return _guarded(action, body)


def _lab_host(cluster: Cluster, host: Host) -> DbHost:
    """The lab's db host: this process enters the lab's network namespace (the bucket must answer there too) and
    ssh uses the lab's key (kiln.lab.ssh)."""
    from kiln.lab import netns
    from kiln.lab import ssh as lab_ssh
    from kiln.lab.layout import Lab

    if not netns.exists():
        raise BackupError("the lab is down: ./inv lab up first")
    netns.enter()
    lab = Lab(cluster)
    return DbHost.over_ssh(host.name, str(host.ip), lab.admin_user, lab_ssh.options(lab))


@contextlib.contextmanager
def _runner_lock(project: Project) -> Iterator[None]:
    """One backup or archive run at a time on this runner (a timer's run waits for a manual one): they share the
    replica's SQL thread and binary log."""
    project.state.mkdir(parents=True, exist_ok=True)
    with open(project.state / "db-runner.lock", "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            _err("db: another backup or archive run is under way here; waiting for it")
            fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _schedule(project: Project, cluster: Cluster, out: str | None) -> int:
    if not out:
        _err("db schedule: --out DIR is required (where the unit files are written)")
        return 2
    directory = Path(out)
    written = units(cluster, project=project.root, roles=project.roles_path.resolve())
    for name, text in written.items():
        ensure_file(directory / name, text.encode(), 0o644)
        print(f"wrote {directory / name}")
    timers = sorted(name for name in written if name.endswith(".timer"))
    print(
        f"install: cp {' '.join(f'{directory}/{n}' for n in written)} /etc/systemd/system/ && systemctl daemon-reload "
        f"&& systemctl enable --now kiln-db-monitor.service {' '.join(timers)}".rstrip()
    )
    return 0


def restore_summary(report: dict[str, Any]) -> str:
    s = report["seconds"]
    phases = ", ".join(f"{k.replace('_', ' ')} {v:.1f}s" for k, v in s.items() if k != "total")
    return (
        f"restore-test passed: backup {report['backup']} (GTID {report['from_gtid']}) + {report['binlog_files']} "
        f"binlog files ({report['transactions']} transactions) = the source at GTID {report['to_gtid']} "
        f"({report['checkpoint_time']}): {report['tables']} tables, {report['rows']} rows, every count and "
        f"CHECKSUM TABLE equal\n"
        f"restore time: {s['total']:.1f}s ({phases}); {_size(report['stored_bytes'])} stored -> "
        f"{_size(report['restored_bytes'])} restored\n"
        f"RPO now: {report['rpo_seconds']}s (the newest checkpoint, {report['newest_checkpoint']}, is what a restore "
        "reaches today; ./inv db archive moves it)"
    )
