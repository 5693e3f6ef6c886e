"""`firstboot converge`: a provisioned host follows newer generations of its bundle, and only those.

A fake machine is provisioned by a real `firstboot run` against the HTTPS stand-in for the server
(tests/unit/agent_support.py), which then publishes newer generations; `firstboot converge --once --root`
polls it (GET /v1/bundle?after=G, signed) and applies what is newer. The config checkers are the real daemons'
(haproxy, nft), run against the tree in a private mount namespace as the agent runs them under a root other
than /. Live steps (firewall, services, join, checks) are skipped under such a root, as `firstboot run` skips
them; tests/integration/test_agent_db.py runs the replica's converge join against real MariaDB servers.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

from firstboot import agent
from firstboot.backoff import Backoff
from firstboot.converge import STEPS, ConvergePolicy, Record
from firstboot.paths import Paths
from firstboot.poll import MAX_WAIT, MIN_WAIT, wait_after
from firstboot.report import EventQueue, Reporter
from firstboot.run import RunOptions, run
from firstboot.snapshot import Snapshot
from firstboot.sources import Settings
from firstboot.state import ConvergeState
from firstboot.steps.fetch import Fetched
from kiln import signing
from kiln.bundle import Bundle, DbPrimaryJoin, File
from tests.unit.agent_support import StandIn, bundle, machine, seed, tls_for_loopback

KEY = signing.generate_private_key()
KILN_APP_GID = 1234
HAPROXY_CFG = "/etc/haproxy/haproxy.cfg"
# without -q: haproxy 2.6 -q silences its alerts too, and a refusal would say nothing of why
HAPROXY_CHECK = ("haproxy", "-c", "-f", HAPROXY_CFG)
GOOD_HAPROXY = """global
    log stdout format raw local0
defaults
    mode http
    timeout connect 1s
    timeout client 1s
    timeout server 1s
frontend web
    bind 127.0.0.1:18080
    default_backend pool
backend pool
    balance {balance}
    server web1 127.0.0.1:18081
