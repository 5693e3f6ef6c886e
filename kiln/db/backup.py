"""Backups of a replica, off the db hosts: a base backup, checkpoints, binary log archiving, retention.

The backup runner (the operator's or provisioning host) pulls everything: it starts `mariadb-backup --backup
--stream=mbstream --slave-info --safe-slave-backup` on a replica through the host's command transport (ssh as
root), compresses and seals the stream here (kiln.db.seal, the key never leaves secrets/) and uploads it with
boto3 (kiln.db.store, the credentials never leave secrets/). The primary is never touched: a host that
replicates from nobody is refused.

A checkpoint is the source's data at one GTID: the replica's SQL thread is paused, its gtid_slave_pos read, the
row count and CHECKSUM TABLE of every table taken, then the thread resumes. restore-test compares with it.

Archiving copies the replica's closed binary logs (it runs log_slave_updates: its binlog holds every transaction
under the primary's GTIDs), each with its GTID range; a checkpoint run first flushes the binary log, so the
archive always ends exactly at the newest checkpoint.
"""

from __future__ import annotations

import datetime as dt
import os
import re
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from kiln.db.gtid import Position
from kiln.db.seal import parameters, seal
from kiln.db.source import DbHost, SourceError
from kiln.db.store import Store
from kiln.run import CommandError, streaming

SYSTEM_SCHEMAS = ("mysql", "information_schema", "performance_schema", "sys")
READ_BYTES = 1 << 20
PROGRESS_SECONDS = 5.0

Progress = Callable[[str], None]


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(microsecond=0)


