"""`lab chaos`: failure drills on the running lab while a request loop hits the VIP and a write loop inserts
numbered notes; one table row per drill with what was measured and whether the goal held.

Drills: stop nginx on web1 (HAProxy marks it down), power off lb1 (VIP to lb2, seconds of failed requests, lb1
rejoins), restart db2 (replication resumes, no row lost), kill a VM mid-join and start it again (it completes
provisioning), reboot a provisioned host (first boot does nothing, services come back). With a mon host, the first
two also wait for their alert (WebNodeDown for web1, InstanceDown for lb1) to fire in Alertmanager and, after the
repair, to resolve; a last phase checks the provisioning server was told of both (kiln/lab/alerts.py).

The drills run in phases. Most of a drill is one VM booting, and a booting VM has one emulated CPU: one after
another they used one core of two. So lb1's power-off and db2's restart run side by side (none needs what the
other takes away: lb2 carries the VIP, db1 the writes), as `lab up` boots one VM per core: with three booting at
once on two cores (2026-11-30) SSH to the starved guests and db2's return took past their deadlines. Stopping
nginx on web1 goes first, while both webs serve; the kill mid-join of the last web next; rebooting app1, the only
app host, last and alone: the rejoining web's join check goes through it.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console
from rich.table import Table

from kiln.fsutil import write_atomic
from kiln.lab import alerts, client, lifecycle, netns, vm
from kiln.lab.layout import OUTSIDE, Lab
from kiln.lab.probe import Reply, request
from kiln.lab.ssh import as_root, config_file, config_path, forget
from kiln.lab.vipwatch import VipWatch
from kiln.roles import db as db_role
from kiln.run import CommandError, run

# One request a second: under TCG the single app VM serves a few DB-touching requests a second in all, and the
# HAProxy health checks of both LBs already take part of that; a faster loop starves the checks (all webs DOWN).
INTERVAL = 1.0
# A request unanswered this long counts as failed: past HAProxy's own bound (its `timeout connect` for each of its
# `retries` + 1 tries, then `timeout server`: 45 s, kiln/render/templates/haproxy.cfg.j2), so what counts is what the
# stack answers (a 504 is a failure), not how long a starved guest takes: on 2026-12-01 two requests sent while two
# new VMs installed beside seven running ones were cut off at the former 10 s. Slowness shows in the figure of the
# longest time without an answer.
REQUEST_TIMEOUT = 50.0
# At most this many requests of the loop unanswered at once: past it a tick sends nothing. On 2026-11-30 the app VM
# served about 0.3 requests a second (two cores, seven guests); a loop sending on schedule regardless queued more
# than gunicorn's workers could ever drain (they answer requests whose clients gave up), and every check behind
# that queue timed out. The cap also holds the loop back while its requests hang on an LB that lost power: the LB
# drills read the VIP from the edge probe below instead.
MAX_IN_FLIGHT = 3
# The VIP's own answer, asked this often with no cap: HAProxy's redirect on port 80 (no TLS, no web node, no app),
# what the LB drills' failover goal is about. The request loop could not say it: the few requests it may have in
# flight hang on the LB that lost power, and until they end it sends nothing (2026-11-29: "outage 10.2 s, 0/2
# requests failed" while the VIP had moved after 6.3 s).
EDGE_INTERVAL = 0.5


# Seconds for SSH to connect and show its banner, and for one command. On 2026-11-30 (two cores, seven guests)
# sshd on an LB took 40 s to greet, and its session start (pam_systemd starting root's user manager) outlasted the
# lab config's keep-alive (3 x 5 s), so ssh dropped a live session as "not responding": here a session gets 120 s
# of silence. The drills judge what happened, not how quickly a starved guest answers SSH.
SSH_CONNECT = 60
SSH_COMMAND = 150
SSH_ALIVE = ("-o", "ServerAliveInterval=10", "-o", "ServerAliveCountMax=12")
# A reboot two seconds after the SSH command returned: a session open across the reboot would wait out the 120 s
# of keep-alive before it noticed the host was gone.
REBOOT = "systemd-run --quiet --on-active=2s /bin/systemctl reboot"


def ssh(lab: Lab, host: str, command: str, timeout: float = SSH_COMMAND, check: bool = True) -> str:
    """One command on a lab host as root (through sudo: kiln.lab.ssh.as_root), through the ssh_config chaos() wrote
    once; no connection sharing (a master to a powered-off host would hang)."""
    config = str(config_path(lab))
    argv = ["ssh", "-F", config, "-o", "ControlPath=none", "-o", f"ConnectTimeout={SSH_CONNECT}", *SSH_ALIVE]
    argv += [host, as_root(command)]
    return run(argv, timeout=timeout, check=check).stdout


def wait(what: str, predicate: Callable[[], bool], timeout: float, step: float = 1.0) -> float:
    """Seconds until `predicate()` held; TimeoutError naming `what` otherwise."""
    began = time.monotonic()
    while True:
        try:
            if predicate():
                return time.monotonic() - began
        except (OSError, CommandError, ValueError, KeyError):
            pass
        if time.monotonic() - began > timeout:
            raise TimeoutError(f"{what}: not within {timeout:.0f} s")
        time.sleep(step)


def seen_within(what: str, predicate: Callable[[], bool], timeout: float, step: float = 2.0) -> bool:
    """wait() for a drill that records a miss instead of stopping: False when `predicate` did not hold in time."""
    try:
        wait(what, predicate, timeout, step)
    except TimeoutError:
        return False
    return True


def await_firing(lab: Lab, alert: alerts.AlertDrill) -> None:
    """Wait until Alertmanager holds the drill's alert, then until the server lists it firing (before the drill
    repairs anything: a repair inside group_wait would reach the server as "resolved" alone). Sets `fired` and
    `told` (seconds since `failed_at`) or leaves them None."""
    name, labels = alert.alertname, alert.labels
    if not seen_within(f"{name} held", lambda: alerts.firing(lab, name, **labels), alerts.FIRE_WITHIN):
        return
    alert.fired = time.monotonic() - alert.failed_at
    if seen_within(f"{name} told", lambda: alerts.told(lab, name, "firing", **labels), alerts.TOLD_WITHIN):
        alert.told = time.monotonic() - alert.failed_at


def await_resolved(lab: Lab, alert: alerts.AlertDrill) -> alerts.AlertDrill:
    """After the repair (`repaired_at` set, else now): wait until Alertmanager no longer holds the alert."""
    alert.repaired_at = alert.repaired_at or time.monotonic()
    name, labels = alert.alertname, alert.labels
    if seen_within(f"{name} resolved", lambda: not alerts.firing(lab, name, **labels), alerts.RESOLVE_WITHIN):
        alert.resolved = time.monotonic() - alert.repaired_at
    return alert


def _db_of(reply: Reply) -> str:
    try:
        return str(reply.json().get("db", ""))
    except (ValueError, AttributeError):
        return ""


@dataclass(frozen=True)
class Write:
    """One acknowledged write of the loop: note `n`, when it was sent and acknowledged (time.monotonic()), and the db
    address that took it, as the app answered (its "db" field). A write sent before a host froze can be
    acknowledged after: its commit was done and its answer still in the frozen guest."""

    n: int
    sent: float
    acked: float
    db: str


@dataclass
class Loops:
    """The request loop (GET /health through the VIP) and the write loop (POST numbered notes)."""

    lab: Lab
    tag: str = field(default_factory=lambda: f"chaos-{uuid.uuid4().hex[:8]}")
    requests: list[tuple[float, float, bool]] = field(default_factory=list)  # (sent, answered or gave up, ok)
    edge: list[tuple[float, float, bool]] = field(default_factory=list)  # the VIP's own answers, as requests
    # the edge probe asks only while set (probe_vip): its connections and HAProxy's log lines are load on the LBs
    edge_on: threading.Event = field(default_factory=threading.Event)
    failures: list[tuple[float, str]] = field(default_factory=list)  # (sent, what came back) per failed request
    served_by: dict[str, float] = field(default_factory=dict)  # app host (X-Kiln-App) -> when it first answered
    write_log: list[Write] = field(default_factory=list)  # per acknowledged write, in the order acknowledged
    stop: threading.Event = field(default_factory=threading.Event)
    in_flight: dict[int, float] = field(default_factory=dict)  # request number -> when it was sent, until answered
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def _get(self, path: str, **kw: Any) -> Reply:
        lab = self.lab
        return request(
            lab.vip,
            lab.cluster.domain,
            str(lab.secrets / "ca.pem"),
            path=path,
            src=OUTSIDE,
            timeout=REQUEST_TIMEOUT,
            **kw,
        )

    def _request_loop(self) -> None:
        # A request every INTERVAL whether or not the last one answered: one sent to an LB that just lost power
        # hangs in TCP retransmits, and must not hold back the next ones, which the VIP's new holder answers.
        n = 0
        while not self.stop.is_set():
            now = time.monotonic()
            with self._lock:
                if len(self.in_flight) < MAX_IN_FLIGHT:
                    n += 1
                    self.in_flight[n] = now
                    threading.Thread(target=self._probe, args=(n, now), daemon=True).start()
            self.stop.wait(INTERVAL)

    def _probe(self, n: int, at: float) -> None:
        try:
            reply = self._get("/health")
            ok = reply.status == 200
            self.served_by.setdefault(reply.headers.get("x-kiln-app", "?"), time.monotonic())
            if not ok:
                self.failures.append((at, f"HTTP {reply.status} {reply.body[:160].decode(errors='replace').strip()}"))
        except OSError as e:
            ok = False
            self.failures.append((at, f"{e.__class__.__name__}: {e}"))
        finally:
            with self._lock:
                del self.in_flight[n]
        self.requests.append((at, time.monotonic(), ok))

    def _edge_loop(self) -> None:
        while not self.stop.is_set():
            if self.edge_on.is_set():
                threading.Thread(target=self._edge_probe, args=(time.monotonic(),), daemon=True).start()
            self.stop.wait(EDGE_INTERVAL)

    @contextlib.contextmanager
    def probe_vip(self) -> Iterator[None]:
        """The edge probe asks the VIP within this block (the LB drills): vip_silent reads what it heard."""
        self.edge_on.set()
        try:
            yield
        finally:
            self.edge_on.clear()

    def _edge_probe(self, at: float) -> None:
        lab = self.lab
        try:
            reply = request(lab.vip, lab.cluster.domain, "", path="/", tls=False, src=OUTSIDE, timeout=REQUEST_TIMEOUT)
            ok = reply.status == 301  # HAProxy's own redirect to HTTPS
        except OSError:
            ok = False
        self.edge.append((at, time.monotonic(), ok))

    def _write_loop(self) -> None:
        n = 0
        while not self.stop.is_set():
            n += 1
            body = json.dumps({"text": f"{self.tag}-{n}"}).encode()
            sent = time.monotonic()
            try:
                reply = self._get("/api/notes", method="POST", body=body)
                if reply.status == 201:
                    self.write_log.append(Write(n, sent, time.monotonic(), _db_of(reply)))
            except OSError:
                pass
            time.sleep(2.0)

    @property
    def written(self) -> list[int]:
        """The numbers of the notes acknowledged so far."""
        return [w.n for w in list(self.write_log)]

    def start(self) -> None:
        for target in (self._request_loop, self._edge_loop, self._write_loop):
            threading.Thread(target=target, daemon=True).start()

    def settle(self, until: float) -> None:
        """Wait until every request of the loop sent at or before `until` has its answer or its failure (at most
        REQUEST_TIMEOUT and a little more): one still in flight when its window is counted would count nowhere."""
        deadline = time.monotonic() + REQUEST_TIMEOUT + 5
        while time.monotonic() < deadline:
            with self._lock:
                if not any(sent <= until for sent in self.in_flight.values()):
                    return
            time.sleep(0.2)

    def failed_seconds(self, since: float, until: float) -> tuple[float, int, int]:
        """(the longest outage in seconds, failed count, total count) within [since, until]. The outage is the
        longest time without a successful response (from `since`, between answers, to `until`): requests that fail
        and requests that hang both count, scattered single failures do not add up to one long outage."""
        window = [r for r in list(self.requests) if since <= r[0] <= until]
        return _longest_gap(window, since, until), sum(1 for *_, ok in window if not ok), len(window)

    def vip_silent(self, since: float, until: float) -> float:
        """The longest time within [since, until] without an answer from HAProxy on the VIP (EDGE_INTERVAL's probe),
        in seconds."""
        return _longest_gap(list(self.edge), since, until)

    def vip_silence(self, since: float, until: float) -> tuple[float, float]:
        """(vip_silent's seconds, when that silence began in seconds after `since`)."""
        return _longest_gap_at(list(self.edge), since, until)

    def slowest(self, since: float, until: float) -> tuple[float, float]:
        """(seconds, sent that many seconds after `since`) of the slowest answered request within [since, until];
        (0.0, 0.0) when none was answered."""
        answered = [(end - at, at - since) for at, end, ok in list(self.requests) if ok and since <= at <= until]
        return max(answered, default=(0.0, 0.0))

    def failed_requests(self, since: float, until: float) -> list[str]:
        """What each failed request within [since, until] got, as "+<seconds after since> s: <reply or error>"."""
        return [f"+{at - since:.1f} s: {what}" for at, what in sorted(list(self.failures)) if since <= at <= until]


def _longest_gap(records: list[tuple[float, float, bool]], since: float, until: float) -> float:
    """The longest time within [since, until] between successful answers of (sent, answered, ok) records."""
    return _longest_gap_at(records, since, until)[0]


def _longest_gap_at(records: list[tuple[float, float, bool]], since: float, until: float) -> tuple[float, float]:
    """(that longest time, when it began in seconds after `since`)."""
    answered = [since] + sorted(end for _, end, ok in records if ok and since <= end <= until) + [until]
    return max((b - a, a - since) for a, b in zip(answered, answered[1:], strict=False))


@dataclass(frozen=True)
class Result:
    """A drill's outcome. `works`: what must hold (the VIP moved, nothing lost, the host provisioned); `lab chaos`
    fails without it. `goal_met`: the measured goal (seconds or requests of failure), reported, not a failure."""

    drill: str
    measured: str
    goal: str
    goal_met: bool
    works: bool = True


def vip_holder(lab: Lab, among: list[str] | None = None) -> list[str]:
    """The load balancers (of `among`, default all) that hold the VIP; one that does not answer holds nothing.
    Asking only the ones that can answer saves an SSH connect timeout per poll to a powered-off LB."""
    holders = []
    for name in among or [h.name for h in lab.cluster.by_role("lb")]:
        try:
            if f"inet {lab.vip}/" in ssh(lab, name, "ip -4 -o addr show", check=False):
                holders.append(name)
        except CommandError:
            pass
    return holders


def host_state(lab: Lab, name: str) -> dict:
    return next(r for r in client.hosts(lab) if r["name"] == name)


def drill_lb_power_off(lab: Lab, loops: Loops, told: list[alerts.AlertDrill]) -> list[Result]:
    """lb1 off, the VIP to lb2, lb1 back. With a mon host, lb1 stays off until InstanceDown fires for it, and the
    drill waits for it to resolve once lb1 is back (appended to `told`). Evidence for a long silence, kept with the
    lab's logs: which LBs said they held the VIP, and when (each LB's node exporter: VipWatch), and both LBs'
    keepalived journals."""
    lbs = lab.cluster.by_role("lb")
    watch = VipWatch.of(lbs)
    began = time.monotonic()
    watch.start()
    try:
        with loops.probe_vip():
            return _lb_power_off(lab, loops, told)
    finally:
        watch.stop()
        lines = [f"the VIP's holders, by their exporters: {watch.said(began)}"]
        for h in lbs:
            journal = "journalctl -b -u keepalived -o short-iso-precise --no-pager | tail -n 300"
            try:
                lines += [f"--- {h.name}: keepalived this boot", ssh(lab, h.name, journal, check=False)]
            except (CommandError, OSError) as e:
                lines.append(f"--- {h.name}: journal unreadable: {e}")
        (lab.logs / "lb-drill.log").write_text("\n".join(lines) + "\n")
        print(f"  {lines[0]} (keepalived's journals: {lab.logs / 'lb-drill.log'})")


def _lb_power_off(lab: Lab, loops: Loops, told: list[alerts.AlertDrill]) -> list[Result]:
    lb1, lb2 = (h.name for h in lab.cluster.by_role("lb")[:2])
    # a starved LB may not answer one SSH probe in time: the drill starts once a probe sees the VIP on lb1 alone
    wait(f"the VIP on {lb1} alone before the drill", lambda: vip_holder(lab) == [lb1], 600, step=5)
    began = time.monotonic()
    vm.kill(lab, lab.cluster.host(lb1))
    alert = alerts.AlertDrill("InstanceDown", {"host": lb1}, began) if alerts.alertmanager(lab) else None
    try:
        moved = wait(f"VIP on {lb2}", lambda: vip_holder(lab, [lb2]) == [lb2], 600)
        time.sleep(5)
        if alert:  # off until the mon host says so (the rule's `for` is 1 min)
            await_firing(lab, alert)
    finally:
        back = time.monotonic()
        vm.start(lab, lab.cluster.host(lb1), vm.DISK)
    rejoined = wait(f"{lb1} holds the VIP again", lambda: vip_holder(lab) == [lb1], 900, step=3)
    time.sleep(5)
    now = time.monotonic()
    loops.settle(now)  # requests sent while lb1 was off may fail well after it: counted once they have
    span, failed, total = loops.failed_seconds(began, back)
    _, failed_after, _ = loops.failed_seconds(began + moved, back)
    silent = loops.vip_silent(began, back)
    results = [
        Result(
            f"power off {lb1}",
            f"VIP on {lb2} after {moved:.1f} s; the VIP silent {silent:.1f} s at most; longest without an app answer "
            f"{span:.1f} s ({failed}/{total} requests failed, {failed_after} of those sent after the move)",
            "VIP silent < 5 s; none sent after the move fails",
            goal_met=silent < 5 and failed_after == 0,
        )
    ]
    span, failed, total = loops.failed_seconds(back, now)
    silent, silent_from = loops.vip_silence(back, now)
    results.append(
        Result(
            f"power {lb1} back",
            f"took the VIP back after {rejoined:.0f} s; the VIP silent {silent:.1f} s at most (from +{silent_from:.0f}"
            f" s); longest without an app answer {span:.1f} s ({failed}/{total} requests failed)",
            "rejoins; VIP silent < 5 s; no request fails",
            goal_met=silent < 5 and failed == 0,
        )
    )
    if alert:
        alert.repaired_at = back
        told.append(await_resolved(lab, alert))
        results.append(_alert_result(f"alert: {lb1} down", alert, "fires while it is off, resolves when it is back"))
    return results


def _alert_result(name: str, alert: alerts.AlertDrill, goal: str, within: float | None = None) -> Result:
    """A drill's alert as a row: it must fire and resolve (works); `within`: seconds the firing's goal allows."""
    return Result(
        name,
        alert.describe() + " (Alertmanager's API)",
        goal,
        goal_met=alert.works and (within is None or (alert.fired is not None and alert.fired <= within)),
        works=alert.works,
    )


def web_status(lab: Lab, lb: str, web: str) -> str:
    import urllib.request

    url = f"http://{lab.cluster.host(lb).ip}:8404/stats;csv"
    with urllib.request.urlopen(url, timeout=5) as r:
        for line in r.read().decode().splitlines():
            cols = line.split(",")
            if cols[0] == "web_pool" and cols[1] == web:
                return cols[17]
    return "?"


# The goal for "web node DOWN" (issue 16): Alertmanager holds it this many seconds after nginx stops.
WEB_ALERT_GOAL = 60


def drill_nginx_stop(lab: Lab, loops: Loops, told: list[alerts.AlertDrill]) -> list[Result]:
    """nginx stopped on web1: HAProxy marks it DOWN and the loop's requests go to the other webs. With a mon host,
    nginx stays stopped until WebNodeDown fires for web1, and the drill waits for it to resolve after the restart
    (appended to `told`)."""
    web1 = lab.cluster.by_role("web")[0].name
    lbs = [h.name for h in lab.cluster.by_role("lb")]
    began = time.monotonic()
    ssh(lab, web1, "systemctl stop nginx")
    alert = alerts.AlertDrill("WebNodeDown", {"server": web1}, began) if alerts.alertmanager(lab) else None
    try:
        down = wait(
            f"HAProxy marks {web1} down",
            lambda: all(web_status(lab, lb, web1).startswith("DOWN") for lb in lbs),
            60,
            step=0.5,
        )
        if alert:
            await_firing(lab, alert)
        time.sleep(3)
        until = time.monotonic()
    finally:
        ssh(lab, web1, "systemctl start nginx")
        if alert:
            alert.repaired_at = time.monotonic()
    wait(f"{web1} UP again", lambda: all(web_status(lab, lb, web1) == "UP" for lb in lbs), 60, step=0.5)
    loops.settle(until)
    _, failed, total = loops.failed_seconds(began, until)
    results = [
        Result(
            f"stop nginx on {web1}",
            f"marked DOWN after {down:.1f} s; {failed}/{total} requests failed over {until - began:.0f} s",
            "no failures beyond in-flight (<= 2)",
            goal_met=failed <= 2,
        )
    ]
    if alert:
        told.append(await_resolved(lab, alert))
        goal = f"fires within {WEB_ALERT_GOAL} s of the stop; resolves after the start"
        results.append(_alert_result(f"alert: {web1} DOWN in HAProxy", alert, goal, within=WEB_ALERT_GOAL))
    return results


def drill_alerts_told(lab: Lab, told: list[alerts.AlertDrill]) -> list[Result]:
    """The provisioning server, Alertmanager's webhook receiver (the dashboard shows what it holds), was told of each
    drill's alert resolving (the drills saw it told firing): Alertmanager tells a change after group_interval."""

    def resolved_told(a: alerts.AlertDrill) -> bool:
        return seen_within(
            f"{a.alertname} told resolved",
            lambda: alerts.told(lab, a.alertname, "resolved", **a.labels),
            alerts.TOLD_WITHIN,
        )

    missing = [a.alertname for a in told if a.told is None or not resolved_told(a)]
    names = ", ".join(sorted({a.alertname for a in told}))
    return [
        Result(
            "alerts reach the provisioning server",
            f"told of {names}, firing, then resolved" if not missing else f"not told of: {', '.join(missing)}",
            "every drill's alert, firing then resolved",
            goal_met=not missing,
            works=not missing,
        )
    ]


def notes_on(lab: Lab, db: str, tag: str) -> set[int]:
    """The numbers of the write loop's notes (tagged `tag`) that host `db` holds. Compared with what was acknowledged
    by number, not by count: commits whose answer never came (a timed-out request) add rows and would hide a lost
    acknowledged one from a count."""
    database = db_role.settings_of(lab.cluster).database
    out = ssh(lab, db, f"mariadb -N -e \"SELECT text FROM {database}.notes WHERE text LIKE '{tag}-%'\"")
    return {int(line.rsplit("-", 1)[1]) for line in out.split() if line.rsplit("-", 1)[-1].isdigit()}


def missing_on(lab: Lab, db: str, loops: Loops, timeout: float = 30) -> tuple[list[int], int]:
    """(acknowledged notes host `db` lacks, how many were acknowledged), once it lacks none or after `timeout`
    seconds (replication catching up)."""
    acked = loops.written
    lacking: list[int] = []

    def none_lacking() -> bool:
        held = notes_on(lab, db, loops.tag)
        lacking[:] = [n for n in acked if n not in held]
        return not lacking

    try:
        wait(f"every acknowledged note on {db}", none_lacking, timeout, step=1)
    except TimeoutError:
        pass
    return lacking, len(acked)


def lacking_text(lacking: list[int], acked: int, db: str) -> str:
    """ "all 52 acknowledged notes on db2", or which ones it lacks."""
    if not lacking:
        return f"all {acked} acknowledged notes on {db}"
    shown = ", ".join(str(n) for n in lacking[:8]) + (" …" if len(lacking) > 8 else "")
    return f"{len(lacking)} of {acked} acknowledged notes missing on {db} ({shown})"


def drill_db_restart(lab: Lab, loops: Loops) -> list[Result]:
    replica = lab.cluster.db_replicas[0].name
    ssh(lab, replica, REBOOT)
    time.sleep(10)

    def threads_running() -> bool:
        status = ssh(lab, replica, "mariadb -e 'SHOW SLAVE STATUS\\G'")
        return "Slave_IO_Running: Yes" in status and "Slave_SQL_Running: Yes" in status

    back = wait(f"{replica} replicating again", threads_running, 600, step=3) + 10
    time.sleep(3)
    began = time.monotonic()
    lacking, acked = missing_on(lab, replica, loops)
    return [
        Result(
            f"restart {replica}",
            f"replicating {back:.0f} s after reboot; {lacking_text(lacking, acked, replica)}"
            + ("" if lacking else f" (caught up in {time.monotonic() - began:.1f} s)"),
            "nothing lost",
            goal_met=not lacking,
            works=not lacking,
        )
    ]


def drill_kill_mid_join(lab: Lab, loops: Loops, boot: str) -> list[Result]:
    from kiln.server.store import StateStore

    target = lab.cluster.by_role("web")[-1]
    vm.kill(lab, target)
    store = StateStore.open(f"sqlite:///{lab.database}", lab.root)
    try:
        store.rearm(target.name)
    finally:
        store.close()
    vm.make_disk(lab, target, boot)
    forget(lab, str(target.ip))
    began = time.monotonic()
    vm.start(lab, target, boot)

    def mid_join() -> bool:
        last = host_state(lab, target.name).get("last_event") or {}
        return last.get("step") in ("services", "join") and last.get("status") == "start"

    wait(f"{target.name} mid-join", mid_join, 900, step=0.5)
    vm.kill(lab, target)
    killed_at = time.monotonic() - began
    vm.start(lab, target, boot)
    joined = wait(
        f"{target.name} joined after the kill", lambda: host_state(lab, target.name)["state"] == "joined", 900, step=2
    )
    return [
        Result(
            f"kill {target.name} mid-join",
            f"killed {killed_at:.0f} s after power-on; joined {joined:.0f} s after it was started again",
            "completes provisioning",
            goal_met=True,
        )
    ]


def drill_reboot(lab: Lab, loops: Loops) -> list[Result]:
    app = lab.cluster.by_role("app")[0].name
    before = len(host_state(lab, app)["timeline"])
    ssh(lab, app, REBOOT)
    time.sleep(10)
    back = (
        wait(
            f"{app} serving again",
            lambda: ssh(lab, app, "systemctl is-active kiln-app", check=False).strip() == "active",
            600,
            step=3,
        )
        + 10
    )
    status = ssh(
        lab, app, "firstboot status; systemctl show -p ActiveEnterTimestampMonotonic,Result firstboot", check=False
    )
    after = host_state(lab, app)
    nothing = after["state"] == "joined" and len(after["timeline"]) - before <= 2 and "fail" not in status.lower()
    return [
        Result(
            f"reboot {app}",
            f"kiln-app active {back:.0f} s after reboot; server timeline +"
            f"{len(after['timeline']) - before} events; state {after['state']}",
            "first boot does nothing, services come back",
            goal_met=nothing,
            works=nothing,
        )
    ]


Drill = tuple[str, Callable[[], list[Result]]]


def _run(name: str, drill: Callable[[], list[Result]], console: Console) -> list[Result]:
    console.print(f"drill: {name} ...")
    try:
        results = drill()
    except (AssertionError, TimeoutError, CommandError, OSError) as e:
        results = [Result(name, f"error: {str(e).splitlines()[0][:100]}", "", goal_met=False, works=False)]
    for r in results:
        console.print(f"  {r.drill}: {r.measured}")
    return results


def results_table(title: str, results: list[Result]) -> Table:
    """One row per drill: what was measured, the goal, whether it was met, whether the drill held."""
    table = Table(title=title, title_justify="left")
    for col in ("drill", "measured", "goal", "goal met", "works"):
        table.add_column(col)
    for r in results:
        table.add_row(
            r.drill,
            r.measured,
            r.goal,
            "[green]yes[/]" if r.goal_met else "[yellow]missed[/]",
            "[green]yes[/]" if r.works else "[red]FAIL[/]",
        )
    return table


def run_phases(phases: list[list[Drill]], console: Console) -> list[Result]:
    """Each phase's drills side by side, the phases one after another; results in the order drills are listed."""
    results: list[Result] = []
    for phase in phases:
        with ThreadPoolExecutor(len(phase), thread_name_prefix="drill") as pool:
            running = [pool.submit(_run, name, drill, console) for name, drill in phase]
            for future in running:
                results += future.result()
    return results


def chaos(lab: Lab) -> int:
    boot = lifecycle.boot_mode(lab)
    config_file(lab)  # every drill's SSH reads it (it was rewritten and synced before each command, every poll)
    netns.enter()
    console = Console()
    loops = Loops(lab)
    loops.start()
    time.sleep(3)
    cluster = lab.cluster
    webs, lb, app = cluster.by_role("web"), cluster.by_role("lb")[0].name, cluster.by_role("app")[0].name
    told: list[alerts.AlertDrill] = []  # the drills' alerts, which the server must have been told of
    phases: list[list[Drill]] = [
        [(f"stop nginx on {webs[0].name}", lambda: drill_nginx_stop(lab, loops, told))],
        [
            (f"power off {lb}", lambda: drill_lb_power_off(lab, loops, told)),
            (f"restart {cluster.db_replicas[0].name}", lambda: drill_db_restart(lab, loops)),
        ],
        # side by side: neither counts the loop's requests, and each waits on its own VM booting (4-5 min in all)
        [
            (f"kill {webs[-1].name} mid-join", lambda: drill_kill_mid_join(lab, loops, boot)),
            (f"reboot {app}", lambda: drill_reboot(lab, loops)),
        ],
    ]
    if alerts.alertmanager(lab):
        phases.append([("alerts reach the provisioning server", lambda: drill_alerts_told(lab, told))])
    results = run_phases(phases, console)
    loops.stop.set()
    console.print(results_table("kiln lab chaos", results))
    write_atomic(lab.root / "chaos.json", (json.dumps([r.__dict__ for r in results], indent=2) + "\n").encode())
    missed = sum(not r.goal_met for r in results if r.works)
    if missed:
        console.print(f"{missed} measured goal(s) missed (reported; see bench/lab.py); the drills' outcomes held")
    return 0 if all(r.works for r in results) else 1
