"""Two builds at once would share DIB's apt cache and swap outputs under each other: the second waits."""

from __future__ import annotations

import select
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kiln.build.cli import one_build_at_a_time

pytestmark = pytest.mark.integration

SECOND = """
import sys, time
from pathlib import Path
from kiln.build.cli import one_build_at_a_time
with one_build_at_a_time(Path(sys.argv[1])):
    print(f"acquired {time.monotonic()!r}", flush=True)  # all its digits: it is compared with the release
"""


def test_second_build_waits_for_the_first(tmp_path: Path) -> None:
    with one_build_at_a_time(tmp_path):
        second = subprocess.Popen(
            [sys.executable, "-c", SECOND, str(tmp_path)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        assert second.stderr is not None
        # its first line, once it reached the lock (a busy machine may take seconds to start Python), bounded
        ready, _, _ = select.select([second.stderr], [], [], 60)
        said = second.stderr.readline() if ready else ""
        assert "waiting for the build already running (pid " in said, said
        time.sleep(0.5)
        assert second.poll() is None, "the second build went ahead while the first held the lock"
        released = time.monotonic()
    out, err = second.communicate(timeout=30)
    assert second.returncode == 0, err
    assert float(out.split()[1]) >= released
