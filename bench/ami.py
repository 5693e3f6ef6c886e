#!/usr/bin/env python3
"""Upload a role image as an AMI to a moto server on loopback; print throughput, zero blocks skipped, and how
the upload threads' time splits between hashing (SHA256 of the whole file and of each block) and sending.

The image: the first built images/<role>/<role>.raw, else (and with --quick) a generated sparse disk.
Results: bench/results/ami.json. moto keeps blocks in memory and checks no checksum, so "sending" here is
HTTP on loopback plus moto's request handling: this measures kiln's side of the upload, not EBS.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent)]  # the project, for the test helpers (tests/moto_server.py, tests/testdisk.py)

from kiln.aws.ami import publish  # noqa: E402
from kiln.aws.cli import make_clients  # noqa: E402
from kiln.aws.image import RoleImage, locate  # noqa: E402
from tests.moto_server import DUMMY_ENV, moto_server  # noqa: E402
from tests.testdisk import write_test_disk  # noqa: E402

REGION = "eu-west-1"


def built_image() -> RoleImage | None:
    for raw in sorted((HERE.parent / "images").glob("*/*.raw")):
        if raw.stem == raw.parent.name and raw.stem != "installer":
            return locate(raw.parent.parent, raw.stem)
    return None


def generated_image(tmp: Path, blocks: int) -> RoleImage:
    """A quarter of the blocks hold data (spread over the disk), the rest are zeros, like a fresh root filesystem."""
    write_test_disk(tmp / "bench" / "bench.raw", blocks=blocks, data_at=range(0, blocks, 4))
    return locate(tmp, "bench")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a generated 256 MiB disk instead of a role image")
    parser.add_argument("--workers", type=int, default=16, help="PutSnapshotBlock calls in flight")
    opts = parser.parse_args()
    os.environ.update(DUMMY_ENV)
    with tempfile.TemporaryDirectory(prefix="kiln-ami-bench-") as tmp:
        image = None if opts.quick else built_image()
        source = f"{image.path.relative_to(HERE.parent)}" if image else None
        if image is None:
            image = generated_image(Path(tmp), 512 if opts.quick else 4096)
            source = f"generated {image.size // 1024**2} MiB disk, 1 block in 4 with data"
        with moto_server() as url:
            clients = make_clients(REGION, url, workers=opts.workers)
            started = time.perf_counter()
            result = publish(clients, image, wait=True)
            total = time.perf_counter() - started
    stats = result.stats
    assert stats is not None
    busy = stats.hash_seconds + stats.send_seconds
    figures = [
        {
            "name": "image throughput",
            "value": round(image.size / 1e6 / stats.seconds, 1),
            "unit": "MB/s",
            "goal": "≥ 100 MB/s to moto on loopback",
        },
        {"name": "data sent", "value": round(stats.bytes_sent / 1e6 / stats.seconds, 1), "unit": "MB/s"},
        {"name": "blocks sent", "value": stats.sent, "unit": "blocks"},
        {"name": "blocks skipped as zero", "value": stats.skipped, "unit": "blocks", "goal": "every all-zero block"},
        {"name": "hashing share", "value": round(100 * stats.hash_seconds / busy, 1), "unit": "%"},
        {"name": "sending share", "value": round(100 * stats.send_seconds / busy, 1), "unit": "%"},
        {"name": "publish, upload to AMI", "value": round(total, 1), "unit": "s"},
    ]
    print(f"{source}: {stats.blocks} blocks, {opts.workers} in flight (peak {stats.peak_in_flight})")
    for f in figures:
        print(f"{f['name']:<24} {f['value']} {f['unit']}")
    result_doc = {
        "machine": platform.node(),
        "cpus": os.cpu_count(),
        "image": source,
        "workers": opts.workers,
        "seconds": {
            "upload": round(stats.seconds, 2),
            "read": round(stats.read_seconds, 2),
            "hash": round(stats.hash_seconds, 2),
            "send": round(stats.send_seconds, 2),
        },
        "figures": figures,
    }
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / "ami.json").write_text(json.dumps(result_doc, indent=2, ensure_ascii=False) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
