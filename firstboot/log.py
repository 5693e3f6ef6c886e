"""Logging: one line per step to stderr (the journal) and /var/log/firstboot.log, secrets masked."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from firstboot.redact import RedactingFilter

LOG = logging.getLogger("firstboot")


def setup(log_file: Path | None, *, verbose: bool = False) -> None:
    LOG.handlers.clear()
    LOG.setLevel(logging.DEBUG if verbose else logging.INFO)
    LOG.propagate = False
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_file is not None:
        try:
            log_file.parent.mkdir(parents=True, exist_ok=True)
            handlers.append(logging.FileHandler(log_file, encoding="utf-8"))
            log_file.chmod(0o600)
        except OSError as e:
            print(f"firstboot: cannot write {log_file}: {e}; logging to stderr only", file=sys.stderr)
    for handler in handlers:
        handler.addFilter(RedactingFilter())
        handler.setFormatter(logging.Formatter("%(asctime)s firstboot: %(message)s", "%Y-%m-%dT%H:%M:%S"))
        LOG.addHandler(handler)
