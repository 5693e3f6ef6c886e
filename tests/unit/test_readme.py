"""The README tells the truth: its tasks table is ./inv --list; docs/roles.md's key reference is the schema."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from kiln.model.docs import reference_markdown

PROJECT = Path(__file__).resolve().parents[2]
README = (PROJECT / "README.md").read_text()


def _between(start: str, end: str, text: str = README) -> str:
    return text.split(f"<!-- {start}", 1)[1].split("-->", 1)[1].split(f"<!-- {end}", 1)[0]


def _listed_tasks() -> dict[str, str]:
    """Task name → first line of its help, from Invoke itself."""
    out = subprocess.run(
        [sys.executable, "-m", "invoke", "--search-root", str(PROJECT), "--list", "--list-format", "json"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    import json

    tasks = json.loads(out)["tasks"]
    return {t["name"].replace("_", "-"): (t["help"] or "").strip().splitlines()[0] for t in tasks}


def test_tasks_table_matches_invoke_list():
    rows = re.findall(r"^\| `\./inv ([\w-]+)[^`]*` \| (.*) \|$", _between("tasks:start", "tasks:end"), re.M)
    assert dict(rows) == _listed_tasks()
    assert [name for name, _ in rows] == sorted(name for name, _ in rows), "keep the table sorted by task name"


def test_roles_reference_is_generated_from_the_schema():
    roles_doc = (PROJECT / "docs" / "roles.md").read_text()
    assert _between("roles-reference:start", "roles-reference:end", roles_doc).strip() == reference_markdown().strip()


def test_readme_shows_the_two_commands():
    assert "./inv build-all" in README and "./inv test" in README
    assert "./inv test" in (PROJECT / ".ci" / "run").read_text()


def test_the_published_roles_schema_is_the_one_the_model_uses():
    from kiln.model.docs import schema_json

    published = (PROJECT / "docs" / "roles.schema.json").read_text()
    assert published == schema_json(), "regenerate: python -m kiln.model.docs > docs/roles.schema.json"


def test_the_readme_example_cluster_validates_and_renders(tmp_path, capsys):
    """The quick start's site file is what a new user copies first: it must pass validate and render as shown."""
    from kiln import cli
    from kiln.model import load_roles
    from kiln.project import Project

    example = README.split("## Your own cluster", 1)[1].split("```yaml\n", 1)[1].split("```", 1)[0]
    site = tmp_path / "site.yaml"
    site.write_text(example)
    assert sorted(h.role for h in load_roles(site).hosts) == ["app", "db", "lb", "lb", "web"], "the 5-host minimum"
    assert cli.validate(Project(roles=str(site)), as_json=False) == 0, capsys.readouterr()
    assert cli.render(Project(roles=str(site)), out=str(tmp_path / "preview")) == 0, capsys.readouterr()
    assert (tmp_path / "preview" / "lb1" / "bundle.json").is_file()


def _command_lines(text: str) -> list[str]:
    """Every `./inv ...` command line a reader may copy: in code blocks (up to a comment) and in inline code with
    arguments, leaving out usage patterns with placeholders (TASK, HOST, [--flag])."""
    found = []
    for block in re.findall(r"```[a-z]*\n(.*?)```", text, re.S):
        found += [line.split("  #")[0].strip() for line in block.splitlines() if line.startswith("./inv ")]
    found += [c for c in re.findall(r"`(\./inv [^`]+)`", text) if len(c.split()) > 2]  # `./inv render`: a name
    return [c for c in found if "[" not in c and not re.search(r"\b[A-Z][A-Z_]+\b", c) and "&&" not in c]


@pytest.mark.parametrize("document", ["README.md", *sorted(p.name for p in (PROJECT / "docs").glob("*.md"))])
def test_every_inv_command_line_in_the_docs_parses(document: str) -> None:
    """A command copied from the docs runs the task it names with flags it has: parsed as ./inv parses it."""
    from invoke import Exit

    from kiln.program import KilnProgram

    path = PROJECT / document if document == "README.md" else PROJECT / "docs" / document
    commands = _command_lines(path.read_text())
    wrong = []
    for command in commands:
        keep = sys.dont_write_bytecode  # Invoke's parse sets it for the process
        try:
            KilnProgram().parse(["./inv", "--search-root", str(PROJECT), *shlex.split(command)[1:]])
        except Exit as e:
            if e.code != 0:
                wrong.append(f"{command}: {e.message}")
        finally:
            sys.dont_write_bytecode = keep
    assert not wrong, "\n".join(wrong)
    if document == "README.md":
        assert len(commands) >= 7, commands  # the extraction found the quick start
