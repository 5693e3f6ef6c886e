#!/usr/bin/env python3
"""Time ./inv build-all cold, with no change, and after one role changes; report each image's sizes.

Cold: `build-all --force` with empty build caches (DIB's image cache, the installer's .deb cache,
pip's cache), so every package comes from the mirror. No change: `build-all` again. One role
change: `build --role web --force` with warm caches (what a changed kiln-web element costs).
It builds into the project's images/ (that is what the command does), leaving fresh, up-to-date
images behind. --quick skips the cold and one-role runs. Printed, never asserted.

Goals (issue 5): cold build-all < 20 min for four roles and the installer, no change < 10 s,
one role < 4 min, each role's qcow2 < 400 MB. Results: bench/results/build.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
PROJECT = HERE.parent
INV = [sys.executable, "-m", "invoke", "--search-root", str(PROJECT)]
sys.path.insert(0, str(PROJECT))

from kiln.build.imagefs import mounted, used_bytes  # noqa: E402

MB = 1_000_000


def timed(args: list[str], env: dict[str, str] | None = None) -> float:
    started = time.perf_counter()
    result = subprocess.run(args, check=False, env=env, cwd=PROJECT)
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(args[3:])} failed (exit {result.returncode}); no figures written")
    return time.perf_counter() - started


def sizes(images: Path) -> list[dict[str, object]]:
    figures: list[dict[str, object]] = []
    for manifest_path in sorted(images.glob("*/manifest.json")):
        manifest = json.loads(manifest_path.read_text())
        role = manifest["role"]
        files = manifest["files"]
        if f"{role}.qcow2" in files:
            figures.append(
                {
                    "name": f"{role} qcow2",
                    "value": round(files[f"{role}.qcow2"]["size"] / MB),
                    "unit": "MB",
                    "goal": "< 400 MB",
                }
            )
            figures.append(
                {"name": f"{role} raw (sparse file)", "value": round(files[f"{role}.raw"]["size"] / MB), "unit": "MB"}
            )
            with mounted(manifest_path.parent / f"{role}.raw") as root:
                figures.append({"name": f"{role} installed", "value": round(used_bytes(root) / MB), "unit": "MB"})
            figures.append({"name": f"{role} packages", "value": len(manifest.get("packages", {})), "unit": ""})
        else:
            total = sum(f["size"] for f in files.values())
            figures.append({"name": f"{role} kernel+initramfs", "value": round(total / MB, 1), "unit": "MB"})
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="only the no-change build-all")
    opts = parser.parse_args()
    figures: list[dict[str, object]] = []
    if not opts.quick:
        with tempfile.TemporaryDirectory(prefix="kiln-img-bench-") as cache:
            cold_env = {
                **os.environ,
                "DIB_IMAGE_CACHE": f"{cache}/dib",
                "KILN_CACHE_DIR": f"{cache}/kiln",
                "PIP_NO_CACHE_DIR": "1",
            }
            cold = timed([*INV, "build-all", "--force"], cold_env)
        figures.append({"name": "cold build-all", "value": round(cold / 60, 1), "unit": "min", "goal": "< 20 min"})
    else:
        timed([*INV, "build-all"])
    unchanged = timed([*INV, "build-all"])
    figures.append({"name": "no-change build-all", "value": round(unchanged, 1), "unit": "s", "goal": "< 10 s"})
    if not opts.quick:
        one = timed([*INV, "build", "--role", "web", "--force"])
        figures.append({"name": "one-role change (web)", "value": round(one / 60, 1), "unit": "min", "goal": "< 4 min"})
    figures += sizes(PROJECT / "images")
    for f in figures:
        print(f"{f['name']:<28} {f['value']} {f['unit']}")
    # other work on the machine (a lab of QEMU guests, other builds) slows every figure: keep the load with them
    result = {
        "machine": platform.node(),
        "cpus": os.cpu_count(),
        "quick": opts.quick,
        "load_avg_1_5_15": os.getloadavg(),
        "figures": figures,
    }
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / "build.json").write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
