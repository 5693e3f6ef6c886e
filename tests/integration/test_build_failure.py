"""A failed build names its phase, shows the end of its log, keeps build.log, and leaves the previous
image exactly as it was (real disk-image-create, failing at element resolution). An up-to-date image
built before block maps gets one without a rebuild."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from kiln import blockmap
from kiln.build import builder, manifest
from kiln.build.builder import BuildEnv
from kiln.build.mirror import Mirror
from kiln.build.plan import ELEMENTS_DIR, image_spec
from kiln.build.progress import Display
from kiln.model import Cluster
from kiln.secrets import SecretStore

pytestmark = pytest.mark.integration


def test_failed_build_keeps_the_old_image(
    tmp_path: Path, cluster: Cluster, secret_store: SecretStore, capsys: pytest.CaptureFixture[str]
) -> None:
    elements = tmp_path / "elements"
    shutil.copytree(ELEMENTS_DIR, elements)
    deps = elements / "kiln-lb" / "element-deps"
    deps.write_text(deps.read_text() + "kiln-img-no-such-element\n")
    agent = tmp_path / "images" / "firstboot"
    agent.mkdir(parents=True)
    (agent / "firstboot").write_text("#!/bin/sh\n")
    os.chmod(agent / "firstboot", 0o755)
    old = tmp_path / "images" / "lb"
    old.mkdir()
    (old / "lb.raw").write_bytes(b"old raw")
    (old / "lb.qcow2").write_bytes(b"old qcow2")
    files = {n: manifest.file_entry(old / n) for n in ("lb.raw", "lb.qcow2")}
    manifest.write(old, {"role": "lb", "inputs_hash": "old", "files": files})
    before = (old / manifest.MANIFEST).read_bytes()
    env = BuildEnv(
        cluster=cluster,
        mirror=Mirror("http://127.0.0.1:9/debian", "http://127.0.0.1:9/debian-security"),
        store=secret_store,
        images=tmp_path / "images",
        elements=elements,
        agent=agent,
    )

    with Display(["lb"]) as display:
        outcome = builder.build_role(env, "lb", display)

    assert outcome.state == "failed"
    out = capsys.readouterr().out
    assert "build failed in phase" in out and "last lines of" in out
    assert "kiln-img-no-such-element" in out, "the log's tail says what went wrong"
    assert "kiln-img-no-such-element" in (old / "build.log").read_text()
    assert (old / manifest.MANIFEST).read_bytes() == before
    assert (old / "lb.raw").read_bytes() == b"old raw" and (old / "lb.qcow2").read_bytes() == b"old qcow2"
    assert not (tmp_path / "images" / ".work" / "lb").exists(), "no half-written outputs left behind"


def test_missing_agent_is_a_clear_failure(
    tmp_path: Path, cluster: Cluster, secret_store: SecretStore, capsys: pytest.CaptureFixture[str]
) -> None:
    env = BuildEnv(
        cluster=cluster,
        mirror=Mirror("http://127.0.0.1:9/debian", "http://127.0.0.1:9/debian-security"),
        store=secret_store,
        images=tmp_path / "images",
        agent=tmp_path / "images" / "firstboot",
    )
    with Display(["web"]) as display:
        outcome = builder.build_role(env, "web", display)
    assert outcome.state == "failed"
    assert "run ./inv freeze" in capsys.readouterr().out
    assert not (tmp_path / "images" / "web" / manifest.MANIFEST).exists()


def test_an_up_to_date_image_from_an_older_kiln_gets_its_block_map(
    tmp_path: Path, cluster: Cluster, secret_store: SecretStore
) -> None:
    agent = tmp_path / "images" / "firstboot"
    agent.mkdir(parents=True)
    (agent / "firstboot").write_text("#!/bin/sh\n")
    env = BuildEnv(
        cluster=cluster,
        mirror=Mirror("http://127.0.0.1:9/debian", "http://127.0.0.1:9/debian-security"),
        store=secret_store,
        images=tmp_path / "images",
        agent=agent,
    )
    out = tmp_path / "images" / "web"
    out.mkdir()
    (out / "web.raw").write_bytes(b"\1" * (1 << 20) + bytes(8 << 20))
    (out / "web.qcow2").write_bytes(b"qcow2")
    digest = builder.role_inputs_hash(env, image_spec(cluster, "web", env.mirror))
    files = {n: manifest.file_entry(out / n) for n in ("web.raw", "web.qcow2")}
    manifest.write(out, {"role": "web", "inputs_hash": digest, "files": files})

    with Display(["web"]) as display:
        outcome = builder.build_role(env, "web", display)

    assert (outcome.state, outcome.detail) == ("up to date", "block map added")
    data = manifest.read(out)
    assert data is not None and (out / "web.map").read_text() == "data 0 1\nzero 1 8\n"
    assert data["blockmap"] == blockmap.scan(out / "web.raw").manifest_entry("web.map")
    assert manifest.up_to_date(out, digest) and "web.map" in data["files"]
    with Display(["web"]) as display:
        assert builder.build_role(env, "web", display).detail == "", "added once"
