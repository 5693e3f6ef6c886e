"""The app's metrics under a real gunicorn started as the rendered kiln-app.service starts it (its --config, its
multiprocess directory): the master serves the sum over every worker on KILN_METRICS_BIND, a gone worker's counts
included and a previous run's left out, and the app's own port has no /metrics."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from kiln.render import render
from kiln.roles import app
from tests.integration.bmc import free_port

pytestmark = pytest.mark.integration

STALE = """
from prometheus_client import values  # noqa: F401  (multiprocess mode from PROMETHEUS_MULTIPROC_DIR)
from kilnapp.wsgi import REQUESTS
REQUESTS.labels("other", "404").inc(1000)
"""


def unit_lines(unit: str, key: str) -> list[str]:
    """The values of the unit file's `key=` lines."""
    return [line.split("=", 1)[1] for line in unit.splitlines() if line.startswith(f"{key}=")]


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def requests_counted(text: str) -> float:
    return sum(
        s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == "kilnapp_requests_total" and s.labels == {"path": "other", "status": "404"}
    )


class Gunicorn:
    def __init__(self, cluster, directory: Path) -> None:
        rendered = render(cluster)
        unit = rendered.content(rendered.bundles["app1"], app.APP_UNIT)
        environment = dict(e.split("=", 1) for e in unit_lines(unit, "Environment"))
        (exec_start,) = unit_lines(unit, "ExecStart")
        argv = shlex.split(exec_start)
        assert argv[0].endswith("/venv/bin/gunicorn") and argv[-1] == "kilnapp.wsgi:app", argv
        assert environment["PROMETHEUS_MULTIPROC_DIR"] == "/run/kiln-app", "the unit's RuntimeDirectory"
        self.samples = directory / "samples"  # the unit's /run/kiln-app
        self.samples.mkdir()
        self.app_port = free_port()
        self.metrics_port = next(p for p in iter(free_port, None) if p != self.app_port)
        argv[argv.index("--bind") + 1] = f"127.0.0.1:{self.app_port}"
        # every request on a fresh worker: the requests below are served by as many processes, most of them gone
        self.argv = [sys.executable, "-m", "gunicorn", *argv[1:-1], "--max-requests", "1", argv[-1]]
        self.env = {
            **os.environ,
            "PROMETHEUS_MULTIPROC_DIR": str(self.samples),
            "KILN_METRICS_BIND": f"127.0.0.1:{self.metrics_port}",
            "KILN_HOST": "app1",
            "KILN_DB_PASSWORD_FILE": str(directory / "no-password"),  # no database here: /health says 503
        }
        self.log = directory / "gunicorn.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(self.argv, env=self.env, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while True:
            assert self.process.poll() is None, self.log.read_text()
            try:
                if get(f"http://127.0.0.1:{self.metrics_port}/metrics")[0] == 200:
                    return
            except OSError:
                pass
            assert time.monotonic() < deadline, f"no metrics after 60 s: {self.log.read_text()[-2000:]}"
            time.sleep(0.2)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(30)


@pytest.fixture
def gunicorn(cluster, tmp_path: Path) -> Iterator[Gunicorn]:
    g = Gunicorn(cluster, tmp_path)
    try:
        yield g
    finally:
        g.stop()


def test_the_master_serves_the_sum_over_every_worker_and_the_app_port_has_no_metrics(gunicorn: Gunicorn) -> None:
    # a previous run's samples in the directory (as if /run/kiln-app had outlived a restart): not this run's
    stale = subprocess.run(
        [sys.executable, "-c", STALE], env=gunicorn.env, capture_output=True, text=True, timeout=60, check=False
    )
    assert stale.returncode == 0 and list(gunicorn.samples.glob("counter_*.db")), stale.stderr
    gunicorn.start()
    app_url = f"http://127.0.0.1:{gunicorn.app_port}"
    for _ in range(5):
        assert get(f"{app_url}/nope")[0] == 404
    status, _ = get(f"{app_url}/metrics")
    assert status == 404, "the app port (the web tier's, the VIP's) serves no metrics"
    status, text = get(f"http://127.0.0.1:{gunicorn.metrics_port}/metrics")
    assert status == 200
    assert requests_counted(text) == 6, "six requests, each on its own worker, all of them counted, none of before"
    # the database check's gauge: one value for the app (the latest of any worker), not one per worker process
    status, _ = get(f"{app_url}/health")
    assert status == 503, "no database here"
    _, text = get(f"http://127.0.0.1:{gunicorn.metrics_port}/metrics")
    db_up = [
        (s.labels, s.value)
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == "kilnapp_db_up"
    ]
    assert db_up == [({}, 0.0)], db_up


def test_gunicorn_refuses_to_start_without_its_metrics_settings(gunicorn: Gunicorn) -> None:
    del gunicorn.env["KILN_METRICS_BIND"]
    with open(gunicorn.log, "ab") as log:
        done = subprocess.run(gunicorn.argv, env=gunicorn.env, stdout=log, stderr=subprocess.STDOUT, timeout=60)
    assert done.returncode != 0
    assert "KILN_METRICS_BIND must be host:port" in gunicorn.log.read_text()
