"""Failover, switchover and the guard on three real MariaDB servers, each in its own network namespace on one
bridge, joined by the agent's own join, each with its db guard running (`firstboot db-guard`); the failover
monitor (kiln.db.failover) runs here, in an admin-network namespace; the demo app's writer logic writes all along
from two app namespaces. The network split is real: nftables in db1's namespace drops everything on its NIC.

Every moment's read_only of the three servers is sampled over their unix sockets (which no split cuts) every
50 ms: never two writable. Every write MariaDB acknowledged must be on the primary that survives.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import pymysql
import pytest

from firstboot.dbguard import GuardConfig
from kiln.bundle import Bundle, DbPrimaryJoin, DbReplicaJoin
from kiln.db.failover import DETECT_SECONDS, Event, Memory, Monitor, switchover
from kiln.db.replication import DbNode, Replication
from kiln.model import Cluster
from kiln.roles import db
from kiln.secrets import SecretStore
from tests.integration.agent_mariadb import Mariadb, start, template_datadir
from tests.integration.agent_netns import Lab, lab
from tests.integration.hostroot import applied_bundles

# slow: five drills on three servers take about 90 s, too long for the quick tier's three minutes
pytestmark = [pytest.mark.integration, pytest.mark.slow]
CNF = db.MARIADB_CNF
ADMIN = "10.10.0.5"  # in the reference cluster's admin network: the monitor's kiln_monitor account covers it
APP1 = "10.10.0.31"
DB3 = ("db3", "10.10.0.43", 4343)
CLONE_NEWNET = 0x40000000


@contextlib.contextmanager
def inside(ns: str) -> Iterator[None]:
    """This thread (and the threads and processes it starts) in network namespace `ns`, then back."""
    libc = ctypes.CDLL(None, use_errno=True)
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    target = os.open(f"/run/netns/{ns}", os.O_RDONLY)
    try:
        if libc.setns(target, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns {ns}")
        yield
    finally:
        libc.setns(home, CLONE_NEWNET)
        os.close(home)
        os.close(target)


@dataclass
class Node:
    name: str
    ip: str
    ns: str
    server: Mariadb
    bundle: Bundle
    guard: subprocess.Popen[bytes] | None = None


@dataclass
class Cluster3:
    lab: Lab
    base: Path
    nodes: dict[str, Node]
    secrets: SecretStore
    database: str
    writers: list[tuple[str, subprocess.Popen[bytes]]] = field(default_factory=list)

    def replication(self) -> Replication:
        return Replication(
            [DbNode(n.name, n.ip, db.PORT) for n in self.nodes.values()],
            password=self.secrets.value("db_monitor_password"),
            replication_user=db.REPLICATION_USER,
            replication_password=self.secrets.value("db_replication_password"),
        )

    def root(self, name: str) -> pymysql.connections.Connection:
        return pymysql.connect(unix_socket=self.nodes[name].server.socket, user="root", autocommit=True)

    def read_only(self, name: str) -> bool | None:
        try:
            conn = self.root(name)
        except pymysql.MySQLError:
            return None
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT @@read_only")
                return bool(cur.fetchone()[0])
        finally:
            conn.close()

    def writable(self) -> list[str]:
        return [n for n in self.nodes if self.read_only(n) is False]

    def notes(self, name: str) -> set[str]:
        conn = self.root(name)
        try:
            with conn.cursor() as cur:
                cur.execute(f"SELECT text FROM `{self.database}`.notes")
                return {r[0] for r in cur.fetchall()}
        finally:
            conn.close()

    def start_writer(self, tag: str, ns: str, *, query_timeout: float = 5) -> subprocess.Popen[bytes]:
        hosts = ",".join(n.ip for n in self.nodes.values())
        argv = [sys.executable, "-m", "tests.integration.db_writer", "--tag", tag, "--hosts", hosts]
        argv += ["--query-timeout", str(query_timeout)]
        argv += ["--database", self.database, "--password-file", str(self.base / "app_password")]
        process = self.lab.start(f"writer-{tag}", ns, argv, env={"PYTHONPATH": str(Path.cwd())})
        self.writers.append((tag, process))
        return process

    def stop_writers(self) -> Writes:
        """SIGTERM every writer; what MariaDB acknowledged (time, text, server address) and what failed."""
        for _, process in self.writers:
            process.terminate()
        writes = Writes()
        for tag, process in self.writers:
            process.wait(30)
            for line in self.lab.log(f"writer-{tag}").splitlines():
                parts = line.split(" ", 3)
                if parts[0] == "ack":
                    writes.acked.append((float(parts[1]), parts[2], parts[3]))
                elif parts[0] == "err":
                    writes.failed.append((float(parts[1]), parts[2]))
        self.writers.clear()
        return writes

    def split(self, name: str) -> None:
        """Cut host `name` off: its NIC drops everything in and out (its own loopback still works)."""
        rules = "table inet split {\n chain in { type filter hook input priority -10; iifname kiln0 drop; }\n"
        rules += " chain out { type filter hook output priority -10; oifname kiln0 drop; }\n}\n"
        ns = self.nodes[name].ns
        subprocess.run(["ip", "netns", "exec", ns, "nft", "-f", "-"], input=rules, text=True, check=True, timeout=10)

    def heal(self, name: str) -> None:
        subprocess.run(["ip", "netns", "exec", self.nodes[name].ns, "nft", "delete table inet split"], timeout=10)

    def kill(self, name: str) -> None:
        """mariadbd killed outright, as a power cut would stop it."""
        process = self.nodes[name].server.process
        process.kill()
        process.wait(30)

    def restart(self, name: str) -> None:
        node = self.nodes[name]
        d = node.server.directory
        (d / "mysqld.sock").unlink(missing_ok=True)
        argv = ["ip", "netns", "exec", node.ns, "mariadbd", f"--defaults-file={d / 'my.cnf'}"]
        node.server.process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while self.read_only(name) is None:
            assert time.monotonic() < deadline, (d / "error.log").read_text()[-2000:]
            time.sleep(0.2)


@dataclass
class Writes:
    acked: list[tuple[float, str, str]] = field(default_factory=list)  # (time.time(), text, db address)
    failed: list[tuple[float, str]] = field(default_factory=list)

    @property
    def texts(self) -> set[str]:
        return {t for _, t, _ in self.acked}

    def longest_gap(self, tag: str) -> float:
        """The longest time between two acknowledged writes of one writer: its write unavailability."""
        times = sorted(at for at, text, _ in self.acked if text.startswith(tag + "-"))
        return max((b - a for a, b in zip(times, times[1:], strict=False)), default=0.0)


class Sampler(threading.Thread):
    """Every 50 ms, which servers are writable; remembers any moment with more than one."""

    def __init__(self, c: Cluster3) -> None:
        super().__init__(daemon=True)
        self.c, self.stopping = c, threading.Event()
        self.samples = 0
        self.double: list[tuple[float, list[str]]] = []
        self.last_writable: dict[str, float] = {}  # monotonic

    def run(self) -> None:
        while not self.stopping.is_set():
            writable = self.c.writable()
            now = time.monotonic()
            self.samples += 1
            for name in writable:
                self.last_writable[name] = now
            if len(writable) > 1:
                self.double.append((now, writable))
            time.sleep(0.05)

    def stop(self) -> None:
        self.stopping.set()
        self.join(10)


class MonitorThread(threading.Thread):
    def __init__(self, c: Cluster3) -> None:
        super().__init__(daemon=True)
        self.monitor = Monitor(c.replication(), Memory())
        self.stopping = threading.Event()
        self.events: list[tuple[float, Event]] = []
        self.errors: list[str] = []

    def run(self) -> None:
        while not self.stopping.is_set():
            started = time.monotonic()
            try:
                for event in self.monitor.tick():
                    self.events.append((time.monotonic(), event))
            except Exception as e:  # a failed change is retried next tick, as the real monitor does
                self.errors.append(repr(e))
            self.stopping.wait(max(0.0, 1.0 - (time.monotonic() - started)))

    def stop(self) -> None:
        self.stopping.set()
        self.join(30)
        self.monitor.r.close()

    def kinds(self) -> list[tuple[str, str]]:
        return [(e.kind, e.host) for _, e in self.events]

    def wait_for(self, kind: str, host: str | None = None, seconds: float = 60) -> float:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            for at, e in self.events:
                if e.kind == kind and (host is None or e.host == host):
                    return at
            time.sleep(0.1)
        raise AssertionError(f"no {kind} event for {host or 'any host'} in {seconds}s: {self.events} {self.errors}")


@contextlib.contextmanager
def drill(c: Cluster3) -> Iterator[tuple[Sampler, MonitorThread, Writes]]:
    """The sampler and the monitor running, the monitor knowing the primary; on the way out, the writers stopped
    and what they wrote in the Writes yielded."""
    sampler, mon, writes = Sampler(c), MonitorThread(c), Writes()
    sampler.start()
    mon.start()
    try:
        mon.wait_for("primary", c.writable()[0], 15)
        yield sampler, mon, writes
    finally:
        done = c.stop_writers()
        writes.acked, writes.failed = done.acked, done.failed
        mon.stop()
        sampler.stop()


def _db3_cnf(cnf: str) -> str:
    name, ip, server_id = DB3
    cnf = re.sub(r"(?m)^(bind_address|report_host) = .*$", lambda m: f"{m[1]} = {ip}", cnf)
    return re.sub(r"(?m)^server_id = .*$", f"server_id = {server_id}", cnf)


def _join(c: Cluster3, node: Node, bundle: Bundle) -> None:
    path = c.base / f"{node.name}.bundle.json"
    path.write_bytes(bundle.to_json())
    root = c.base / f"{node.name}-root"
    root.mkdir(exist_ok=True)
    argv = ["apply", "--bundle", str(path), "--root", str(root), "--only", "secrets,join"]
    argv += ["--db-socket", node.server.socket]
    result = c.lab.exec(node.ns, sys.executable, "-m", "firstboot", *argv, timeout=180)
    assert result.returncode == 0, result.stdout + result.stderr


def _guard(c: Cluster3, node: Node) -> None:
    data = GuardConfig.load_text(next(f.content for f in node.bundle.files if f.path == db.GUARD_CONFIG))
    peers = tuple(n.ip for n in c.nodes.values() if n.name != node.name)
    config = replace(data, address=node.ip, peers=peers, password_file=str(c.base / "repl_password"))
    path = c.base / f"{node.name}-guard.json"
    path.write_text(config.to_json())
    argv = [sys.executable, "-m", "firstboot", "db-guard", "--config", str(path), "--db-socket", node.server.socket]
    node.guard = c.lab.start(f"guard-{node.name}", node.ns, argv)


@pytest.fixture(scope="module")
def c(cluster: Cluster, secret_store: SecretStore) -> Iterator[Cluster3]:
    base = Path(tempfile.mkdtemp(prefix="kiln-failover-"))
    base.chmod(0o711)
    bundles = applied_bundles(cluster, secret_store)
    template = template_datadir(base)
    database = db.settings_of(cluster).database
    (base / "app_password").write_text(secret_store.value("db_app_password"))
    (base / "repl_password").write_text(secret_store.value("db_replication_password"))
    servers: list[Mariadb] = []
    with lab(base, "10.10.0.1", 24, names="kiln-fo-") as the_lab:
        try:
            nodes = {}
            db3_bundle = replace(
                bundles["db2"],
                files=tuple(
                    replace(f, content=_db3_cnf(f.content)) if f.path == CNF else f for f in bundles["db2"].files
                ),
            )
            for name, ip, bundle in (
                ("db1", "10.10.0.41", bundles["db1"]),
                ("db2", "10.10.0.42", bundles["db2"]),
                (DB3[0], DB3[1], db3_bundle),
            ):
                ns = the_lab.host(name, ip)
                cnf = next(f.content for f in bundle.files if f.path == CNF)
                server = start(name, base, template, cnf, netns=ns)
                servers.append(server)
                nodes[name] = Node(name, ip, ns, server, bundle)
            the_lab.host("app1", APP1)
            the_lab.host("admin", ADMIN)
            c = Cluster3(the_lab, base, nodes, secret_store, database)
            primary_join = bundles["db1"].join
            assert isinstance(primary_join, DbPrimaryJoin)
            every_db = tuple(n.ip for n in nodes.values())
            _join(
                c,
                nodes["db1"],
                replace(
                    bundles["db1"],
                    join=replace(primary_join, replica_hosts=every_db, app_hosts=(APP1, *every_db)),
                ),
            )
            for name in ("db2", "db3"):
                spec = bundles["db2"].join
                assert isinstance(spec, DbReplicaJoin)
                _join(c, nodes[name], replace(bundles["db2"], join=replace(spec, wait_seconds=30)))
            for node in nodes.values():
                _guard(c, node)
            with inside(the_lab.ns("admin")):
                yield c
        finally:
            for server in servers:
                server.stop()
    shutil.rmtree(base, ignore_errors=True)


def _follows(c: Cluster3, primary: str, seconds: float = 30) -> None:
    """Every other server replicates from `primary` with both threads running."""
    r = c.replication()
    try:
        deadline = time.monotonic() + seconds
        while True:
            seen = [r.see(n) for n in c.nodes if n != primary]
            ok = [s.master_host == c.nodes[primary].ip and s.io_running == s.sql_running == "Yes" for s in seen]
            if all(ok):
                return
            assert time.monotonic() < deadline, [s.summary() for s in seen]
            time.sleep(0.5)
    finally:
        r.close()


def _caught_up(c: Cluster3, primary: str, texts: set[str], seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    for name in c.nodes:
        while not texts <= c.notes(name):
            assert time.monotonic() < deadline, f"{name} lacks {sorted(texts - c.notes(name))[:5]}"
            time.sleep(0.2)


def test_status_names_the_primary_and_what_each_replica_follows(
    c: Cluster3, cluster: Cluster, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """./inv db status over the reference cluster's db1 and db2: the table, and exit 0 for a healthy pair."""
    from kiln.db import topology
    from kiln.project import Project

    assert topology.run(Project(), cluster, c.secrets, "status") == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[1].split()[:2] == ["db1", "primary"] and "on" in lines[1].split()
    assert lines[2].split()[:4] == ["db2", "replica", lines[1].split()[2], "db1"]
    assert topology.run(Project(), cluster, c.secrets, "status", as_json=True) == 0
    assert '"role": "replica"' in capsys.readouterr().out
    # ./inv reprovision's guard rail: never the primary; a replica the primary covers, yes
    assert "it is the primary" in (topology.reprovision_refusal(cluster, c.secrets, "db1") or "")
    assert topology.reprovision_refusal(cluster, c.secrets, "db2") is None


