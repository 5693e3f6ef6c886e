"""./inv db schedule: the runner's timers are units systemd accepts, at the times roles.yaml gives; and how old a
backup may be before BackupTooOld: the longest gap between two runs of the schedule, as systemd-analyze lists them."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from kiln.db import cli as db_cli
from kiln.db.schedule import ScheduleError, longest_interval
from kiln.project import Project


def roles_with(shipped_roles: Path, tmp_path: Path, schedule: str) -> Path:
    text = shipped_roles.read_text()
    backup = f"    backup: {{s3: {{bucket: foobar-backups}}, schedule: {schedule}}}"
    changed = text.replace("  db:  {database: foobar}", f"  db:\n    database: foobar\n{backup}")
    assert changed != text
    path = tmp_path / "roles.yaml"
    path.write_text(changed)
    return path


def test_the_timers_are_valid_units_at_the_configured_times(
    shipped_roles: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    roles = roles_with(shipped_roles, tmp_path, '{archive: "*:0/5"}')
    out = tmp_path / "units"
    assert db_cli.run(Project(roles=roles), "schedule", out=str(out)) == 0
    assert sorted(p.name for p in out.iterdir()) == [
        "kiln-db-archive.service",
        "kiln-db-archive.timer",
        "kiln-db-backup.service",
        "kiln-db-backup.timer",
        "kiln-db-monitor.service",
    ]
    assert "OnCalendar=*:0/5\n" in (out / "kiln-db-archive.timer").read_text()
    assert "OnCalendar=daily\n" in (out / "kiln-db-backup.timer").read_text()
    assert f"inv db archive --roles {roles}\n" in (out / "kiln-db-archive.service").read_text()
    verify = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", *sorted(map(str, out.iterdir()))],
        capture_output=True,
        text=True,
        check=False,
    )
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert f"inv db monitor --roles {roles}\n" in (out / "kiln-db-monitor.service").read_text()
    enable = "systemctl enable --now kiln-db-monitor.service kiln-db-archive.timer kiln-db-backup.timer"
    assert enable in capsys.readouterr().out


def test_without_a_backup_target_only_the_monitor_is_scheduled(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "units"
    assert db_cli.run(Project(), "schedule", out=str(out)) == 0  # the shipped roles.yaml names no bucket
    assert [p.name for p in out.iterdir()] == ["kiln-db-monitor.service"]
    assert "systemctl enable --now kiln-db-monitor.service\n" in capsys.readouterr().out


def test_a_time_systemd_cannot_read_is_refused(
    shipped_roles: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    roles = roles_with(shipped_roles, tmp_path, '{backup: "every tuesday"}')
    assert db_cli.run(Project(roles=roles), "schedule", out=str(tmp_path / "units")) == 1
    assert "'every tuesday' is not a systemd calendar time" in capsys.readouterr().err
    assert not (tmp_path / "units").exists()


def test_without_a_backup_target_every_action_says_what_to_set(capsys: pytest.CaptureFixture[str]) -> None:
    assert db_cli.run(Project(), "backups") == 1  # the shipped roles.yaml names no bucket
    assert "roles.db.backup is not set: name the S3 bucket there first" in capsys.readouterr().err
    assert db_cli.run(Project(), "restore") == 2
    assert (
        "unknown action 'restore' (one of: backup, archive, backups, restore-test, schedule, status, switchover, "
        "monitor)" in capsys.readouterr().err
    )


@pytest.mark.parametrize(
    ("expression", "seconds"),
    [("daily", 86400), ("*:0/15", 900), ("hourly", 3600), ("Mon..Fri 02:00", 3 * 86400), ("Sat 03:00", 7 * 86400)],
)
def test_the_longest_gap_between_two_runs(expression: str, seconds: float) -> None:
    assert longest_interval(expression) == seconds


@pytest.mark.parametrize(
    ("expression", "said"),
    [("every tuesday", "not a systemd calendar time"), ("2020-01-01 00:00", "0 future time")],
)
def test_what_is_no_schedule_is_named(expression: str, said: str) -> None:
    with pytest.raises(ScheduleError, match=said):
        longest_interval(expression)
