"""restore-test: prove a backup restores. A base backup and the archived binary logs are restored into a
scratch mariadbd on this machine, up to a checkpoint's GTID, and every table's row count and CHECKSUM TABLE
are compared with the source's at that GTID (the checkpoint). Nothing touches the db hosts.

    plan_restore(store, backup_id=..., to_gtid=..., to_time=...)   which backup, checkpoint and binlogs; or why not
    restore_test(store, key, plan, workdir=...)                       the report: times (s), sizes (bytes), RPO (s)

Every stored object is checked twice before use: its sha256 against its manifest (corruption) and each sealed
chunk's authentication (tampering, a wrong key); a failure names the object.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kiln.db.backup import PROGRESS_SECONDS, list_backups, list_binlogs, list_checkpoints, table_sums, utcnow
from kiln.db.gtid import Position
from kiln.db.scratch import MAX_PACKET, Scratch
from kiln.db.seal import unseal
from kiln.db.store import Store
from kiln.run import CommandError, run, streaming

Progress = Callable[[str], None]


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


class RestoreError(Exception):
    pass


@dataclass(frozen=True)
class RestorePlan:
    backup: dict[str, Any]
    checkpoint: dict[str, Any]
    binlogs: tuple[dict[str, Any], ...]

    @property
    def start(self) -> Position:
        return Position.parse(self.backup["gtid"])

    @property
    def target(self) -> Position:
        return Position.parse(self.checkpoint["gtid"])


def _same(a: Position, b: Position) -> bool:
    return a.covers(b) and b.covers(a)


def parse_time(text: str) -> dt.datetime:
    """An ISO 8601 time, UTC unless it says otherwise ('2026-12-01T10:43:31Z', '2026-12-01 10:43')."""
    try:
        t = dt.datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise RestoreError(f"--to-time {text!r} is not a time (expected ISO 8601, like 2026-12-01T10:43:31Z)") from None
    return t if t.tzinfo else t.replace(tzinfo=dt.UTC)


def _chain(backup: dict[str, Any], target: Position, binlogs: list[dict[str, Any]]) -> tuple[dict[str, Any], ...]:
    """The archived binlogs of the backup's host that take it from its GTID to `target`, in order; RestoreError
    naming the first GTID not covered."""
    start = Position.parse(backup["gtid"])
    if start.covers(target):
        return ()
    host = backup["host"]
    mine = [b for b in binlogs if b["host"] == host]
    needed = [
        b for b in mine if not start.covers(Position.parse(b["end"])) and not Position.parse(b["start"]).covers(target)
    ]
    held = ", ".join(f"{b['file']} {b['start'] or '-'}..{b['end']}" for b in mine[-4:]) or "none"
    reach = start
    for b in needed:
        if not reach.covers(Position.parse(b["start"])):
            break
        reach = Position.parse(b["end"])
    if not reach.covers(target):
        raise RestoreError(
            f"GTID {target} is not covered by the archived binlogs of {host}: from backup {backup['id']} (GTID "
            f"{start}) they reach {reach} (archived: {held}); run ./inv db backup (it archives them) or pick "
            "another point"
        )
    return tuple(needed)


def plan_restore(
    store: Store, *, backup_id: str | None = None, to_gtid: str | None = None, to_time: str | None = None
) -> RestorePlan:
    """Which backup, checkpoint and binlogs a restore-test uses. The target is a checkpoint (the source's checksums
    are known only there): --to-gtid names one, --to-time picks the newest at or before it, else the newest one.
    The backup is --backup, else the newest at or before the target."""
    backups = list_backups(store)
    if not backups:
        raise RestoreError(f"no backup in {store.target.where}: run ./inv db backup first")
    checkpoints = list_checkpoints(store)
    if to_gtid:
        wanted = Position.parse(to_gtid)
        chosen = [c for c in checkpoints if _same(Position.parse(c["gtid"]), wanted)]
        if not chosen:
            near = ", ".join(c["gtid"] for c in checkpoints[-5:]) or "none"
            raise RestoreError(
                f"no checkpoint at GTID {to_gtid}: restore-test compares with the source's checksums, taken at "
                f"checkpoints (newest: {near}); ./inv db archive takes one"
            )
    elif to_time:
        limit = parse_time(to_time)
        chosen = [c for c in checkpoints if parse_time(c["time"]) <= limit]
        if not chosen:
            raise RestoreError(
                f"no checkpoint at or before {to_time}: the oldest is "
                + (checkpoints[0]["time"] if checkpoints else "none")
            )
    else:
        chosen = checkpoints
    if backup_id:
        backup = next((m for m in backups if m["id"] == backup_id), None)
        if backup is None:
            ids = ", ".join(m["id"] for m in backups[-5:])
            raise RestoreError(f"no backup {backup_id!r} in {store.target.where} (newest: {ids}); ./inv db backups")
        usable = [c for c in chosen if Position.parse(c["gtid"]).covers(Position.parse(backup["gtid"]))]
        if not usable:
            raise RestoreError(
                f"backup {backup_id} (GTID {backup['gtid']}) has no checkpoint at or after it"
                + (
                    f" matching {to_gtid or to_time}: pick an older backup"
                    if (to_gtid or to_time)
                    else ": run ./inv db archive"
                )
            )
        checkpoint = usable[-1]
    else:
        if not chosen:
            raise RestoreError("no checkpoint to restore to: run ./inv db archive (./inv db backup takes one)")
        checkpoint = chosen[-1]
        target = Position.parse(checkpoint["gtid"])
        older = [m for m in backups if target.covers(Position.parse(m["gtid"]))]
        if not older:
            raise RestoreError(f"no backup at or before GTID {checkpoint['gtid']}: every backup is newer")
        backup = older[-1]
    binlogs = _chain(backup, Position.parse(checkpoint["gtid"]), list_binlogs(store, backup["host"]))
    return RestorePlan(backup, checkpoint, binlogs)


def _download(store: Store, meta: dict[str, Any], path: Path, progress: Progress = _stderr) -> None:
    """Object `meta['object']` into `path`; RestoreError unless its sha256 and size are the manifest's."""
    digest, size = hashlib.sha256(), 0
    last = time.monotonic()
    with path.open("wb") as f:
        for block in store.get_stream(meta["object"]):
            digest.update(block)
            size += len(block)
            f.write(block)
            if time.monotonic() - last >= PROGRESS_SECONDS:
                progress(
                    f"restore-test: {meta['object']}: {size / 2**20:.0f} of {meta['stored_bytes'] / 2**20:.0f} MiB"
                )
                last = time.monotonic()
    if digest.hexdigest() != meta["sha256"] or size != meta["stored_bytes"]:
        raise RestoreError(
            f"{meta['object']} is not the object its manifest describes (sha256 {digest.hexdigest()[:16]}.., "
            f"{size} bytes; expected {meta['sha256'][:16]}.., {meta['stored_bytes']} bytes): corrupted or altered"
        )


