"""`firstboot status --json` and `--wait [--timeout S]` on a real state directory: the JSON a script reads, the exit
codes, and a wait that ends when the agent finishes or at its timeout."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest

from firstboot import cli, status
from firstboot.paths import Paths
from firstboot.run import RunOptions, run
from firstboot.sources import Settings
from firstboot.state import STEPS, State
from kiln import signing
from tests.unit.agent_support import SECRETS, bundle, cache_bundle, machine

KEY = signing.generate_private_key()


def host_at(root: Path, **steps: str) -> Paths:
    """A machine whose bundle is cached and whose steps are as given (fetch ok)."""
    machine(root, KEY)
    cache_bundle(root, bundle(), KEY)
    state = State(url="https://10.10.0.1:8443", source="seed file", host="db1", mac="52:54:00:10:00:41")
    state.steps["fetch"].outcome = "ok"
    for name, outcome in steps.items():
        state.steps[name].outcome = outcome
        state.steps[name].attempts = 1
    state.outcome = "running"
    state.save(Paths(root).state)
    return Paths(root)


def main(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    code = cli.main(["status", *args])
    return code, capsys.readouterr().out


def test_json_of_a_failed_host_names_the_step_the_reason_and_the_next_action(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    machine(tmp_path, KEY)
    cache_bundle(tmp_path, bundle(secrets={n: None for n in SECRETS}, withheld=True), KEY)
    fetched = State(url="https://10.10.0.1:8443", source="seed file", host="db1")
    fetched.steps["fetch"].outcome = "ok"  # the bundle is cached: the run goes on from network
    fetched.save(Paths(tmp_path).state)
    assert run(RunOptions(paths=Paths(tmp_path), sources=Settings(imds_endpoint=""))) == 1  # the real agent fails
    capsys.readouterr()
    code, out = main(capsys, "--root", str(tmp_path), "--json")
    data = json.loads(out)
    assert code == status.FAILED == data["exit_code"] == 1
    assert data["status"] == "failed" and data["failed_step"] == "secrets" and data["running_step"] is None
    assert "the server withheld them" in data["reason"] and "./inv reprovision db1" in data["next"]
    assert [s["name"] for s in data["steps"]] == list(STEPS)
    by_name = {s["name"]: s for s in data["steps"]}
    assert by_name["files"]["outcome"] == "ok" and by_name["files"]["attempts"] == 1
    assert by_name["secrets"]["outcome"] == "fail" and by_name["done"]["outcome"] == "pending"
    assert data["host"] == "db1" and data["server"] == "https://10.10.0.1:8443" and data["retired"] is False
    assert data["converge"] is None and data["queued_events"] >= 0


def test_json_of_a_host_in_progress_and_of_one_not_run_yet(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out = main(capsys, "--root", str(tmp_path / "new"), "--json")
    assert code == status.NOT_STARTED == 4 and json.loads(out)["status"] == "not-started"
    host_at(tmp_path, network="ok", files="running")
    code, out = main(capsys, "--root", str(tmp_path), "--json")
    data = json.loads(out)
    assert code == status.IN_PROGRESS == 3 and data["status"] == "in-progress" and data["running_step"] == "files"
    assert data["failed_step"] is None and data["mac"] == "52:54:00:10:00:41"


def test_wait_ends_when_the_agent_joins(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    paths = host_at(tmp_path, network="ok", files="running")

    def agent_finishes() -> None:  # as the agent's last step does: the state file replaced, outcome done
        time.sleep(0.6)
        state = State.load(paths.state)
        for name in STEPS:
            state.steps[name].outcome = "ok"
        state.outcome = "done"
        state.save(paths.state)

    finisher = threading.Thread(target=agent_finishes)
    began = time.monotonic()
    finisher.start()
    try:
        code, out = main(capsys, "--root", str(tmp_path), "--wait", "--timeout", "20")
    finally:
        finisher.join()
    waited = time.monotonic() - began
    assert code == status.DONE and "provisioned: db1 is a member of the cluster" in out
    assert 0.5 < waited < 5, f"waited {waited:.2f} s: until the agent finished, not to the timeout"


def test_wait_returns_at_once_for_a_failed_host(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    host_at(tmp_path, network="ok", files="fail")
    began = time.monotonic()
    code, out = main(capsys, "--root", str(tmp_path), "--wait", "--timeout", "20", "--json")
    assert code == status.FAILED and json.loads(out)["failed_step"] == "files"
    assert time.monotonic() - began < 2


def test_wait_gives_up_at_its_timeout_with_the_state_as_it_is(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    host_at(tmp_path / "busy", network="running")
    began = time.monotonic()
    code, out = main(capsys, "--root", str(tmp_path / "busy"), "--wait", "--timeout", "0.7")
    assert code == status.IN_PROGRESS and "in progress (step network)" in out
    assert 0.6 < time.monotonic() - began < 3
    assert main(capsys, "--root", str(tmp_path / "never"), "--wait", "--timeout", "0.2")[0] == status.NOT_STARTED


def test_wait_looks_a_bounded_number_of_times() -> None:
    """With a clock that jumps, the loop still ends at the deadline: one look per interval, no more."""
    now = [0.0]
    looks = []

    def sleep(seconds: float) -> None:
        looks.append(seconds)
        now[0] += seconds

    code = status.wait(Paths(Path("/nonexistent-kiln-root")), 5.0, interval=1.0, clock=lambda: now[0], sleep=sleep)
    assert code == status.NOT_STARTED and looks == [1.0] * 5


def test_usage_errors_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for args in (["--timeout", "5"], ["--wait", "--timeout", "-1"], ["--wait", "--timeout", "soon"]):
        with pytest.raises(SystemExit) as exited:
            cli.main(["status", "--root", str(tmp_path), *args])
        assert exited.value.code == status.USAGE == 2, args
    capsys.readouterr()
    with pytest.raises(SystemExit):
        cli.main(["status", "--help"])
    shown = " ".join(capsys.readouterr().out.split())
    assert "0 provisioned (joined the cluster), 1 failed, 2 usage error, 3 in progress" in shown