def test_switchover_there_and_back_under_writes_loses_nothing(c: Cluster3) -> None:
    """./inv db switchover: db1 -> db2 -> db1 while the app writes; every acknowledged write is on every server,
    the writes pause for well under 5 s each time, and the replicas follow the new primary each time."""
    assert c.writable() == ["db1"]
    c.start_writer("sw", c.lab.ns("app1"))
    time.sleep(2)
    r = c.replication()
    try:
        there, _ = switchover(r, "db2")
        _follows(c, "db2")
        time.sleep(2)
        back, events = switchover(r, "db1")
        _follows(c, "db1")
        time.sleep(2)
    finally:
        writes = c.stop_writers()
        r.close()
    print(
        f"switchover pauses: db1->db2 {there.pause:.3f}s, db2->db1 {back.pause:.3f}s; "
        f"{len(writes.acked)} acknowledged, {len(writes.failed)} failed; longest gap {writes.longest_gap('sw'):.2f}s"
    )
    assert c.writable() == ["db1"]
    assert len(writes.acked) > 20
    _caught_up(c, "db1", writes.texts)
    assert there.pause < 5 and back.pause < 5
    assert [e.kind for e in events] == ["switchover", "rejoin", "rejoin"]


def test_without_a_monitor_a_primary_left_alone_fences_itself_and_resumes_once_its_replicas_are_back(
    c: Cluster3,
) -> None:
    """No monitor runs; both replicas stop hearing the primary (their IO threads stopped): its guard fences it
    within a few seconds of being alone, and makes it writable again once both replicate from it again."""
    old = c.writable()[0]
    replicas = [n for n in c.nodes if n != old]
    stopped = time.monotonic()
    for name in replicas:
        c.root(name).cursor().execute("STOP SLAVE IO_THREAD")
    try:
        deadline = time.monotonic() + 30
        while c.read_only(old) is False:
            assert time.monotonic() < deadline, "the guard did not fence the primary left alone"
            time.sleep(0.2)
        fenced = time.monotonic() - stopped
    finally:
        for name in replicas:
            c.root(name).cursor().execute("START SLAVE IO_THREAD")
    back = time.monotonic()
    deadline = back + 30
    while c.writable() != [old]:
        assert time.monotonic() < deadline, f"not writable again: {c.writable()}"
        time.sleep(0.2)
    print(
        f"alone: fenced {fenced:.1f}s after its replicas stopped hearing it, writable {time.monotonic() - back:.1f}s "
        "after they replicated again"
    )
    assert 4 <= fenced < 12
    assert "fenced after" in c.lab.log(f"guard-{old}") and "writable again" in c.lab.log(f"guard-{old}")


