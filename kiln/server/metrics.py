"""The provisioning server's own metrics (`GET /metrics`, Prometheus text format) and its health (`GET /healthz`).

Counted as requests happen, in this process (a server behind a load balancer counts its own share):

    kiln_server_http_requests_total{listener,route,method,status}      route: the route's template (/v1/hosts/{name})
    kiln_server_http_request_duration_seconds{listener,route,method}   histogram, to the last byte sent
    kiln_server_grants_total{action}                                   each grant the access log records
    kiln_server_enrolments_total{outcome}                              bound (a key bound now) | retry (same key again)
    kiln_server_refusals_total{action,reason}                          REASONS below

Read from the state store at scrape time, in one query (so they hold across servers sharing PostgreSQL):

    kiln_server_hosts{state}                                   hosts per state, every state listed (0 too)
    kiln_server_hosts_stalest_change_timestamp_seconds{state}  the oldest last change among the hosts in that state
    kiln_server_host_credentials{credential}                   armed (token issued, unused), enrolled, spent, expired
    kiln_server_host_state{name,state}                         1 for each host, in its state (a second query)
    kiln_server_generation                                     the generation served
    kiln_server_store_up                                       1 when the state store answered this scrape
    kiln_server_certificate_expiry_timestamp_seconds{certificate}  ca, server, site: the leaf's notAfter

And, when roles.yaml sets db backups (BackupCollector; what BackupTooOld reads):

    kiln_db_backup_last_success_timestamp_seconds{action="backup"}  when the newest reported backup finished
    kiln_db_backup_interval_seconds{action="backup"}                the schedule's longest gap between two runs

Who may read /metrics is the app's (kiln/server/app.py: the admin networks, loopback, or the operator token).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from cryptography import x509
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from kiln.db.schedule import ScheduleError, longest_interval
from kiln.server.states import State

LOG = logging.getLogger("kiln.server")

# Why a request was refused: a bounded set, so a label and not the free text the access log keeps.
REASONS = (
    "unauthenticated",  # 401: no credential, a wrong or replayed signature, an unknown or expired token
    "forbidden",  # 403: a credential used for another host, a token bound to another key, a retired host
    "rate_limited",  # 429: a host or an address writing faster than kiln/server/limits.py allows
    "body_too_large",  # 413
    "not_json",  # 415: a POST body not declared application/json
    "head_too_large",  # 431: a request head over 16 KiB (answered before the app sees it)
    "head_timeout",  # a request head not complete within 10 s: the connection closed
    "unknown_machine",  # a MAC roles.yaml does not list asked for its boot script
    "not_admin_network",  # /metrics from outside the admin networks without the operator token
)
METHODS = ("GET", "HEAD", "POST")  # others are counted as OTHER: a client cannot grow the label set
# the classic text format, which Debian 12's Prometheus (2.42) reads (prometheus_client's latest names 1.0.0)
METRICS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
UNMATCHED = "unmatched"  # the route label of a path no route matched (a 404)
# seconds: a signed bundle takes about 1 ms, a listing of 10,000 hosts about 1 s; image downloads run longer
BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 120.0)
CREDENTIALS = ("armed", "enrolled", "spent", "expired")


# What the state store says at one moment (StateStore.census): (state, credential) -> (hosts, oldest last change).
Census = Mapping[tuple[str, str], tuple[int, float | None]]


class ServerMetrics:
    """One server's metrics, in a registry of its own (two servers in one process do not share counters)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "kiln_server_http_requests",
            "HTTP requests answered, by listener, route template, method and status.",
            ["listener", "route", "method", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "kiln_server_http_request_duration_seconds",
            "Time from a request's arrival to its response's last byte, by listener, route template and method.",
            ["listener", "route", "method"],
            buckets=BUCKETS,
            registry=self.registry,
        )
        self.grants = Counter(
            "kiln_server_grants",
            "Grants the access log records: enrol, bundle (with secrets), secrets (acknowledged), seed, login, "
            "publish.",
            ["action"],
            registry=self.registry,
        )
        self.enrolments = Counter(
            "kiln_server_enrolments",
            "Enrolments granted: bound (a host key bound now, its token used) or retry (the same key again).",
            ["outcome"],
            registry=self.registry,
        )
        self.refusals = Counter(
            "kiln_server_refusals",
            "Requests refused, by what was asked (action) and why (reason).",
            ["action", "reason"],
            registry=self.registry,
        )
        for outcome in ("bound", "retry"):
            self.enrolments.labels(outcome)  # present from the start: rate() needs the zero

    def request(self, listener: str, route: str, method: str, status: int, seconds: float) -> None:
        method = method if method in METHODS else "OTHER"
        self.requests.labels(listener, route, method, str(status)).inc()
        self.latency.labels(listener, route, method).observe(seconds)

    def refused(self, action: str, reason: str) -> None:
        assert reason in REASONS, reason
        self.refusals.labels(action, reason).inc()

    def watch(self, collector: Collector) -> None:
        self.registry.register(collector)


