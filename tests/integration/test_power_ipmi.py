"""The ipmi power driver with the real ipmitool against a real BMC emulator: OpenIPMI's ipmi_sim on loopback,
whose chassis-control script keeps the power state and the boot device in files this test reads."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from kiln.power import cli, control
from kiln.power.chassis import BadCredentials, NotConfirmed, Unreachable
from kiln.power.ipmi import Ipmi
from kiln.project import Project
from tests.integration.bmc import PASSWORD, USER, IpmiSim, free_port, ipmi_sim
from tests.integration.kiln_server import PROJECT

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        not (shutil.which("ipmi_sim") and shutil.which("ipmitool")), reason="needs openipmi (ipmi_sim) and ipmitool"
    ),
]


@pytest.fixture(scope="module")
def bmc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[IpmiSim]:
    with ipmi_sim(tmp_path_factory.mktemp("ipmi")) as sim:
        yield sim


@pytest.fixture
def sim(bmc: IpmiSim) -> IpmiSim:
    bmc.reset_files()  # power off, default boot, no calls yet
    return bmc


def chassis(sim: IpmiSim, password: str = PASSWORD, user: str = USER) -> Ipmi:
    # cipher suite 3: ipmi_sim does not answer Get Channel Cipher Suites, which costs ipmitool 3 s of retries
    return Ipmi("web1", sim.address, user, password, cipher_suite=3)


def test_status_on_off_as_the_bmc_reports_them(sim: IpmiSim):
    assert control.run(chassis(sim), "status") == "off"
    sim.power = "1"
    assert control.run(chassis(sim), "status") == "on"


def test_on_with_pxe_sets_a_one_time_pxe_boot_then_powers_on(sim: IpmiSim):
    assert control.run(chassis(sim), "on", pxe=True, timeout=10) == "on"
    assert sim.power == "1" and sim.boot == "pxe"
    assert sim.changes() == ["set boot pxe", "set power 1"], "the boot device first, then the power"


def test_off_then_cycle_from_off_powers_on(sim: IpmiSim):
    sim.power = "1"
    assert control.run(chassis(sim), "off", timeout=10) == "off"
    assert sim.power == "0"
    assert control.run(chassis(sim), "cycle", timeout=10) == "on"
    assert sim.changes() == ["set power 0", "set power 1"], "cycling a chassis that is off powers it on"


def test_cycle_of_a_running_chassis_goes_off_and_on_again(sim: IpmiSim):
    sim.power = "1"
    assert control.run(chassis(sim), "cycle", pxe=True, timeout=10) == "on"
    # ipmi_sim carries out `chassis power cycle` as power off, then power on a moment later
    assert sim.changes() == ["set boot pxe", "set power 0", "set power 1"]


def test_bad_credentials_name_the_host_and_change_nothing(sim: IpmiSim):
    for bad in (chassis(sim, password="wrong"), chassis(sim, user="nobody")):
        with pytest.raises(BadCredentials, match=r"^web1: the BMC at 127\.0\.0\.1:\d+ \(ipmi\) refused the login"):
            control.run(bad, "on", pxe=True)
    assert sim.changes() == [] and sim.power == "0" and sim.boot == "default"


def test_an_unreachable_bmc_names_the_host():
    silent = Ipmi("web1", f"127.0.0.1:{free_port()}", USER, PASSWORD, cipher_suite=3, retries=1, interval=1)
    began = time.monotonic()
    with pytest.raises(Unreachable, match=r"^web1: no answer from the BMC at 127\.0\.0\.1:\d+ \(ipmi\)$"):
        control.run(silent, "off")
    assert time.monotonic() - began < 10


def test_a_bmc_that_does_not_confirm_the_new_state_is_an_error(sim: IpmiSim):
    (sim.dir / "stuck").touch()  # the BMC takes the command; the power stays as it is
    with pytest.raises(NotConfirmed, match=r"^web1: the BMC took the command but still reports off, not on, after 1 s"):
        control.run(chassis(sim), "on", timeout=1)


def test_the_password_is_not_on_ipmitools_command_line(sim: IpmiSim, monkeypatch: pytest.MonkeyPatch):
    """Another user sees a command line in ps; kiln's errors quote it."""
    seen: list[list[str]] = []
    real = subprocess.run

    def spy(argv, *args, **kwargs):
        seen.append(list(argv))
        return real(argv, *args, **kwargs)

    monkeypatch.setattr(subprocess, "run", spy)
    control.run(chassis(sim), "status")
    assert seen and all(PASSWORD not in " ".join(argv) for argv in seen)


def test_inv_power_drives_the_host_named_in_roles_yaml(sim: IpmiSim, tmp_path: Path, capsys):
    """./inv power HOST ACTION [--pxe]: the host's bmc from roles.yaml, its login from secrets/."""
    roles = (PROJECT / "roles.yaml").read_text()
    bmc = f'bmc: {{driver: ipmi, address: "{sim.address}", credentials: bmc_web1, cipher_suite: 3}}'
    web1 = next(line for line in roles.splitlines() if line.startswith("  - {name: web1,"))
    web2 = next(line for line in roles.splitlines() if line.startswith("  - {name: web2,"))
    text = roles.replace(web1, re.sub(r"bmc: \{[^}]*\}", bmc, web1)).replace(
        web2, re.sub(r", bmc: \{[^}]*\}", "", web2)
    )
    (tmp_path / "roles.yaml").write_text(text)
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    (secrets / "bmc_web1").write_text(f"[default]\nusername = {USER}\npassword = {PASSWORD}\n")

    def inv(*args: str) -> subprocess.CompletedProcess[str]:
        argv = [sys.executable, "-m", "kiln.program", "--search-root", str(PROJECT), "power", *args]
        argv += ["--roles", str(tmp_path / "roles.yaml"), "--secrets", str(secrets)]
        return subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)

    status = inv("web1", "status")
    assert (status.returncode, status.stdout) == (0, "off\n"), status.stderr
    on = inv("web1", "on", "--pxe")
    assert (on.returncode, on.stdout) == (0, "on\n"), on.stderr
    assert "web1: on with PXE next boot: the BMC reports on after" in on.stderr
    assert sim.boot == "pxe" and sim.power == "1"
    # the failures, through the same code in this process (each ./inv start costs seconds on a busy runner)
    project = Project(roles=tmp_path / "roles.yaml")
    (secrets / "bmc_web1").write_text(f"[default]\nusername = {USER}\npassword = not-it\n")
    capsys.readouterr()
    assert cli.power(project, "web1", "off", secrets=str(secrets)) == 1
    refused = capsys.readouterr()
    assert (
        refused.out == "" and refused.err.startswith("power: web1: the BMC at ") and "refused the login" in refused.err
    )
    assert "not-it" not in refused.err and sim.power == "1"
    assert cli.power(project, "web2", "status", secrets=str(secrets)) == 1
    assert "power: web2: roles.yaml names no bmc for it" in capsys.readouterr().err
