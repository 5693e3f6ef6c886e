"""The inputs hash decides whether an image is rebuilt: it must move with every input and only then."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from kiln import freeze
from kiln.build import builder, manifest
from kiln.build.builder import BuildEnv
from kiln.build.inputs import inputs_hash, tree_digest
from kiln.build.mirror import Mirror
from kiln.build.plan import ELEMENTS_DIR, element_closure, image_spec, roles_to_build, size_in_gb
from kiln.model import Cluster
from kiln.secrets import SecretStore

MIRROR = Mirror("http://mirror.example.org/debian", "http://mirror.example.org/debian-security")


@pytest.fixture()
def env(tmp_path: Path, cluster: Cluster, secret_store: SecretStore) -> BuildEnv:
    elements = tmp_path / "elements"
    shutil.copytree(ELEMENTS_DIR, elements)
    agent = tmp_path / "images" / "firstboot"
    agent.mkdir(parents=True)
    (agent / "firstboot").write_bytes(b"#!/bin/sh\necho agent v1\n")
    os.chmod(agent / "firstboot", 0o755)
    app = tmp_path / "kilnapp"
    app.mkdir()
    (app / "__init__.py").write_text("")
    return BuildEnv(
        cluster=cluster,
        mirror=MIRROR,
        store=secret_store,
        images=tmp_path / "images",
        elements=elements,
        agent=agent,
        agent_units=tuple(tmp_path / unit for unit in freeze.UNITS),
        project=tmp_path,
    )


ROLES = ("lb", "web", "app", "db")


def _hash(env: BuildEnv, role: str = "lb") -> str:
    return builder.role_inputs_hash(env, image_spec(env.cluster, role, env.mirror))


def test_same_inputs_same_hash(env: BuildEnv) -> None:
    assert _hash(env) == _hash(env)


def test_element_file_change_moves_only_the_roles_using_it(env: BuildEnv) -> None:
    before = {r: _hash(env, r) for r in ROLES}
    listed = env.elements / "kiln-web" / "static" / "etc" / "kiln" / "services-off.d" / "kiln-web"
    listed.write_text(listed.read_text() + "# changed\n")
    after = {r: _hash(env, r) for r in ROLES}
    assert after["web"] != before["web"]
    assert {r for r in ROLES if after[r] != before[r]} == {"web"}


def test_base_element_change_moves_every_role(env: BuildEnv) -> None:
    before = {r: _hash(env, r) for r in ROLES}
    conf = env.elements / "kiln-base" / "static" / "etc" / "sysctl.d" / "90-kiln-hardening.conf"
    conf.write_text(conf.read_text() + "kernel.sysrq = 0\n")
    assert all(_hash(env, r) != before[r] for r in ROLES)


def test_mode_change_counts(env: BuildEnv) -> None:
    before = _hash(env)
    hook = env.elements / "kiln-base" / "post-install.d" / "70-kiln-services-off"
    os.chmod(hook, 0o644)
    assert _hash(env) != before


def test_agent_key_url_and_dib_version_count(env: BuildEnv, monkeypatch: pytest.MonkeyPatch) -> None:
    base = _hash(env)
    (env.agent / "firstboot").write_bytes(b"#!/bin/sh\necho agent v2\n")
    agent_changed = _hash(env)
    assert agent_changed != base
    seen = {agent_changed}
    for unit in env.agent_units:  # the first boot's unit and converge's two
        unit.write_text(f"[Unit]\nDescription={unit.name}\n")
        seen.add(_hash(env))
    assert len(seen) == 1 + len(env.agent_units)
    monkeypatch.setattr(builder.dib, "version", lambda: "9.9.9")
    assert _hash(env) != agent_changed


def test_app_sources_count_for_the_app_role_only(env: BuildEnv) -> None:
    lb, app = _hash(env, "lb"), _hash(env, "app")
    (env.project / "kilnapp" / "wsgi.py").write_text("app = None\n")
    assert _hash(env, "lb") == lb
    assert _hash(env, "app") != app


def test_tree_digest_ignores_pycache(tmp_path: Path) -> None:
    (tmp_path / "a.py").write_text("x = 1\n")
    before = tree_digest(tmp_path)
    (tmp_path / "__pycache__").mkdir()
    (tmp_path / "__pycache__" / "a.cpython-311.pyc").write_bytes(b"junk")
    assert tree_digest(tmp_path) == before


def test_missing_input_differs_from_present(tmp_path: Path) -> None:
    f = tmp_path / "x"
    absent = inputs_hash(elements=[], settings={}, files={"x": f}, dib_version="1")
    f.write_text("")
    assert inputs_hash(elements=[], settings={}, files={"x": f}, dib_version="1") != absent


def test_up_to_date_needs_matching_hash_and_outputs(tmp_path: Path) -> None:
    (tmp_path / "lb.raw").write_bytes(b"r" * 10)
    manifest.write(
        tmp_path, {"role": "lb", "inputs_hash": "h1", "files": {"lb.raw": manifest.file_entry(tmp_path / "lb.raw")}}
    )
    assert manifest.up_to_date(tmp_path, "h1")
    assert not manifest.up_to_date(tmp_path, "h2")
    (tmp_path / "lb.raw").write_bytes(b"r" * 5)  # truncated output
    assert not manifest.up_to_date(tmp_path, "h1")
    (tmp_path / "lb.raw").unlink()
    assert not manifest.up_to_date(tmp_path, "h1")
    (tmp_path / manifest.MANIFEST).write_text("{not json")
    assert not manifest.up_to_date(tmp_path, "h1")


def test_dpkg_packages_reads_dib_manifest(tmp_path: Path) -> None:
    data = {
        "packages": [
            {"package": "haproxy", "arch": "amd64", "version": "2.6.12-1+deb12u1", "status": "ii "},
            {"package": "gone", "arch": "amd64", "version": "1", "status": "rc "},
        ]
    }
    path = tmp_path / "dib-manifest-dpkg-lb"
    path.write_text(json.dumps(data))
    assert manifest.dpkg_packages(path) == {"haproxy": "2.6.12-1+deb12u1"}


def test_plan_of_the_reference_cluster(cluster: Cluster) -> None:
    assert roles_to_build(cluster) == ("lb", "web", "app", "db", "mon")
    spec = image_spec(cluster, "db", MIRROR)
    assert spec.elements == ("kiln-base", "kiln-firstboot", "kiln-db")
    env = spec.env_dict()
    assert env["DIB_DISTRIBUTION_MIRROR"] == MIRROR.archive
    assert env["DIB_DEBIAN_SECURITY_MIRROR"] == MIRROR.security
    assert env["DIB_KILN_ADMIN_NETS"] == "10.10.0.0/24"
    assert env["DIB_RELEASE"] == "bookworm"


def test_element_closure_follows_kiln_deps_only() -> None:
    assert element_closure(("kiln-db",)) == ("kiln-db", "kiln-monitoring")


def test_size_in_gb() -> None:
    assert size_in_gb("4G") == "4"
    assert size_in_gb("1536M") == "1.5"


def test_the_frozen_agent_holds_every_kiln_module_it_imports() -> None:
    """kiln/freeze.py's SOURCES decide when the agent is frozen again: a kiln module the agent imports (directly or
    through another) but SOURCES lacks would change without a new freeze (kiln/hostauth.py once did)."""
    import ast

    from kiln.freeze import SOURCES
    from kiln.project import ROOT

    def kiln_imports(path: Path) -> set[str]:
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "kiln":
                if node.module == "kiln":
                    found |= {f"kiln/{a.name}.py" for a in node.names}
                else:
                    found.add(node.module.replace(".", "/") + ".py")
            elif isinstance(node, ast.Import):
                found |= {a.name.replace(".", "/") + ".py" for a in node.names if a.name.startswith("kiln.")}
        return found

    todo = list((ROOT / "firstboot").rglob("*.py"))
    seen: set[str] = set()
    while todo:
        for module in kiln_imports(todo.pop()) - seen:
            seen.add(module)
            todo.append(ROOT / module)
    frozen = {s for s in SOURCES if s.endswith(".py")}
    assert seen <= frozen, f"the agent imports {sorted(seen - frozen)}: add them to kiln/freeze.py SOURCES"
