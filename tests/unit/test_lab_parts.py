"""The lab's pure parts: dnsmasq's leases and boot file, the lab's key among the operators' keys and the commands
it runs on hosts (as the admin account, through sudo), TCP probes on loopback, Lynis report parsing and the verify
table read from a real JUnit report."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from kiln.bundle import Bundle
from kiln.lab import access, dnsmasq, firmware, probe, vm
from kiln.lab.audit import parse_report
from kiln.lab.layout import Lab, tap_name
from kiln.lab.verify import results
from kiln.model import Host
from kiln.project import Project
from kiln.render import render
from kiln.run import run


def _lab() -> Lab:
    return Lab(Project().cluster())


def test_dnsmasq_leases_every_host_by_mac_and_points_ipxe_at_the_server() -> None:
    lab = _lab()
    conf = dnsmasq.config(lab).splitlines()
    for h in lab.hosts:
        assert f"dhcp-host={h.mac},{h.ip},{h.name}" in conf
    assert "dhcp-boot=tag:ipxe,http://10.10.0.1:8080/boot.ipxe" in conf
    assert "port=0" in conf, "no DNS server in the lab"
    assert any(line.startswith("dhcp-range=10.10.0.0,static") for line in conf), "no lease for unknown MACs"
    # UEFI firmware's own PXE (x86-64 UEFI: client architecture 7 or 9) and not iPXE: Debian's signed shim over TFTP
    # from the server (Secure Boot); iPXE keeps its boot file
    assert {"dhcp-match=set:efi64,option:client-arch,7", "dhcp-match=set:efi64,option:client-arch,9"} <= set(conf)
    assert "dhcp-boot=tag:efi64,tag:!ipxe,shimx64.efi,,10.10.0.1" in conf


def test_the_lab_boots_every_role_of_the_reference_cluster_and_leaves_unknown_roles_off(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """mon1 gets its lease like the others (the monitoring drills need it); a role the lab does not boot (here one
    renamed out of BOOTED_ROLES) gets no lease, so nothing boots it, and nothing the lab waits for names it."""
    from kiln.lab import layout

    lab = _lab()
    assert [h.name for h in lab.hosts] == ["lb1", "lb2", "web1", "web2", "app1", "db1", "db2", "mon1"]
    assert "dhcp-host=52:54:00:10:00:51,10.10.0.51,mon1" in dnsmasq.config(lab)
    monkeypatch.setattr(layout, "BOOTED_ROLES", layout.BOOTED_ROLES - {"mon"})
    assert "mon1" not in [h.name for h in lab.hosts] and "mon1" not in dnsmasq.config(lab)


def test_tap_names_fit_ifnamsiz_and_differ() -> None:
    names = [tap_name(h) for h in _lab().cluster.hosts]
    assert all(len(n) <= 15 for n in names) and len(set(names)) == len(names)


def test_the_lab_key_reaches_every_host_as_an_operators_key_and_nothing_for_root() -> None:
    lab = _lab()
    key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFBzeWOFzYGdjWwrAlqJAJxZqUYAJKnmcP0UEySdAc1U kiln-lab"
    served = access.with_lab_key(lab.cluster, key)
    assert lab.cluster.access.ssh_keys == (), "the roles file's model is left as it is"
    assert access.with_lab_key(served, key) == served, "added once"
    rendered = render(served)
    for name, bundle in rendered.bundles.items():
        assert bundle.admin is not None and bundle.admin.name == lab.admin_user and key in bundle.admin.keys, name
        assert not [f.path for f in bundle.files if f.path.startswith(("/root/", "/etc/ssh/"))], name
        assert not [d.path for d in bundle.directories if d.path.startswith("/root")], name
        assert Bundle.from_json(bundle.to_json()) == bundle


def test_connect_tells_open_from_refused() -> None:
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        assert probe.connect("127.0.0.1", port) == probe.OPEN
    assert probe.connect("127.0.0.1", port) == probe.REFUSED


def test_lynis_report_parsing() -> None:
    text = "lynis_version=3.0.8\nhardening_index=78\nsuggestion[]=SSH-7408|Consider hardening SSH|AllowTcp|-|\n"
    assert parse_report(text) == (78, ["SSH-7408: Consider hardening SSH"])
    assert parse_report("") == (None, [])


def test_verify_table_reads_a_real_junit_report(tmp_path: Path) -> None:
    source = "def test_ok():\n    pass\n\ndef test_bad():\n    assert 1 == 2, 'one is not two'\n"
    (tmp_path / "test_x.py").write_text(source)
    report = tmp_path / "r.xml"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            f"--junitxml={report}",
            str(tmp_path / "test_x.py"),
        ],
        capture_output=True,
        check=False,
        cwd=tmp_path,
    )
    rows = {name: (outcome, why) for name, outcome, why in results(report)}
    assert rows["test_ok"] == ("pass", "")
    assert rows["test_bad"][0] == "FAIL" and "one is not two" in rows["test_bad"][1]


def test_overlays_sit_on_the_labs_own_link_and_survive_a_rebuild(tmp_path: Path) -> None:
    if not shutil.which("qemu-img"):
        pytest.skip("needs qemu-img")
    lab = _lab()
    lab = Lab(lab.cluster, root=tmp_path / "lab", images=tmp_path / "images")
    web1, web2 = lab.cluster.host("web1"), lab.cluster.host("web2")
    image = lab.images / "web" / "web.qcow2"
    image.parent.mkdir(parents=True)
    run(["qemu-img", "create", "-q", "-f", "qcow2", str(image), "16M"])

    def backing(host: Host) -> Path:
        info = json.loads(run(["qemu-img", "info", "--output=json", str(lab.disk(host))]).stdout)
        return Path(info["backing-filename"])

    vm.make_disk(lab, web1, vm.DISK)
    first = backing(web1)
    assert first.parent == lab.disks and first.stat().st_ino == image.stat().st_ino
    rebuilt = image.with_suffix(".new")
    run(["qemu-img", "create", "-q", "-f", "qcow2", str(rebuilt), "32M"])
    rebuilt.replace(image)  # what a rebuild does
    assert first.stat().st_ino != image.stat().st_ino, "the lab keeps the image web1's overlay was made on"
    vm.make_disk(lab, web2, vm.DISK)  # a disk made after the rebuild (a reinstall): on the new image
    assert backing(web2) != first and backing(web2).stat().st_ino == image.stat().st_ino
    assert backing(web1) == first and first.exists(), "web1's overlay still sits on the image it was made on"


def test_lab_up_names_the_missing_packages_before_starting_anything(monkeypatch: pytest.MonkeyPatch) -> None:
    from kiln.lab import lifecycle

    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(lifecycle.NotReady, match="dnsmasq-base .*qemu-system-x86"):
        lifecycle.check_tools()


def test_an_outage_is_the_longest_time_without_an_answer_not_the_span_of_scattered_failures() -> None:
    from kiln.lab.chaos import Loops

    loops = Loops(lab=None)  # no lab: only the request record is read
    ok = [True] * 40
    for t in (5, 6, 7, 30):  # failures at 5-7 (the request at 8 answered) and one stray failure at 30
        ok[t] = False
    loops.requests = [(float(t), t + 0.2, o) for t, o in enumerate(ok)]  # each answered in 0.2 s
    assert loops.failed_seconds(0, 40) == pytest.approx((4.0, 4, 40))  # last answer 4.2, next 8.2
    loops.requests[-1] = (39.0, 39.2, False)  # still failing when the window ends
    assert loops.failed_seconds(35, 40) == pytest.approx((1.8, 1, 5))  # answered at 38.2, nothing until 40
    # a request that hangs 9 s is not a failure but leaves 9 s without an answer
    loops.requests = [(0.0, 0.1, True), (1.0, 10.0, True), (10.0, 10.1, True)]
    assert loops.failed_seconds(0, 10.5) == pytest.approx((9.9, 0, 3))


def test_lab_up_logs_a_line_per_host_change_where_no_table_redraws() -> None:
    from kiln.lab.lifecycle import Watch

    watch = Watch(lab=None)  # no lab: only the rows are read
    event = {"step": "install", "status": "start", "detail": "writing: 512 of 2048 MB"}
    row = {"name": "web1", "role": "web", "ip": "10.10.0.21", "state": "installing", "progress": 0, "last_event": event}
    watch.update([row])
    assert watch.changes() == ["[    0 s] web1: installing, install start: writing: 512 of 2048 MB"]
    assert watch.changes() == [], "nothing changed, nothing printed"
    watch.update([{**row, "state": "joined", "last_event": {"step": "done", "status": "ok", "detail": ""}}])
    assert watch.changes() == ["[    0 s] web1: joined, done ok"]


def test_a_failed_host_ends_lab_up_only_if_the_agents_own_retry_does_not_help() -> None:
    from kiln.lab.lifecycle import FAILED_GRACE, Watch

    watch = Watch(lab=None)  # no lab: only the rows are read
    failed = {"name": "app1", "role": "app", "ip": "10.10.0.31", "state": "failed", "progress": 70}
    watch.update([failed])
    assert watch.failed() == [], f"failed for less than {FAILED_GRACE:.0f} s: firstboot.service retries it"
    assert watch.failed(grace=0) == [failed]
    watch.update([{**failed, "state": "joined"}])  # the retry joined
    assert watch.failed(grace=0) == [] and watch.failed_since == {}


def test_lab_up_powers_on_back_tiers_first_one_booting_host_per_core(monkeypatch: pytest.MonkeyPatch) -> None:
    """Hosts wait for a boot slot: no more booting at once than `slots`, the database tier first, and the next
    one starts when the server hears from a booting host's agent (its state leaves booting/installing).
    The VM itself is what the lab e2e test boots; here only which host starts when."""
    from kiln.lab import lifecycle

    lab = _lab()
    powered: list[str] = []
    monkeypatch.setattr(vm, "make_disk", lambda lab, host, boot: None)
    monkeypatch.setattr(vm, "start", lambda lab, host, boot: powered.append(host.name))
    monkeypatch.setattr(lifecycle.os, "cpu_count", lambda: 2)
    watch = lifecycle.Watch(lab=lab)

    lifecycle.power_on(lab, lab.hosts, vm.DISK, watch)
    assert powered == ["db1", "db2"], "two cores: two booting at once, the database tier first"
    rows = {h.name: {"name": h.name, "state": "waiting"} for h in lab.hosts}
    rows["db1"]["state"] = "booting"
    watch.update(list(rows.values()))
    assert lifecycle.start_pending(lab, watch) == [], "both still booting"
    rows["db1"]["state"] = "configuring"
    watch.update(list(rows.values()))
    assert lifecycle.start_pending(lab, watch) == ["app1"]
    for name in ("db2", "app1"):
        rows[name]["state"] = "failed"  # booted, even if its agent failed: the slot is free
    watch.update(list(rows.values()))
    assert lifecycle.start_pending(lab, watch) == ["web1", "web2"]
    for name in ("web1", "web2"):
        rows[name]["state"] = "joined"
    watch.update(list(rows.values()))
    assert lifecycle.start_pending(lab, watch) == ["lb1", "lb2"] and watch.pending
    for name in ("lb1", "lb2"):
        rows[name]["state"] = "joined"
    watch.update(list(rows.values()))
    assert lifecycle.start_pending(lab, watch) == ["mon1"] and not watch.pending, "mon last: no tier waits for it"
    assert powered == ["db1", "db2", "app1", "web1", "web2", "lb1", "lb2", "mon1"]


@pytest.mark.parametrize(
    ("action", "said"),
    [
        ("ssh", "lab ssh: no host 'nohost' in roles.yaml"),
        ("audit", "lab audit: no host nohost among the hosts the lab boots"),
    ],
)
def test_lab_takes_the_host_as_an_option_and_works_without_it(action: str, said: str) -> None:
    # Invoke has no optional positional: a positional host (default None) made every action demand one, and with
    # default "" the documented './inv lab ssh db2' answered "No idea what 'db2' is!". So: --host.
    project = Path(__file__).resolve().parents[2]
    invoke = [sys.executable, "-m", "invoke", "--search-root", str(project), "lab"]
    out = subprocess.run([*invoke, action, "--host", "nohost"], capture_output=True, text=True, timeout=120)
    assert said in out.stdout + out.stderr
    assert out.returncode != 0
    status = subprocess.run([*invoke, "status"], capture_output=True, text=True, timeout=120)
    assert "positional" not in status.stdout + status.stderr, "an action without a host still parses"
    # whatever state the host's lab is in (a lab of another checkout may be up on this kernel), status reports it
    said = ("the lab is down", "the provisioning server does not answer", "kiln lab")
    assert any(s in status.stdout for s in said), status.stdout + status.stderr


def test_the_request_loop_does_not_wait_for_a_hung_request(monkeypatch: pytest.MonkeyPatch) -> None:
    """A request to an LB that just lost power hangs; the ones after it (answered by the VIP's new holder) go out
    on schedule, so the outage is the time nothing was answered, not the hung request's timeout."""
    import types

    from kiln.lab import chaos

    monkeypatch.setattr(chaos, "INTERVAL", 0.1)
    hung = threading.Event()

    def get(self: chaos.Loops, path: str, **kw: object) -> object:
        if not hung.is_set():
            hung.set()
            time.sleep(1.5)  # the first request hangs, then fails
            raise OSError("timed out")
        return types.SimpleNamespace(status=200, headers={"x-kiln-app": "app1"})

    monkeypatch.setattr(chaos.Loops, "_get", get)
    loops = chaos.Loops(lab=None)  # _get replaced: no lab needed
    began = time.monotonic()
    threading.Thread(target=loops._request_loop, daemon=True).start()
    time.sleep(2.0)
    loops.stop.set()
    answered_early = [r for r in list(loops.requests) if r[2] and r[1] < began + 1.5]
    assert len(answered_early) >= 5, "requests kept going out and being answered while the first one hung"
    outage, failed, _ = loops.failed_seconds(began, began + 1.9)
    assert failed == 1 and outage < 1.0


def test_the_request_loop_never_queues_more_than_the_app_can_answer(monkeypatch: pytest.MonkeyPatch) -> None:
    """An app that stops answering gets at most MAX_IN_FLIGHT requests of the loop, not one per tick: a queue it
    could never drain would time out every check behind it. Once it answers, the loop sends on schedule again."""
    import types

    from kiln.lab import chaos

    monkeypatch.setattr(chaos, "INTERVAL", 0.05)
    answering = threading.Event()
    sent: list[float] = []

    def get(self: chaos.Loops, path: str, **kw: object) -> object:
        sent.append(time.monotonic())
        answering.wait(10)
        return types.SimpleNamespace(status=200, headers={"x-kiln-app": "app1"})

    monkeypatch.setattr(chaos.Loops, "_get", get)
    loops = chaos.Loops(lab=None)  # _get replaced: no lab needed
    threading.Thread(target=loops._request_loop, daemon=True).start()
    time.sleep(1.0)  # twenty ticks while nothing answers
    assert len(sent) == chaos.MAX_IN_FLIGHT
    answering.set()
    time.sleep(1.0)
    loops.stop.set()
    assert len(sent) > chaos.MAX_IN_FLIGHT + 10, "answered again: a request every tick"


def test_a_request_that_fails_after_its_window_ends_is_counted_once_settled(monkeypatch: pytest.MonkeyPatch) -> None:
    """A request sent inside a drill's window may fail well after it (a reset from the LB that came back, a
    timeout): settle(until) waits for it, so failed_seconds counts it instead of leaving it out of every window."""
    from kiln.lab import chaos

    monkeypatch.setattr(chaos, "INTERVAL", 10.0)  # one request, sent at once
    monkeypatch.setattr(chaos, "REQUEST_TIMEOUT", 2.0)

    def get(self: chaos.Loops, path: str, **kw: object) -> object:
        time.sleep(0.6)
        raise ConnectionResetError("reset by peer")

    monkeypatch.setattr(chaos.Loops, "_get", get)
    loops = chaos.Loops(lab=None)  # _get replaced: no lab needed
    began = time.monotonic()
    threading.Thread(target=loops._request_loop, daemon=True).start()
    time.sleep(0.2)
    until = time.monotonic()
    loops.stop.set()
    assert loops.failed_seconds(began, until)[1:] == (0, 0), "not ended yet: counted nowhere"
    loops.settle(until)
    assert loops.failed_seconds(began, until)[1:] == (1, 1)
    (said,) = loops.failed_requests(began, until)
    assert "ConnectionResetError" in said


def test_the_vip_probe_hears_how_long_the_vip_was_silent_whatever_hangs(monkeypatch: pytest.MonkeyPatch) -> None:
    """The edge probe asks HAProxy on the VIP (port 80, its own redirect) every EDGE_INTERVAL with no cap: probes
    hanging on an LB that lost power do not hold it back (a cap of a few would send a handful in that second), and
    vip_silent is the time without a redirect."""
    import types

    from kiln.lab import chaos
    from kiln.lab.probe import Reply

    monkeypatch.setattr(chaos, "EDGE_INTERVAL", 0.02)
    dead = threading.Event()
    dead.set()
    asked: list[tuple[bool, str]] = []

    def fake_request(vip: str, domain: str, cafile: str, method: str = "GET", path: str = "/", **kw: object) -> Reply:
        asked.append((bool(kw.get("tls")), path))
        if dead.is_set():
            time.sleep(0.5)  # a SYN to the dead LB, unanswered
            raise TimeoutError("timed out")
        return Reply(301, {}, b"")

    monkeypatch.setattr(chaos, "request", fake_request)
    lab = types.SimpleNamespace(vip="10.10.0.100", cluster=types.SimpleNamespace(domain="www.example.org"))
    loops = chaos.Loops(lab=lab)  # type: ignore[arg-type]
    threading.Thread(target=loops._edge_loop, daemon=True).start()
    time.sleep(0.2)
    assert not asked, "it asks only within probe_vip (the LB drills): elsewhere it would be load on the LBs"
    with loops.probe_vip():
        began = time.monotonic()
        time.sleep(1.0)
        dead.clear()
        time.sleep(0.8)  # the last probes sent to the dead VIP have failed by now
    loops.stop.set()
    silent = loops.vip_silent(began, time.monotonic())
    assert 0.9 < silent < 1.8, silent
    assert loops.vip_silence(began, time.monotonic())[1] < 0.2, "the silence began with the drill"
    assert set(asked) == {(False, "/")}, "plain HTTP to HAProxy's redirect"
    assert sum(1 for _, _, ok in loops.edge if not ok) >= 20, "it kept asking while the first ones hung"


def test_the_longest_gap_says_when_it_began() -> None:
    from kiln.lab.chaos import _longest_gap_at

    records = [(0.0, 1.0, True), (1.0, 2.0, True), (2.0, 9.0, False), (8.0, 9.0, True), (9.0, 9.5, True)]
    assert _longest_gap_at(records, 0.0, 10.0) == (7.0, 2.0)  # from the answer at 2 s to the one at 9 s
    assert _longest_gap_at([], 0.0, 10.0) == (10.0, 0.0)  # nothing answered: the whole window


def test_the_request_loop_waits_past_the_stacks_own_timeouts(cluster) -> None:
    """A request counts as failed when the stack fails it: the loop waits longer than HAProxy can take to answer
    (a `timeout connect` for each of its tries, then `timeout server`), so a slow answer arrives, or HAProxy's 503 or
    504 does, before the loop gives up."""
    import re

    from kiln.lab import chaos
    from kiln.render import render

    rendered = render(cluster)
    haproxy = rendered.content(rendered.bundles["lb1"], "/etc/haproxy/haproxy.cfg")

    def setting(name: str) -> int:
        return int(re.search(rf"(?m)^\s+{name} (\d+)s?$", haproxy).group(1))

    bound = setting("timeout connect") * (setting("retries") + 1) + setting("timeout server")
    assert chaos.REQUEST_TIMEOUT > bound


def test_chaos_runs_a_phase_side_by_side_and_phases_in_order() -> None:
    """The drills of one phase run at once (each waits for the others at a barrier: run one after another they
    would time out), the next phase only after; results keep the listed order, and a drill that raises
    becomes a failed result without stopping the others."""
    import io
    import threading

    from rich.console import Console

    from kiln.lab import chaos

    barrier = threading.Barrier(3, timeout=10)
    log: list[str] = []

    def meets(name: str) -> list[chaos.Result]:
        barrier.wait()
        log.append(name)
        return [chaos.Result(name, "met", "", goal_met=True)]

    def fails() -> list[chaos.Result]:
        barrier.wait()
        raise TimeoutError("db2 replicating again: not within 600 s")

    phases = [
        [("a", lambda: meets("a")), ("b", fails), ("c", lambda: meets("c"))],
        [("d", lambda: [chaos.Result("d", "after", "", goal_met=True, works=bool(log.append("d")) or True)])],
    ]
    results = chaos.run_phases(phases, Console(file=io.StringIO()))

    assert [r.drill for r in results] == ["a", "b", "c", "d"]
    assert [r.works for r in results] == [True, False, True, True]
    assert results[1].measured == "error: db2 replicating again: not within 600 s"
    assert sorted(log[:2]) == ["a", "c"] and log[2] == "d", "phase two started only after phase one ended"


def test_lab_commands_on_hosts_log_in_as_the_admin_and_run_through_sudo(monkeypatch: pytest.MonkeyPatch) -> None:
    from kiln.lab import chaos
    from kiln.lab import ssh as lab_ssh

    lab = _lab()
    assert lab_ssh.ssh_argv(lab, "10.10.0.41")[-1] == "kiln@10.10.0.41"
    written: list[bytes] = []
    monkeypatch.setattr(lab_ssh, "write_atomic", lambda path, data, mode: written.append(data))  # not the lab's
    lab_ssh.config_file(lab)
    assert written[0].count(b"User kiln\n") == len(lab.hosts) and b"User root" not in written[0]
    seen: list[list[str]] = []
    monkeypatch.setattr(chaos, "run", lambda argv, **kw: seen.append(argv) or subprocess.CompletedProcess(argv, 0, ""))
    chaos.ssh(lab, "db2", "mariadb -e 'SHOW SLAVE STATUS\\G'")
    assert seen[0][-2:] == ["db2", "sudo -n sh -c 'mariadb -e '\"'\"'SHOW SLAVE STATUS\\G'\"'\"''"]
    # what the remote shell runs is exactly the command, as root
    out = run(["sh", "-c", seen[0][-1].replace("sudo -n ", "", 1).replace("mariadb", "echo", 1)]).stdout
    assert out == "-e SHOW SLAVE STATUS\\G\n"


def test_lab_ssh_passes_what_follows_the_double_dash(monkeypatch: pytest.MonkeyPatch) -> None:
    """./inv lab ssh --host db1 -- sudo mariadb -e '...': the command reaches the host as the operator typed it."""
    import invoke

    import tasks
    from kiln.lab import cli as lab_cli
    from kiln.program import KilnProgram

    program = KilnProgram()
    argv = ["./inv", "--search-root", str(Path(tasks.__file__).parent), "lab", "ssh", "--host", "db1", "--"]
    program.parse([*argv, "sudo", "mariadb", "-e", "SELECT 1"])
    assert program.core.remainder == "sudo mariadb -e SELECT 1"
    calls: list[dict[str, object]] = []
    monkeypatch.setattr(lab_cli, "run", lambda project, **kw: calls.append(kw) or 0)
    tasks.lab(invoke.Context(remainder="sudo mariadb -e 'SELECT 1'"), "ssh", host="db1")
    assert calls[0]["command"] == "sudo mariadb -e 'SELECT 1'"


def _boot_order(argv: list[str]) -> tuple[str, str, list[str]]:
    """(the NIC's -device, the disk's -device, the -boot option) of a lab VM's QEMU command line."""
    devices = [argv[i + 1] for i, a in enumerate(argv) if a == "-device"]
    nic = next(d for d in devices if d.startswith("virtio-net-pci"))
    disk = next(d for d in devices if d.startswith("virtio-blk-pci"))
    boot = [argv[i + 1] for i, a in enumerate(argv) if a == "-boot"]
    return nic, disk, boot


def test_the_lab_boots_bios_by_its_order_and_uefi_by_bootindex(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """SeaBIOS follows -boot (once=n: a single network boot); OVMF ignores it and follows bootindex, so under UEFI
    the NIC leads for a network install (and stays first: the server's script sends an installed host on to its
    disk) and the disk leads for a disk boot. Each UEFI VM gets its own variable store. (The command line only:
    the boots are in test_server_ipxe_qemu.py and a lab run; OVMF's files stand in here, the quick tier has no
    ovmf package.)"""
    ovmf = tmp_path / "OVMF"
    ovmf.mkdir()
    for name in ("OVMF_CODE_4M.fd", "OVMF_VARS_4M.fd"):
        (ovmf / name).write_bytes(b"\xff" * 64)
    monkeypatch.setattr(firmware, "OVMF_DIR", ovmf)
    lab = Lab(_lab().cluster, root=tmp_path / "lab", images=tmp_path / "images")
    host = lab.cluster.host("web1")
    lab.boot_record.parent.mkdir(parents=True)
    assert vm.firmware_of(lab) == "bios"  # no record: BIOS
    assert _boot_order(vm.argv(lab, host, vm.DISK, pxe_once=True))[2] == ["order=c,once=n"]
    assert _boot_order(vm.argv(lab, host, vm.PXE))[2] == ["order=n"]
    assert not (lab.disks / "web1.efi").exists()

    lab.boot_record.write_text(json.dumps({"boot": "pxe", "firmware": "uefi", "outcome": "starting"}))
    for boot, once, nic_first in ((vm.PXE, False, True), (vm.DISK, False, False), (vm.DISK, True, True)):
        argv = vm.argv(lab, host, boot, pxe_once=once)
        nic, disk, order = _boot_order(argv)
        assert order == [], "OVMF takes no -boot order"
        first, second = (nic, disk) if nic_first else (disk, nic)
        assert first.endswith(",bootindex=1") and second.endswith(",bootindex=2"), (boot, once, nic, disk)
        assert f"file={lab.disks / 'web1.efi' / 'efivars.fd'}" in " ".join(argv)
    assert (lab.disks / "web1.efi" / "efivars.fd").stat().st_size > 0


def test_a_secure_boot_vm_pxe_boots_with_ovmfs_own_pxe_and_no_ipxe_rom(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Under Secure Boot the NIC carries no option ROM (QEMU's is unsigned iPXE) and OVMF's PXE over IPv4 is on: the
    network boot is OVMF's, to shim (the boot itself: test_server_grub_qemu.py). Under plain UEFI nothing changes:
    iPXE's ROM, OVMF's PXE off."""
    ovmf = tmp_path / "OVMF"
    ovmf.mkdir()
    for name in ("OVMF_CODE_4M.fd", "OVMF_VARS_4M.fd", "OVMF_CODE_4M.secboot.fd", "OVMF_VARS_4M.ms.fd"):
        (ovmf / name).write_bytes(b"\xff" * 64)
    monkeypatch.setattr(firmware, "OVMF_DIR", ovmf)
    lab = Lab(_lab().cluster, root=tmp_path / "lab", images=tmp_path / "images")
    host = lab.cluster.host("web1")
    lab.boot_record.parent.mkdir(parents=True)
    for name, rom, pxe in (("uefi", False, "n"), ("secureboot", True, "y")):
        lab.boot_record.write_text(json.dumps({"boot": "pxe", "firmware": name}))
        argv = vm.argv(lab, host, vm.PXE)
        nic, _, _ = _boot_order(argv)
        assert ("romfile=" in nic.split(",")) is rom, (name, nic)
        assert f"name=opt/org.tianocore/IPv4PXESupport,string={pxe}" in argv, name
        assert "name=opt/org.tianocore/IPv6PXESupport,string=n" in argv, name


def test_the_roll_drill_counts_vip_moves_and_judges_each_roll() -> None:
    from kiln.lab.rolldrill import Rolled, result, vip_moves

    seen = [(0.0, ("lb1",)), (5.0, ()), (9.0, ("lb2",)), (80.0, ("lb1", "lb2")), (82.0, ("lb1",)), (300.0, ("lb1",))]
    assert vip_moves(seen) == 2, "none and both are no move of their own: lb1 -> lb2 -> lb1"
    assert vip_moves([(0.0, ("lb1",)), (3.0, ("lb2",)), (6.0, ("lb1",)), (9.0, ("lb2",))]) == 3
    assert vip_moves([]) == 0
    fine = Rolled(0, {"lb1": 190.0, "lb2": 170.0}, failed=0, total=400, outage=1.0, silent=2.0, moves=2)
    on = {"lb1": "u-new", "lb2": "u-new"}
    got = result("lb", fine, "u-new", on)
    assert got.works and got.goal_met and "lb1 190 s, lb2 170 s" in got.measured and "all on u-new" in got.measured
    stale = result("web", Rolled(0, {"web1": 200.0}, 0, 10, 0.0, 0.0, 0), "u-new", {"web1": "u-new", "web2": "u-old"})
    assert not stale.works and "web2 not on the image's root filesystem u-new" in stale.measured
    assert not result("lb", Rolled(0, {}, 0, 10, 0.0, 0.0, moves=3), "u", {}).works, "the VIP moved a third time"
    assert not result("web", Rolled(1, {}, 0, 10, 0.0, 0.0, 0), "u", {}).works, "the roll exited non-zero"
    missed = result("lb", Rolled(0, {}, failed=0, total=10, outage=0.0, silent=6.0, moves=2), "u", {})
    assert missed.works and not missed.goal_met, "a long silence is a missed goal, reported, not a failure"
