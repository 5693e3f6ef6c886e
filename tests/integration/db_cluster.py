"""Three real MariaDB servers, each in its own network namespace on one bridge, joined by the agent's own join, each
with its db guard running (`firstboot db-guard`), for the failover tests and bench/db.py: the failover monitor
(kiln.db.failover) runs in the test's thread, in an admin-network namespace; the demo app's writer logic writes from
app namespaces (tests/integration/db_writer.py); a split is nftables in a host's namespace dropping everything on
its NIC. Every namespace, server and process is removed on the way out.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import NamedTuple

import pymysql

from firstboot.dbguard import GuardConfig
from kiln.bundle import Bundle, DbPrimaryJoin, DbReplicaJoin
from kiln.db.failover import Event, Memory, Monitor, Switchover, switchover
from kiln.db.replication import DbNode, Replication
from kiln.model import Cluster
from kiln.roles import db
from kiln.secrets import SecretStore
from tests.integration.agent_mariadb import Mariadb, start, template_datadir
from tests.integration.agent_netns import Lab, lab
from tests.integration.hostroot import applied_bundles

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
                parts = line.split(" ", 4)
                if parts[0] == "ack":
                    writes.acked.append(Ack(float(parts[1]), float(parts[2]), parts[3], parts[4]))
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


class Ack(NamedTuple):
    """One acknowledged write (times are time.time()): a write sent before a server froze can be acknowledged by it
    after the thaw (committed, its answer still in the stopped process), so what a server took after an event is
    what was sent after it."""

    sent: float
    at: float
    text: str
    db: str  # the server's address


@dataclass
class Writes:
    acked: list[Ack] = field(default_factory=list)
    failed: list[tuple[float, str]] = field(default_factory=list)  # (time.time(), text)

    @property
    def texts(self) -> set[str]:
        return {a.text for a in self.acked}

    def longest_gap(self, tag: str) -> float:
        """The longest time between two acknowledged writes of one writer: its write unavailability."""
        times = sorted(a.at for a in self.acked if a.text.startswith(tag + "-"))
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


@dataclass
class Drilled:
    """One drill on the primary, as the failover tests assert it and bench/db.py measures it (monotonic times)."""

    old: str
    new: str
    began: float  # the kill or the cut
    promoted: float  # the monitor's failover event
    back: float  # the old primary restarted, or its network healed
    after: float  # the old primary's rejoin (killed) or errant (split) event
    fenced: float  # the last sample with the old primary writable
    sampler: Sampler
    mon: MonitorThread
    writes: Writes


def kill_drill(c: Cluster3) -> Drilled:
    """The primary's mariadbd killed while the app writes ("kill-N"); restarted after the failover, until the
    monitor made it follow the new primary."""
    old = c.writable()[0]
    with drill(c) as (sampler, mon, writes):
        c.start_writer("kill", c.lab.ns("app1"))
        time.sleep(3)
        began = time.monotonic()
        c.kill(old)
        promoted = mon.wait_for("failover", seconds=60)
        new = next(e.host for at, e in mon.events if e.kind == "failover" and at >= began)
        time.sleep(3)
        back = time.monotonic()
        c.restart(old)
        after = mon.wait_for("rejoin", old, 60)
        time.sleep(1)
    return Drilled(old, new, began, promoted, back, after, sampler.last_writable.get(old, began), sampler, mon, writes)


def split_drill(c: Cluster3) -> Drilled:
    """The primary's network cut while an app on the far side ("far-N") and one beside it ("near-N", waiting 30 s
    per commit: one acknowledged without a replica once the semi-sync timeout ran out would show) write; healed
    after the failover, until the monitor found the old primary errant."""
    old = c.writable()[0]
    with drill(c) as (sampler, mon, writes):
        c.start_writer("far", c.lab.ns("app1"))
        c.start_writer("near", c.nodes[old].ns, query_timeout=30)
        time.sleep(3)
        began = time.monotonic()
        c.split(old)
        promoted = mon.wait_for("failover", seconds=60)
        new = next(e.host for at, e in mon.events if e.kind == "failover" and at >= began)
        time.sleep(3)
        back = time.monotonic()
        c.heal(old)
        after = mon.wait_for("errant", old, 30)
    return Drilled(old, new, began, promoted, back, after, sampler.last_writable.get(old, 0.0), sampler, mon, writes)


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


@contextlib.contextmanager
def three_servers(cluster: Cluster, secret_store: SecretStore) -> Iterator[Cluster3]:
    """db1 (the primary), db2 and db3 (replicas), joined and guarded; this thread inside the admin namespace."""
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


def follows(c: Cluster3, primary: str, seconds: float = 30) -> None:
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


def caught_up(c: Cluster3, primary: str, texts: set[str], seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    for name in c.nodes:
        while not texts <= c.notes(name):
            assert time.monotonic() < deadline, f"{name} lacks {sorted(texts - c.notes(name))[:5]}"
            time.sleep(0.2)


def there_and_back(c: Cluster3, there: str, back: str) -> tuple[Switchover, tuple[Switchover, list[Event]], Writes]:
    """Switchover to `there`, then to `back`, while the app writes ("sw-N"); both results (the second with its
    events) and the writes."""
    c.start_writer("sw", c.lab.ns("app1"))
    time.sleep(2)
    r = c.replication()
    try:
        first, _ = switchover(r, there)
        follows(c, there)
        time.sleep(2)
        second = switchover(r, back)
        follows(c, back)
        time.sleep(2)
    finally:
        writes = c.stop_writers()
        r.close()
    return first, second, writes
