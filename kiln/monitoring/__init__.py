"""What the mon role will ship for alerting: kiln's alert rules (rules/kiln.rules.yml), a promtool test per alert
(rules/tests/ALERT.test.yml), and the metric names the rules read, by who exports them (EXPORTED). docs/monitoring.md
says where each name was checked; the tests run the real exporters and promtool over all of it.

    RULES                  the rules file (Prometheus 2.42's format, `promtool check rules`)
    RULE_TESTS             its promtool test files, one per alert, named after it
    alerts()               alert name -> its rule (a dict as in the file)
    metric_names(expr)     the metric names a PromQL expression reads
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

RULES = Path(__file__).resolve().parent / "rules" / "kiln.rules.yml"
RULE_TESTS = RULES.parent / "tests"

# The file names the mon role installs beside prometheus.yml and alertmanager.yml (config.py's relative paths name
# them; kiln/roles/mon.py places them): the rules, the cluster CA, the provisioning server's alert token.
RULES_FILE = "kiln.rules.yml"
CA_FILE = "kiln-ca.pem"  # the cluster CA: the provisioning server's certificate is issued by it
ALERTS_TOKEN_FILE = "kiln-alerts.token"

# The textfile collector's directory: Debian's prometheus-node-exporter reads *.prom files there by default.
TEXTFILE_DIR = "/var/lib/prometheus/node-exporter"

# Every metric name a rule reads, by what exports it. The exporters are Debian 12's packages as the roles run them.
EXPORTED: dict[str, tuple[str, ...]] = {
    "prometheus": ("up",),  # per scrape target
    "prometheus-node-exporter 1.5": (
        "node_filesystem_avail_bytes",
        "node_filesystem_size_bytes",
        "node_timex_offset_seconds",
        "node_timex_sync_status",
        "node_md_disks",  # the mdadm collector, from /proc/mdstat: only on a host with an array
        "node_md_disks_required",
    ),
    "haproxy 2.6 (built-in prometheus-exporter, lb role :8404/metrics)": (
        "haproxy_backend_active_servers",
        "haproxy_server_status",
    ),
    "prometheus-mysqld-exporter 0.14 (--collect.slave_status)": (
        "mysql_slave_status_slave_io_running",
        "mysql_slave_status_slave_sql_running",
        "mysql_slave_status_seconds_behind_master",
        "mysql_global_variables_read_only",
    ),
    "kiln server (kiln/server/metrics.py)": (
        "kiln_server_hosts",
        "kiln_server_hosts_stalest_change_timestamp_seconds",
        "kiln_server_host_state",
        "kiln_server_certificate_expiry_timestamp_seconds",
    ),
    # from the backup runner's reports (POST /v1/db/events) and roles.db.backup.schedule
    "kiln server, when roles.yaml sets db backups": (
        "kiln_db_backup_last_success_timestamp_seconds",
        "kiln_db_backup_interval_seconds",
    ),
    # a file in TEXTFILE_DIR (docs/monitoring.md) on the lb hosts (kiln-vrrp-state, the lb role)
    "textfile: keepalived state on each lb": ("kiln_keepalived_vrrp_state",),
}


def alerts() -> dict[str, dict[str, Any]]:
    """Alert name -> its rule, from every group of RULES."""
    document = yaml.safe_load(RULES.read_text())
    return {rule["alert"]: rule for group in document["groups"] for rule in group["rules"] if "alert" in rule}


_PROMQL_WORDS = {
    # aggregations, functions the rules use and PromQL's keywords: not metric names
    *("sum", "min", "max", "avg", "count", "abs", "absent", "time", "vector", "rate", "increase"),
    *("by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless", "offset"),
}


def metric_names(expr: str) -> set[str]:
    """The metric names in a PromQL expression: the names left without strings, label matchers, grouping clauses,
    functions (a name followed by a parenthesis) and keywords."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', "", expr)
    text = re.sub(r"\{[^}]*\}", " ", text)
    text = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    names = set()
    for match in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*\b(?!\s*\()", text):
        if match.group() not in _PROMQL_WORDS:
            names.add(match.group())
    return names
