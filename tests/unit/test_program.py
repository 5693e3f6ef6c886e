"""`./inv` as a new operator meets it: every task's --help prints its usage and does nothing else (no task, no
Debian package, no file), usage errors exit 2 naming the closest task or flag, --version is kiln's."""

from __future__ import annotations

import os
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest
from invoke import Collection, Exit, FilesystemLoader
from invoke.parser import ParserContext

from kiln import freeze, hostdeps
from kiln.program import KilnProgram

PROJECT = Path(__file__).resolve().parents[2]
INV = PROJECT / "inv"
# what tools and tests write under the project whatever the task: never what a task's help would write
CACHES = {".git", ".venv", "__pycache__", ".pytest_cache", ".hypothesis", ".mypy_cache", ".ruff_cache"}
# written by other runs while this may run: the frozen agent (the quick tier's frozen-agent tests), DIB's scratch
# and the lab's state (an image build or a lab on the same checkout); a help that started a build or a lab is told
# by its output and the apt tripwire
SHARED = {freeze.OUT, PROJECT / "images" / ".work", PROJECT / "state" / "lab"}


def _tasks() -> list[ParserContext]:
    """Every task of the collection ./inv loads, as Invoke parses it: name, positionals, flags."""
    module, _ = FilesystemLoader(start=str(PROJECT)).load()
    return Collection.from_module(module).to_contexts()


TASKS = _tasks()


def _parse(*args: str) -> list[str]:
    """The tasks `./inv ARGS` would run (and install Debian packages for), parsed in this process; raises Exit
    where ./inv stops before running any."""
    keep = sys.dont_write_bytecode  # Invoke's parse sets it for the process
    try:
        return KilnProgram().parse(["./inv", "--search-root", str(PROJECT), *args])
    finally:
        sys.dont_write_bytecode = keep


def _usage(task: ParserContext) -> str:
    return " ".join(["Usage: ./inv", task.name, "[--options]", *(arg.name.upper() for arg in task.positional_args)])


def _help_forms(task: ParserContext) -> list[list[str]]:
    forms = [[task.name, "--help"], ["--help", task.name], ["-h", task.name]]
    if "-h" not in task.flags:  # reprovision and lab: -h is --host
        forms.append([task.name, "-h"])
    return forms


def test_the_collection_has_tasks_with_positionals():
    # the help forms below are checked on what makes them hard: a task whose positional Invoke fills with "--help"
    assert len(TASKS) >= 10 and {"render", "reprovision", "lab"} <= {t.name for t in TASKS if t.positional_args}


def test_every_task_s_help_prints_its_usage_and_runs_nothing(capsys: pytest.CaptureFixture[str]):
    for task in TASKS:
        for argv in _help_forms(task):
            with pytest.raises(Exit) as stopped:
                ran = _parse(*argv)
                pytest.fail(f"./inv {' '.join(argv)} would run {ran} and install {hostdeps.needed(ran)}")
            shown = capsys.readouterr()
            assert (stopped.value.code, shown.err) == (0, ""), argv
            assert shown.out.splitlines()[0] == _usage(task), argv
            for flag in task.flags:
                name = flag.lstrip("-")
                assert flag in shown.out or f"--[no-]{name}" in shown.out, (argv, flag)


def test_a_task_that_runs_is_the_one_its_packages_are_installed_for(capsys: pytest.CaptureFixture[str]):
    assert _parse("lab", "status") == ["lab"]
    assert "qemu-system-x86" in hostdeps.needed(_parse("lab", "status"))
    assert _parse("-e", "build-all") == ["build-all"]
    assert _parse("reprovision", "db2", "--roles", "x.yaml") == ["reprovision"]
    assert _parse("test", "--quick") == ["test"]
    for stops in (["--list"], ["--version"], []):
        with pytest.raises(Exit) as stopped:
            _parse(*stops)
        assert stopped.value.code == 0
    capsys.readouterr()


