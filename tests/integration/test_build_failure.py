"""A failed build names its phase, shows the end of its log, keeps build.log, and leaves the previous
image exactly as it was (real disk-image-create, failing at element resolution). An up-to-date image
built before block maps gets one without a rebuild. build-all runs DIB side by side, a cache each."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from kiln import blockmap
from kiln.build import builder, manifest
from kiln.build import cli as build_cli
from kiln.build.builder import BuildEnv
from kiln.build.mirror import Mirror
from kiln.build.plan import ELEMENTS_DIR, image_spec
from kiln.build.progress import Display
from kiln.model import Cluster
from kiln.secrets import SecretStore

pytestmark = pytest.mark.integration

NOWHERE = Mirror("http://127.0.0.1:9/debian", "http://127.0.0.1:9/debian-security")


def _env(tmp: Path, cluster: Cluster, store: SecretStore, *, agent: bool = True, extra_dep: str = "") -> BuildEnv:
    """A build environment under `tmp`: a stub frozen agent (unless `agent` is False), kiln's elements (copied, with
    `extra_dep` added to the element-deps of kiln-base when given), a mirror that answers nothing."""
    images = tmp / "images"
    if agent:
        (images / "firstboot").mkdir(parents=True)
        (images / "firstboot" / "firstboot").write_text("#!/bin/sh\n")
        os.chmod(images / "firstboot" / "firstboot", 0o755)
    elements = ELEMENTS_DIR
    if extra_dep:
        elements = tmp / "elements"
        shutil.copytree(ELEMENTS_DIR, elements)
        base, dep = extra_dep.split(":")
        deps = elements / base / "element-deps"
        deps.write_text(deps.read_text() + dep + "\n")
    return BuildEnv(
        cluster=cluster, mirror=NOWHERE, store=store, images=images, elements=elements, agent=images / "firstboot"
    )


def test_failed_build_keeps_the_old_image(
    tmp_path: Path, cluster: Cluster, secret_store: SecretStore, capsys: pytest.CaptureFixture[str]
) -> None:
    env = _env(tmp_path, cluster, secret_store, extra_dep="kiln-lb:kiln-img-no-such-element")
    old = tmp_path / "images" / "lb"
    old.mkdir()
    (old / "lb.raw").write_bytes(b"old raw")
    (old / "lb.qcow2").write_bytes(b"old qcow2")
    files = {n: manifest.file_entry(old / n) for n in ("lb.raw", "lb.qcow2")}
    manifest.write(old, {"role": "lb", "inputs_hash": "old", "files": files})
    before = (old / manifest.MANIFEST).read_bytes()

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
    env = _env(tmp_path, cluster, secret_store, agent=False)
    with Display(["web"]) as display:
        outcome = builder.build_role(env, "web", display)
    assert outcome.state == "failed"
    assert "run ./inv freeze" in capsys.readouterr().out
    assert not (tmp_path / "images" / "web" / manifest.MANIFEST).exists()


def test_an_up_to_date_image_from_an_older_kiln_gets_its_block_map(
    tmp_path: Path, cluster: Cluster, secret_store: SecretStore
) -> None:
    env = _env(tmp_path, cluster, secret_store)
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


PROBE = """#!/bin/bash
set -eu
echo "$(date +%s.%N) start ${DIB_IMAGE_CACHE}" >> "$KILN_TEST_PROBE"
sleep 4
echo "$(date +%s.%N) end ${DIB_IMAGE_CACHE}" >> "$KILN_TEST_PROBE"
exit 1
"""


def test_images_build_side_by_side_with_a_cache_each(
    tmp_path: Path, cluster: Cluster, secret_store: SecretStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = _env(tmp_path, cluster, secret_store, extra_dep="kiln-base:kiln-test-probe")
    hook = env.elements / "kiln-test-probe" / "root.d" / "00-probe"
    hook.parent.mkdir(parents=True)
    hook.write_text(PROBE)
    os.chmod(hook, 0o755)
    probe = tmp_path / "probe.log"
    monkeypatch.setenv("KILN_TEST_PROBE", str(probe))
    monkeypatch.setattr(build_cli, "DIB_CACHE", tmp_path / "cache")

    with Display(["lb", "web"]) as display:
        outcomes = build_cli._build_roles(env, ("lb", "web"), display, force=False, jobs=2)

    assert [(o.name, o.state) for o in outcomes] == [("lb", "failed"), ("web", "failed")]
    events = [line.split() for line in probe.read_text().splitlines()]
    runs: dict[str, dict[str, float]] = {}
    for at, what, cache in events:
        runs.setdefault(cache, {})[what] = float(at)
    assert set(runs) == {str(tmp_path / "cache"), str(tmp_path / "cache" / "kiln-slot-1")}, events
    first, second = sorted(runs.values(), key=lambda r: r["start"])
    assert second["start"] < first["end"], f"the two DIB runs did not overlap: {events}"
