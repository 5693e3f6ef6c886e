"""Offline apply into a tree: modes, owners by name from the tree's passwd/group, numeric fallback, idempotence."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from firstboot import agent
from tests.unit.agent_support import SECRETS, bundle


def tree(root: Path) -> Path:
    (root / "etc").mkdir(parents=True)
    (root / "etc/passwd").write_text(
        "root:x:0:0:root:/root:/bin/bash\nkiln-app:x:997:997::/opt/kiln-app:/usr/sbin/nologin\n"
    )
    (root / "etc/group").write_text("root:x:0:\nkiln-app:x:997:\n")
    return root


def write_bundle(tmp: Path, data: dict) -> Path:
    path = tmp / "bundle.json"
    path.write_text(json.dumps(data))
    return path


def owner(path: Path) -> tuple[int, int, int]:
    st = path.stat()
    return st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)


def test_files_secrets_and_directories_land_with_mode_and_owner_by_name(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tree(tmp_path / "root")
    data = bundle()
    data["secrets"][0]["group"] = "kiln-app"
    data["secrets"][0]["mode"] = "0640"
    assert agent.apply(write_bundle(tmp_path, data), root, live=False) == 0
    assert owner(root / "etc/kiln/app.env") == (0, 997, 0o640)
    assert owner(root / "etc/kiln/secrets") == (0, 0, 0o711)
    assert owner(root / "etc/kiln/secrets/db_app_password") == (0, 997, 0o640)
    assert (root / "etc/kiln/secrets/db_replication_password").read_text() == SECRETS["db_replication_password"]
    assert "applied db1" in capsys.readouterr().out


def test_a_second_apply_changes_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = tree(tmp_path / "root")
    path = write_bundle(tmp_path, bundle())
    agent.apply(path, root, live=False)
    before = {p: p.stat().st_mtime_ns for p in root.rglob("*")}
    capsys.readouterr()
    assert agent.apply(path, root, live=False) == 0
    out = capsys.readouterr().out
    assert out.rstrip().endswith(": unchanged")
    assert {p: p.stat().st_mtime_ns for p in root.rglob("*")} == before


def test_drifted_content_mode_and_owner_are_put_back(tmp_path: Path) -> None:
    root = tree(tmp_path / "root")
    path = write_bundle(tmp_path, bundle())
    agent.apply(path, root, live=False)
    (root / "etc/hostname").write_text("tampered\n")
    os.chmod(root / "etc/kiln/app.env", 0o666)
    os.chown(root / "etc/kiln/secrets/db_admin_password", 997, 997)
    agent.apply(path, root, live=False)
    assert (root / "etc/hostname").read_text() == "db1\n"
    assert owner(root / "etc/kiln/app.env") == (0, 997, 0o640)
    assert owner(root / "etc/kiln/secrets/db_admin_password") == (0, 0, 0o600)


def test_unknown_names_fall_back_to_root_and_numeric_names_are_ids(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = tree(tmp_path / "root")
    data = bundle()
    data["files"].append(
        {"path": "/etc/haproxy/haproxy.cfg", "mode": "0640", "owner": "root", "group": "haproxy", "content": "x"}
    )
    data["files"].append({"path": "/srv/www/index.html", "mode": "0644", "owner": "33", "group": "33", "content": "hi"})
    agent.apply(write_bundle(tmp_path, data), root, live=False)
    assert owner(root / "etc/haproxy/haproxy.cfg") == (0, 0, 0o640)
    assert owner(root / "srv/www/index.html") == (33, 33, 0o644)
    assert "group 'haproxy' is not in" in caplog.text


def test_a_bundle_of_another_schema_is_not_applied(tmp_path: Path) -> None:
    data = bundle()
    data["schema"] = 99
    assert agent.apply(write_bundle(tmp_path, data), tmp_path / "root", live=False) == 1
    assert not (tmp_path / "root").exists()


@pytest.mark.parametrize("bad", ["etc/relative", "/etc/../../escape", "/etc/kiln/../../../x"])
def test_paths_that_leave_the_root_are_refused(tmp_path: Path, bad: str) -> None:
    data = bundle()
    data["files"] = [{"path": bad, "mode": "0644", "owner": "root", "group": "root", "content": "x"}]
    assert agent.apply(write_bundle(tmp_path, data), tmp_path / "root", live=False) == 1
    assert not (tmp_path / "escape").exists() and not (tmp_path / "x").exists()


def test_live_steps_into_a_tree_run_only_when_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = tree(tmp_path / "root")
    assert agent.apply(write_bundle(tmp_path, bundle()), root, live=True) == 0
    out = capsys.readouterr().out
    for step in ("firewall", "services", "join", "checks"):
        assert f"{step:<9} skipped (the root is not /: name it with --only {step}" in out
    assert (root / "etc/hostname").read_text() == "db1\n"
