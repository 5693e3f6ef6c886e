"""The progress display reads DIB's phases from its log and shows one line per phase off a terminal."""

from __future__ import annotations

import io
import threading
import time
from pathlib import Path

from rich.console import Console

from kiln.build import dib
from kiln.build.progress import Display

LOG = """\
2026-11-23 10:43:23.309 | Running hooks from /tmp/dib_build.f9WgwPPQ/hooks/root.d
2026-11-23 10:43:23.336 | dib-run-parts Running /tmp/dib_build.f9WgwPPQ/hooks/root.d/08-debootstrap
2026-11-23 10:43:53.000 | I: Retrieving InRelease
2026-11-23 10:44:04.156 | dib-run-parts Running /tmp/in_target.d/install.d/01-package-installs
2026-11-23 10:45:20.000 | Converting image using qemu-img convert
"""


def test_phase_of_lines() -> None:
    lines = LOG.splitlines()
    assert dib.phase(lines[0]) == "root.d"
    assert dib.phase(lines[1]) == "root.d/08-debootstrap"
    assert dib.phase(lines[2]) is None
    assert dib.phase(lines[3]) == "install.d/01-package-installs"
    assert dib.phase(lines[4]) == "convert"


def test_last_phase_and_tail(tmp_path: Path) -> None:
    log = tmp_path / "build.log"
    assert dib.last_phase(log) == "start"
    log.write_text(LOG)
    assert dib.last_phase(log) == "convert"
    assert dib.tail(log, 2).splitlines()[0].endswith("install.d/01-package-installs")


def test_follow_prints_each_phase_once_off_a_terminal(tmp_path: Path) -> None:
    out = io.StringIO()
    log = tmp_path / "build.log"
    display = Display(["lb"], console=Console(file=out, force_terminal=False, width=200))

    def writer() -> None:
        with log.open("w") as f:
            for line in LOG.splitlines(keepends=True):
                f.write(line)
                f.flush()
                time.sleep(0.05)

    worker = threading.Thread(target=writer)
    with display:
        display.set("lb", "building", "staging")
        worker.start()
        display.follow("lb", log, worker, poll=0.02)
        display.set("lb", "built", "done", seconds=12.0)
    lines = out.getvalue().splitlines()
    assert lines[0] == "lb: building staging"
    assert "lb: building root.d" in lines[1]
    assert any("install.d" in line for line in lines)
    assert sum("root.d" in line for line in lines) == 1, "a hook within the same phase is not a new line"
    assert lines[-1] == "lb: built in 12s"
