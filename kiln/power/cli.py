"""`./inv power HOST on|off|cycle|status [--pxe]`: one power action through the host's BMC."""

from __future__ import annotations

import sys
from pathlib import Path

from kiln.power import control, select
from kiln.power.chassis import PowerError
from kiln.project import Project
from kiln.secrets import SecretStore


def power(
    project: Project,
    host: str,
    action: str,
    *,
    pxe: bool = False,
    secrets: str | None = None,
    timeout: float = control.CONFIRM_TIMEOUT,
) -> int:
    """Exit 0 after the BMC confirmed the new state (status prints `on` or `off`); 1 with one line on stderr naming
    the host and what failed; 2 for an unknown action or a misplaced --pxe."""
    if action not in control.ACTIONS:
        print(f"power: unknown action {action!r} (expected one of: {', '.join(control.ACTIONS)})", file=sys.stderr)
        return 2
    if pxe and action not in ("on", "cycle"):
        print(f"power: --pxe goes with on or cycle, not {action}", file=sys.stderr)
        return 2
    cluster = project.load_or_report()
    if cluster is None:
        return 1
    store = SecretStore(Path(secrets) if secrets else project.secrets)
    roles_file = project.roles_path.resolve() if project.roles else None
    try:
        chassis = select.chassis(cluster, host, store, roles_file=roles_file)
        state = control.run(chassis, action, pxe=pxe, timeout=timeout, say=lambda line: print(line, file=sys.stderr))
    except PowerError as e:
        print(f"power: {e}", file=sys.stderr)
        return 1
    print(state)
    return 0
