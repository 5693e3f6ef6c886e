"""Offline apply into a tree: modes, owners by name from the tree's passwd/group, numeric fallback, idempotence;
a bundle that does not fit the contract is refused with its JSON path before anything is written."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from firstboot.apply import apply
from kiln.bundle import Bundle, File, dumps, shared_digest
from tests.unit.agent_support import HOSTS, SECRETS, as_data, bundle, stamped, with_shared_hosts


def tree(root: Path) -> Path:
    (root / "etc").mkdir(parents=True)
    (root / "etc/passwd").write_text(
        "root:x:0:0:root:/root:/bin/bash\nkiln-app:x:997:997::/opt/kiln-app:/usr/sbin/nologin\n"
    )
    (root / "etc/group").write_text("root:x:0:\nkiln-app:x:997:\n")
    return root


def write_bundle(tmp: Path, data: Bundle | dict[str, Any]) -> Path:
    path = tmp / "bundle.json"
    path.write_bytes(data.to_json() if isinstance(data, Bundle) else dumps(data))
    return path


def owner(path: Path) -> tuple[int, int, int]:
    st = path.stat()
    return st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)


def test_files_secrets_and_directories_land_with_mode_and_owner_by_name(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tree(tmp_path / "root")
    b = bundle()
    b = replace(b, secrets=(replace(b.secrets[0], group="kiln-app", mode="0640"), *b.secrets[1:]))
    assert apply(write_bundle(tmp_path, b), root, live=False) == 0
    assert owner(root / "etc/kiln/app.env") == (0, 997, 0o640)
    assert owner(root / "etc/kiln/secrets") == (0, 0, 0o711)
    assert owner(root / "etc/kiln/secrets/db_app_password") == (0, 997, 0o640)
    assert (root / "etc/kiln/secrets/db_replication_password").read_text() == SECRETS["db_replication_password"]
    assert "applied db1" in capsys.readouterr().out


def test_a_second_apply_changes_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = tree(tmp_path / "root")
    path = write_bundle(tmp_path, bundle())
    apply(path, root, live=False)
    before = {p: p.stat().st_mtime_ns for p in root.rglob("*")}
    capsys.readouterr()
    assert apply(path, root, live=False) == 0
    out = capsys.readouterr().out
    assert out.rstrip().endswith(": unchanged")
    assert {p: p.stat().st_mtime_ns for p in root.rglob("*")} == before


def test_drifted_content_mode_and_owner_are_put_back(tmp_path: Path) -> None:
    root = tree(tmp_path / "root")
    path = write_bundle(tmp_path, bundle())
    apply(path, root, live=False)
    (root / "etc/hostname").write_text("tampered\n")
    os.chmod(root / "etc/kiln/app.env", 0o666)
    os.chown(root / "etc/kiln/secrets/db_admin_password", 997, 997)
    apply(path, root, live=False)
    assert (root / "etc/hostname").read_text() == "db1\n"
    assert owner(root / "etc/kiln/app.env") == (0, 997, 0o640)
    assert owner(root / "etc/kiln/secrets/db_admin_password") == (0, 0, 0o600)


def test_unknown_names_fall_back_to_root(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = tree(tmp_path / "root")
    b = bundle()
    extra = File("/etc/haproxy/haproxy.cfg", "x", mode="0640", group="haproxy")
    apply(write_bundle(tmp_path, replace(b, files=(*b.files, extra))), root, live=False)
    assert owner(root / "etc/haproxy/haproxy.cfg") == (0, 0, 0o640)
    assert "group 'haproxy' is not in" in caplog.text


def test_live_steps_into_a_tree_run_only_when_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = tree(tmp_path / "root")
    assert apply(write_bundle(tmp_path, bundle()), root, live=True) == 0
    out = capsys.readouterr().out
    for step in ("firewall", "services", "join", "checks"):
        assert f"{step:<9} skipped (the root is not /: name it with --only {step}" in out
    assert (root / "etc/hostname").read_text() == "db1\n"


def test_shared_contents_come_from_the_render_tree(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"  # as ./inv render --out writes it: out/<host>/bundle.json, out/_shared/<sha256>
    (out / "db1").mkdir(parents=True)
    (out / "_shared").mkdir()
    (out / "_shared" / shared_digest(HOSTS)).write_text(HOSTS)
    path = write_bundle(out / "db1", with_shared_hosts(bundle()))
    root = tree(tmp_path / "root")
    assert apply(path, root, live=False) == 0
    assert (root / "etc/hosts").read_text() == HOSTS
    (out / "_shared" / shared_digest(HOSTS)).write_text(HOSTS + "10.10.0.66 intruder\n")
    assert apply(path, root, live=False) == 1
    assert "does not match its sha256" in capsys.readouterr().out
    (out / "_shared" / shared_digest(HOSTS)).unlink()
    assert apply(path, root, live=False) == 1
    assert f"the bundle names shared content {shared_digest(HOSTS)}, found in neither" in capsys.readouterr().out
    assert (root / "etc/hosts").read_text() == HOSTS  # what failed to load was not applied


def _set(where: str, value: object) -> Any:
    """A change to bundle data at a dotted path ("files.0.mode"); the value None removes the key."""

    def change(data: dict[str, Any]) -> None:
        *parents, last = where.split(".")
        node: Any = data
        for key in parents:
            node = node[int(key)] if isinstance(node, list) else node[key]
        if value is None:
            del node[last]
        else:
            node[last] = value

    return change


# What an operator's hand edit or a mismatched server could produce, and where the agent says the problem is.
MALFORMED = [
    pytest.param(_set("files.1.mode", "17777"), "$.files[1].mode: '17777' does not match", id="setuid-sticky-mode"),
    pytest.param(_set("files.0.path", "/etc/../../escape"), "$.files[0].path: ", id="path-leaving-the-root"),
    pytest.param(_set("files.0.path", "etc/relative"), "$.files[0].path: ", id="relative-path"),
    pytest.param(_set("host.mac", None), "$.host.mac: missing", id="missing-key"),
    pytest.param(_set("network.prefix", "24"), "$.network.prefix: expected an integer", id="wrong-type"),
    pytest.param(_set("join.priority", 150), "$.join.priority: unknown key", id="unknown-key"),
    pytest.param(_set("schema", 99), "$.schema: 99: this agent knows schema 3", id="other-schema"),
]


@pytest.mark.parametrize(("change", "says"), MALFORMED)
def test_a_bundle_that_does_not_fit_is_refused_with_its_json_path(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], change: Any, says: str
) -> None:
    data = as_data(bundle())
    change(data)
    path = write_bundle(tmp_path, data)
    assert apply(path, tmp_path / "root", live=False) == 1  # an exception would fail the test: no traceback
    first = capsys.readouterr().out.splitlines()[0]
    assert first.startswith(f"fetch     FAILED: bundle refused: {path}: {says}"), first
    assert not (tmp_path / "root").exists() and not (tmp_path / "escape").exists()  # nothing of it applied


def test_a_file_that_is_not_a_bundle_is_refused_without_a_traceback(tmp_path: Path) -> None:
    for body in (b"{not json", json.dumps([1, 2]).encode()):
        path = tmp_path / "bundle.json"
        path.write_bytes(body)
        result = subprocess.run(
            [sys.executable, "-m", "firstboot", "apply", "--bundle", str(path), "--root", str(tmp_path / "root")],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert result.returncode == 1 and f"bundle refused: {path}: $: " in result.stdout, result.stdout
        assert "Traceback" not in result.stdout + result.stderr
    missing = apply(tmp_path / "nowhere.json", tmp_path / "root", live=False)
    assert missing == 1 and not (tmp_path / "root").exists()


def test_offline_apply_takes_a_served_bundle_whatever_its_stamps(tmp_path: Path) -> None:
    """Stamps guard what a server hands a booting host; a file an operator applies by hand is theirs to choose."""
    root = tree(tmp_path / "root")
    old = stamped(bundle(), cluster_id="ab" * 16, generation=1, issued=0, ttl=60)  # another cluster's, long expired
    assert apply(write_bundle(tmp_path, old), root, live=False) == 0
    assert (root / "etc/hostname").read_text() == "db1\n"
