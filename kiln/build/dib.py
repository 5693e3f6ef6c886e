"""Driving diskimage-builder: the command line, its environment, and reading progress from its log."""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Mapping
from importlib import metadata
from pathlib import Path

from kiln.build import devmapper
from kiln.build.plan import ELEMENTS_DIR, ImageSpec, size_in_gb

_HOOK = re.compile(r"(?:/hooks|in_target\.d)/([a-z-]+\.d)(?:/(\S+))?")
_MILESTONES = (
    (re.compile(r"Converting image using qemu-img"), "convert"),
    (re.compile(r"Build completed successfully"), "done"),
)


def version() -> str:
    return metadata.version("diskimage-builder")


def command(spec: ImageSpec, out_base: Path, logfile: Path) -> list[str]:
    """disk-image-create for `spec`, writing OUT_BASE.raw and OUT_BASE.qcow2, its log to `logfile`."""
    dic = str(Path(sys.executable).parent / "disk-image-create")
    argv = [
        dic,
        "-a",
        "amd64",
        "-t",
        "raw,qcow2",
        "-o",
        str(out_base),
        "--image-size",
        size_in_gb(spec.size),
        "--logfile",
        str(logfile),
        *spec.elements,
    ]
    return devmapper.wrap(argv)


def environment(spec: ImageSpec, extra: Mapping[str, str], elements: Path = ELEMENTS_DIR) -> dict[str, str]:
    """The environment DIB runs in: ours plus the image's DIB_* settings, kiln's elements on ELEMENTS_PATH."""
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")])
    env["ELEMENTS_PATH"] = str(elements)
    env["DIB_QUIET"] = "1"
    # GPT booting on BIOS and UEFI, root last (elements/kiln-base/block-device-kiln.yaml); DIB's own efi layout
    # puts a 550 MiB ESP first, a quarter of a 2 GB image
    env["DIB_BLOCK_DEVICE_CONFIG"] = f"file://{elements / 'kiln-base' / 'block-device-kiln.yaml'}"
    env.update(spec.env_dict())
    env.update(extra)
    return env


def phase(line: str) -> str | None:
    """The DIB phase and hook a log line shows running (e.g. `install.d/01-package-installs`), or None."""
    if "dib-run-parts Running" in line or "Running hooks from" in line:
        m = _HOOK.search(line)
        if m:
            return f"{m.group(1)}/{m.group(2)}" if m.group(2) else m.group(1)
    for pattern, name in _MILESTONES:
        if pattern.search(line):
            return name
    return None


def last_phase(log: Path) -> str:
    """The last phase a DIB log reached ("start" before any)."""
    found = "start"
    try:
        with log.open(errors="replace") as f:
            for line in f:
                found = phase(line) or found
    except FileNotFoundError:
        pass
    return found


def tail(log: Path, lines: int = 25) -> str:
    try:
        return "\n".join(log.read_text(errors="replace").rstrip().splitlines()[-lines:])
    except FileNotFoundError:
        return ""
