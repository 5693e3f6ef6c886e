"""gunicorn's hooks for the app's metrics (`gunicorn --config python:kilnapp.gunicorn_conf`).

Each worker writes its samples to files in PROMETHEUS_MULTIPROC_DIR (prometheus_client's multiprocess mode; the
unit sets it, since it must be in the environment before any process imports prometheus_client). The master serves
the sum over every worker, live or gone, on KILN_METRICS_BIND (host:port): the host's address on a port only the
admin network reaches. The app's own port, which the web tier proxies to, has no /metrics.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, multiprocess, start_http_server

# gunicorn reads this module's globals as settings: only the hooks below are meant as such.


def _directory() -> Path:
    path = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if not path or not Path(path).is_dir():
        raise RuntimeError(f"PROMETHEUS_MULTIPROC_DIR must name a directory, not {path!r}")
    return Path(path)


def on_starting(server: Any) -> None:
    # a previous run's samples would be added to this run's
    for stale in _directory().glob("*.db"):
        stale.unlink()


def when_ready(server: Any) -> None:
    bind = os.environ.get("KILN_METRICS_BIND", "")
    host, _, port = bind.rpartition(":")
    if not host or not port.isdigit():
        raise RuntimeError(f"KILN_METRICS_BIND must be host:port, not {bind!r}")
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=str(_directory()))
    start_http_server(int(port), addr=host, registry=registry)
    server.log.info("metrics of every worker on http://%s/metrics", bind)


def child_exit(server: Any, worker: Any) -> None:
    # a gone worker's counters stay in the sum; its live gauges leave it
    multiprocess.mark_process_dead(worker.pid)
