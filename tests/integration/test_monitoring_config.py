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
from kiln.model import Cluster
from kiln.monitoring.config import CA_FILE, RULES_FILE, alertmanager_config, prometheus_config
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
    assert targets("app") == {h.name: f"{h.ip}:8080" for h in cluster.by_role("app")}
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
    path = tmp_path / "alertmanager.yml"
    path.write_text(alertmanager_config(cluster, "https://10.10.0.1:8443/v1/alerts"))
    out = run(["amtool", "check-config", path]).stdout
    assert "SUCCESS" in out and "1 receivers" in out and "1 inhibit rules" in out, out
    document = yaml.safe_load(path.read_text())
    assert document["receivers"][0]["webhook_configs"] == [
        {"url": "https://10.10.0.1:8443/v1/alerts", "send_resolved": True}
    ]
    # the checker really reads it: a route to a receiver that does not exist is refused
    path.write_text(path.read_text().replace("receiver: kiln-webhook", "receiver: nobody"))
    assert run(["amtool", "check-config", path], check=False).returncode != 0
