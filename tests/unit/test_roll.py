"""./inv roll's planner, state file and batch loop: the order and batches, the refusal to take out the last healthy
host of a tier, stopping at the first host that fails (the rest untouched) and resuming there on the next run."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from kiln.model import Cluster, DbRole
from kiln.roll import hostops, plan, state, steps
from kiln.roll.runtime import Haproxies
from kiln.roll.steps import Phase
from kiln.roll.transport import Local


def test_db_replicas_roll_first_and_the_primary_last(cluster: Cluster) -> None:
    hosts = list(cluster.hosts)
    # the primary listed first in roles.yaml still goes last
    hosts.sort(key=lambda h: h.db_role is not DbRole.primary)
    reordered = dataclasses.replace(cluster, hosts=tuple(hosts))
    names = [h.name for h in plan.order(reordered, "db")]
    primary = next(h.name for h in cluster.hosts if h.is_primary)
    assert names[-1] == primary and len(names) == len(cluster.by_role("db"))


def test_batches_follow_batch_but_lb_and_db_go_one_at_a_time() -> None:
    assert plan.batches("web", ["w1", "w2", "w3"], 2) == (("w1", "w2"), ("w3",))
    assert plan.batches("lb", ["lb1", "lb2"], 2) == (("lb1",), ("lb2",))
    with pytest.raises(ValueError, match="--batch must be 1 or more"):
        plan.batches("web", ["w1"], 0)


def test_hosts_not_of_the_role_are_named(cluster: Cluster) -> None:
    with pytest.raises(plan.PlanError, match=r"db1: not a web host \(the web hosts: web1, web2\)"):
        plan.plan(cluster, "web", ["web1", "db1"])
    with pytest.raises(plan.PlanError, match="no host has the role 'cache'"):
        plan.plan(cluster, "cache")


def test_the_last_healthy_host_of_a_tier_is_refused() -> None:
    assert plan.refusal("web", ["web1", "web2"], ["web1"], {"web1", "web2"}) is None
    why = plan.refusal("web", ["web1", "web2"], ["web1"], {"web1"})
    assert why is not None and why.startswith("web1: rolling it would leave no healthy web host (web2 not healthy)")
    assert "--allow-outage" in why
    assert plan.refusal("web", ["web1", "web2"], ["web1", "web2"], {"web1", "web2"}) is not None  # one batch of all


class Recorder:
    """A steps.View that keeps what it was told, and the world of phases: every host's phases append to `acts`;
    `fail` names a host and the phase that raises there."""

    def __init__(self, fail: tuple[str, str] | None = None) -> None:
        self.fail = fail
        self.acts: list[tuple[str, str]] = []
        self.etas: dict[str, float | None] = {}
        self.failures: list[str] = []

    def phases(self, host: str) -> list[Phase]:
        def act(name: str) -> Callable[[], None]:
            def run() -> None:
                self.acts.append((host, name))
                if self.fail == (host, name):
                    raise RuntimeError("the power cycle was not confirmed")

            return run

        return [Phase(n, act(n)) for n in ("drain", "rearm", "power", "install", "ready")]

    def phase(self, host: str, name: str, eta: float | None) -> None:
        self.etas.setdefault(host, eta)

    def done(self, host: str, seconds: float) -> None:
        pass

    def failed(self, host: str, error: str) -> None:
        self.failures.append(error)


def job(path: Path, rec: Recorder, hosts: list[str], healthy: set[str] | None = None, batch: int = 1) -> steps.Job:
    run, _ = state.begin(path, "web", state.IMAGE, [list(b) for b in plan.batches("web", hosts, batch)])
    return steps.Job(path, run, hosts, rec.phases, lambda: set(hosts) if healthy is None else healthy)


def test_a_roll_stops_at_the_first_failed_host_and_resumes_there(tmp_path: Path) -> None:
    path = tmp_path / "roll.json"
    hosts = ["web1", "web2", "web3"]
    first = Recorder(fail=("web2", "power"))
    outcome = steps.roll(job(path, first, hosts), first)
    assert outcome.rolled == ["web1"] and outcome.failed == "web2"
    assert ("web3", "drain") not in first.acts, "a host after the failed one was touched"
    assert ("web2", "ready") not in first.acts, "the failed host went back into rotation"
    saved = json.loads(path.read_text())
    assert saved["hosts"]["web2"] == {
        "status": "failed",
        "phase": "power",
        "error": "web2: the power cycle was not confirmed",
        "seconds": 0.0,
    }
    assert saved["hosts"]["web3"]["status"] == "pending"
    assert first.failures == ["web2: the power cycle was not confirmed"]

    again = Recorder()
    run, resumed = state.begin(path, "web", state.IMAGE, [["web3"]])  # a resume keeps the planned batches
    assert resumed
    outcome = steps.roll(steps.Job(path, run, hosts, again.phases, lambda: set(hosts)), again)
    assert outcome.ok and outcome.rolled == ["web2", "web3"]
    assert [h for h, p in again.acts if p == "drain"] == ["web2", "web3"], "web1 rolled twice, or order lost"
    assert again.etas["web3"] is not None, "no ETA from the last run's times"
    assert state.load(path).finished()  # type: ignore[union-attr]


def test_the_refusal_touches_nothing_and_allow_outage_rolls_anyway(tmp_path: Path) -> None:
    path = tmp_path / "roll.json"
    rec = Recorder()
    j = job(path, rec, ["web1", "web2"], healthy={"web1"})
    outcome = steps.roll(j, rec)
    assert outcome.refused is not None and outcome.refused.startswith("web1: rolling it would leave no healthy")
    assert rec.acts == []

    def unreachable() -> set[str]:
        raise RuntimeError("show: cannot reach lb2 over SSH: Connection timed out")

    j.healthy = unreachable
    outcome = steps.roll(j, rec)
    assert outcome.refused == (
        "cannot tell whether the web tier stays healthy without web1: show: cannot reach lb2 over SSH: "
        "Connection timed out"
    )
    assert rec.acts == []
    j.allow_outage = True
    assert steps.roll(j, rec).ok and {h for h, _ in rec.acts} == {"web1", "web2"}


def test_a_batch_rolls_side_by_side_and_a_later_batch_waits(tmp_path: Path) -> None:
    rec = Recorder(fail=("web1", "install"))
    outcome = steps.roll(job(tmp_path / "roll.json", rec, ["web1", "web2", "web3"], batch=2), rec)
    assert outcome.failed == "web1" and outcome.rolled == ["web2"]  # its batch partner finished
    assert not [a for a in rec.acts if a[0] == "web3"]


def test_an_unfinished_roll_of_another_tier_is_named_and_a_host_stopped_midway_starts_over(tmp_path: Path) -> None:
    path = tmp_path / "roll.json"
    run, _ = state.begin(path, "web", state.IMAGE, [["web1"], ["web2"]])
    run.hosts["web1"].status, run.hosts["web1"].phase = state.RUNNING, "install"  # Ctrl-C during web1's install
    state.save(path, run)
    with pytest.raises(state.StateError, match=r"a roll of web is unfinished \(web1, web2 left\)"):
        state.begin(path, "app", state.IMAGE, [["app1"]])
    with pytest.raises(state.StateError, match="finish it with ./inv roll --role web,"):
        state.begin(path, "web", state.REBOOT, [["web1"]])
    resumed, again = state.begin(path, "web", state.IMAGE, [["web2"]])
    assert again and resumed.hosts["web1"].status == state.PENDING
    state.save(path, resumed)  # nothing begun (a refused roll): another tier's roll may start
    other, again = state.begin(path, "app", state.IMAGE, [["app1"]])
    assert not again and list(other.hosts) == ["app1"]


def test_a_finished_roll_makes_way_for_a_new_one_keeping_its_times(tmp_path: Path) -> None:
    path = tmp_path / "roll.json"
    run, _ = state.begin(path, "web", state.IMAGE, [["web1"]])
    run.hosts["web1"].status = state.DONE
    run.timings["web1"] = 300.0
    state.save(path, run)
    fresh, resumed = state.begin(path, "web", state.IMAGE, [["web1"], ["web2"]])
    assert not resumed and fresh.eta("web1") == 300.0 and fresh.eta("web2") == 300.0
    path.write_text("{}")
    with pytest.raises(state.StateError, match="not a roll state"):
        state.load(path)


def _world(cluster: Cluster, switched: list[str]) -> hostops.World:
    """Phases are only built here, never run, except the db primary's switchover (recorded)."""

    def never(*_: object) -> Any:
        raise AssertionError("a phase ran that the test did not run")

    return hostops.World(
        cluster=cluster,
        transport=Local({}),
        haproxies=Haproxies(Local({}), cluster.by_role("lb")),
        rearm=never,
        power_pxe=never,
        host_state=never,
        switchover=switched.append,
        forget_host_key=never,
    )


def test_each_role_gets_its_phases(cluster: Cluster) -> None:
    w = _world(cluster, [])

    def names(host: str, mode: str) -> list[str]:
        return [p.name for p in hostops.phases(w, cluster.host(host), mode)]

    assert names("web1", state.IMAGE) == ["drain", "rearm", "power", "install", "health", "ready"]
    assert names("lb1", state.IMAGE) == ["vip away", "rearm", "power", "install", "health"]
    assert names("app1", state.REBOOT) == ["reboot", "health"]
    assert names("web2", state.REBOOT) == ["drain", "reboot", "health", "ready"]


def test_the_db_primary_is_switched_over_and_the_roll_says_what_to_change(cluster: Cluster) -> None:
    switched: list[str] = []
    w = _world(cluster, switched)
    with pytest.raises(hostops.HostError, match=r"db1: the db primary is not rebooted by a roll: ./inv db switchover"):
        hostops.phases(w, cluster.host("db1"), state.REBOOT)
    [handover] = hostops.phases(w, cluster.host("db1"), state.IMAGE)
    with pytest.raises(hostops.HostError, match="db1: switched over, db2 is the primary now; set db_role"):
        handover.act()
    assert switched == ["db2"]
