"""kiln's alert rules (kiln/monitoring/rules/) under Prometheus's own promtool: the file passes `promtool check
rules`, every alert carries a one-line summary and runbook and has a test file with a case that fires and one that
does not, every test passes, and fails once its rule is made to never fire or to always fire (so no test passes by
construction). The metric names the rules read are the ones the real exporters export (node exporter and HAProxy
run here; the mysqld exporter's in test_agent_db.py, the server's in test_server_metrics.py)."""

from __future__ import annotations

import re
import shutil
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from kiln import monitoring
from kiln.run import run
from tests.integration.agent_mariadb import free_port

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(shutil.which("promtool") is None, reason="needs promtool (Debian's prometheus package)"),
]

ALERTS = monitoring.alerts()


def test_the_rules_pass_promtool_check() -> None:
    out = run(["promtool", "check", "rules", monitoring.RULES]).stdout
    assert f"SUCCESS: {len(ALERTS)} rules found" in out, out


@pytest.mark.parametrize("alert", sorted(ALERTS))
def test_every_alert_has_a_runbook_and_a_test_that_can_fire_and_stay_quiet(alert: str) -> None:
    annotations = ALERTS[alert]["annotations"]
    for key in ("summary", "runbook"):
        assert annotations.get(key, "").strip(), f"{alert}: no {key}"
        assert "\n" not in annotations[key].strip(), f"{alert}: the {key} is one line"
    path = monitoring.RULE_TESTS / f"{alert}.test.yml"
    assert path.is_file(), f"{alert} has no test file {path.name}"
    cases = [
        (seconds(case["eval_time"]), case["exp_alerts"])
        for test in yaml.safe_load(path.read_text())["tests"]
        for case in test["alert_rule_test"]
        if case["alertname"] == alert
    ]
    waits = seconds(ALERTS[alert].get("for", "0s"))
    # quiet past the rule's `for`: before it, an alert whose condition holds is still pending, so quiet anyway
    assert any(at >= waits and not expected for at, expected in cases), (
        f"{path.name}: no case where {alert} stays quiet"
    )
    assert any(expected for _, expected in cases), f"{path.name}: no case where {alert} fires"


def seconds(duration: str) -> int:
    """A Prometheus duration as the rules and tests write it (1h, 2m30s, 15s) in seconds."""
    units = {"h": 3600, "m": 60, "s": 1}
    parts = re.findall(r"(\d+)([hms])", duration)
    assert "".join(n + u for n, u in parts) == duration, f"unexpected duration {duration!r}"
    return sum(int(n) * units[u] for n, u in parts)


def test_every_test_file_is_about_an_alert_of_the_rules() -> None:
    assert {p.name.removesuffix(".test.yml") for p in monitoring.RULE_TESTS.glob("*.test.yml")} == set(ALERTS)


def promtool_test(rules: Path, test: Path) -> subprocess.CompletedProcess[str]:
    return run(["promtool", "test", "rules", test.name], cwd=test.parent, check=False, timeout=60)


@pytest.mark.parametrize("alert", sorted(ALERTS))
def test_the_alerts_test_passes_and_fails_when_its_rule_is_broken(alert: str, tmp_path: Path) -> None:
    test = monitoring.RULE_TESTS / f"{alert}.test.yml"
    passed = promtool_test(monitoring.RULES, test)
    assert passed.returncode == 0, passed.stdout
    for broken, why in (("vector(1) == 2", "never fires"), ("vector(1)", "always fires")):
        document = yaml.safe_load(monitoring.RULES.read_text())
        for group in document["groups"]:
            for rule in group["rules"]:
                if rule.get("alert") == alert:
                    rule["expr"] = broken
        copy = tmp_path / why.replace(" ", "-")
        (copy / "tests").mkdir(parents=True)
        (copy / monitoring.RULES.name).write_text(yaml.safe_dump(document, sort_keys=False))
        shutil.copy(test, copy / "tests" / test.name)
        failed = promtool_test(copy / monitoring.RULES.name, copy / "tests" / test.name)
        assert failed.returncode != 0, f"{test.name} still passes when {alert} {why}:\n{failed.stdout}"