def test_a_killed_primary_fails_over_and_comes_back_as_a_replica(c: Cluster3) -> None:
    """mariadbd on the primary killed (a power cut): after DETECT_SECONDS the replica that received the most is
    promoted, the app's writes resume there, nothing acknowledged is lost; the old primary restarts read-only and
    the monitor makes it follow the new one."""
    old = c.writable()[0]
    with drill(c) as (sampler, mon, writes):
        c.start_writer("kill", c.lab.ns("app1"))
        time.sleep(3)
        killed = time.monotonic()
        c.kill(old)
        promoted = mon.wait_for("failover", seconds=60)
        new = next(e.host for _, e in mon.events if e.kind == "failover")
        time.sleep(3)
        c.restart(old)
        mon.wait_for("rejoin", old, 60)
        time.sleep(1)
    print(
        f"killed primary: promoted {new} {promoted - killed:.1f}s after the kill; longest write gap "
        f"{writes.longest_gap('kill'):.1f}s; {len(writes.acked)} acknowledged, {len(writes.failed)} failed"
    )
    assert not sampler.double, sampler.double[:3]
    assert DETECT_SECONDS - 1.5 <= promoted - killed < DETECT_SECONDS + 15  # counted from its last answer
    assert new != old and c.writable() == [new]
    _caught_up(c, new, writes.texts)
    _follows(c, new)
    assert any(db == c.nodes[new].ip for _, _, db in writes.acked), "writes resumed on the new primary"
    assert not mon.errors, mon.errors


