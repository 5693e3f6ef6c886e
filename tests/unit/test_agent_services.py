"""The services step's decisions: enable what is not, start what is inactive, restart what had files change.

systemd does not run on this machine (no PID 1 systemd), so `systemctl` here is a stand-in that keeps
the enabled and active units in files and records every call; the step itself runs unchanged.
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import pytest

from firstboot.errors import StepFailed
from firstboot.owners import Owners
from firstboot.paths import Paths
from firstboot.steps.context import StepContext
from firstboot.steps.system import services
from kiln.bundle import Service
from tests.unit.agent_support import bundle

SYSTEMCTL = """#!/bin/sh
# one state line per unit, like systemctl; start fails as a whole when one unit fails
echo "$*${SYSTEMCTL_SKIP_SYSV:+ (SYSTEMCTL_SKIP_SYSV=$SYSTEMCTL_SKIP_SYSV)}" >> "$KILN_AGT_STATE/calls"
touch "$KILN_AGT_STATE/enabled" "$KILN_AGT_STATE/active"
action="$1"; shift
[ "$1" = --no-reload ] && shift
case "$action" in
  is-enabled) for u; do grep -qx "$u" "$KILN_AGT_STATE/enabled" && echo enabled || echo disabled; done ;;
  is-active) for u; do grep -qx "$u" "$KILN_AGT_STATE/active" && echo active || echo inactive; done ;;
  enable) for u; do echo "$u" >> "$KILN_AGT_STATE/enabled"; done ;;
  start)
    for u; do [ "$u" = broken.service ] && { echo "Job for broken.service failed" >&2; exit 1; }; done
    for u; do echo "$u" >> "$KILN_AGT_STATE/active"; done ;;
  reload-or-restart|restart|daemon-reload) ;;
  *) exit 2 ;;
esac
"""


@pytest.fixture
def systemd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "systemctl").write_text(SYSTEMCTL)
    (bin_dir / "systemctl").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("KILN_AGT_STATE", str(tmp_path))
    return tmp_path


def ctx(units: list[Service], changed: set[str], ip: str = "10.10.0.41") -> StepContext:
    b = bundle()
    b = replace(b, services=tuple(units), host=replace(b.host, ip=ip))
    return StepContext(Paths(Path("/")), b, live=True, owners=Owners(Path("/"), strict=True), changed=changed)


UNITS = [
    Service("nginx.service", restart_on=("/etc/nginx/nginx.conf",)),
    Service("kiln-app.service", restart_on=("/etc/systemd/system/kiln-app.service",)),
]


def calls(state: Path) -> list[str]:
    return (state / "calls").read_text().splitlines()


def test_a_fresh_host_gets_every_unit_enabled_and_started(systemd: Path) -> None:
    outcome = services(ctx(UNITS, {"/etc/systemd/system/kiln-app.service"}))
    assert outcome.detail == "enabled nginx.service, kiln-app.service; started nginx.service, kiln-app.service"
    assert calls(systemd)[0] == "daemon-reload"  # a unit file changed
    # one call per kind of action (each call costs seconds under emulation), enable without a second reload and
    # without the SysV half (update-rc.d reloads systemd twice per unit that has an init script, --no-reload or not)
    assert calls(systemd)[-2:] == [
        "enable --no-reload nginx.service kiln-app.service (SYSTEMCTL_SKIP_SYSV=1)",
        "start nginx.service kiln-app.service",
    ]
    assert (systemd / "enabled").read_text().split() == ["nginx.service", "kiln-app.service"]


def test_running_units_restart_only_when_their_files_changed(systemd: Path) -> None:
    (systemd / "enabled").write_text("nginx.service\nkiln-app.service\n")
    (systemd / "active").write_text("nginx.service\nkiln-app.service\n")
    assert services(ctx(UNITS, set())).detail == "unchanged (all enabled and running)"
    assert "daemon-reload" not in calls(systemd)
    assert services(ctx(UNITS, {"/etc/nginx/nginx.conf"})).detail == "reloaded or restarted nginx.service"
    assert "reload-or-restart kiln-app.service" not in calls(systemd)


def test_a_unit_whose_own_file_changed_is_restarted_not_reloaded(systemd: Path) -> None:
    """Its command line may have changed (gunicorn's --workers): a reload would keep the old one."""
    (systemd / "enabled").write_text("nginx.service\nkiln-app.service\n")
    (systemd / "active").write_text("nginx.service\nkiln-app.service\n")
    changed = {"/etc/systemd/system/kiln-app.service", "/etc/nginx/nginx.conf"}
    detail = services(ctx(UNITS, changed)).detail
    assert detail == "restarted kiln-app.service; reloaded or restarted nginx.service"
    assert calls(systemd) == [
        "daemon-reload",
        "is-active nginx.service kiln-app.service",
        "is-enabled nginx.service kiln-app.service",
        "restart kiln-app.service",
        "reload-or-restart nginx.service",
    ]


def test_a_unit_whose_default_file_changed_is_restarted_not_reloaded(systemd: Path) -> None:
    """/etc/default/X is the unit's EnvironmentFile (the exporters' ARGS): a reload keeps the old command line, and
    node_exporter exits on the SIGHUP Debian's unit reloads it with (seen in the lab: the exporter was gone)."""
    exporter = Service("prometheus-node-exporter.service", restart_on=("/etc/default/prometheus-node-exporter",))
    (systemd / "enabled").write_text("prometheus-node-exporter.service\n")
    (systemd / "active").write_text("prometheus-node-exporter.service\n")
    detail = services(ctx([exporter], {"/etc/default/prometheus-node-exporter"})).detail
    assert detail == "restarted prometheus-node-exporter.service"
    assert "reload-or-restart prometheus-node-exporter.service" not in calls(systemd)


def test_a_unit_that_fails_to_start_fails_the_step_with_its_name(systemd: Path) -> None:
    with pytest.raises(StepFailed) as e:
        services(ctx([Service("broken.service", enable=False)], set()))
    assert "'systemctl start broken.service' exited 1" in e.value.reason
    assert "Job for broken.service failed" in e.value.reason
    assert "journalctl" in e.value.next_action


def test_restarts_come_before_starts_and_wait_for_the_address_after_networkd(systemd: Path) -> None:
    units = [
        Service("systemd-networkd.service", enable=False, restart_on=("/etc/systemd/network/10-kiln.network",)),
        Service("nginx.service"),
    ]
    (systemd / "active").write_text("systemd-networkd.service\n")
    step = ctx(units, {"/etc/systemd/network/10-kiln.network"}, ip="127.0.0.1")  # on lo: the wait passes at once
    assert services(step).detail == (
        "reloaded or restarted systemd-networkd.service; enabled nginx.service; started nginx.service"
    )


def test_an_address_that_never_appears_fails_the_step(systemd: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("firstboot.steps.system.ADDRESS_WAIT", 1.0)
    (systemd / "active").write_text("systemd-networkd.service\n")
    units = [Service("systemd-networkd.service", enable=False, restart_on=("/etc/x",))]
    step = ctx(units, {"/etc/x"}, ip="192.0.2.77")
    with pytest.raises(StepFailed) as e:
        services(step)
    assert "192.0.2.77 is not configured on any interface" in e.value.reason
    assert "networkctl" in e.value.next_action
