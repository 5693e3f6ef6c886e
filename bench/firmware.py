#!/usr/bin/env python3
"""Boot one role image under QEMU (TCG, one vCPU, isolated network) on each firmware: SeaBIOS, OVMF (UEFI), OVMF
with Secure Boot enforcing; print seconds from QEMU's start to the kernel's first console line and to the agent's
first fetch of its bundle (the boot as far as kiln's image takes it without a server), and the image sizes.

    .venv/bin/python bench/firmware.py [--role web] [--runs 2]

Numbers, not assertions (tests/e2e/test_image_boot.py proves the boots). Needs the built images (./inv build-all)
and the ovmf package; nothing else may run beside it if the numbers are to mean anything.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT))

from kiln.build.plan import IMAGES_DIR  # noqa: E402
from kiln.lab.firmware import Firmware  # noqa: E402
from tests.e2e.image_helpers import GUEST_MAC, Vm, overlay  # noqa: E402

KERNEL = r"Linux version \d"
AGENT = r"firstboot.*(fetch bundle: attempt \d+ failed|waiting for the bundle)"


def boot(role: str, firmware: Firmware) -> tuple[float, float]:
    """(seconds to the kernel's first line, seconds to the agent's first fetch) of one boot."""
    with tempfile.TemporaryDirectory(prefix="kiln-bench-fw-") as tmp:
        work = Path(tmp)
        disk = overlay(IMAGES_DIR / role / f"{role}.qcow2", work / "disk.qcow2")
        seed = work / "seed.json"
        seed.write_text(
            json.dumps({"url": "https://10.0.2.2:9443", "host": f"{role}1", "mac": GUEST_MAC, "token": "t" * 43})
        )
        began = time.monotonic()
        with Vm(work, disk=disk, seed=seed, cpus=1, firmware=firmware) as vm:
            vm.wait_for(KERNEL, 300)
            kernel = time.monotonic() - began
            vm.wait_for(AGENT, 900)
            agent = time.monotonic() - began
            vm.kill()
    return kernel, agent


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--role", default="web")
    parser.add_argument("--runs", type=int, default=2)
    args = parser.parse_args()
    manifest = json.loads((IMAGES_DIR / args.role / "manifest.json").read_text())
    sizes = {name: entry["size"] for name, entry in manifest["files"].items()}
    print(f"{args.role}: " + ", ".join(f"{name} {size / 2**20:.0f} MiB" for name, size in sorted(sizes.items())))
    for firmware in Firmware:
        runs = [boot(args.role, firmware) for _ in range(args.runs)]
        kernel = statistics.median(k for k, _ in runs)
        agent = statistics.median(a for _, a in runs)
        spread = ", ".join(f"{a:.0f}" for _, a in runs)
        print(f"{firmware:>10}: kernel at {kernel:5.1f} s, agent's first fetch at {agent:5.1f} s (runs: {spread})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
