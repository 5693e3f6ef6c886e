"""The lab's VIP watch against two real node exporters reading textfile directories as the LBs' do: it records the
holders at each change (the VIP moving from lb1 to lb2 and back), and an exporter that does not answer holds
nothing."""

from __future__ import annotations

import shutil
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from kiln.lab.vipwatch import VipWatch, exporter_url
from tests.integration.bmc import free_port

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(shutil.which("prometheus-node-exporter") is None, reason="needs prometheus-node-exporter"),
]


def write_state(directory: Path, held: int) -> None:
    line = f'kiln_keepalived_vrrp_state{{vrrp_instance="foobar_vip",vip="10.10.0.100"}} {held}\n'
    (directory / ".tmp").write_text(f"# TYPE kiln_keepalived_vrrp_state gauge\n{line}")
    (directory / ".tmp").rename(directory / "kiln-keepalived.prom")


@pytest.fixture
def exporters(tmp_path: Path) -> Iterator[dict[str, tuple[Path, str]]]:
    """lb1 and lb2: a textfile directory and the exporter URL the watch polls, each exporter answering."""
    made, processes = {}, []
    try:
        for name in ("lb1", "lb2"):
            directory = tmp_path / name
            directory.mkdir()
            port = free_port()
            argv = ["prometheus-node-exporter", f"--web.listen-address=127.0.0.1:{port}"]
            argv += [f"--collector.textfile.directory={directory}"]
            with open(tmp_path / f"{name}.log", "wb") as log:
                processes.append(subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT))
            made[name] = (directory, exporter_url("127.0.0.1", port))
        for name, (_, url) in made.items():
            deadline = time.monotonic() + 30
            while True:
                try:
                    urllib.request.urlopen(url, timeout=2).close()
                    break
                except OSError:
                    assert time.monotonic() < deadline, (tmp_path / f"{name}.log").read_text()
                    time.sleep(0.1)
        yield made
    finally:
        for process in processes:
            process.terminate()
            process.wait(10)


def test_the_watch_records_the_vip_moving_and_back(exporters: dict[str, tuple[Path, str]]) -> None:
    (lb1, _), (lb2, _) = exporters["lb1"], exporters["lb2"]
    write_state(lb1, 1)
    write_state(lb2, 0)
    watch = VipWatch({name: url for name, (_, url) in exporters.items()}, every=0.1)
    began = time.monotonic()
    watch.start()
    try:
        time.sleep(1.0)
        write_state(lb1, 0)  # lb1 gave the VIP up, lb2 not yet: held by none for a moment
        time.sleep(1.0)
        write_state(lb2, 1)
        time.sleep(1.0)
        write_state(lb1, 1)  # lb1 took it back before lb2 let go: held twice
        time.sleep(1.0)
        write_state(lb2, 0)
        time.sleep(1.0)
    finally:
        watch.stop()
    assert [h for _, h in watch.moves] == [("lb1",), (), ("lb2",), ("lb1", "lb2"), ("lb1",)]
    assert watch.said(began).startswith("lb1 (+0.")
    assert "none (+" in watch.said(began) and "lb1+lb2 (+" in watch.said(began)


def test_an_exporter_that_does_not_answer_holds_nothing(exporters: dict[str, tuple[Path, str]]) -> None:
    write_state(exporters["lb1"][0], 1)
    urls = {"lb1": exporters["lb1"][1], "lb2": exporter_url("127.0.0.1", free_port())}  # nothing listens there
    assert VipWatch(urls).holders() == ("lb1",)
