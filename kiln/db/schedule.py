"""The runner's systemd units: the failover monitor (./inv db monitor), and ./inv db backup and ./inv db archive at
roles.db.backup.schedule's times when backups are set.

    units(cluster, project=..., roles=...)   {file name: content}: kiln-db-monitor.service,
                                             kiln-db-{backup,archive}.{service,timer}
    check_calendar(expression)               ScheduleError unless systemd-analyze accepts it (when installed)
    longest_interval(expression)             seconds between two runs at most (BackupTooOld's allowance)

The units run where they are installed (the operator's or provisioning host, which holds secrets/); they are
rendered, not installed: copy them to /etc/systemd/system and `systemctl enable --now` the timers.
"""

from __future__ import annotations

import datetime as dt
import os
import re
import shutil
from pathlib import Path

from kiln.model import Cluster
from kiln.render import render_template
from kiln.roles.db import settings_of
from kiln.run import CommandError, run

JITTER = {"backup": "30min", "archive": "1min"}  # RandomizedDelaySec: spread the load, keep the RPO


class ScheduleError(Exception):
    pass


def check_calendar(expression: str) -> None:
    """ScheduleError unless `systemd-analyze calendar` accepts `expression` (skipped where it is not installed)."""
    if shutil.which("systemd-analyze") is None:
        return
    try:
        run(["systemd-analyze", "calendar", expression], timeout=30)
    except CommandError as e:
        last = e.output.strip().splitlines()[-1] if e.output.strip() else str(e)
        raise ScheduleError(
            f"roles.db.backup.schedule: {expression!r} is not a systemd calendar time: {last}"
        ) from None


# "    Next elapse: Thu 2026-12-03 00:00:00 UTC", "       Iter. #2: Fri 2026-12-04 00:00:00 UTC"
_ELAPSE = re.compile(r"^\s*(?:Next elapse|Iter\. #\d+): \w+ (\d{4}-\d\d-\d\d \d\d:\d\d:\d\d) UTC$", re.M)
ITERATIONS = 15  # enough runs to see a week's irregular gaps in most schedules (Mon..Fri: the weekend)


def longest_interval(expression: str, iterations: int = ITERATIONS) -> float:
    """The longest gap, in seconds, between two of the next `iterations` times the systemd calendar `expression`
    elapses (`daily`: 86400; `Mon..Fri 02:00`: 259200, the weekend's): how old the last success may be before a run
    was missed. ScheduleError when systemd-analyze is missing, refuses the expression, or names fewer than 2 times."""
    if shutil.which("systemd-analyze") is None:
        raise ScheduleError("systemd-analyze is not installed: the schedule's interval is unknown")
    try:
        out = run(
            ["systemd-analyze", "calendar", f"--iterations={iterations}", expression],
            timeout=30,
            env={**os.environ, "TZ": "UTC"},
        ).stdout
    except CommandError as e:
        raise ScheduleError(f"{expression!r} is not a systemd calendar time: {e.output.strip()}") from None
    times = [dt.datetime.fromisoformat(t) for t in _ELAPSE.findall(out)]
    if len(times) < 2:
        raise ScheduleError(f"{expression!r}: systemd-analyze names {len(times)} future time(s), not a schedule")
    return max((b - a).total_seconds() for a, b in zip(times, times[1:], strict=False))


def units(cluster: Cluster, *, project: Path, roles: Path) -> dict[str, str]:
    base = {"cluster": cluster.name, "project": str(project), "roles": str(roles)}
    out = {"kiln-db-monitor.service": render_template("kiln-db-monitor.service.j2", base)}
    settings = settings_of(cluster).backup
    if settings is None:
        return out
    for action, when in (("backup", settings.backup_at), ("archive", settings.archive_at)):
        check_calendar(when)
        context = {
            "cluster": cluster.name,
            "action": action,
            "project": str(project),
            "roles": str(roles),
            "on_calendar": when,
            "jitter": JITTER[action],
        }
        out[f"kiln-db-{action}.service"] = render_template("kiln-db-runner.service.j2", context)
        out[f"kiln-db-{action}.timer"] = render_template("kiln-db-runner.timer.j2", context)
    return out
