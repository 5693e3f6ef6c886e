"""The state machine: synced state per step, resume after an interrupted step, a done host does nothing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from firstboot import status
from firstboot.paths import Paths
from firstboot.run import RunOptions, run
from firstboot.sources import Settings
from firstboot.state import STEPS, State
from kiln import signing
from kiln.bundle import Bundle, shared_digest
from tests.unit.agent_support import HOSTS, SECRETS, bundle, cache_bundle, machine, with_shared_hosts

KEY = signing.generate_private_key()


def options(root: Path) -> RunOptions:
    return RunOptions(paths=Paths(root), sources=Settings(imds_endpoint=""))


def fetched_host(root: Path, data: Bundle | None = None, **steps: str) -> Paths:
    """A machine whose fetch step is done (bundle cached) and whose other steps are as given."""
    machine(root, KEY)
    cache_bundle(root, data or bundle(), KEY)
    state = State(url="https://10.10.0.1:8443", source="seed file", host="db1")
    state.steps["fetch"].outcome = "ok"
    for name, outcome in steps.items():
        state.steps[name].outcome = outcome
        state.steps[name].attempts = 1
    state.save(Paths(root).state)
    return Paths(root)


def test_transitions_record_started_finished_outcome_duration(tmp_path: Path) -> None:
    state = State()
    state.begin("files")
    assert state.steps["files"].outcome == "running" and state.outcome == "running"
    state.finish("files", ok=True, detail="3 changed", duration=0.0123)
    rec = state.steps["files"]
    assert (rec.outcome, rec.duration, rec.detail, rec.attempts) == ("ok", 0.012, "3 changed", 1)
    assert rec.started and rec.finished
    state.begin("join")
    state.finish("join", ok=False, detail="primary down", duration=1, next_action="start it")
    assert state.outcome == "failed" and state.failed_step() == "join"
    state.save(tmp_path / "state.json")
    again = State.load(tmp_path / "state.json")
    assert again.steps["join"].next_action == "start it" and again.steps["files"].outcome == "ok"
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]  # no temp file left behind


def test_an_unreadable_state_file_starts_afresh(tmp_path: Path) -> None:
    (tmp_path / "state.json").write_text('{"steps": {"files": {"outco')  # torn by hand: replace() never leaves this
    assert State.load(tmp_path / "state.json").outcome == "new"


def test_a_step_interrupted_by_a_crash_is_redone_and_the_run_finishes(tmp_path: Path) -> None:
    paths = fetched_host(tmp_path, network="ok", files="running")
    (tmp_path / "etc/kiln/.kiln-tmp.app.env.x1y2z3").write_text("A=")  # what a power cut mid-write leaves
    assert run(options(tmp_path)) == 0
    state = State.load(paths.state)
    assert state.outcome == "done"
    assert state.steps["files"].attempts == 2 and state.steps["files"].outcome == "ok"
    assert state.steps["network"].attempts == 1  # finished steps are not redone
    assert all(state.steps[s].outcome == "ok" for s in STEPS[1:])
    assert (tmp_path / "etc/kiln/app.env").read_text() == "A=1\n"
    assert not (tmp_path / "etc/kiln/.kiln-tmp.app.env.x1y2z3").exists()  # the half-written temp file is gone
    assert (tmp_path / "etc/kiln/secrets/db_admin_password").read_text() == SECRETS["db_admin_password"]
    assert paths.done.exists()
    assert not paths.bundle_body.exists()  # the fetched bundle held the secrets: gone once done


def test_a_resumed_run_takes_the_shared_contents_the_fetch_kept_and_refetches_when_they_are_gone(
    tmp_path: Path,
) -> None:
    paths = fetched_host(tmp_path / "kept", with_shared_hosts(bundle()))
    paths.shared.mkdir()
    (paths.shared / shared_digest(HOSTS)).write_text(HOSTS)
    assert run(options(paths.root)) == 0  # no server known: everything came from what the fetch step kept
    assert (paths.root / "etc/hosts").read_text() == HOSTS
    gone = fetched_host(tmp_path / "gone", with_shared_hosts(bundle()))
    assert run(options(gone.root)) == 1
    assert State.load(gone.state).steps["fetch"].attempts == 1  # fetched again (and, with no server, failed)
    assert not (gone.root / "etc/hostname").exists()


def test_a_done_host_exits_at_once_and_changes_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    paths = fetched_host(tmp_path)
    assert run(options(tmp_path)) == 0
    before = paths.state.read_bytes(), paths.state.stat().st_mtime_ns
    capsys.readouterr()
    assert run(options(tmp_path)) == 0
    assert "provisioned" in capsys.readouterr().out
    assert (paths.state.read_bytes(), paths.state.stat().st_mtime_ns) == before


def test_withheld_secrets_fail_clearly_and_the_run_resumes_at_that_step(tmp_path: Path) -> None:
    data = bundle(secrets={n: None for n in SECRETS}, withheld=True)
    paths = fetched_host(tmp_path, data)
    assert run(options(tmp_path)) == 1
    text, code = status.render(paths)
    assert code == status.FAILED
    assert "FAILED at step secrets" in text
    assert "next:   secrets were already handed out; re-arm the host with ./inv reprovision HOST" in text
    assert not (tmp_path / "etc/kiln/secrets/db_app_password").exists()
    # the operator puts the secrets back (or re-arms the host): the next run starts at the failed step
    for name, value in SECRETS.items():
        (tmp_path / f"etc/kiln/secrets/{name}").write_text(value)
    assert run(options(tmp_path)) == 0
    state = State.load(paths.state)
    assert state.steps["secrets"].attempts == 2 and state.steps["files"].attempts == 1
    assert status.render(paths)[1] == status.DONE


def test_no_source_is_a_failed_fetch_with_the_next_action(tmp_path: Path) -> None:
    machine(tmp_path, KEY)
    assert run(options(tmp_path)) == 1
    text, code = status.render(Paths(tmp_path))
    assert code == status.FAILED and "FAILED at step fetch" in text
    assert "no provisioning URL found" in text and "kiln.url=" in text


def test_a_fetch_refused_for_its_signature_applies_nothing(tmp_path: Path) -> None:
    machine(tmp_path, KEY)
    cache_bundle(tmp_path, bundle(), signing.generate_private_key())  # signed by some other key
    state = State()
    state.steps["fetch"].outcome = "ok"
    state.save(Paths(tmp_path).state)
    assert run(options(tmp_path)) == 1
    assert not (tmp_path / "etc/hostname").exists()
    assert not (tmp_path / "etc/kiln/secrets").exists()
    assert not Paths(tmp_path).bundle_body.exists()  # discarded, to be fetched again
    assert "FAILED at step fetch" in status.render(Paths(tmp_path))[0]


def test_status_before_any_run(tmp_path: Path) -> None:
    text, code = status.render(Paths(tmp_path))
    assert code == status.NOT_STARTED and "not run yet" in text


def test_state_json_holds_every_step(tmp_path: Path) -> None:
    paths = fetched_host(tmp_path)
    run(options(tmp_path))
    raw = json.loads(paths.state.read_text())
    assert list(raw["steps"]) == list(STEPS)
    for rec in raw["steps"].values():
        assert {"started", "finished", "outcome", "duration"} <= rec.keys()


CRASHING_RUN = """
import sys, time
from pathlib import Path
from firstboot import agent
from firstboot.paths import Paths
from firstboot.run import RunOptions, run
from firstboot.sources import Settings
files = agent.STEP_FUNCTIONS["files"]

