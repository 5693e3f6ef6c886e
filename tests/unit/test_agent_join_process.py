"""The joins wait for a role's daemon to appear: `systemctl start` of a Type=simple unit can return before it
exec'd. Real processes here, found the way the join finds them (by name, in this network namespace)."""

from __future__ import annotations

import shutil
import subprocess
import threading
from pathlib import Path

import pytest

from firstboot.errors import StepFailed
from firstboot.steps.join import tiers


def test_a_daemon_that_starts_late_is_waited_for(tmp_path: Path) -> None:
    daemon = tmp_path / "kiln-late-dmn"  # the process name (comm) the join looks for
    shutil.copy("/bin/sleep", daemon)
    started: list[subprocess.Popen] = []
    timer = threading.Timer(1.5, lambda: started.append(subprocess.Popen([daemon, "30"])))
    timer.start()
    try:
        tiers._require("kiln-late-dmn", "late.service")
    finally:
        timer.join()
        for p in started:
            p.kill()
    assert started, "the join returned only after the daemon started"


def test_a_daemon_that_never_starts_fails_the_join(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tiers, "PROCESS_WAIT", 1.0)
    with pytest.raises(StepFailed) as e:
        tiers._require("kiln-no-dmn", "none.service")
    assert "kiln-no-dmn is not running (1 s after its start)" in e.value.reason
    assert "journalctl -u none.service" in e.value.next_action
