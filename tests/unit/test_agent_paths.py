"""Every path the agent writes stays under its root: a directory symlink in a tree that leads out of it (an image
tree's `etc -> /etc`) is refused, so an apply into that tree never writes to the build machine's own files."""

from __future__ import annotations

import uuid
from dataclasses import replace
from pathlib import Path

import pytest

from firstboot.apply import apply
from firstboot.paths import Paths
from kiln.bundle import File
from tests.unit.agent_support import bundle


def test_a_directory_symlink_out_of_the_root_is_refused(tmp_path: Path) -> None:
    (tmp_path / "etc").symlink_to("/etc")
    with pytest.raises(ValueError, match="leads out of .* through a symlink"):
        Paths(tmp_path).under("/etc/kiln/agent.json")
    with pytest.raises(ValueError, match="leads out of"):
        Paths(tmp_path).under("/etc/hostname")


def test_symlinks_that_stay_inside_the_root_are_followed(tmp_path: Path) -> None:
    (tmp_path / "usr/etc").mkdir(parents=True)
    (tmp_path / "etc").symlink_to("usr/etc")  # relative: inside the tree
    (tmp_path / "var").mkdir()
    (tmp_path / "var/lib").symlink_to(tmp_path / "usr")  # absolute, but into the tree
    assert Paths(tmp_path).under("/etc/hostname") == tmp_path / "etc/hostname"
    assert Paths(tmp_path).under("/var/lib/firstboot/state.json") == tmp_path / "var/lib/firstboot/state.json"
    assert Paths(tmp_path).under("/etc") == tmp_path / "etc"  # the link itself is in the tree


def test_plain_paths_only(tmp_path: Path) -> None:
    for bad in ("etc/hostname", "/etc/../root/.ssh/authorized_keys"):
        with pytest.raises(ValueError, match="not a plain absolute path"):
            Paths(tmp_path).under(bad)


def test_an_apply_into_a_tree_whose_etc_leads_out_writes_nothing_outside_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    name = f"/etc/kiln-test-escape-{uuid.uuid4().hex}"  # unique: the real /etc cannot hold it already
    escaped = Path(name)
    root = tmp_path / "root"
    root.mkdir()
    (root / "etc").symlink_to("/etc")
    only = replace(bundle(), directories=(), files=(File(name, "escaped\n"),), secrets=())  # nothing else to write
    path = tmp_path / "bundle.json"
    path.write_bytes(only.to_json())
    try:
        assert apply(path, root, live=False) == 1
        assert not escaped.exists()
    finally:
        escaped.unlink(missing_ok=True)  # had the refusal broken, the real /etc is put back as it was
    out = capsys.readouterr().out
    assert f"files     FAILED: ValueError: '{name}' leads out of {root} through a symlink" in out