def test_a_frozen_primary_thawed_after_the_failover_never_takes_a_write_again(c: Cluster3) -> None:
    """The primary's mariadbd and its guard stopped (SIGSTOP: a hung host, as QEMU's `stop` freezes a VM): a replica
    is promoted; thawed after that, the old primary is fenced by the monitor within a tick, acknowledges no write
    after the freeze, and ends read-only: following the new primary, or (when a commit hung in it at the freeze and
    completed after the thaw without anyone to acknowledge it) fenced as errant."""
    old = c.writable()[0]
    node = c.nodes[old]
    assert node.guard is not None
    with drill(c) as (sampler, mon, writes):
        c.start_writer("freeze", c.lab.ns("app1"))
        time.sleep(3)
        frozen, frozen_wall = time.monotonic(), time.time()
        for pid in (node.server.process.pid, node.guard.pid):
            os.kill(pid, signal.SIGSTOP)
        try:
            promoted = mon.wait_for("failover", seconds=60)
        finally:
            for pid in (node.server.process.pid, node.guard.pid):
                os.kill(pid, signal.SIGCONT)
        thawed = time.monotonic()
        new = next(e.host for at, e in mon.events if e.kind == "failover" and at >= frozen)
        fenced = mon.wait_for("fence", old, 30)
        deadline = time.monotonic() + 30
        while not any(e.host == old and e.kind in ("rejoin", "errant") for at, e in mon.events if at > thawed):
            assert time.monotonic() < deadline, mon.events
            time.sleep(0.2)
        time.sleep(1)
    after = [e.kind for at, e in mon.events if e.host == old and at > thawed]
    print(
        f"frozen primary: {new} promoted {promoted - frozen:.1f}s after the freeze; {old} fenced "
        f"{fenced - thawed:.1f}s after the thaw, then {after}; longest write gap {writes.longest_gap('freeze'):.1f}s; "
        f"{len(writes.acked)} acknowledged, {len(writes.failed)} failed"
    )
    assert not [t for at, t, db in writes.acked if db == node.ip and at > frozen_wall], "a write acknowledged by it"
    assert c.writable() == [new] and c.read_only(old)
    assert writes.texts <= c.notes(new)
    assert not [at for at, _ in sampler.double if at < thawed], "two writable before the thaw"


