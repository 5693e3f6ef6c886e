"""Where the agent finds its server and identity: each provider, the order, EC2 IMDSv2 against a loopback stand-in."""

from __future__ import annotations

import http.server
import json
import socket
import time
from pathlib import Path

import pytest

from firstboot.identity import macs
from firstboot.paths import Paths
from firstboot.sources import NoSource, Settings, discover, imds
from tests.unit.agent_support import http_stand_in, json_reply, reply

NO_IMDS = Settings(imds_endpoint="")


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write(root: Path, rel: str, text: str) -> None:
    (root / rel).parent.mkdir(parents=True, exist_ok=True)
    (root / rel).write_text(text)


def test_kernel_command_line_wins_and_carries_host_and_bootif(tmp_path: Path) -> None:
    write(
        tmp_path,
        "proc/cmdline",
        "console=ttyS0 kiln.url=https://10.10.0.1:8443 kiln.host=db2 BOOTIF=01-52-54-00-10-00-42 quiet\n",
    )
    write(tmp_path, "etc/kiln/seed.json", json.dumps({"url": "https://seed:8443", "host": "x"}))
    found = discover(Paths(tmp_path), NO_IMDS)
    assert (found.url, found.host, found.mac, found.origin) == (
        "https://10.10.0.1:8443",
        "db2",
        "52:54:00:10:00:42",
        "kernel command line",
    )


def test_seed_file_then_baked_url(tmp_path: Path) -> None:
    write(tmp_path, "proc/cmdline", "console=ttyS0\n")
    write(tmp_path, "etc/kiln/agent.json", json.dumps({"url": "https://baked:8443/"}))
    assert discover(Paths(tmp_path), NO_IMDS).origin == "baked URL"
    assert discover(Paths(tmp_path), NO_IMDS).url == "https://baked:8443"
    write(
        tmp_path,
        "etc/kiln/seed.json",
        json.dumps({"url": "https://seed:8443", "host": "web1", "mac": "52:54:00:10:00:21"}),
    )
    found = discover(Paths(tmp_path), NO_IMDS)
    assert (found.origin, found.host, found.mac) == ("seed file", "web1", "52:54:00:10:00:21")


def test_a_broken_seed_does_not_hide_the_baked_url(tmp_path: Path) -> None:
    write(tmp_path, "etc/kiln/seed.json", "[1, 2")
    write(tmp_path, "etc/kiln/agent.json", json.dumps({"url": "https://baked:8443"}))
    assert discover(Paths(tmp_path), NO_IMDS).origin == "baked URL"


def test_no_source_names_what_was_tried(tmp_path: Path) -> None:
    with pytest.raises(NoSource, match="kernel command line, seed file, QEMU fw_cfg, EC2 user-data, baked URL"):
        discover(Paths(tmp_path), NO_IMDS)


def _token_flow(user_data: bytes) -> dict:
    def token(h: http.server.BaseHTTPRequestHandler) -> None:
        assert h.headers["X-aws-ec2-metadata-token-ttl-seconds"]
        reply(200, b"TOKEN-abc")(h)

    def data(h: http.server.BaseHTTPRequestHandler) -> None:
        if h.headers.get("X-aws-ec2-metadata-token") != "TOKEN-abc":
            reply(401)(h)
        else:
            reply(200, user_data)(h)

    return {("PUT", "/latest/api/token"): token, ("GET", "/latest/user-data"): data}


def test_imdsv2_puts_for_a_token_then_gets_user_data_with_it(tmp_path: Path) -> None:
    with http_stand_in(_token_flow(json.dumps({"url": "https://10.10.0.1:8443", "host": "app1"}).encode())) as (
        url,
        seen,
    ):
        found = discover(Paths(tmp_path), Settings(imds_endpoint=url))
    assert (found.origin, found.url, found.host) == ("EC2 user-data", "https://10.10.0.1:8443", "app1")
    assert [(m, p) for m, p, _ in seen] == [("PUT", "/latest/api/token"), ("GET", "/latest/user-data")]


def test_imds_user_data_as_key_value_words(tmp_path: Path) -> None:
    with http_stand_in(_token_flow(b"kiln.url=https://10.10.0.1:8443 kiln.host=web2\n")) as (url, _):
        found = imds.source(Paths(tmp_path), Settings(imds_endpoint=url))
    assert found is not None and (found.url, found.host) == ("https://10.10.0.1:8443", "web2")


