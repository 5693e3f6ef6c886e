"""What the kiln elements copy into an image from the build host, gathered in one place first.

The firstboot stage: the frozen agent (images/firstboot/), the signing public key, the cluster CA
and agent.json with the provisioning URL. Never a private key. The app wheelhouse: the demo app
`kilnapp` as a wheel plus its pinned dependencies (elements/kiln-app/requirements.txt), since the
image has no package index at first boot.
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from kiln.fsutil import write_atomic
from kiln.run import run

AGENT_EXECUTABLE = "firstboot"


class StageError(Exception):
    pass


def firstboot_stage(
    stage: Path,
    *,
    agent_dir: Path,
    signing_pub: Path,
    ca_pem: Path,
    provisioning_url: str,
    units: Sequence[Path],
    cluster_id: str = "",
) -> Path:
    """Fill `stage` with agent/, signing.pub, ca.pem, agent.json (the provisioning URL, and the cluster the image
    is for: its agent refuses another cluster's bundles) and the agent's units (by their names); return it."""
    if not (agent_dir / AGENT_EXECUTABLE).is_file():
        raise StageError(
            f"the frozen agent {agent_dir / AGENT_EXECUTABLE} is missing: run ./inv freeze "
            f"(kiln-firstboot bakes it into every image)"
        )
    for unit in units:
        if not unit.is_file():
            raise StageError(f"the agent's unit {unit} is missing (it ships with the agent, in firstboot/)")
    for path in (signing_pub, ca_pem):
        if not path.is_file():
            raise StageError(f"{path} is missing: run ./inv keys")
        if b"PRIVATE KEY" in path.read_bytes():
            raise StageError(f"{path} holds a private key; refusing to bake it into an image")
    if stage.exists():
        shutil.rmtree(stage)
    stage.mkdir(parents=True)
    shutil.copytree(agent_dir, stage / "agent", symlinks=True)
    shutil.copy2(signing_pub, stage / "signing.pub")
    shutil.copy2(ca_pem, stage / "ca.pem")
    for unit in units:
        shutil.copy2(unit, stage / unit.name)
    baked = {"url": provisioning_url, **({"cluster_id": cluster_id} if cluster_id else {})}
    write_atomic(stage / "agent.json", json.dumps(baked, sort_keys=True).encode() + b"\n")
    return stage


def app_wheelhouse(wheels: Path, *, app_package: Path, requirements: Path) -> Path:
    """A directory of wheels: kilnapp (built from `app_package`) and the pinned requirements from PyPI."""
    if not (app_package / "__init__.py").is_file():
        raise StageError(f"the demo app package {app_package} is missing (kiln-app installs kilnapp into the image)")
    if wheels.exists():
        shutil.rmtree(wheels)
    wheels.mkdir(parents=True)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    run([*pip, "download", "--only-binary=:all:", "-d", wheels, "-r", requirements], timeout=600)
    with tempfile.TemporaryDirectory(prefix="kiln-img-app-") as tmp:
        src = Path(tmp) / "src"
        shutil.copytree(app_package, src / "kilnapp", ignore=shutil.ignore_patterns("__pycache__"))
        (src / "pyproject.toml").write_text(
            '[build-system]\nrequires = ["setuptools>=61"]\nbuild-backend = "setuptools.build_meta"\n\n'
            '[project]\nname = "kilnapp"\nversion = "0"\ndescription = "kiln demo app"\n\n'
            '[tool.setuptools.packages.find]\ninclude = ["kilnapp*"]\n'
        )
        run([*pip, "wheel", "--no-deps", "-w", wheels, src], timeout=600)
    return wheels