def _file_blocks(path: Path) -> Iterator[bytes]:
    with path.open("rb") as f:
        while data := f.read(1 << 20):
            yield data


def unsealed_to(
    store: Store, meta: dict[str, Any], key: bytes, path: Path, out: Any, progress: Progress = _stderr
) -> int:
    """Download `meta`'s object to `path`, check it, and write its original bytes into the binary file `out`;
    the number of bytes written."""
    _download(store, meta, path, progress)
    total = 0
    for data in unseal(_file_blocks(path), key, meta["object"]):
        out.write(data)
        total += len(data)
    path.unlink()
    return total


_SLAVE_INFO = re.compile(r"gtid_slave_pos = '([^']*)'")


def restore_test(
    store: Store,
    key: bytes,
    plan: RestorePlan,
    *,
    workdir: Path | None = None,
    buffer_pool: str = "128M",
    keep: bool = False,
    progress: Progress = _stderr,
) -> dict[str, Any]:
    """Restore `plan` into a scratch server under `workdir` (a temp dir by default), compare, and report.
    RestoreError when anything differs or fails; the scratch directory is removed unless `keep` or it failed."""
    directory = Path(tempfile.mkdtemp(prefix="kiln-restore-", dir=workdir))
    directory.chmod(0o700)
    scratch = Scratch(directory, buffer_pool=buffer_pool)
    phases: dict[str, float] = {}
    clock = time.monotonic()

    def phase(name: str, since: float) -> float:
        now = time.monotonic()
        phases[name] = round(now - since, 2)
        return now

    ok = False
    backup = plan.backup
    try:
        progress(
            f"restore-test: backup {backup['id']} (GTID {backup['gtid']}) -> checkpoint GTID {plan.checkpoint['gtid']}"
        )
        t = time.monotonic()
        try:
            with streaming(
                scratch.argv(["mbstream", "-x", "-C", str(scratch.datadir)]), stdin=subprocess.PIPE
            ) as mbstream:
                restored = unsealed_to(store, backup, key, directory / "backup.sealed", mbstream.stdin, progress)
        except CommandError as e:
            raise RestoreError(f"extracting backup {backup['id']}: {e}") from None
        t = phase("download_extract", t)
        info = (
            (scratch.datadir / "xtrabackup_slave_info").read_text()
            if (scratch.datadir / "xtrabackup_slave_info").exists()
            else ""
        )
        found = _SLAVE_INFO.search(info)
        if not found or not _same(Position.parse(found.group(1)), plan.start):
            raise RestoreError(
                f"backup {backup['id']} holds GTID {found.group(1) if found else '(none)'}, its manifest says "
                f"{backup['gtid']}"
            )
        try:
            run(scratch.argv(["mariadb-backup", "--no-defaults", "--prepare", f"--target-dir={scratch.datadir}"]))
        except CommandError as e:
            raise RestoreError(f"mariadb-backup --prepare of {backup['id']}: {e}") from None
        t = phase("prepare", t)
        scratch.start()
        t = phase("start", t)
        transactions = 0
        if plan.binlogs:
            files = []
            for b in plan.binlogs:
                path = directory / b["file"]
                with path.with_suffix(".tmp").open("wb") as out:
                    unsealed_to(store, b, key, directory / f"{b['file']}.sealed", out, progress)
                path.with_suffix(".tmp").rename(path)
                files.append(path)
            transactions = plan.target.transactions_after(plan.start)
            reader_argv = scratch.argv(
                ["mariadb-binlog", f"--start-position={plan.start}", f"--stop-position={plan.target}", *map(str, files)]
            )
            # --sandbox: the statements come from the db host; no \! or file access for them on this machine
            client_argv = [
                "mariadb",
                *scratch.host.client,
                "--binary-mode",
                "--sandbox",
                f"--max-allowed-packet={MAX_PACKET}",
            ]
            try:
                with streaming(reader_argv) as reader:
                    with streaming(client_argv, stdin=reader.stdout):
                        assert reader.stdout is not None
                        reader.stdout.close()  # the client holds it now: a failing client stops the reader
            except CommandError as e:
                raise RestoreError(f"applying the binlogs {plan.start} .. {plan.target}: {e}") from None
            t = phase("binlogs", t)
        progress(f"restore-test: {len(plan.binlogs)} binlog files applied; comparing every table with the checkpoint")
        got = table_sums(scratch.host)
        t = phase("compare", t)
        want = plan.checkpoint["tables"]
        problems = [f"{n}: missing" for n in sorted(set(want) - set(got))]
        problems += [f"{n}: not in the source" for n in sorted(set(got) - set(want))]
        for n in sorted(set(want) & set(got)):
            if got[n][0] != want[n][0]:
                problems.append(f"{n}: {got[n][0]} rows, the source had {want[n][0]}")
            elif got[n][1] != want[n][1]:
                problems.append(f"{n}: checksum {got[n][1]}, the source's {want[n][1]}")
        if problems:
            raise RestoreError(
                f"the restore of {backup['id']} to GTID {plan.checkpoint['gtid']} differs from the source: "
                + "; ".join(problems[:10])
                + (f" (and {len(problems) - 10} more)" if len(problems) > 10 else "")
            )
        ok = True
        now = utcnow()
        newest = max(parse_time(c["time"]) for c in list_checkpoints(store))
        return {
            "backup": backup["id"],
            "from_gtid": backup["gtid"],
            "to_gtid": plan.checkpoint["gtid"],
            "checkpoint_time": plan.checkpoint["time"],
            "binlog_files": len(plan.binlogs),
            "transactions": transactions,
            "tables": len(got),
            "rows": sum(int(v[0]) for v in got.values()),
            "restored_bytes": restored,
            "stored_bytes": backup["stored_bytes"] + sum(b["stored_bytes"] for b in plan.binlogs),
            "seconds": {**phases, "total": round(time.monotonic() - clock, 2)},
            "rpo_seconds": int((now - newest).total_seconds()),
            "newest_checkpoint": newest.strftime("%Y-%m-%dT%H:%M:%SZ"),
            **({"kept": str(directory)} if keep else {}),
        }
    finally:
        scratch.stop()
        if ok and not keep:
            scratch.remove()
        elif not ok:
            progress(f"restore-test: the scratch server's files are kept in {directory} (error log: error.log)")
