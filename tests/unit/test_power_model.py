"""roles.yaml's hosts[].bmc (the power driver of each host, kiln/power) as the model reads and checks it, the BMC
login read from secrets/, and what ./inv power refuses before it talks to any BMC."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from kiln.model import Bmc, BmcDriver, InvalidRoles, parse_roles
from kiln.power import cli, control
from kiln.power.chassis import Chassis, State
from kiln.project import Project
from kiln.render import render
from kiln.secrets import SecretMissing, SecretStore


def with_bmc(roles: Path | str, bmc: str | None, host: str = "web1") -> str:
    """roles.yaml's text (a path: its file's) with HOST's bmc replaced by `bmc` (None: no bmc)."""
    text = roles.read_text() if isinstance(roles, Path) else roles
    line = next(line for line in text.splitlines() if line.startswith(f"  - {{name: {host},"))
    bare = re.sub(r", bmc: \{[^}]*\}\}$", "}", line)
    return text.replace(line, bare if bmc is None else f"{bare[:-1]}, bmc: {bmc}}}")


def problems(text: str) -> list[str]:
    with pytest.raises(InvalidRoles) as e:
        parse_roles(text)
    return [p.format() for p in e.value.problems]


@pytest.mark.parametrize(
    ("bmc", "want"),
    [
        (
            '{driver: ipmi, address: "10.0.9.21:6230", credentials: bmc_web1, cipher_suite: 17}',
            Bmc(BmcDriver.ipmi, "10.0.9.21:6230", "bmc_web1", cipher_suite=17),
        ),
        (
            "{driver: redfish, address: https://bmc-web1.example, credentials: bmc, system: Sys.1, ca: bmc.pem}",
            Bmc(BmcDriver.redfish, "https://bmc-web1.example", "bmc", system="Sys.1", ca="bmc.pem"),
        ),
        ("{driver: lab}", Bmc(BmcDriver.lab)),
    ],
)
def test_each_driver_reads_into_the_model(shipped_roles: Path, bmc: str, want: Bmc):
    cluster = parse_roles(with_bmc(with_bmc(shipped_roles, bmc), None, "web2"))
    assert cluster.host("web1").bmc == want
    assert cluster.host("web2").bmc is None, "a host without bmc has no power control"


def test_what_each_driver_needs_and_what_it_does_not_read_are_problems_with_their_lines(shipped_roles: Path):
    text = with_bmc(shipped_roles, "{driver: ipmi, address: https://10.0.9.21, system: x}")
    text = with_bmc(text, "{driver: redfish, address: 10.0.9.22, credentials: ok}", "web2")
    text = with_bmc(text, "{driver: lab, address: 10.0.9.31}", "app1")
    assert sorted(problems(text)) == sorted(
        [
            "roles.yaml:18: $.hosts[2].bmc: the ipmi driver needs 'credentials' "
            "(e.g. {driver: ipmi, address: 10.0.9.11, credentials: bmc_admin})",
            "roles.yaml:18: $.hosts[2].bmc.system: 'system' is not read by the ipmi driver "
            "(e.g. {driver: ipmi, address: 10.0.9.11, credentials: bmc_admin})",
            "roles.yaml:18: $.hosts[2].bmc.address: 'https://10.0.9.21' is a URL "
            "(ipmi: HOST or HOST:PORT, like 10.0.9.11)",
            "roles.yaml:19: $.hosts[3].bmc.address: '10.0.9.22' is no URL (the BMC's Redfish URL, like https://10.0.9.11)",
            "roles.yaml:20: $.hosts[4].bmc.address: 'address' is not read by the lab driver "
            "({driver: lab}: the lab's own VM needs no address or credentials)",
        ]
    )


def test_shapes_a_bmc_must_have(shipped_roles: Path):
    found = problems(
        with_bmc(shipped_roles, '{driver: dell, address: "10.0.9.21; reboot", credentials: ../ca.key, pin: 1}')
    )
    assert "roles.yaml:18: $.hosts[2].bmc.driver: 'dell' is not allowed (one of: ipmi, redfish, lab)" in found
    assert any(
        p.startswith("roles.yaml:18: $.hosts[2].bmc.address: '10.0.9.21; reboot' is not a BMC address") for p in found
    )
    assert any(
        p.startswith("roles.yaml:18: $.hosts[2].bmc.credentials: '../ca.key' is not a file name under secrets/")
        for p in found
    )
    assert any(p.startswith("roles.yaml:18: $.hosts[2].bmc.pin: unknown key 'pin'") for p in found)
    assert problems(with_bmc(shipped_roles, "{address: 10.0.9.21}")) == [
        "roles.yaml:18: $.hosts[2].bmc: missing required key 'driver'"
    ]


def test_a_bmc_changes_no_bundle(shipped_roles: Path, cluster):
    """Power control is the operator's side: nothing of it (least of all a login) reaches a host."""
    text = with_bmc(shipped_roles, '{driver: ipmi, address: "10.0.9.21", credentials: bmc_web1}')
    with_power = render(parse_roles(text)).bundles
    assert {n: b.to_json() for n, b in with_power.items()} == {
        n: b.to_json() for n, b in render(cluster).bundles.items()
    }


