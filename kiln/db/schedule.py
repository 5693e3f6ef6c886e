"""The runner's systemd units: the failover monitor (./inv db monitor), and ./inv db backup and ./inv db archive at
roles.db.backup.schedule's times when backups are set.

    units(cluster, project=..., roles=...)   {file name: content}: kiln-db-monitor.service,
                                             kiln-db-{backup,archive}.{service,timer}
    check_calendar(expression)               ScheduleError unless systemd-analyze accepts it (when installed)

The units run where they are installed (the operator's or provisioning host, which holds secrets/); they are
rendered, not installed: copy them to /etc/systemd/system and `systemctl enable --now` the timers.
"""

from __future__ import annotations

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
