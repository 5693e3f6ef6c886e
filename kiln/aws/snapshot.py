"""An EBS snapshot written straight from a raw disk file with the EBS direct APIs.

The file is read once, in order, by one thread (which also hashes the whole file, to prove it is
the image the manifest names); non-zero blocks go to a thread pool that hashes and sends them, a
bounded number in flight; all-zero blocks are not sent (EBS reads unwritten blocks as zeros).
"""

from __future__ import annotations

import hashlib
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from kiln.aws.blocks import (
    BLOCK_SIZE,
    b64,
    block_count,
    block_digest,
    is_zero,
    linear_aggregate,
    read_blocks,
    volume_gib,
)
from kiln.aws.calls import AwsCallError, Caller
from kiln.aws.image import ImageError, RoleImage

# (block index, sent: False when skipped as zero); called from several threads
Progress = Callable[[int, bool], None]


@dataclass(frozen=True)
class UploadStats:
    blocks: int
    sent: int
    skipped: int
    bytes_sent: int
    seconds: float  # wall time of write_blocks
    read_seconds: float  # reading the file (reader thread)
    hash_seconds: float  # whole-file SHA256 plus the per-block SHA256s, summed over threads
    send_seconds: float  # PutSnapshotBlock calls, summed over threads (includes retries)
    workers: int
    peak_in_flight: int


@dataclass(frozen=True)
class Written:
    digests: dict[int, bytes]
    stats: UploadStats

    @property
    def checksum(self) -> str:
        return linear_aggregate(self.digests)


def start_snapshot(
    ebs: Any, caller: Caller, image: RoleImage, *, tags: dict[str, str], description: str, timeout_minutes: int = 60
) -> str:
    """StartSnapshot for the image's size; a ClientToken makes our own retries of it safe."""
    token = str(uuid.uuid4())
    response = caller.call(
        "ebs.StartSnapshot",
        lambda: ebs.start_snapshot(
            VolumeSize=volume_gib(image.size),
            Description=description,
            ClientToken=token,
            Timeout=timeout_minutes,
            Tags=[{"Key": k, "Value": v} for k, v in tags.items()],
        ),
        idempotent=True,
    )
    return str(response["SnapshotId"])


def write_blocks(
    ebs: Any, caller: Caller, snapshot_id: str, image: RoleImage, *, workers: int = 16, progress: Progress | None = None
) -> Written:
    """PutSnapshotBlock for every non-zero block of the image; raises AwsCallError or ImageError."""
    digests: dict[int, bytes] = {}
    lock = threading.Lock()
    slots = threading.BoundedSemaphore(workers * 2)  # blocks read but not yet sent: bounds memory
    failed = threading.Event()
    errors: list[BaseException] = []
    totals = {"hash": 0.0, "send": 0.0, "in_flight": 0, "peak": 0}

    def send(index: int, block: bytes) -> None:
        try:
            if failed.is_set():
                return
            t0 = time.perf_counter()
            digest = block_digest(block)
            t1 = time.perf_counter()
            with lock:
                totals["in_flight"] += 1
                totals["peak"] = max(totals["peak"], totals["in_flight"])
            try:
                caller.call(
                    f"ebs.PutSnapshotBlock ({snapshot_id}, block {index})",
                    lambda: ebs.put_snapshot_block(
                        SnapshotId=snapshot_id,
                        BlockIndex=index,
                        BlockData=block,
                        DataLength=BLOCK_SIZE,
                        Checksum=b64(digest),
                        ChecksumAlgorithm="SHA256",
                    ),
                    idempotent=True,  # the same data at the same index
                )
            finally:
                with lock:
                    totals["in_flight"] -= 1
            t2 = time.perf_counter()
            with lock:
                digests[index] = digest
                totals["hash"] += t1 - t0
                totals["send"] += t2 - t1
            if progress:
                progress(index, True)
        except BaseException as e:  # noqa: B036 - handed to the reader thread, which re-raises it
            with lock:
                errors.append(e)
            failed.set()
        finally:
            slots.release()

    started = time.perf_counter()
    whole = hashlib.sha256()
    read_s = hash_s = 0.0
    skipped = 0
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="kiln-ami-put")
    try:
        with image.path.open("rb") as f:
            blocks = read_blocks(f, image.size)
            while not failed.is_set():
                t0 = time.perf_counter()
                item = next(blocks, None)
                t1 = time.perf_counter()
                read_s += t1 - t0
                if item is None:
                    break
                index, block = item
                whole.update(
                    block if (index + 1) * BLOCK_SIZE <= image.size else block[: image.size - index * BLOCK_SIZE]
                )
                hash_s += time.perf_counter() - t1
                if is_zero(block):
                    skipped += 1
                    if progress:
                        progress(index, False)
                    continue
                slots.acquire()
                pool.submit(send, index, block)
        pool.shutdown(wait=True)
    except BaseException:  # Ctrl-C included: queued blocks are dropped, the ones in flight finish, then it goes on up
        failed.set()
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    if errors:
        first = next((e for e in errors if isinstance(e, AwsCallError)), errors[0])
        raise first
    if whole.hexdigest() != image.sha256:
        raise ImageError(
            f"{image.path}: sha256 {whole.hexdigest()} while reading it, but {image.sha256} expected "
            "(the file changed, or does not match its manifest: rebuild it)"
        )
    stats = UploadStats(
        blocks=block_count(image.size),
        sent=len(digests),
        skipped=skipped,
        bytes_sent=len(digests) * BLOCK_SIZE,
        seconds=time.perf_counter() - started,
        read_seconds=read_s,
        hash_seconds=hash_s + totals["hash"],
        send_seconds=totals["send"],
        workers=workers,
        peak_in_flight=int(totals["peak"]),
    )
    return Written(digests, stats)


def complete_snapshot(ebs: Any, caller: Caller, snapshot_id: str, written: Written) -> str:
    """CompleteSnapshot with the LINEAR aggregate checksum; returns the status EBS reports."""
    response = caller.call(
        f"ebs.CompleteSnapshot ({snapshot_id})",
        lambda: ebs.complete_snapshot(
            SnapshotId=snapshot_id,
            ChangedBlocksCount=len(written.digests),
            Checksum=written.checksum,
            ChecksumAlgorithm="SHA256",
            ChecksumAggregationMethod="LINEAR",
        ),
    )
    status = str(response.get("Status", ""))
    if status == "error":
        raise AwsCallError(
            f"ebs.CompleteSnapshot ({snapshot_id})", "SnapshotError", "the snapshot went into state error", 1
        )
    return status


def wait_completed(ec2: Any, caller: Caller, snapshot_id: str, *, delay: int = 5, max_attempts: int = 240) -> None:
    """Until DescribeSnapshots says completed (the describe_snapshots waiter), at most delay * max_attempts seconds."""
    waiter = ec2.get_waiter("snapshot_completed")
    caller.call(
        f"ec2.DescribeSnapshots (waiting for {snapshot_id} to complete)",
        lambda: waiter.wait(SnapshotIds=[snapshot_id], WaiterConfig={"Delay": delay, "MaxAttempts": max_attempts}),
        idempotent=True,
    )
