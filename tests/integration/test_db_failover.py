"""Failover, switchover and the guard on three real MariaDB servers (tests/integration/db_cluster.py): each server in
its own network namespace, joined by the agent's own join, with its db guard; the failover monitor runs here, in an
admin-network namespace; the demo app's writer logic writes all along. The network split is real: nftables in the
primary's namespace drops everything on its NIC.

Every moment's read_only of the three servers is sampled over their unix sockets (which no split cuts): never two
writable. Every write MariaDB acknowledged must be on the primary that survives.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from firstboot.dbguard import FENCE_AFTER, TICK
from kiln.db.failover import DETECT_SECONDS
from kiln.model import Cluster
from kiln.secrets import SecretStore
from tests.integration.db_cluster import (
    Cluster3,
    caught_up,
    drill,
    follows,
    kill_drill,
    split_drill,
    there_and_back,
    three_servers,
)

# slow: six drills on three servers take about 95 s, too long for the quick tier's three minutes
pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def c(cluster: Cluster, secret_store: SecretStore) -> Iterator[Cluster3]:
    with three_servers(cluster, secret_store) as c:
        yield c


def test_status_names_the_primary_and_what_each_replicafollows(
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
    there, (back, events), writes = there_and_back(c, "db2", "db1")
    print(
        f"switchover pauses: db1->db2 {there.pause:.3f}s, db2->db1 {back.pause:.3f}s; "
        f"{len(writes.acked)} acknowledged, {len(writes.failed)} failed; longest gap {writes.longest_gap('sw'):.2f}s"
    )
    assert c.writable() == ["db1"]
    assert len(writes.acked) > 20
    caught_up(c, "db1", writes.texts)
    assert there.pause < 5 and back.pause < 5
    assert [e.kind for e in events] == ["switchover", "rejoin", "rejoin"]


def test_without_a_monitor_a_primary_left_alone_fences_itself_and_resumes_once_its_replicas_are_back(
    c: Cluster3,
) -> None:
    """No monitor runs; both replicas stop hearing the primary (their IO threads stopped): its guard fences it
    within a few seconds of being alone, and makes it writable again once both replicate from it again."""
    old = c.writable()[0]
    replicas = [n for n in c.nodes if n != old]
    # settled first: the guard counts from the last tick that saw a replica hearing it or the monitor speak, and a
    # drill before this one may have left neither for a while (CI once saw it fence 1.6 s after the stop)
    follows(c, old)
    time.sleep(2 * TICK)
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
    # not before its replicas were out of sight for fence_after (less the tick it last saw them in), nor much later
    assert FENCE_AFTER - TICK - 0.5 <= fenced < 12
    assert "fenced after" in c.lab.log(f"guard-{old}") and "writable again" in c.lab.log(f"guard-{old}")


def test_a_killed_primary_fails_over_and_comes_back_as_a_replica(c: Cluster3) -> None:
    """mariadbd on the primary killed (a power cut): after DETECT_SECONDS the replica that received the most is
    promoted, the app's writes resume there, nothing acknowledged is lost; the old primary restarts read-only and
    the monitor makes it follow the new one."""
    d = kill_drill(c)
    print(
        f"killed primary: promoted {d.new} {d.promoted - d.began:.1f}s after the kill; longest write gap "
        f"{d.writes.longest_gap('kill'):.1f}s; {len(d.writes.acked)} acknowledged, {len(d.writes.failed)} failed"
    )
    assert not d.sampler.double, d.sampler.double[:3]
    assert DETECT_SECONDS - 1.5 <= d.promoted - d.began < DETECT_SECONDS + 15  # counted from its last answer
    assert d.new != d.old and c.writable() == [d.new]
    caught_up(c, d.new, d.writes.texts)
    follows(c, d.new)
    assert any(a.db == c.nodes[d.new].ip for a in d.writes.acked), "writes resumed on the new primary"
    assert not d.mon.errors, d.mon.errors


def test_a_frozen_primary_thawed_after_the_failover_never_takes_a_write_again(c: Cluster3) -> None:
    """The primary's mariadbd and its guard stopped (SIGSTOP: a hung host, as QEMU's `stop` freezes a VM): a replica
    is promoted; thawed after that, the old primary is fenced within a second or two (by its own guard, which saw
    no monitor for the freeze's length, or by the monitor, which saw two writable hosts: whichever looks first),
    takes no write sent after the freeze, and ends read-only: following the new primary, or (when a commit hung
    in it at the freeze and completed after the thaw without anyone to acknowledge it) fenced as errant."""
    old = c.writable()[0]
    node = c.nodes[old]
    assert node.guard is not None
    with drill(c) as (sampler, mon, writes):
        c.start_writer("freeze", c.lab.ns("app1"))
        time.sleep(3)
        frozen = time.monotonic()
        for pid in (node.server.process.pid, node.guard.pid):
            os.kill(pid, signal.SIGSTOP)
        frozen_wall = time.time()  # stopped: what is sent from now on can reach it only after the thaw
        try:
            promoted = mon.wait_for("failover", seconds=60)
        finally:
            for pid in (node.server.process.pid, node.guard.pid):
                os.kill(pid, signal.SIGCONT)
        thawed = time.monotonic()
        new = next(e.host for at, e in mon.events if e.kind == "failover" and at >= frozen)
        deadline = time.monotonic() + 30
        while c.read_only(old) is not True:
            assert time.monotonic() < deadline, "not read-only 30 s after the thaw"
            time.sleep(0.05)
        fenced = time.monotonic()
        deadline = time.monotonic() + 30
        while not any(e.host == old and e.kind in ("rejoin", "errant") for at, e in mon.events if at > thawed):
            assert time.monotonic() < deadline, mon.events
            time.sleep(0.2)
        time.sleep(1)
    after = [e.kind for at, e in mon.events if e.host == old and at > thawed]
    print(
        f"frozen primary: {new} promoted {promoted - frozen:.1f}s after the freeze; {old} read-only "
        f"{fenced - thawed:.1f}s after the thaw, then {after}; longest write gap {writes.longest_gap('freeze'):.1f}s; "
        f"{len(writes.acked)} acknowledged, {len(writes.failed)} failed"
    )
    assert not [a.text for a in writes.acked if a.db == node.ip and a.sent > frozen_wall], "a write taken by it"
    assert c.writable() == [new] and c.read_only(old)
    assert writes.texts <= c.notes(new)
    assert not [at for at, _ in sampler.double if at < thawed], "two writable before the thaw"
    assert fenced - thawed < 5


def test_a_primary_cut_off_fences_itself_before_a_replica_is_promoted(c: Cluster3) -> None:
    """The primary's NIC drops everything, while an app beside it (in its namespace) and one on the other side both
    write: its guard fences it (read-only, the commits waiting for an acknowledgement cut) before the monitor
    promotes a replica, so no sample ever shows two writable servers; nothing acknowledged is lost (the app beside
    it waits 30 s per commit: one acknowledged without a replica would show). When the network heals, the old
    primary holds the commits cut while they waited (never acknowledged): errant, so it is left read-only and
    following nobody, and the operator is told what to do."""
    d = split_drill(c)
    print(
        f"split primary: {d.old} writable until {d.fenced - d.began:.1f}s after the cut, {d.new} promoted at "
        f"{d.promoted - d.began:.1f}s; errant reported {d.after - d.began:.1f}s after the cut; "
        f"{len(d.writes.acked)} acknowledged, {len(d.writes.failed)} failed; {d.sampler.samples} samples"
    )
    assert not d.sampler.double, d.sampler.double[:3]
    assert d.fenced < d.promoted
    assert c.writable() == [d.new] and c.read_only(d.old)
    assert d.writes.texts <= c.notes(d.new)
    message = next(e.message for _, e in d.mon.events if e.kind == "errant" and e.host == d.old)
    assert "reprovision" in message and d.new in message
    assert not d.mon.errors, d.mon.errors