def test_a_primary_cut_off_fences_itself_before_a_replica_is_promoted(c: Cluster3) -> None:
    """The primary's NIC drops everything, while an app beside it (in its namespace) and one on the other side both
    write: its guard fences it (read-only, the commits waiting for an acknowledgement cut) before the monitor
    promotes a replica, so no sample ever shows two writable servers; nothing acknowledged is lost. When the
    network heals, the old primary holds the commits cut while it waited (never acknowledged): errant, so it is left
    read-only and following nobody, and the operator is told what to do."""
    old = c.writable()[0]
    with drill(c) as (sampler, mon, writes):
        c.start_writer("far", c.lab.ns("app1"))
        # beside the old primary, waiting for its commits longer than the semi-sync timeout: one acknowledged without
        # a replica would be seen as acknowledged here, and missing on the new primary
        c.start_writer("near", c.nodes[old].ns, query_timeout=30)
        time.sleep(3)
        cut = time.monotonic()
        c.split(old)
        promoted = mon.wait_for("failover", seconds=60)
        new = next(e.host for at, e in mon.events if e.kind == "failover" and at >= cut)
        fenced = sampler.last_writable.get(old, 0.0)
        time.sleep(3)
        c.heal(old)
        errant = mon.wait_for("errant", old, 30)
    print(
        f"split primary: {old} writable until {fenced - cut:.1f}s after the cut, {new} promoted at "
        f"{promoted - cut:.1f}s; errant reported {errant - cut:.1f}s after the cut; {len(writes.acked)} "
        f"acknowledged, {len(writes.failed)} failed; {sampler.samples} samples"
    )
    assert not sampler.double, sampler.double[:3]
    assert fenced < promoted
    assert c.writable() == [new] and c.read_only(old)
    assert writes.texts <= c.notes(new)
    message = next(e.message for _, e in mon.events if e.kind == "errant" and e.host == old)
    assert "reprovision" in message and new in message
    assert not mon.errors, mon.errors