def test_the_rules_read_only_names_listed_with_their_exporter() -> None:
    listed = {name for names in monitoring.EXPORTED.values() for name in names}
    read = {name for rule in ALERTS.values() for name in monitoring.metric_names(rule["expr"])}
    assert read <= listed, f"not listed in kiln.monitoring.EXPORTED: {sorted(read - listed)}"
    assert listed <= read, f"listed but read by no rule: {sorted(listed - read)}"


def scrape(port: int, process: subprocess.Popen[bytes], timeout: float = 20) -> str:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
                return response.read().decode()
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def names_in(text: str) -> set[str]:
    return set(re.findall(r"(?m)^([a-zA-Z_:][a-zA-Z0-9_:]*)[{ ]", text))


@pytest.fixture
def started() -> Iterator[list[subprocess.Popen[bytes]]]:
    processes: list[subprocess.Popen[bytes]] = []
    yield processes
    for p in processes:
        p.terminate()
        p.wait(10)


@pytest.mark.skipif(shutil.which("prometheus-node-exporter") is None, reason="needs prometheus-node-exporter")
def test_the_node_exporter_exports_what_the_rules_read(started: list[subprocess.Popen[bytes]]) -> None:
    port = free_port()
    started.append(
        subprocess.Popen(
            ["prometheus-node-exporter", f"--web.listen-address=127.0.0.1:{port}"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
    )
    exported = names_in(scrape(port, started[0]))
    wanted = set(monitoring.EXPORTED["prometheus-node-exporter 1.5"]) - MD_NAMES
    assert wanted <= exported, sorted(wanted - exported)


# The mdadm collector's names appear only where /proc/mdstat lists an array, which this host (no md) has not:
# read from a mirror that lost a disk, /proc/mdstat as the kernel writes it (tests/fixtures/procfs/mdstat)
MD_NAMES = {"node_md_disks", "node_md_disks_required"}


@pytest.mark.skipif(shutil.which("prometheus-node-exporter") is None, reason="needs prometheus-node-exporter")
def test_the_node_exporter_reads_a_degraded_mirror_as_the_raid_rule_expects(
    started: list[subprocess.Popen[bytes]],
) -> None:
    port = free_port()
    procfs = Path(__file__).resolve().parents[1] / "fixtures" / "procfs"
    argv = ["prometheus-node-exporter", f"--web.listen-address=127.0.0.1:{port}", f"--path.procfs={procfs}"]
    started.append(
        subprocess.Popen(
            [*argv, "--collector.disable-defaults", "--collector.mdadm"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
    )
    text = scrape(port, started[-1])
    assert MD_NAMES <= names_in(text)
    assert 'node_md_disks_required{device="md127"} 2' in text
    assert 'node_md_disks{device="md127",state="active"} 1' in text, "the alert's two sides differ by one disk"


HAPROXY_CFG = """
defaults
    mode http
    timeout connect 1s
    timeout client 5s
    timeout server 5s
frontend stats
    bind 127.0.0.1:{port}
    http-request use-service prometheus-exporter if {{ path /metrics }}
backend web_pool
    option httpchk GET /health
    default-server inter 200ms fall 1 rise 1
    server web1 127.0.0.1:{closed} check
"""


def test_haproxy_exports_what_the_rules_read(tmp_path: Path, started: list[subprocess.Popen[bytes]]) -> None:
    """HAProxy's built-in exporter, as the lb role serves it, with a web node that refuses connections."""
    port = free_port()
    config = tmp_path / "haproxy.cfg"
    config.write_text(HAPROXY_CFG.format(port=port, closed=free_port()))
    started.append(subprocess.Popen(["haproxy", "-db", "-f", str(config)], stdout=subprocess.DEVNULL))
    deadline = time.monotonic() + 20
    while True:
        text = scrape(port, started[0])
        if 'haproxy_server_status{proxy="web_pool",server="web1",state="DOWN"} 1' in text:
            break
        assert time.monotonic() < deadline, text[:3000]
        time.sleep(0.2)
    wanted = set(monitoring.EXPORTED["haproxy 2.6 (built-in prometheus-exporter, lb role :8404/metrics)"])
    assert wanted <= names_in(text)
    assert 'haproxy_backend_active_servers{proxy="web_pool"} 0' in text