def test_the_bmc_login_is_read_from_secrets_as_written(tmp_path: Path):
    store = SecretStore(tmp_path)
    (tmp_path / "bmc_web1").write_text("[default]\nusername = ADMIN\npassword = 50%off;#x\n")
    assert store.bmc_credentials("bmc_web1") == ("ADMIN", "50%off;#x")
    with pytest.raises(SecretMissing, match=r"bmc_web2 is missing: put the BMC's login"):
        store.bmc_credentials("bmc_web2")
    (tmp_path / "bmc_bad").write_text("username=ADMIN\n")
    with pytest.raises(SecretMissing, match=r"bmc_bad is not an INI file with username and password under \[default\]"):
        store.bmc_credentials("bmc_bad")


class Never(Chassis):
    """A chassis no test may reach: ./inv power refuses these before any BMC call."""

    def status(self) -> State:
        raise AssertionError("the BMC was called")

    power_on = power_off = power_cycle = bootdev_pxe = status  # type: ignore[assignment]


def test_an_unknown_action_or_a_misplaced_pxe_is_refused_before_the_bmc_is_called(capsys):
    for action, pxe in (("reboot", False), ("status", True), ("off", True)):
        with pytest.raises(ValueError):
            control.run(Never("web1"), action, pxe=pxe)
        assert cli.power(Project(), "web1", action, pxe=pxe) == 2
    assert "power: unknown action 'reboot' (expected one of: on, off, cycle, status)" in capsys.readouterr().err


def test_a_host_without_a_bmc_or_its_login_is_a_clear_error(shipped_roles: Path, tmp_path: Path, capsys):
    roles = tmp_path / "roles.yaml"
    text = with_bmc(shipped_roles, "{driver: redfish, address: https://10.0.9.21, credentials: bmc_web1}")
    roles.write_text(with_bmc(text, None, "web2"))
    project = Project(roles=roles)
    assert cli.power(project, "web2", "status", secrets=str(tmp_path)) == 1
    assert cli.power(project, "web9", "status", secrets=str(tmp_path)) == 1
    assert cli.power(project, "web1", "status", secrets=str(tmp_path)) == 1
    err = capsys.readouterr().err.splitlines()
    assert err[0] == "power: web2: roles.yaml names no bmc for it (hosts[].bmc: {driver: ipmi|redfish|lab, ...})"
    assert err[1] == "power: web9: no such host in roles.yaml"
    assert err[2].startswith(f"power: web1: {tmp_path / 'bmc_web1'} is missing: put the BMC's login")


def test_a_lab_vm_is_off_without_its_qmp_socket_unless_its_process_lives(tmp_path: Path):
    """A VM started before the lab gave VMs a QMP socket must not pass for off."""
    from kiln.power.chassis import Unreachable
    from kiln.power.lab import LabVm

    def start(pxe_once: bool) -> None:
        raise AssertionError("started")

    assert control.run(LabVm("web1", tmp_path / "web1.qmp", start), "status") == "off"
    with pytest.raises(Unreachable, match=r"^web1: its VM runs without a QMP socket .*: \./inv lab down, then up$"):
        control.run(LabVm("web1", tmp_path / "web1.qmp", start, running=lambda: True), "status")


def test_doctor_names_each_missing_bmc_login_and_ca(shipped_roles: Path, tmp_path: Path):
    from kiln import doctor

    text = with_bmc(shipped_roles, '{driver: ipmi, address: "10.0.9.21", credentials: bmc_web1}')
    text = with_bmc(text, "{driver: redfish, address: https://10.0.9.22, credentials: bmc_web2, ca: bmc.pem}", "web2")
    roles = tmp_path / "roles.yaml"
    roles.write_text(text)
    secrets = tmp_path / "secrets"
    secrets.mkdir()

    def power_lines() -> list[str]:
        found = doctor.examine(Project(roles=roles), parse_roles(text), images=tmp_path, secrets=secrets, ports=())
        return [str(p) for p in found if str(p).startswith("power: ")]

    assert power_lines() == [
        f"power: web1: {secrets / 'bmc_web1'} is missing: put the BMC's login (mode 0600) there, as [default] "
        "username = ... password = ...",
        f"power: web2: {secrets / 'bmc_web2'} is missing: put the BMC's login (mode 0600) there, as [default] "
        "username = ... password = ...",
        f"power: web2: {secrets / 'bmc.pem'} is missing: put its BMC's CA certificate there",
    ]
    for name in ("bmc_web1", "bmc_web2"):
        (secrets / name).write_text("[default]\nusername = a\npassword = b\n")
    (secrets / "bmc.pem").write_text("-----BEGIN CERTIFICATE-----\n")
    assert power_lines() == []


def test_a_missing_bmc_ca_file_is_named_before_any_bmc_is_called(shipped_roles: Path, tmp_path: Path, capsys):
    bmc = "{driver: redfish, address: https://10.0.9.21, credentials: bmc_web1, ca: bmc-ca.pem}"
    roles = tmp_path / "roles.yaml"
    roles.write_text(with_bmc(shipped_roles, bmc))
    (tmp_path / "bmc_web1").write_text("[default]\nusername = a\npassword = b\n")
    assert cli.power(Project(roles=roles), "web1", "status", secrets=str(tmp_path)) == 1
    assert capsys.readouterr().err == (
        f"power: web1: {tmp_path / 'bmc-ca.pem'} is missing: put its BMC's CA certificate there "
        "(roles.yaml names it as bmc.ca)\n"
    )