class StateCollector(Collector):
    """The gauges read at scrape time: `census` is one query of the state store (StateStore.census), `states` host
    name -> state (StateStore.host_states), `generation` the generation served, `certificates` name -> PEM file (its
    first certificate is the leaf)."""

    def __init__(
        self,
        census: Callable[[], Census],
        states: Callable[[], Mapping[str, str]],
        generation: Callable[[], int],
        certificates: Mapping[str, Path],
    ) -> None:
        self._census = census
        self._states = states
        self._generation = generation
        self._certificates = dict(certificates)
        self._expiry: dict[str, tuple[float, float]] = {}  # name -> (file mtime, notAfter): parsed once per change

    def describe(self) -> list[Metric]:
        return []  # collected at scrape time only: registering it must not query the store

    def collect(self) -> Iterator[Metric]:
        hosts = GaugeMetricFamily("kiln_server_hosts", "Hosts in each state (kiln/server/states.py).", labels=["state"])
        stalest = GaugeMetricFamily(
            "kiln_server_hosts_stalest_change_timestamp_seconds",
            "The oldest last change (server clock) among the hosts in each state: how long the least moving one sat.",
            labels=["state"],
        )
        credentials = GaugeMetricFamily(
            "kiln_server_host_credentials",
            "Hosts by credential: armed (enrolment token issued, not used), enrolled, spent, expired.",
            labels=["credential"],
        )
        # `name`, not `host`: the scrape's own target label is `host` (kiln/monitoring/config.py), which Prometheus
        # would keep, renaming this one exported_host
        per_host = GaugeMetricFamily(
            "kiln_server_host_state",
            "1 for each host, labelled with its state: whether a host is joined or still being installed.",
            labels=["name", "state"],
        )
        up = GaugeMetricFamily("kiln_server_store_up", "1 when the state store answered this scrape.")
        try:
            census = self._census()
            states = self._states()
        except Exception as e:  # the scrape still answers, and says the store did not
            LOG.warning("metrics: the state store did not answer: %s", type(e).__name__)
            up.add_metric([], 0)
        else:
            up.add_metric([], 1)
            by_state: dict[str, int] = dict.fromkeys((s.value for s in State), 0)
            oldest: dict[str, float] = {}
            by_credential: dict[str, int] = dict.fromkeys(CREDENTIALS, 0)
            for (state, credential), (count, changed) in census.items():
                by_state[state] = by_state.get(state, 0) + count
                by_credential[credential] = by_credential.get(credential, 0) + count
                if changed is not None:
                    oldest[state] = min(changed, oldest.get(state, changed))
            for state, count in by_state.items():
                hosts.add_metric([state], count)
            for state, changed in oldest.items():
                stalest.add_metric([state], changed)
            for credential, count in by_credential.items():
                credentials.add_metric([credential], count)
            for name, state in sorted(states.items()):
                per_host.add_metric([name, state], 1)
            yield hosts
            yield stalest
            yield credentials
            yield per_host
        yield up
        generation = GaugeMetricFamily("kiln_server_generation", "The generation of roles.yaml this server serves.")
        generation.add_metric([], self._generation())
        yield generation
        expiry = GaugeMetricFamily(
            "kiln_server_certificate_expiry_timestamp_seconds",
            "When each certificate under secrets/ expires (notAfter of its leaf): ca, server, site.",
            labels=["certificate"],
        )
        for name, path in sorted(self._certificates.items()):
            not_after = self._not_after(name, path)
            if not_after is not None:
                expiry.add_metric([name], not_after)
        yield expiry

    def _not_after(self, name: str, path: Path) -> float | None:
        try:
            mtime = path.stat().st_mtime
            cached = self._expiry.get(name)
            if cached is None or cached[0] != mtime:
                leaf = x509.load_pem_x509_certificate(path.read_bytes())
                cached = (mtime, leaf.not_valid_after_utc.timestamp())
                self._expiry[name] = cached
            return cached[1]
        except (OSError, ValueError):
            return None


class BackupCollector(Collector):
    """The db backups' age and allowance, read at scrape time: `schedule()` is roles.db.backup.schedule.backup (None
    without backups: nothing is reported), `last_success()` when the newest backup the runner reported finished
    (StateStore.last_backup_at; None before the first). The interval is the schedule's longest gap
    (kiln.db.schedule), worked out once per expression. When the store does not answer, neither is reported: an
    interval alone would read as "never backed up"."""

    def __init__(self, schedule: Callable[[], str | None], last_success: Callable[[], float | None]) -> None:
        self._schedule = schedule
        self._last_success = last_success
        self._intervals: dict[str, float | None] = {}

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        expression = self._schedule()
        if expression is None:
            return
        interval = self._interval(expression)
        try:
            last = self._last_success()
        except Exception as e:  # the store did not answer: kiln_server_store_up says so
            LOG.warning("metrics: the last backup is unknown: %s", type(e).__name__)
            return
        said = (
            ("kiln_db_backup_interval_seconds", "The backup schedule's longest gap between two runs.", interval),
            ("kiln_db_backup_last_success_timestamp_seconds", "When the newest reported backup finished.", last),
        )
        for name, text, number in said:
            if number is not None:
                family = GaugeMetricFamily(name, text, labels=["action"])
                family.add_metric(["backup"], number)
                yield family

    def _interval(self, expression: str) -> float | None:
        if expression not in self._intervals:
            try:
                self._intervals[expression] = longest_interval(expression)
            except ScheduleError as e:
                LOG.warning("metrics: no backup interval: %s", e)
                self._intervals[expression] = None
        return self._intervals[expression]


def healthz(ping: Callable[[], Any], generation: int) -> tuple[int, dict[str, Any]]:
    """(status, body) of GET /healthz: 200 when the state store answers `ping`, 503 otherwise."""
    started = time.monotonic()
    try:
        ping()
    except Exception as e:
        return 503, {"status": "unavailable", "store": f"not answering ({type(e).__name__})", "generation": generation}
    return 200, {"status": "ok", "store": f"{(time.monotonic() - started) * 1000:.1f} ms", "generation": generation}
