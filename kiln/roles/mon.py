"""mon: Prometheus and Alertmanager for the cluster. Prometheus scrapes every host's exporters and the provisioning
server (kiln/monitoring/config.py computes its configuration from the cluster); Alertmanager sends the alerts to
roles.yaml's monitoring.alerts_to. Their HTTP APIs answer on the mon host's address, to the admin networks only.

roles.yaml may list zero or more mon hosts; each scrapes the whole cluster on its own (no Prometheus federation or
Alertmanager gossip between them: two mon hosts are two independent copies).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from kiln import bundle as b
from kiln.model.cluster import Cluster, Host
from kiln.model.meaning import Facts, Found
from kiln.monitoring import ALERTS_TOKEN_FILE, CA_FILE, RULES, RULES_FILE
from kiln.roles.context import NODE_EXPORTER_PORT, HostContext
from kiln.roles.spec import FileSpec, Firewall, RoleSpec, Rule, SecretSpec, ServiceSpec, typed_settings

NAME = "mon"
PROMETHEUS_PORT = 9090
ALERTMANAGER_PORT = 9093
CONFIG_DIR = "/etc/prometheus"  # Debian's: prometheus.yml and alertmanager.yml; the paths in them are relative to it
PROMETHEUS_YML = f"{CONFIG_DIR}/prometheus.yml"
ALERTMANAGER_YML = f"{CONFIG_DIR}/alertmanager.yml"
RULES_YML = f"{CONFIG_DIR}/{RULES_FILE}"
CA_PEM = f"{CONFIG_DIR}/{CA_FILE}"
ALERTS_TOKEN = f"{CONFIG_DIR}/{ALERTS_TOKEN_FILE}"
PROMETHEUS_DEFAULT = "/etc/default/prometheus"
ALERTMANAGER_DEFAULT = "/etc/default/prometheus-alertmanager"
DAEMON_USER = "prometheus"  # both daemons run as it (Debian's units)


@dataclass(frozen=True)
class MonSettings:
    retention: str


def settings_of(cluster: Cluster) -> MonSettings:
    return typed_settings(cluster, NAME, MonSettings)


def _context(cluster: Cluster, host: Host, c: HostContext) -> Mapping[str, Any]:
    from kiln.monitoring import config as mc  # it reads the other roles' modules: imported once they are

    return {
        "prometheus_yml": mc.prometheus_config(cluster),
        "alertmanager_yml": mc.alertmanager_config(cluster),
        "rules_yml": RULES.read_text(),
        "prometheus_port": PROMETHEUS_PORT,
        "alertmanager_port": ALERTMANAGER_PORT,
        "retention": settings_of(cluster).retention,
    }


def scraped_ports(cluster: Cluster) -> tuple[int, ...]:
    """Every port Prometheus scrapes on the cluster's hosts (the mon host's output rule to them)."""
    from kiln.monitoring import config as mc

    return tuple(sorted({NODE_EXPORTER_PORT, *(job.port for job in mc.JOBS)}))


def _firewall(cluster: Cluster, host: Host, c: HostContext) -> Firewall:
    hosts = ", ".join(p.ip for p in c.hosts)
    return Firewall(
        # Prometheus scrapes every host's exporters (they admit the admin network, where the mon hosts are: the
        # model checks it); the provisioning server's port is open to every host already
        outbound=(Rule("tcp", scraped_ports(cluster), daddr="$CLUSTER_HOSTS"),),
        admin_ports=(PROMETHEUS_PORT, ALERTMANAGER_PORT),
        defines=(("CLUSTER_HOSTS", hosts),),
    )


def _join(cluster: Cluster, host: Host, c: HostContext) -> b.Join:
    return b.ServiceJoin(
        kind="service",
        process="prometheus",
        unit="prometheus.service",
        health_url=f"http://{c.ip}:{PROMETHEUS_PORT}/-/ready",
        what=f"Prometheus ready, scraping {len(cluster.hosts)} hosts and the provisioning server",
    )


def _checks(cluster: Cluster, host: Host, c: HostContext) -> tuple[b.Check, ...]:
    return (
        b.HttpCheck(kind="http", name="Prometheus ready", url=f"http://{c.ip}:{PROMETHEUS_PORT}/-/ready"),
        b.HttpCheck(kind="http", name="Alertmanager ready", url=f"http://{c.ip}:{ALERTMANAGER_PORT}/-/ready"),
    )


def _outside_admin(facts: Facts) -> Found:
    """A mon host scrapes the exporters, which admit the admin networks only: its address must be in one."""
    try:  # what the shape check refuses is its to say
        nets = [ipaddress.IPv4Network(a) for a in facts.network.get("admin") or ()]
    except (TypeError, ValueError):
        return
    for i, h in facts.hosts_of(NAME):
        try:
            addr = ipaddress.IPv4Address(h.get("ip"))
        except ValueError:
            continue
        if nets and not any(addr in n for n in nets):
            yield (
                f"$.hosts[{i}].ip",
                f"{addr} is outside network.admin: the exporters admit the admin networks only",
                "an address inside one of network.admin",
            )


def _config(path: str, template: str, check: tuple[str, ...] = ()) -> FileSpec:
    return FileSpec(path, template, mode="0640", group=DAEMON_USER, check=check)


ROLE = RoleSpec(
    name=NAME,
    summary="Prometheus and Alertmanager for the whole cluster",
    settings_schema={
        "description": "Monitoring hosts: Prometheus scraping every host, Alertmanager sending its alerts.",
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "retention": {
                "description": "How long Prometheus keeps samples (its --storage.tsdb.retention.time): days or weeks.",
                "type": "string",
                "pattern": "^[1-9][0-9]{0,3}[dw]$(?!\\n)",
                "default": "15d",
            },
        },
    },
    settings=lambda s: MonSettings(**s),
    context=_context,
    join=_join,
    checks=_checks,
    firewall=_firewall,
    elements=("kiln-mon",),
    lab_memory_mib=768,
    files=(
        _config(PROMETHEUS_YML, "prometheus.yml.j2", ("promtool", "check", "config", PROMETHEUS_YML)),
        _config(RULES_YML, "prometheus-rules.yml.j2", ("promtool", "check", "rules", RULES_YML)),
        _config(ALERTMANAGER_YML, "alertmanager.yml.j2", ("amtool", "check-config", ALERTMANAGER_YML)),
        FileSpec(PROMETHEUS_DEFAULT, "prometheus.default.j2"),
        FileSpec(ALERTMANAGER_DEFAULT, "alertmanager.default.j2"),
    ),
    secrets=(
        SecretSpec("ca_pem", CA_PEM, mode="0640", group=DAEMON_USER),
        SecretSpec("alertmanager_token", ALERTS_TOKEN, mode="0640", group=DAEMON_USER),
    ),
    services=(
        ServiceSpec("prometheus.service", (PROMETHEUS_YML, RULES_YML, CA_PEM, PROMETHEUS_DEFAULT)),
        ServiceSpec("prometheus-alertmanager.service", (ALERTMANAGER_YML, CA_PEM, ALERTS_TOKEN, ALERTMANAGER_DEFAULT)),
    ),
    meaning=(("mon-outside-admin", _outside_admin),),
)