def _launch(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """The real launcher, as an operator runs it."""
    return subprocess.run([INV, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=60)


def _tripwire(tmp_path: Path) -> tuple[dict[str, str], Path]:
    """An environment where dpkg knows no package, so every task's packages count as missing, and apt-get records
    that it was called and fails: any install a command attempts shows."""
    bin_dir, calls = tmp_path / "bin", tmp_path / "apt-get.calls"
    bin_dir.mkdir()
    (bin_dir / "dpkg-query").write_text("#!/bin/sh\nexit 1\n")
    (bin_dir / "apt-get").write_text(f'#!/bin/sh\necho "$@" >> {calls}\nexit 100\n')
    for tool in bin_dir.iterdir():
        tool.chmod(0o755)
    return {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}, calls


def _tree() -> dict[str, int]:
    """Every file under the project (caches aside, ignored directories such as out/, secrets/, state/ included)
    with its modification time."""
    found = {}
    for root, dirs, files in os.walk(PROJECT):
        dirs[:] = [d for d in dirs if d not in CACHES and not d.endswith(".egg-info") and Path(root, d) not in SHARED]
        for name in files:
            path = os.path.join(root, name)
            found[os.path.relpath(path, PROJECT)] = os.stat(path, follow_symlinks=False).st_mtime_ns
    return found


def test_every_task_s_help_through_the_launcher_installs_nothing_and_writes_nothing(tmp_path: Path):
    env, apt_calls = _tripwire(tmp_path)
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    before = _tree()
    for task in TASKS:
        with pytest.raises(Exit):  # here first: were help broken, the launcher would run the task for real
            _parse(task.name, "--help")
        result = _launch(task.name, "--help", cwd=cwd, env=env)
        assert (result.returncode, result.stderr) == (0, ""), task.name
        assert result.stdout.startswith(_usage(task) + "\n"), task.name
    assert not apt_calls.exists()
    assert _tree() == before
    assert list(cwd.iterdir()) == []
    # the tripwire works: a task that runs asks for its packages first (and stops here, as they cannot be had)
    result = _launch("upload-ami", "kiln-no-such-role", cwd=cwd, env=env)
    assert result.returncode == 1 and "Debian packages" in result.stderr and "no-such-role" not in result.stderr


@pytest.mark.parametrize(
    "argv,message",
    [
        (["rendr"], "./inv: no task named 'rendr'; did you mean render? (./inv --list shows them)"),
        (["--help", "reprovison"], "./inv: no task named 'reprovison'; did you mean reprovision?"),
        (["validate", "--jsn"], "./inv validate: no flag --jsn; did you mean --json? (./inv validate --help shows"),
        (["plan", "--no-dif"], "./inv plan: no flag --no-dif; did you mean --no-diff?"),
        # Invoke would take the flag for HOST and then not know what db2 is
        (["reprovision", "--rolse", "x.yaml", "db2"], "./inv reprovision: no flag --rolse; did you mean --roles?"),
        (["render", "--outt", "out/"], "./inv render: no flag --outt; did you mean --out?"),
        (["--lsit"], "./inv: no flag --lsit; did you mean --list?"),
        (["reprovision"], "./inv reprovision: HOST is missing (usage: ./inv reprovision [--options] HOST)"),
        (["lab", "--boot", "disk"], "./inv lab: ACTION is missing (usage: ./inv lab [--options] ACTION)"),
        (["validate", "--roles"], "./inv validate: --roles needs a value"),
        (["lab", "-h"], "./inv lab: --host needs a value (./inv lab --help shows the flags)"),
        (["xyzzy"], "./inv: no task named 'xyzzy' (./inv --list shows them)"),
    ],
)
def test_a_usage_error_exits_2_saying_what_is_wrong(argv: list[str], message: str):
    with pytest.raises(Exit) as stopped:
        _parse(*argv)
    assert stopped.value.code == 2
    assert stopped.value.message.startswith(message)


def test_the_launcher_exits_2_on_a_usage_error_and_prints_kiln_s_version():
    result = _launch("rendr")
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr == "./inv: no task named 'rendr'; did you mean render? (./inv --list shows them)\n"
    result = _launch("--version")
    assert (result.returncode, result.stdout) == (0, f"kiln {version('kiln')}\n")