def test_imds_without_user_data_or_token_is_no_source(tmp_path: Path) -> None:
    with http_stand_in({("PUT", "/latest/api/token"): reply(200, b"T")}) as (url, _):
        assert imds.source(Paths(tmp_path), Settings(imds_endpoint=url)) is None  # user-data 404
    with http_stand_in({("GET", "/latest/user-data"): json_reply({"url": "https://x"})}) as (url, seen):
        assert imds.source(Paths(tmp_path), Settings(imds_endpoint=url)) is None  # IMDSv1-only: no token, no data
        assert [m for m, _, _ in seen] == ["PUT"]


def test_a_host_without_imds_moves_on_in_well_under_a_second(tmp_path: Path) -> None:
    write(tmp_path, "etc/kiln/agent.json", json.dumps({"url": "https://baked:8443"}))
    started = time.monotonic()
    found = discover(Paths(tmp_path), Settings(imds_endpoint=f"http://127.0.0.1:{closed_port()}"))
    assert found.origin == "baked URL"
    assert time.monotonic() - started < 0.5


def test_imds_that_accepts_but_never_answers_is_bounded(tmp_path: Path) -> None:
    with socket.socket() as s:  # connects complete (kernel backlog) but nothing is ever sent
        s.bind(("127.0.0.1", 0))
        s.listen(8)
        started = time.monotonic()
        settings = Settings(imds_endpoint=f"http://127.0.0.1:{s.getsockname()[1]}", imds_read_timeout=0.3)
        assert imds.source(Paths(tmp_path), settings) is None
        assert time.monotonic() - started < 1.3


def test_macs_put_the_boot_interface_first_and_skip_loopback(tmp_path: Path) -> None:
    for name, mac in (("eth0", "52:54:00:00:00:0a"), ("eth1", "52:54:00:00:00:0b"), ("lo", "00:00:00:00:00:00")):
        write(tmp_path, f"sys/class/net/{name}/address", mac + "\n")
    assert macs(Paths(tmp_path)) == ["52:54:00:00:00:0a", "52:54:00:00:00:0b"]
    assert macs(Paths(tmp_path), "01-52-54-00-00-00-0B") == ["52:54:00:00:00:0b", "52:54:00:00:00:0a"]


def test_bootif_naming_a_mac_no_nic_has_is_not_believed(tmp_path: Path) -> None:
    """A BOOTIF (or a seed) naming another host's MAC only orders this machine's own MACs; it adds none."""
    write(tmp_path, "sys/class/net/eth0/address", "52:54:00:00:00:0a\n")
    assert macs(Paths(tmp_path), "01-52-54-00-10-00-41") == ["52:54:00:00:00:0a"]
    assert macs(Paths(tmp_path), "not a mac") == ["52:54:00:00:00:0a"]


def test_every_source_that_can_carry_the_enrolment_token_does(tmp_path: Path) -> None:
    write(tmp_path / "cmd", "proc/cmdline", "kiln.url=https://10.10.0.1:8443 kiln.host=db2 kiln.token=T-cmd quiet\n")
    assert discover(Paths(tmp_path / "cmd"), NO_IMDS).token == "T-cmd"
    seed = {"url": "https://10.10.0.1:8443", "host": "db2", "mac": "52:54:00:10:00:42", "token": "T-seed"}
    write(tmp_path / "seed", "etc/kiln/seed.json", json.dumps(seed))
    assert discover(Paths(tmp_path / "seed"), NO_IMDS).token == "T-seed"
    write(tmp_path / "baked", "etc/kiln/agent.json", json.dumps({"url": "https://baked:8443", "token": 7}))
    assert discover(Paths(tmp_path / "baked"), NO_IMDS).token == ""  # not a string: no token


def test_a_vm_booted_from_its_disk_takes_its_seed_from_qemu_fw_cfg(tmp_path: Path) -> None:
    seed = {"url": "https://10.10.0.1:8443", "host": "web1", "mac": "52:54:00:10:00:21", "token": "T-fwcfg"}
    write(tmp_path, "sys/firmware/qemu_fw_cfg/by_name/opt/org.kiln/seed/raw", json.dumps(seed))
    write(tmp_path, "etc/kiln/agent.json", json.dumps({"url": "https://baked:8443"}))  # the fw_cfg seed comes first
    found = discover(Paths(tmp_path), NO_IMDS)
    assert (found.origin, found.url, found.host, found.mac, found.token) == (
        "QEMU fw_cfg",
        "https://10.10.0.1:8443",
        "web1",
        "52:54:00:10:00:21",
        "T-fwcfg",
    )


def test_imds_user_data_carries_the_token(tmp_path: Path) -> None:
    data = {"url": "https://10.10.0.1:8443", "host": "app1", "token": "T-imds"}
    with http_stand_in(_token_flow(json.dumps(data).encode())) as (url, _):
        assert discover(Paths(tmp_path), Settings(imds_endpoint=url)).token == "T-imds"
