"""The mon role's Prometheus and Alertmanager configs, computed from the cluster model: every host's node exporter,
the lb hosts' HAProxy, the web hosts' nginx exporter, the db hosts' mysqld exporter, the app nodes' /metrics and
the provisioning server's own. Their job names are the ones the alert rules name (kiln/monitoring/rules/).

    prometheus_config(cluster)                  prometheus.yml's text
    alertmanager_config(cluster[, timing])      alertmanager.yml's text: every alert to roles.yaml's receivers

Both are YAML dumped from plain data (not a template): every value is quoted as YAML needs, whatever a host name
holds. File paths in them are relative to the config file's directory (Prometheus and Alertmanager resolve them
so): the mon role installs kiln.rules.yml and the cluster CA beside prometheus.yml, and the CA and the
provisioning server's alert token (secrets/alertmanager.token as kiln-alerts.token) beside alertmanager.yml.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import yaml

from kiln.model import Cluster
from kiln.model.monitoring import PROVISIONING
from kiln.monitoring import ALERTS_TOKEN_FILE, CA_FILE, RULES_FILE
from kiln.roles import app, db, lb, web
from kiln.roles.context import NODE_EXPORTER_PORT

SCRAPE_INTERVAL = "15s"  # the drills ask for an alert within 60 s: 15 s scrapes and evaluations, then `for`
ALERTMANAGER = "127.0.0.1:9093"  # on the mon host itself

# The provisioning server as a webhook receiver (monitoring.alerts_to: provisioning): where, with what token, and at
# most how many alerts in one notification (Alertmanager's max_alerts; the server's body limit holds that many).
ALERTS_PATH = "/v1/alerts"
MAX_ALERTS = 100
REPEAT_HOURS = 4  # how often a firing alert is told again (the receiver tells a stale one by it)


@dataclass(frozen=True)
class Job:
    name: str
    role: str | None  # None: every host
    port: int
    interval: str | None = None  # None: SCRAPE_INTERVAL


# The node exporter every 30 s: the costliest scrape on every host (1.7 s on an emulated lab host, 2026-12-02), and
# its alerts' `for` is 1 min or more, but for the VIP's (30 s, 15 s), which it tells up to 15 s later than at 15 s.
NODE_INTERVAL = "30s"

JOBS = (
    Job("node", None, NODE_EXPORTER_PORT, NODE_INTERVAL),
    Job("haproxy", lb.NAME, lb.STATS_PORT),
    Job("nginx", web.NAME, web.EXPORTER_PORT),
    Job("mysqld", db.NAME, db.EXPORTER_PORT),
    Job("app", app.NAME, app.METRICS_PORT),
)


def _targets(cluster: Cluster, role: str | None, port: int) -> list[dict[str, Any]]:
    """One static config per host, labelled with its name and role (alerts then say `web1`, not an address)."""
    hosts = cluster.hosts if role is None else cluster.by_role(role)
    return [{"targets": [f"{h.ip}:{port}"], "labels": {"host": h.name, "role": h.role}} for h in hosts]


def prometheus_config(cluster: Cluster) -> str:
    scrapes: list[dict[str, Any]] = [
        {
            "job_name": job.name,
            **({"scrape_interval": job.interval} if job.interval else {}),
            "static_configs": _targets(cluster, job.role, job.port),
        }
        for job in JOBS
        if job.role is None or cluster.by_role(job.role)
    ]
    server = urlsplit(cluster.provisioning_url)
    scrapes.append(
        {
            "job_name": "kiln-server",
            "scheme": "https",  # the server's address and port are provisioning.url's; /metrics to the admin networks
            "tls_config": {"ca_file": CA_FILE},
            "static_configs": [{"targets": [server.netloc], "labels": {"host": "provisioning"}}],
        }
    )
    document = {
        "global": {
            "scrape_interval": SCRAPE_INTERVAL,
            "evaluation_interval": SCRAPE_INTERVAL,
            "external_labels": {"cluster": cluster.name},
        },
        "rule_files": [RULES_FILE],
        "alerting": {"alertmanagers": [{"static_configs": [{"targets": [ALERTMANAGER]}]}]},
        "scrape_configs": scrapes,
    }
    return _header(cluster, "Prometheus") + yaml.safe_dump(document, sort_keys=False)


@dataclass(frozen=True)
class Timing:
    """Alertmanager's route timers, as durations it reads ("10s", "4h")."""

    group_wait: str = "10s"  # a new group's first notification: the drills expect an alert within 60 s
    group_interval: str = "1m"  # a change in a group (a new alert, one resolved) is told after this
    repeat_interval: str = f"{REPEAT_HOURS}h"  # an unchanged group that still fires is told again after this


def webhook(cluster: Cluster, receiver: str) -> dict[str, Any]:
    """One webhook_config: `provisioning` (the server's ALERTS_PATH over HTTPS, checked against the cluster CA, with
    the alert token as a bearer token) or another receiver's https URL as it is."""
    sent = {"send_resolved": True, "max_alerts": MAX_ALERTS}
    if receiver != PROVISIONING:
        return {"url": receiver, **sent}
    return {
        "url": cluster.provisioning_url + ALERTS_PATH,
        **sent,
        "http_config": {
            "authorization": {"type": "Bearer", "credentials_file": ALERTS_TOKEN_FILE},
            "tls_config": {"ca_file": CA_FILE},
        },
    }


def alertmanager_config(cluster: Cluster, timing: Timing = Timing()) -> str:
    """Every alert to each receiver of roles.yaml's monitoring.alerts_to (resolved ones too), grouped by alert, host
    and VIP, on `timing`'s timers (the defaults; tests shorten them); AppNodeDown inhibits the same instance's
    InstanceDown."""
    document = {
        "route": {
            "receiver": "kiln-webhook",
            "group_by": ["alertname", "host", "vip"],
            "group_wait": timing.group_wait,
            "group_interval": timing.group_interval,
            "repeat_interval": timing.repeat_interval,
        },
        "receivers": [
            {"name": "kiln-webhook", "webhook_configs": [webhook(cluster, r) for r in cluster.monitoring.alerts_to]}
        ],
        # an app node that is down is AppNodeDown's to say: its InstanceDown would say it again
        "inhibit_rules": [
            {
                "source_matchers": ["alertname = AppNodeDown"],
                "target_matchers": ["alertname = InstanceDown"],
                "equal": ["instance"],
            }
        ],
    }
    return _header(cluster, "Alertmanager") + yaml.safe_dump(document, sort_keys=False)


def _header(cluster: Cluster, what: str) -> str:
    return f"# Rendered by kiln for {cluster.name}: {what}'s configuration (kiln/monitoring/config.py).\n"