def slow_files(ctx):
    out = files(ctx)  # the files are written ...
    Path(sys.argv[2]).write_text("written")
    time.sleep(60)  # ... and the power goes before the step is recorded as finished
    return out

agent.STEP_FUNCTIONS["files"] = slow_files
run(RunOptions(paths=Paths(Path(sys.argv[1])), sources=Settings(imds_endpoint="")))
"""


def test_a_run_killed_mid_step_resumes_that_step(tmp_path: Path) -> None:
    import subprocess
    import sys
    import time

    paths = fetched_host(tmp_path / "root")
    marker = tmp_path / "written"
    victim = subprocess.Popen([sys.executable, "-c", CRASHING_RUN, str(tmp_path / "root"), str(marker)])
    try:
        deadline = time.monotonic() + 30
        while not marker.exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert marker.exists()
    finally:
        victim.kill()  # SIGKILL: no clean-up runs, as in a power cut
        victim.wait()
    assert State.load(paths.state).steps["files"].outcome == "running"
    assert "in progress (step files)" in status.render(paths)[0]
    assert run(options(tmp_path / "root")) == 0
    state = State.load(paths.state)
    assert state.steps["files"].attempts == 2 and state.outcome == "done"
    assert state.steps["network"].attempts == 1


def test_only_one_run_at_a_time(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import fcntl

    paths = fetched_host(tmp_path)
    with open(paths.state_dir / "lock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # as a run in progress holds it
        assert run(options(tmp_path)) == 1
        assert "another `firstboot run` is in progress" in capsys.readouterr().out
    assert run(options(tmp_path)) == 0
