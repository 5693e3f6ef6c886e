"""The kiln elements follow diskimage-builder's conventions, checked by dib-lint and shellcheck."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from kiln.build.plan import ELEMENTS_DIR
from kiln.project import ROOT as PROJECT

ELEMENTS = sorted(p for p in ELEMENTS_DIR.iterdir() if p.is_dir())
DIB_ELEMENTS = [p for p in ELEMENTS if p.name != "kiln-installer"]  # the installer is assembled, not a DIB element
HOOKS = sorted(p for e in DIB_ELEMENTS for p in e.glob("*.d/*") if p.parent.name != "environment.d")
HEADER = '#!/bin/bash\n\nif [ "${DIB_DEBUG_TRACE:-0}" -gt 0 ]; then\n    set -x\nfi\nset -eu\nset -o pipefail\n'


def test_dib_lint_passes() -> None:
    env = {
        **os.environ,
        "ELEMENTS_DIR": "elements",
        "LIB_DIR": "elements",
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
    }
    result = subprocess.run(
        [str(Path(sys.executable).parent / "dib-lint")],
        cwd=PROJECT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    errors = [line for line in result.stdout.splitlines() if "ERROR" in line or "FAIL" in line]
    assert result.returncode == 0 and not errors, "\n".join(errors) or result.stdout[-2000:]


def test_shellcheck_hooks_and_installer() -> None:
    assert shutil.which("shellcheck"), "shellcheck is missing (./inv test installs it)"
    scripts = [*HOOKS, *sorted((ELEMENTS_DIR / "kiln-installer" / "static").rglob("*"))]
    scripts = [p for p in scripts if p.is_file()]
    standin = sorted((PROJECT / "kiln" / "build" / "standin").iterdir())
    result = subprocess.run(["shellcheck", *map(str, scripts + standin)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout


@pytest.mark.parametrize("hook", HOOKS, ids=lambda p: str(p.relative_to(ELEMENTS_DIR)))
def test_hook_begins_with_dib_header_and_is_executable(hook: Path) -> None:
    assert re.fullmatch(r"\d\d-[a-z0-9-]+", hook.name), "hooks are named NN-name"
    assert hook.read_text().startswith(HEADER)
    assert os.access(hook, os.X_OK)


@pytest.mark.parametrize("element", DIB_ELEMENTS, ids=lambda p: p.name)
def test_element_layout(element: Path) -> None:
    deps = (element / "element-deps").read_text().split()
    assert deps == sorted(deps), "element-deps is sorted"
    packages = yaml.safe_load((element / "package-installs.yaml").read_text())
    assert isinstance(packages, dict) and packages
    readme = (element / "README.rst").read_text()
    assert "Environment variables" in readme
    for env_file in element.glob("environment.d/*"):
        assert not os.access(env_file, os.X_OK), "environment.d files are sourced, not run"
        for name in re.findall(r"export (DIB_\w+)=", env_file.read_text()):
            if name != "DIB_RELEASE" or element.name == "kiln-base":
                assert name in readme, f"{name} is not documented in {element.name}/README.rst"


def test_role_packages_are_where_the_lead_listed_them() -> None:
    def packages(name: str) -> set[str]:
        return set(yaml.safe_load((ELEMENTS_DIR / name / "package-installs.yaml").read_text()))

    assert {"haproxy", "keepalived"} <= packages("kiln-lb")
    assert {"nginx", "prometheus-nginx-exporter"} <= packages("kiln-web")
    assert {"python3", "python3-venv"} <= packages("kiln-app")
    assert {"mariadb-server", "mariadb-backup", "prometheus-mysqld-exporter"} <= packages("kiln-db")
    assert {"prometheus-node-exporter"} <= packages("kiln-monitoring")
    assert {"nftables", "auditd", "apparmor", "unattended-upgrades", "lynis"} <= packages("kiln-base")
    for role in ("kiln-lb", "kiln-web", "kiln-app", "kiln-db"):
        assert "kiln-monitoring" in (ELEMENTS_DIR / role / "element-deps").read_text().split()


def test_unattended_upgrades_never_reboot_a_host_on_its_own() -> None:
    """apt itself reads the base element's setting: reboots are ./inv roll --reboot-only's to take."""
    conf = ELEMENTS_DIR / "kiln-base" / "static" / "etc" / "apt" / "apt.conf.d" / "52kiln-no-reboot"
    for key in ("Unattended-Upgrade::Automatic-Reboot", "Unattended-Upgrade::Automatic-Reboot-WithUsers"):
        out = subprocess.run(
            ["apt-config", "-c", str(conf), "shell", "V", key], capture_output=True, text=True, check=True
        ).stdout
        assert out.strip() == "V='false'", f"{key}: {out!r}"
