"""The mon role's Prometheus and Alertmanager configs rendered from the reference cluster, under their real
checkers (promtool check config, which also checks the rules file it names, and amtool check-config): every host's
node exporter and every tier's exporter is a target, under the job names the alert rules use."""

from __future__ import annotations

import dataclasses
import re
import shutil
from pathlib import Path

import pytest
import yaml

from kiln import monitoring
from kiln.model import Cluster, parse_roles
from kiln.monitoring.config import (
    ALERTS_TOKEN_FILE,
    CA_FILE,
    MAX_ALERTS,
    RULES_FILE,
    Timing,
    alertmanager_config,
    prometheus_config,
)
from kiln.run import run
from kiln.secrets import SecretStore

pytestmark = pytest.mark.integration


@pytest.mark.skipif(shutil.which("promtool") is None, reason="needs promtool (Debian's prometheus package)")
def test_prometheus_config_passes_promtool_and_scrapes_every_target(
    cluster: Cluster, secret_store: SecretStore, tmp_path: Path
) -> None:
    text = prometheus_config(cluster)
    (tmp_path / "prometheus.yml").write_text(text)
    shutil.copy(monitoring.RULES, tmp_path / RULES_FILE)
    shutil.copy(secret_store.ca_pem, tmp_path / CA_FILE)
    out = run(["promtool", "check", "config", tmp_path / "prometheus.yml"]).stdout
    assert f"SUCCESS: {len(monitoring.alerts())} rules found" in out, out

    jobs = {job["job_name"]: job for job in yaml.safe_load(text)["scrape_configs"]}

    def targets(job: str) -> dict[str, str]:
        return {c["labels"]["host"]: t for c in jobs[job]["static_configs"] for t in c["targets"]}

    assert targets("node") == {h.name: f"{h.ip}:9100" for h in cluster.hosts}
    assert targets("haproxy") == {h.name: f"{h.ip}:8404" for h in cluster.by_role("lb")}
    assert targets("nginx") == {h.name: f"{h.ip}:9113" for h in cluster.by_role("web")}
    assert targets("mysqld") == {h.name: f"{h.ip}:9104" for h in cluster.by_role("db")}
    assert targets("app") == {h.name: f"{h.ip}:9180" for h in cluster.by_role("app")}, (
        "the workers' sum, not the app port"
    )
    assert targets("kiln-server") == {"provisioning": "10.10.0.1:8443"}
    assert jobs["kiln-server"]["scheme"] == "https"
    named = set(re.findall(r'job="([^"]+)"', monitoring.RULES.read_text()))
    assert named and named <= set(jobs), f"the rules name jobs the config lacks: {sorted(named - set(jobs))}"


def test_a_cluster_without_app_nodes_has_no_app_job(cluster: Cluster) -> None:
    smaller = dataclasses.replace(cluster, hosts=tuple(h for h in cluster.hosts if h.role != "app"))
    jobs = [job["job_name"] for job in yaml.safe_load(prometheus_config(smaller))["scrape_configs"]]
    assert jobs == ["node", "haproxy", "nginx", "mysqld", "kiln-server"]


@pytest.mark.skipif(shutil.which("amtool") is None, reason="needs amtool (Debian's prometheus-alertmanager package)")
def test_alertmanager_config_passes_amtool(cluster: Cluster, tmp_path: Path) -> None:
    """The default receiver (roles.yaml without a monitoring section) is the provisioning server, with its token and
    the cluster CA; every alert goes there, resolved ones too."""
    assert cluster.monitoring.alerts_to == ("provisioning",)
    path = tmp_path / "alertmanager.yml"
    path.write_text(alertmanager_config(cluster))
    out = run(["amtool", "check-config", path]).stdout
    assert "SUCCESS" in out and "1 receivers" in out and "1 inhibit rules" in out, out
    document = yaml.safe_load(path.read_text())
    assert document["receivers"][0]["webhook_configs"] == [
        {
            "url": "https://10.10.0.1:8443/v1/alerts",
            "send_resolved": True,
            "max_alerts": MAX_ALERTS,
            "http_config": {
                "authorization": {"type": "Bearer", "credentials_file": ALERTS_TOKEN_FILE},
                "tls_config": {"ca_file": CA_FILE},
            },
        }
    ]
    route = document["route"]
    assert (route["group_wait"], route["group_interval"], route["repeat_interval"]) == ("10s", "1m", "4h")
    # the checker really reads it: a route to a receiver that does not exist is refused
    path.write_text(path.read_text().replace("receiver: kiln-webhook", "receiver: nobody"))
    assert run(["amtool", "check-config", path], check=False).returncode != 0


@pytest.mark.skipif(shutil.which("amtool") is None, reason="needs amtool (Debian's prometheus-alertmanager package)")
def test_alerts_go_to_every_receiver_roles_yaml_names(shipped_roles: Path, tmp_path: Path) -> None:
    text = shipped_roles.read_text().replace(
        "\nroles:", "\nmonitoring:\n  alerts_to: [https://alerts.example.org/kiln, provisioning]\nroles:", 1
    )
    cluster = parse_roles(text)
    assert cluster.monitoring.alerts_to == ("https://alerts.example.org/kiln", "provisioning")
    path = tmp_path / "alertmanager.yml"
    path.write_text(alertmanager_config(cluster, Timing("1s", "2s", "3m")))
    assert "SUCCESS" in run(["amtool", "check-config", path]).stdout
    document = yaml.safe_load(path.read_text())
    hooks = document["receivers"][0]["webhook_configs"]
    assert [h["url"] for h in hooks] == ["https://alerts.example.org/kiln", "https://10.10.0.1:8443/v1/alerts"]
    assert "http_config" not in hooks[0], "the provisioning server's token goes to the provisioning server only"
    assert all(h["send_resolved"] for h in hooks)
    route = document["route"]
    assert (route["group_wait"], route["group_interval"], route["repeat_interval"]) == ("1s", "2s", "3m")