def _iso(t: dt.datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


def ident(name: str) -> str:
    return "`" + name.replace("`", "``") + "`"


class BackupError(Exception):
    pass


@dataclass(frozen=True)
class Retention:
    """A backup is deleted when it is neither among the `keep` newest nor younger than `keep_days`."""

    keep: int = 7
    keep_days: int = 14


def require_replica(source: DbHost) -> dict[str, str]:
    """Its SHOW SLAVE STATUS; BackupError when the host replicates from nobody (the primary, or a lone server)."""
    status = source.slave_status()
    if not status:
        raise BackupError(
            f"{source.name} replicates from nobody: backups are taken from a replica so that the primary is never "
            "loaded (roles.db.backup.from names one)"
        )
    return status


def table_sums(host: DbHost) -> dict[str, list[str]]:
    """`schema.table` -> [row count, CHECKSUM TABLE] for every base table outside MariaDB's own schemas."""
    excluded = ", ".join(f"'{s}'" for s in SYSTEM_SCHEMAS)
    tables = host.sql(
        "SELECT TABLE_SCHEMA, TABLE_NAME FROM information_schema.TABLES "
        f"WHERE TABLE_TYPE = 'BASE TABLE' AND TABLE_SCHEMA NOT IN ({excluded}) ORDER BY 1, 2"
    )
    if not tables:
        return {}
    statements = "".join(
        f"SELECT COUNT(*) FROM {ident(s)}.{ident(t)};\nCHECKSUM TABLE {ident(s)}.{ident(t)};\n" for s, t in tables
    )
    rows = host.sql(statements, timeout=3600)
    if len(rows) != 2 * len(tables):
        raise SourceError(
            f"{host.name}: expected {2 * len(tables)} result rows from the table checksums, got {len(rows)}"
        )
    return {f"{s}.{t}": [rows[2 * i][0], rows[2 * i + 1][1]] for i, (s, t) in enumerate(tables)}


def take_checkpoint(store: Store, source: DbHost, *, flush: bool, progress: Progress = _stderr) -> dict[str, Any]:
    """Pause the replica's SQL thread, record its GTID and every table's rows and checksum (and with `flush`,
    close its binary log there), resume; store and return the checkpoint."""
    status = require_replica(source)
    running = status.get("Slave_SQL_Running") == "Yes"
    started = time.monotonic()
    if running:
        source.sql("STOP SLAVE SQL_THREAD")
    try:
        gtid = source.value("SELECT @@gtid_slave_pos")
        tables = table_sums(source)
        if flush:
            source.sql("FLUSH BINARY LOGS")
    finally:
        if running:
            source.sql("START SLAVE SQL_THREAD")
    now = utcnow()
    checkpoint = {"gtid": gtid, "time": _iso(now), "host": source.name, "tables": tables}
    store.put_json(f"checkpoints/{now:%Y%m%dT%H%M%SZ}-{source.name}-{gtid.replace(',', '_')}.json", checkpoint)
    paused = time.monotonic() - started
    progress(f"checkpoint: {source.name} at GTID {gtid}, {len(tables)} tables ({paused:.1f}s SQL thread paused)")
    return checkpoint


def _counted(stream: IO[bytes], what: str, progress: Progress, total: list[int]) -> Iterator[bytes]:
    last = time.monotonic()
    while data := stream.read(READ_BYTES):
        total[0] += len(data)
        if time.monotonic() - last >= PROGRESS_SECONDS:
            progress(f"{what}: {total[0] / 2**20:.0f} MiB read")
            last = time.monotonic()
        yield data


_SLAVE_GTID = re.compile(r"gtid_slave_pos '([^']*)'")
_BINLOG_POS = re.compile(r"MySQL binlog position: filename '([^']*)', position '(\d+)'")


def _resume_sql_thread(source: DbHost, was_running: bool, progress: Progress) -> None:
    """After a failed or interrupted backup: --safe-slave-backup may have left the SQL thread stopped (mariadb-backup
    restarts it only when it finishes); start it again when it ran before."""
    if not was_running:
        return
    try:
        if source.slave_status().get("Slave_SQL_Running") != "Yes":
            source.sql("START SLAVE SQL_THREAD")
            progress(f"{source.name}: restarted the replica's SQL thread the interrupted backup had stopped")
    except SourceError as e:
        progress(f"{source.name}: check its replication (SHOW SLAVE STATUS): {e}")


def take_backup(store: Store, source: DbHost, key: bytes, *, progress: Progress = _stderr) -> dict[str, Any]:
    """A base backup of the replica `source`, streamed, sealed and uploaded; its manifest (written last)."""
    was_running = require_replica(source).get("Slave_SQL_Running") == "Yes"
    started = utcnow()
    backup_id = f"{started:%Y%m%dT%H%M%SZ}-{source.name}"
    name = f"backups/{backup_id}/data"
    argv = source.argv(
        ["mariadb-backup", *source.backup, "--backup", "--stream=mbstream", "--slave-info", "--safe-slave-backup"]
    )
    clock = time.monotonic()
    raw = [0]
    progress(f"backup {backup_id}: mariadb-backup on {source.name}, streamed to {store.target.where}")
    with tempfile.TemporaryFile() as log:
        try:
            with streaming(argv, log=log) as process:
                assert process.stdout is not None
                stored = store.put_stream(name, seal(_counted(process.stdout, "backup", progress, raw), key, name))
        except BaseException as e:
            store.delete([name])
            _resume_sql_thread(source, was_running, progress)
            if isinstance(e, CommandError):
                raise BackupError(f"mariadb-backup on {source.name} failed: {e}") from None
            raise
        log.seek(0)
        output = log.read().decode(errors="replace")
    gtid = _SLAVE_GTID.search(output)
    if not gtid or not gtid.group(1):
        store.delete([name])
        raise BackupError(f"mariadb-backup on {source.name} reported no gtid_slave_pos (is it a GTID replica?)")
    binlog = _BINLOG_POS.search(output)
    seconds = time.monotonic() - clock
    manifest = {
        "id": backup_id,
        "host": source.name,
        "started": _iso(started),
        "finished": _iso(utcnow()),
        "seconds": round(seconds, 2),
        "gtid": gtid.group(1),
        "binlog": {"file": binlog.group(1), "position": int(binlog.group(2))} if binlog else None,
        "object": name,
        "format": "mbstream",
        "raw_bytes": raw[0],
        "stored_bytes": stored.size,
        "sha256": stored.sha256,
        **parameters(key),
    }
    store.put_json(f"backups/{backup_id}/manifest.json", manifest)
    progress(
        f"backup {backup_id}: GTID {manifest['gtid']}, {raw[0] / 2**20:.1f} MiB -> {stored.size / 2**20:.1f} MiB "
        f"stored in {seconds:.1f}s"
    )
    return manifest


def list_backups(store: Store) -> list[dict[str, Any]]:
    """Every complete backup's manifest, oldest first."""
    names = [n for n in store.names("backups/") if n.endswith("/manifest.json")]
    return sorted((store.get_json(n) for n in names), key=lambda m: (m["started"], m["id"]))


def list_binlogs(store: Store, host: str | None = None) -> list[dict[str, Any]]:
    """Every archived binary log's description (of one host, or all), in file order per host."""
    names = [n for n in store.names(f"binlogs/{host}/" if host else "binlogs/") if n.endswith(".json")]
    return sorted((store.get_json(n) for n in names), key=lambda b: (b["host"], b["file"]))


def list_checkpoints(store: Store) -> list[dict[str, Any]]:
    """Every checkpoint, oldest first."""
    checkpoints = (store.get_json(n) for n in store.names("checkpoints/"))
    return sorted(checkpoints, key=lambda c: (c["time"], Position.parse(c["gtid"]).transactions_after(Position())))


_HEADER = re.compile(r"^#(\d{6})\s+(\d{1,2}:\d\d:\d\d) server id \d+\s+end_log_pos \d+.*?\t(.*)$")
_GTID_EVENT = re.compile(r"^GTID (\d+-\d+-\d+)")
_GTID_LIST = re.compile(r"^Gtid list \[([^\]]*)\]")


def describe_binlog(path: Path) -> dict[str, Any]:
    """A binary log file's GTID range and times, read with mariadb-binlog: start (the Gtid_list it opens with:
    what came before it), end (start and every GTID in it), first and last transaction time (UTC), transactions."""
    start: Position | None = None
    end = Position()
    first = last = None
    count = 0
    with streaming(["mariadb-binlog", str(path)], env={**os.environ, "TZ": "UTC"}) as process:
        assert process.stdout is not None
        for raw in process.stdout:
            if not raw.startswith(b"#"):
                continue
            m = _HEADER.match(raw.decode(errors="replace").rstrip("\n"))
            if not m:
                continue
            stamp = dt.datetime.strptime(f"{m.group(1)} {m.group(2)}", "%y%m%d %H:%M:%S").replace(tzinfo=dt.UTC)
            event = m.group(3)
            if start is None and (g := _GTID_LIST.match(event)):
                start = Position.parse(g.group(1))
                end = start
            elif g := _GTID_EVENT.match(event):
                end = end.advanced(g.group(1))
                first = first or stamp
                last = stamp
                count += 1
    if start is None:
        raise BackupError(f"{path.name}: no Gtid_list event: not a MariaDB 10 binary log with GTIDs")
    return {
        "file": path.name,
        "start": str(start),
        "end": str(end),
        "first_time": _iso(first) if first else None,
        "last_time": _iso(last) if last else None,
        "transactions": count,
        "raw_bytes": path.stat().st_size,
    }


def _number(file: str) -> int:
    """A binary log file's sequence number (mariadb-bin.000042 -> 42)."""
    return int(file.rsplit(".", 1)[-1])


def _file_blocks(path: Path) -> Iterator[bytes]:
    with path.open("rb") as f:
        while data := f.read(READ_BYTES):
            yield data


def archive_binlogs(
    store: Store, source: DbHost, key: bytes, *, workdir: Path, progress: Progress = _stderr
) -> list[dict[str, Any]]:
    """Copy every closed binary log of `source` not archived yet (the newest one is still being written);
    return the descriptions of those copied."""
    logs = source.sql("SHOW BINARY LOGS")
    if not logs:
        raise BackupError(f"{source.name} writes no binary log: binlog archiving needs log_bin (and log_slave_updates)")
    if source.value("SELECT @@log_slave_updates") != "1":
        raise BackupError(f"{source.name} does not log what it replicates (log_slave_updates is OFF)")
    directory = os.path.dirname(source.value("SELECT @@log_bin_basename"))
    names = store.names(f"binlogs/{source.name}/")
    newest = max((_number(n[: -len(".json")]) for n in names if n.endswith(".json")), default=-1)
    copied = []
    for file in (row[0] for row in logs[:-1]):
        if _number(file) <= newest:  # archived already (retention may have deleted it since: not needed)
            continue
        name = f"binlogs/{source.name}/{file}"
        local = workdir / file
        try:
            with local.open("wb") as out, streaming(source.argv(["cat", f"{directory}/{file}"]), stdout=out):
                pass
            description = {"host": source.name, **describe_binlog(local)}
            stored = store.put_stream(name, seal(_file_blocks(local), key, name))
        finally:
            local.unlink(missing_ok=True)
        description.update(object=name, stored_bytes=stored.size, sha256=stored.sha256, **parameters(key))
        store.put_json(f"{name}.json", description)
        copied.append(description)
        progress(f"binlog {source.name}/{file}: GTID {description['start'] or '(none)'} .. {description['end']}")
    return copied


def archive(
    store: Store, source: DbHost, key: bytes, *, workdir: Path, progress: Progress = _stderr
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """A checkpoint that closes the replica's binary log, then every closed binary log copied: the archive ends
    exactly at the checkpoint."""
    checkpoint = take_checkpoint(store, source, flush=True, progress=progress)
    return checkpoint, archive_binlogs(store, source, key, workdir=workdir, progress=progress)


def expire(store: Store, retention: Retention, *, now: dt.datetime | None = None) -> list[str]:
    """Delete the backups `retention` lets go, then the binary logs and checkpoints no kept backup needs (those
    wholly before the oldest kept backup's GTID); return the backup ids deleted."""
    now = now or utcnow()
    backups = list_backups(store)
    newest_first = list(reversed(backups))
    kept: list[dict[str, Any]] = []
    dropped: list[dict[str, Any]] = []
    for i, m in enumerate(newest_first):
        started = dt.datetime.strptime(m["started"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.UTC)
        young = now - started < dt.timedelta(days=retention.keep_days)
        (kept if i < retention.keep or young else dropped).append(m)
    for m in dropped:  # the manifest first: a backup is listed only while its data is there
        store.delete([f"backups/{m['id']}/manifest.json"])
        store.delete([m["object"]])
    if not kept:
        return []
    oldest = Position.parse(kept[-1]["gtid"])
    stale: list[str] = []
    binlogs = list_binlogs(store)
    newest_of = {b["host"]: b["file"] for b in binlogs}  # kept: it tells archiving where it left off
    for b in binlogs:
        if oldest.covers(Position.parse(b["end"])) and newest_of[b["host"]] != b["file"]:
            stale += [b["object"], f"{b['object']}.json"]
    for name in store.names("checkpoints/"):
        c = store.get_json(name)
        if not Position.parse(c["gtid"]).covers(oldest):
            stale.append(name)
    store.delete(stale)
    return [m["id"] for m in dropped]


def run_backup(
    store: Store,
    source: DbHost,
    key: bytes,
    retention: Retention,
    *,
    workdir: Path,
    progress: Progress = _stderr,
    report: Callable[[dict[str, Any]], object] | None = None,
) -> dict[str, Any]:
    """./inv db backup: a base backup, a checkpoint closing the binary log, the binary logs archived, old backups
    expired. The new backup's manifest, handed to `report` (kiln.db.report.report_backup: the dashboard's last
    backup) once all that succeeded; a report that fails is said, never failing the backup."""
    store.check()
    manifest = take_backup(store, source, key, progress=progress)
    archive(store, source, key, workdir=workdir, progress=progress)
    for gone in expire(store, retention):
        progress(f"expired backup {gone}")
    if report is not None:
        try:
            report(manifest)
        except Exception as e:
            progress(f"backup {manifest['id']}: not reported ({type(e).__name__}: {e})")
    return manifest