"""
BROKEN_HAPROXY = GOOD_HAPROXY.format(balance="roundrobin") + "    no_such_keyword on\n"
NFT_CONF = "/etc/nftables.conf"
NFT_CHECK = ("nft", "-c", "-f", NFT_CONF)
GOOD_RULES = (
    "table inet kiln_converge_test {\n  chain input {\n    type filter hook input priority 0; policy accept;\n  }\n}\n"
)
BROKEN_RULES = GOOD_RULES.replace("policy accept;", "policy accept;\n    tcp dport 22 acept")


def firstboot(*args: str, timeout: float = 90) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "firstboot", *args], capture_output=True, text=True, timeout=timeout, check=False
    )


def converge(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return firstboot("converge", "--root", str(root), *args)


def with_accounts(root: Path) -> Path:
    """The tree's own account databases: kiln-app is group 1234 there (as the image's package creates it)."""
    (root / "etc").mkdir(parents=True, exist_ok=True)
    (root / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
    (root / "etc/group").write_text(f"root:x:0:\nkiln-app:x:{KILN_APP_GID}:\n")
    return root


@contextlib.contextmanager
def provisioned(tmp_path: Path) -> Iterator[tuple[Path, StandIn]]:
    """db1 provisioned by `firstboot run` (generation 1) from a stand-in that keeps serving for the test."""
    root = tmp_path / "root"
    ca, context = tls_for_loopback(tmp_path)
    with_accounts(machine(root, KEY, ca=ca))
    with StandIn(bundle(), KEY, context).running() as server:
        seed(root, server.url)
        opts = RunOptions(paths=Paths(root), sources=Settings(imds_endpoint=""), fetch=Backoff(deadline=10))
        assert run(opts) == 0  # in this process: the converges below are the commands under test
        yield root, server


def publish(server: StandIn, generation: int, b: Bundle) -> None:
    """What the server serves from now on: `b`, stamped with `generation`."""
    server.bundle, server.stamp = b, {"generation": generation}


def converge_events(server: StandIn) -> list[dict[str, Any]]:
    return [e for _, e in server.events if e["step"] == "converge"]


def bundle_polls(server: StandIn) -> list[tuple[str, int]]:
    return [(r.path, r.status) for r in server.requests if r.path.startswith("/v1/bundle?")]


def state(root: Path) -> ConvergeState:
    return ConvergeState.load(Paths(root).converge_state)


def app_env(b: Bundle, content: str, **changes: Any) -> Bundle:
    files = tuple(replace(f, content=content, **changes) if f.path == "/etc/kiln/app.env" else f for f in b.files)
    return replace(b, files=files)


def test_the_first_boot_leaves_what_converge_starts_from(tmp_path: Path) -> None:
    with provisioned(tmp_path) as (root, _):
        start = state(root)
        assert start.generation == 1 and start.last_error is None
        assert start.join["kind"] == "db-primary" and start.join["app_hosts"] == ["10.10.0.31"]
        assert start.same_join(bundle())


def test_a_newer_generation_is_applied_file_by_file_reported_and_the_next_poll_is_a_no_op(tmp_path: Path) -> None:
    with provisioned(tmp_path) as (root, server):
        hostname = root / "etc/hostname"
        untouched = hostname.stat()
        publish(server, 2, app_env(bundle(), "A=2\n"))
        result = converge(root, "--once")
        assert result.returncode == 0, result.stderr
        assert (root / "etc/kiln/app.env").read_text() == "A=2\n"
        assert hostname.stat().st_ino == untouched.st_ino and hostname.stat().st_mtime_ns == untouched.st_mtime_ns
        assert state(root).generation == 2 and state(root).pending == []
        events = converge_events(server)
        assert [(e["status"], e["generation"]) for e in events] == [("start", 2), ("ok", 2)]
        assert "generation 2 applied: 1 files changed (/etc/kiln/app.env)" in events[-1]["detail"]
        assert "converge join     not rerun" in result.stderr  # the same join as generation 1's
        assert bundle_polls(server) == [("/v1/bundle?after=1", 200)]
        # the signature covers the query: the stand-in checked it against the path it was sent with
        again = converge(root, "--once")
        assert again.returncode == 0, again.stderr
        assert bundle_polls(server)[-1] == ("/v1/bundle?after=2", 204)
        assert len(converge_events(server)) == 2  # nothing new, nothing reported
        assert "runs generation 2" in firstboot("status", "--root", str(root)).stdout


def test_a_config_its_checker_refuses_puts_every_changed_file_back_and_reports_why(tmp_path: Path) -> None:
    with provisioned(tmp_path) as (root, server):
        env = root / "etc/kiln/app.env"
        before = env.read_bytes(), env.stat().st_mode & 0o777, (env.stat().st_uid, env.stat().st_gid)
        assert before[1:] == (0o640, (0, KILN_APP_GID))
        broken = app_env(bundle(), "A=3\n", mode="0644", group="root")
        broken = replace(
            broken,
            files=(
                *broken.files,
                File("/etc/kiln/new.conf", "new in generation 2\n"),
                File(HAPROXY_CFG, BROKEN_HAPROXY, check=HAPROXY_CHECK),
            ),
        )
        publish(server, 2, broken)
        result = converge(root, "--once")
        assert result.returncode == 1
        # content, mode and owner as they were; what did not exist does not now
        assert (env.read_bytes(), env.stat().st_mode & 0o777, (env.stat().st_uid, env.stat().st_gid)) == before
        assert not (root / "etc/kiln/new.conf").exists() and not (root / HAPROXY_CFG.lstrip("/")).exists()
        assert state(root).generation == 1 and state(root).pending == []
        fail = converge_events(server)[-1]
        assert (fail["status"], fail["generation"]) == ("fail", 2)
        assert f"check: {HAPROXY_CFG}: `haproxy -c -f {HAPROXY_CFG}` refused it" in fail["detail"]
        assert "no_such_keyword" in fail["detail"]  # haproxy's own words
        assert "3 of 3 changed files put back; no service was touched" in fail["detail"]
        status = firstboot("status", "--root", str(root)).stdout
        assert "runs generation 1" in status and "last error:" in status and "no_such_keyword" in status
        # the fixed generation 3 goes through, and the error is cleared
        publish(
            server,
            3,
            replace(
                broken,
                files=(
                    *bundle().files,
                    File(HAPROXY_CFG, GOOD_HAPROXY.format(balance="leastconn"), check=HAPROXY_CHECK),
                ),
            ),
        )
        fixed = converge(root, "--once")
        assert fixed.returncode == 0, fixed.stderr
        assert "balance leastconn" in (root / HAPROXY_CFG.lstrip("/")).read_text()
        assert state(root).generation == 3 and state(root).last_error is None
        assert "1 configs passed their checkers" in fixed.stderr


def offline(root: Path, b: Bundle) -> tuple[int, Paths]:
    """One converge of `b` (as if verified and fetched) into the tree at `root`, events queued on disk."""
    paths = Paths(root)
    record = Record(paths, Reporter(EventQueue(paths.events)))
    policy = ConvergePolicy(paths, lambda: Fetched("from the test", bundle=b), record)
    return agent.execute(policy, STEPS), paths


def queued(paths: Paths) -> list[dict[str, Any]]:
    return [json.loads(p.read_text()) for p in EventQueue(paths.events).pending()]


def test_a_ruleset_nft_refuses_leaves_the_loaded_one_in_place(tmp_path: Path) -> None:
    root = with_accounts(tmp_path / "root")
    first = replace(bundle(), files=(File(NFT_CONF, GOOD_RULES, mode="0700", check=NFT_CHECK),), generation=1)
    assert offline(root, first)[0] == 0
    code, paths = offline(root, replace(first, files=(replace(first.files[0], content=BROKEN_RULES),), generation=2))
    assert code == 1
    assert (root / "etc/nftables.conf").read_text() == GOOD_RULES
    assert (root / "etc/nftables.conf").stat().st_mode & 0o777 == 0o700
    fail = queued(paths)[-1]
    assert (fail["step"], fail["status"], fail["generation"]) == ("converge", "fail", 2)
    assert "`nft -c -f /etc/nftables.conf` refused it" in fail["detail"] and "acept" in fail["detail"]
    assert state(root).generation == 1


def test_a_checker_that_writes_to_a_config_is_a_refusal(tmp_path: Path) -> None:
    """keepalived --config-test=FILE appends its log to FILE: a checker must only read, or the file goes back."""
    root = with_accounts(tmp_path / "root")
    conf = root / "srv/app.conf"  # outside the overlaid directories: the write lands in the tree itself
    appending = ("sh", "-c", f"echo 'checked' >> {conf}")
    first = replace(bundle(), files=(File("/srv/app.conf", "a = 1\n"),), generation=1)
    assert offline(root, first)[0] == 0
    code, paths = offline(
        root, replace(first, files=(File("/srv/app.conf", "a = 2\n", check=appending),), generation=2)
    )
    assert code == 1
    assert conf.read_text() == "a = 1\n"
    assert "a checker changed /srv/app.conf; a checker must only read" in queued(paths)[-1]["detail"]


def test_a_generation_that_is_not_newer_is_never_applied(tmp_path: Path) -> None:
    root = with_accounts(tmp_path / "root")
    ConvergeState(generation=4).save(Paths(root).converge_state)
    for generation in (4, 3):
        code, paths = offline(root, replace(app_env(bundle(), "OLD=1\n"), generation=generation))
        assert code == 1
        assert f"generation {generation} is not newer than generation 4" in queued(paths)[-1]["detail"]
    assert not (root / "etc/kiln/app.env").exists() and state(root).generation == 4


def test_an_older_generation_served_is_refused_and_the_same_one_is_nothing_new(tmp_path: Path) -> None:
    """A server that answers ?after= with the bundle anyway (one that predates it, or a replay)."""
    with provisioned(tmp_path) as (root, server):
        publish(server, 2, app_env(bundle(), "A=2\n"))
        assert converge(root, "--once").returncode == 0
        server.ignore_after = True
        same = converge(root, "--once")  # generation 2 again: what this host runs
        assert same.returncode == 0 and len(converge_events(server)) == 2
        publish(server, 1, bundle())
        older = converge(root, "--once")
        assert older.returncode == 1
        assert "generation 1 is older than generation 2" in converge_events(server)[-1]["detail"]
        assert (root / "etc/kiln/app.env").read_text() == "A=2\n" and state(root).generation == 2


def test_the_join_reruns_only_when_it_differs_from_the_one_applied(tmp_path: Path) -> None:
    with provisioned(tmp_path) as (root, server):
        publish(server, 2, app_env(bundle(), "A=2\n"))
        same = converge(root, "--once")
        assert "converge join     not rerun: the join is the one applied last" in same.stderr
        b = bundle()
        assert isinstance(b.join, DbPrimaryJoin)
        moved = replace(b, join=replace(b.join, app_hosts=("10.10.0.31", "10.10.0.32")))
        publish(server, 3, moved)
        changed = converge(root, "--once")
        assert changed.returncode == 0, changed.stderr
        assert "converge join     ok" in changed.stderr  # it ran (and, under a tree, skipped its live part)
        assert state(root).join["app_hosts"] == ["10.10.0.31", "10.10.0.32"]
        assert state(root).same_join(moved)


def test_retry_after_is_clamped_and_jittered() -> None:
    rng = random.Random(7)
    for header, default, expected in (
        ("30", 10.0, 30.0),
        ("0", 10.0, MIN_WAIT),
        ("-5", 10.0, MIN_WAIT),
        ("86400", 10.0, MAX_WAIT),
        (None, 10.0, 10.0),
        ("soon", 10.0, 10.0),
        ("Wed, 21 Oct 2026 07:28:00 GMT", 10.0, 10.0),  # an HTTP date is not the contract's integer seconds
    ):
        waits = [wait_after(header, default, rng) for _ in range(200)]
        assert all(0.9 * expected <= w <= 1.1 * expected for w in waits), (header, min(waits), max(waits))
        assert max(waits) - min(waits) > 0.1 * expected  # spread, so hosts started together drift apart


def test_a_revoked_key_retires_the_host_and_converge_stops_for_good(tmp_path: Path) -> None:
    with provisioned(tmp_path) as (root, server):
        server.retired = True
        result = converge(root, "--once")
        assert result.returncode == 0
        assert "the host is retired" in result.stderr and "db1 is retired: its key was revoked" in result.stderr
        marker = json.loads((root / "var/lib/firstboot/retired").read_text())
        assert "revoked" in marker["reason"]
        asked = len(server.requests)
        again = converge(root)  # the unit's loop, too, ends at once: nothing is asked
        assert again.returncode == 0 and "this host is retired" in again.stdout
        assert len(server.requests) == asked
        assert "RETIRED" in firstboot("status", "--root", str(root)).stdout


def test_converge_refuses_a_host_that_is_not_provisioned(tmp_path: Path) -> None:
    root = machine(tmp_path / "root", KEY)
    result = converge(root, "--once")
    assert result.returncode == 1 and "not provisioned yet" in result.stdout and "firstboot run" in result.stdout


def test_once_waits_for_a_run_that_holds_the_lock(tmp_path: Path) -> None:
    with provisioned(tmp_path) as (root, server):
        publish(server, 2, app_env(bundle(), "A=2\n"))
        with open(Paths(root).lock, "w") as held:
            fcntl.flock(held, fcntl.LOCK_EX)
            started = time.monotonic()
            proc = subprocess.Popen(
                [sys.executable, "-m", "firstboot", "converge", "--root", str(root), "--once"],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            time.sleep(2)
            assert proc.poll() is None and bundle_polls(server) == []  # waiting, not polling
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        assert time.monotonic() - started >= 2 and state(root).generation == 2


def test_the_loop_polls_at_the_servers_pace_and_stops_cleanly_on_sigterm(tmp_path: Path) -> None:
    with provisioned(tmp_path) as (root, server):
        server.retry_after = "1"  # clamped to 2 s
        proc = subprocess.Popen(
            [sys.executable, "-m", "firstboot", "converge", "--root", str(root), "--interval", "1"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            deadline = time.monotonic() + 30
            while len(bundle_polls(server)) < 2 and time.monotonic() < deadline:
                time.sleep(0.1)
            polls = [r for r in server.requests if r.path.startswith("/v1/bundle?")]
            assert len(polls) >= 2 and all(status == 204 for _, status in bundle_polls(server))
            proc.send_signal(signal.SIGTERM)
            _, err = proc.communicate(timeout=15)
        finally:
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait()
        assert proc.returncode == 0, err
        assert "converge: stopped" in err


def test_a_snapshot_puts_back_files_links_and_absences(tmp_path: Path) -> None:
    paths = Paths(tmp_path)
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/a.conf").write_text("a\n")
    os.chmod(tmp_path / "etc/a.conf", 0o600)
    os.chown(tmp_path / "etc/a.conf", 0, KILN_APP_GID)
    os.symlink("a.conf", tmp_path / "etc/link.conf")
    snapshot = Snapshot(paths)
    snapshot.take(["/etc/a.conf", "/etc/link.conf", "/etc/new.conf"])
    snapshot.take(["/etc/a.conf"])  # kept once: the first state is the one to go back to
    (tmp_path / "etc/a.conf").write_text("changed\n")
    os.chmod(tmp_path / "etc/a.conf", 0o644)
    os.chown(tmp_path / "etc/a.conf", 0, 0)
    (tmp_path / "etc/link.conf").unlink()
    (tmp_path / "etc/link.conf").write_text("a file now\n")
    (tmp_path / "etc/new.conf").write_text("new\n")
    assert sorted(snapshot.restore()) == ["/etc/a.conf", "/etc/link.conf", "/etc/new.conf"]
    st = (tmp_path / "etc/a.conf").stat()
    assert ((tmp_path / "etc/a.conf").read_text(), st.st_mode & 0o777, st.st_gid) == ("a\n", 0o600, KILN_APP_GID)
    assert os.readlink(tmp_path / "etc/link.conf") == "a.conf"
    assert not (tmp_path / "etc/new.conf").exists()


def test_a_stop_between_steps_puts_back_what_was_written(tmp_path: Path) -> None:
    root = with_accounts(tmp_path / "root")
    assert offline(root, replace(app_env(bundle(), "A=1\n"), generation=1))[0] == 0
    paths = Paths(root)
    record = Record(paths, Reporter(EventQueue(paths.events)))
    policy = ConvergePolicy(
        paths, lambda: Fetched("test", bundle=replace(app_env(bundle(), "A=2\n"), generation=2)), record
    )

    def files_then_sigterm(ctx: Any) -> Any:
        outcome = STEPS["files"](ctx)
        policy.stopping.set()  # SIGTERM while the files step ran: it finishes, the next step does not start
        return outcome

    assert agent.execute(policy, {**STEPS, "files": files_then_sigterm}) == 1
    assert (root / "etc/kiln/app.env").read_text() == "A=1\n"
    fail = queued(paths)[-1]
    assert "stopped (SIGTERM) before step secrets" in fail["detail"] and "put back" in fail["detail"]


def test_files_a_crashed_converge_wrote_are_still_checked(tmp_path: Path) -> None:
    """The power went after generation 2's ruleset was written and before the generation was recorded: the files
    are already as generation 2 wants them, yet the next attempt checks them (and would reload for them)."""
    root = with_accounts(tmp_path / "root")
    first = replace(bundle(), files=(File(NFT_CONF, GOOD_RULES, mode="0700", check=NFT_CHECK),), generation=1)
    assert offline(root, first)[0] == 0
    newer = GOOD_RULES.replace("policy accept", "policy drop")
    (root / "etc/nftables.conf").write_text(newer)
    interrupted = state(root)
    interrupted.pending = [NFT_CONF]
    interrupted.save(Paths(root).converge_state)
    code, paths = offline(root, replace(first, files=(replace(first.files[0], content=newer),), generation=2))
    assert code == 0
    ok = queued(paths)[-1]
    assert ok["detail"].startswith("generation 2 applied: no file changed")
    assert "check: 1 configs passed their checkers: /etc/nftables.conf" in ok["detail"]
    assert state(root).pending == [] and state(root).generation == 2
