"""The lab's view of the cluster's alerts, for the drills: what the mon host's Alertmanager holds (its API v2, from
the admin network), and what the provisioning server was told (its webhook receiver, GET /v1/alerts: what the
dashboard shows).

    firing(lab, "WebNodeDown", server="web1")  -> True while Alertmanager holds such an alert, not yet resolved
    told(lab, "WebNodeDown", "firing", server="web1")  -> True once the server lists it with that status
    fired_about(lab, {"web3"}, 300)  -> ["InstanceDown{host=web3}", ...]: what Prometheus had firing about them
    AlertDrill: a drill's alert, from failure to "fired" (Alertmanager) and "told" (the server), from repair to
                "resolved", in seconds (kiln/lab/chaos.py waits for each with its `wait`)

A cluster without a mon host has no Alertmanager: `alertmanager(lab)` is None and the drills leave alerts out.
"""

from __future__ import annotations

import json
import urllib.parse
import urllib.request
from dataclasses import dataclass
from typing import Any

from kiln.lab import client
from kiln.lab.layout import Lab
from kiln.roles import mon

# How long a drill waits for its alert to fire, and to resolve, in seconds: a rule's `for` (15 s to 1 min) after
# the scrape (15 s) and the evaluation (15 s) that see the failure, then the send to Alertmanager; the goal
# for "web node DOWN" is 60 s after nginx stops. Past these the drill fails: the alert path is broken, not slow.
FIRE_WITHIN = 240.0
RESOLVE_WITHIN = 240.0
# Alertmanager tells its receivers a new alert group_wait (10 s) after it arrives, a change group_interval (1 min)
# after the last notification: what the server may wait for, with room for a slow guest.
TOLD_WITHIN = 120.0


def _mon_url(lab: Lab, port: int) -> str | None:
    """http://ADDRESS:PORT of the first booted mon host; None without one."""
    mons = [h for h in lab.hosts if h.role == mon.NAME]
    return f"http://{mons[0].ip}:{port}" if mons else None


def alertmanager(lab: Lab) -> str | None:
    """The first booted mon host's Alertmanager URL (http://ADDRESS:9093); None without one."""
    return _mon_url(lab, mon.ALERTMANAGER_PORT)


def held(url: str, alertname: str, timeout: float = 10) -> list[dict[str, Any]]:
    """The Alertmanager at `url`'s alerts named `alertname` that are not resolved (API v2 GET /api/v2/alerts: a
    resolved alert's endsAt is past, and the API leaves it out), each as the API gives it (labels, status, ...)."""
    query = urllib.parse.urlencode({"filter": f'alertname="{alertname}"', "active": "true"})
    with urllib.request.urlopen(f"{url}/api/v2/alerts?{query}", timeout=timeout) as r:
        return list(json.load(r))


def fired_about(lab: Lab, hosts: set[str], seconds: float, timeout: float = 10) -> list[str]:
    """The alerts the mon host's Prometheus had firing in the last `seconds` about any of `hosts` (an alert's `host`
    or `server` label), as "Alert{label=host}", sorted; [] without a mon host. From `ALERTS`, the series Prometheus
    keeps for every pending and firing alert, so an alert that fired and resolved in between is still seen."""
    prometheus = _mon_url(lab, mon.PROMETHEUS_PORT)
    if prometheus is None or not hosts:
        return []
    window = max(1, round(seconds))
    query = urllib.parse.urlencode({"query": f'max_over_time(ALERTS{{alertstate="firing"}}[{window}s])'})
    with urllib.request.urlopen(f"{prometheus}/api/v1/query?{query}", timeout=timeout) as r:
        answer = json.load(r)
    found = set()
    for series in answer["data"]["result"]:
        labels = series["metric"]
        for key in ("host", "server"):
            if labels.get(key) in hosts:
                found.add(f"{labels['alertname']}{{{key}={labels[key]}}}")
    return sorted(found)


def _matches(labels: dict[str, str], wanted: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in wanted.items())


def firing(lab: Lab, alertname: str, **labels: str) -> bool:
    """True while the mon host's Alertmanager holds `alertname` with these labels (e.g. host="lb1"), not resolved;
    False without a mon host."""
    url = alertmanager(lab)
    return url is not None and any(_matches(a.get("labels", {}), labels) for a in held(url, alertname))


def listed(listing: dict[str, list[dict[str, Any]]], alertname: str, status: str, **labels: str) -> bool:
    """Whether the server's GET /v1/alerts answer (`listing`) has `alertname` with these labels as `status`
    ("firing" or "resolved")."""
    return any(a["alertname"] == alertname and _matches(a["labels"], labels) for a in listing[status])


def told(lab: Lab, alertname: str, status: str, **labels: str) -> bool:
    """True once the provisioning server (the webhook receiver) lists `alertname` with these labels as `status`."""
    return listed(client.alerts(lab), alertname, status, **labels)


@dataclass
class AlertDrill:
    """One drill's alert: `failed_at` when the drill broke something (time.monotonic()), `fired` seconds after it
    until Alertmanager held the alert, `repaired_at` when the drill put it right, `resolved` seconds after that until
    Alertmanager let the alert go; `told` seconds after `failed_at` until the provisioning server listed it firing.
    None: not (yet) seen."""

    alertname: str
    labels: dict[str, str]
    failed_at: float
    fired: float | None = None
    told: float | None = None
    repaired_at: float | None = None
    resolved: float | None = None

    def describe(self) -> str:
        what = f"{self.alertname}{{{', '.join(f'{k}={v}' for k, v in self.labels.items())}}}"
        said = [f"fired after {self.fired:.0f} s" if self.fired is not None else "never fired"]
        said.append(f"the server told after {self.told:.0f} s" if self.told is not None else "the server not told")
        if self.resolved is not None:
            said.append(f"resolved {self.resolved:.0f} s after the repair")
        return what + " " + ", ".join(said)

    @property
    def works(self) -> bool:
        return self.fired is not None and self.told is not None and self.resolved is not None
