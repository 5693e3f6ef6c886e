"""How old a backup may be before BackupTooOld: the longest gap between two runs of roles.db.backup.schedule's
systemd calendar expression, as systemd-analyze (the tool the runner's timers are judged by) lists the runs."""

from __future__ import annotations

import pytest

from kiln.db.schedule import ScheduleError, longest_interval


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
