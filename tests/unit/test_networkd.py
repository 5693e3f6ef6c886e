"""hosts[].network rendered to systemd-networkd files: the one-NIC files unchanged for a host that declares nothing,
a bond named kiln0 with the host's MAC, members by permanent MAC, VLANs on kiln0, each route on the interface that
reaches its gateway; the agent names the PXE NIC as its rendered .link does and drops kiln's stale networkd files."""

from __future__ import annotations

import configparser
from dataclasses import replace
from pathlib import Path

import pytest

from firstboot.apply import apply
from firstboot.nic import link_name
from kiln.bundle import Bundle, File
from kiln.model import Cluster, parse_roles
from kiln.render import Renderer
from kiln.render.summary import summary_markdown
from tests.unit.agent_support import bundle as agent_bundle

NET = "/etc/systemd/network"
WEB1 = """  - name: web1
    role: web
    mac: "52:54:00:10:00:21"
    ip: 10.10.0.21
    network:
      mtu: 9000
      bond: {mode: 802.3ad, members: ["52:54:00:10:01:21", "52:54:00:10:00:21"], lacp_rate: fast}
      addresses: [10.0.0.21/24]
      vlans: [{id: 20, addresses: [10.20.0.21/24, 10.20.1.21/24], mtu: 1500}]
      routes:
        - {to: 10.50.0.0/16, via: 10.0.0.1}
        - {to: 10.60.0.0/16, via: 10.20.1.1}
        - {to: 10.70.0.0/16, via: 10.10.0.254}
      allow:
        - {direction: in, proto: udp, ports: [514, 6514], peers: [10.20.0.0/24, 10.50.0.0/16]}
        - {direction: out, proto: tcp, ports: [3260], peers: [10.0.0.9/32]}
"""
WEB2 = """  - name: web2
    role: web
    mac: "52:54:00:10:00:22"
    ip: 10.10.0.22
    network:
      bond: {mode: active-backup, members: ["52:54:00:10:00:22", "52:54:00:10:01:22"], primary: "52:54:00:10:01:22"}
"""
APP1 = """  - {name: app1, role: app, mac: "52:54:00:10:00:31", ip: 10.10.0.31,
     network: {vlans: [{id: 30, addresses: [10.30.0.31/24]}]}}
"""
DB2 = """  - {name: db2, role: db, mac: "52:54:00:10:00:42", ip: 10.10.0.42, db_role: replica,
     network: {mtu: 9000, vlans: [{id: 40, addresses: [10.40.0.42/24]}]}}
"""


def declared(shipped_roles: Path) -> Cluster:
    lines = shipped_roles.read_text().splitlines(keepends=True)
    swap = {"web1": WEB1, "web2": WEB2, "app1": APP1, "db2": DB2}
    out = [next((v for k, v in swap.items() if f"name: {k}," in line), line) for line in lines]
    return parse_roles("".join(out))


def networkd(b: Bundle) -> dict[str, configparser.ConfigParser]:
    """The bundle's networkd files by name, each parsed (a repeated key keeps its values, one per line)."""
    out = {}
    for f in b.files:
        if f.path.startswith(f"{NET}/"):
            parser = configparser.ConfigParser(strict=False, interpolation=None, dict_type=_Repeats)
            parser.optionxform = str  # type: ignore[assignment,method-assign]
            parser.read_string(f.content)
            out[f.path.rsplit("/", 1)[1]] = parser
    return out


class _Repeats(dict):  # type: ignore[type-arg]
    """Address= twice is two addresses: configparser keeps both, joined by a newline."""

    def __setitem__(self, key: str, value: object) -> None:
        if isinstance(value, list) and key in self and isinstance(self[key], list):
            self[key].extend(value)
        else:
            super().__setitem__(key, value)


def values(parser: configparser.ConfigParser, section: str, key: str) -> list[str]:
    return parser.get(section, key).split("\n") if parser.has_option(section, key) else []


@pytest.fixture(scope="module")
def bundles(request: pytest.FixtureRequest) -> dict[str, Bundle]:
    cluster = declared(request.getfixturevalue("shipped_roles"))
    renderer = Renderer(cluster)
    return {h.name: renderer.bundle(h) for h in cluster.hosts}


def test_a_host_that_declares_nothing_keeps_its_two_files(bundles: dict[str, Bundle], cluster: Cluster) -> None:
    lb1 = bundles["lb1"]
    assert lb1 == Renderer(cluster).bundle(cluster.host("lb1")), "the same bundle as without any network section"
    files = networkd(lb1)
    assert sorted(files) == ["10-kiln0.link", "10-kiln0.network"]
    assert files["10-kiln0.link"]["Match"]["MACAddress"] == "52:54:00:10:00:11"
    assert [s.restart_on for s in lb1.services if s.unit == "systemd-networkd.service"] == [
        (f"{NET}/10-kiln0.network",)
    ]


def test_a_bond_is_kiln0_with_the_hosts_mac_and_its_members_matched_by_permanent_mac(
    bundles: dict[str, Bundle],
) -> None:
    files = networkd(bundles["web1"])
    assert sorted(files) == [
        "10-kiln0.20.netdev",
        "10-kiln0.20.network",
        "10-kiln0.netdev",
        "10-kiln0.network",
        "10-kiln0m0.link",
        "10-kiln0m0.network",
        "10-kiln0m1.link",
        "10-kiln0m1.network",
    ], "no 10-kiln0.link: the PXE NIC must not take the bond's name"
    bond = files["10-kiln0.netdev"]
    assert dict(bond["NetDev"]) == {"Name": "kiln0", "Kind": "bond", "MACAddress": "52:54:00:10:00:21"}
    assert dict(bond["Bond"]) == {
        "Mode": "802.3ad",
        "LACPTransmitRate": "fast",
        "TransmitHashPolicy": "layer3+4",
        "MIIMonitorSec": "100ms",
    }
    for i, member in enumerate(["52:54:00:10:01:21", "52:54:00:10:00:21"]):
        link, network = files[f"10-kiln0m{i}.link"], files[f"10-kiln0m{i}.network"]
        assert dict(link["Match"]) == dict(network["Match"]) == {"PermanentMACAddress": member}
        assert link["Link"]["Name"] == f"kiln0m{i}"
        assert network["Network"]["Bond"] == "kiln0" and not network.has_option("Network", "Address")


def test_kiln0_keeps_ip_first_untagged_and_carries_its_mtu_vlans_and_routes(bundles: dict[str, Bundle]) -> None:
    files = networkd(bundles["web1"])
    kiln0 = files["10-kiln0.network"]
    assert dict(kiln0["Match"]) == {"Name": "kiln0"}, "by name: the bond and the VLAN carry the host's MAC too"
    assert kiln0["Link"]["MTUBytes"] == "9000"
    assert values(kiln0, "Network", "Address") == ["10.10.0.21/24", "10.0.0.21/24"]
    assert values(kiln0, "Network", "Gateway") == ["10.10.0.1"]
    assert values(kiln0, "Network", "VLAN") == ["kiln0.20"]
    vlan = files["10-kiln0.20.network"]
    assert dict(files["10-kiln0.20.netdev"]["VLAN"]) == {"Id": "20"}
    assert values(vlan, "Network", "Address") == ["10.20.0.21/24", "10.20.1.21/24"]
    assert vlan["Link"]["MTUBytes"] == "1500"
    # configparser merges the repeated [Route] sections: read the routes from the text, in order
    text = {f.path.rsplit("/", 1)[1]: f.content for f in bundles["web1"].files}
    assert text["10-kiln0.network"].count("[Route]") == 2
    assert "Destination=10.50.0.0/16\nGateway=10.0.0.1\n" in text["10-kiln0.network"]
    assert "Destination=10.70.0.0/16\nGateway=10.10.0.254\n" in text["10-kiln0.network"]
    assert text["10-kiln0.20.network"].endswith("[Route]\nDestination=10.60.0.0/16\nGateway=10.20.1.1\n")
    [networkd_unit] = [s for s in bundles["web1"].services if s.unit == "systemd-networkd.service"]
    assert sorted(networkd_unit.restart_on) == sorted(f"{NET}/{n}" for n in files if not n.endswith(".link"))


def test_active_backup_names_its_primary_and_runs_no_lacp(bundles: dict[str, Bundle]) -> None:
    files = networkd(bundles["web2"])
    assert dict(files["10-kiln0.netdev"]["Bond"]) == {"Mode": "active-backup", "MIIMonitorSec": "100ms"}
    assert files["10-kiln0m1.network"]["Network"]["PrimarySlave"] == "yes"
    assert not files["10-kiln0m0.network"].has_option("Network", "PrimarySlave")


def test_a_vlan_on_a_single_nic_keeps_the_nics_link_file(bundles: dict[str, Bundle]) -> None:
    files = networkd(bundles["app1"])
    assert sorted(files) == ["10-kiln0.30.netdev", "10-kiln0.30.network", "10-kiln0.link", "10-kiln0.network"]
    assert files["10-kiln0.link"]["Match"]["MACAddress"] == "52:54:00:10:00:31"
    # kiln0.30 carries kiln0's MAC: a match by MAC alone would have udev rename the VLAN to kiln0 too
    assert files["10-kiln0.link"]["Match"]["Type"] == "ether"
    assert not files["10-kiln0.network"].has_section("Link"), "no MTU declared: none rendered"


def test_the_agent_names_the_pxe_nic_as_its_rendered_link_does(bundles: dict[str, Bundle]) -> None:
    assert link_name(bundles["web1"].files, "52:54:00:10:00:21") == "kiln0m1"
    assert link_name(bundles["web2"].files, "52:54:00:10:00:22") == "kiln0m0"
    assert link_name(bundles["app1"].files, "52:54:00:10:00:31") == "kiln0"
    assert link_name(bundles["app1"].files, "52:54:00:10:00:99") is None


def test_an_apply_drops_the_networkd_files_roles_yaml_no_longer_declares(
    tmp_path: Path, bundles: dict[str, Bundle]
) -> None:
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/bash\n")
    (root / "etc/group").write_text("root:x:0:\n")
    (root / "etc/systemd/network").mkdir(parents=True)
    (root / "etc/systemd/network/50-operator.network").write_text("[Match]\nName=eth9\n")  # not kiln's: kept
    (root / "etc/systemd/network/10-kiln0-extra.network").write_text("[Match]\nName=eth8\n")  # named like, kept
    base = agent_bundle()
    others = tuple(f for f in base.files if not f.path.startswith(f"{NET}/"))

    def with_network(source: Bundle) -> Path:
        mine = tuple(File(f.path, f.content, mode=f.mode) for f in source.files if f.path.startswith(f"{NET}/"))
        path = tmp_path / "bundle.json"
        path.write_bytes(replace(base, files=(*others, *mine)).to_json())
        return path

    assert apply(with_network(bundles["web1"]), root, live=False) == 0
    assert (root / "etc/systemd/network/10-kiln0.20.netdev").is_file()
    assert apply(with_network(bundles["lb1"]), root, live=False) == 0
    left = sorted(p.name for p in (root / "etc/systemd/network").iterdir())
    assert left == ["10-kiln0-extra.network", "10-kiln0.link", "10-kiln0.network", "50-operator.network"]


def test_a_vlan_without_an_mtu_of_its_own_gets_kiln0s(bundles: dict[str, Bundle]) -> None:
    """The kernel copies the parent's MTU only when it creates the VLAN: rendered, kiln0's reaches it later too."""
    files = networkd(bundles["db2"])
    assert files["10-kiln0.network"]["Link"]["MTUBytes"] == "9000"
    assert files["10-kiln0.40.network"]["Link"]["MTUBytes"] == "9000"


def test_allow_rules_accept_on_the_added_addresses_only_and_reach_the_peers(bundles: dict[str, Bundle]) -> None:
    def ruleset(host: str) -> list[str]:
        [f] = [f for f in bundles[host].files if f.path == "/etc/nftables.conf"]
        return [line.strip() for line in f.content.splitlines()]

    added = "{ 10.0.0.21, 10.20.0.21, 10.20.1.21 }"  # kiln0's added address, then the VLAN's: never ip
    rules = ruleset("web1")
    inbound = f"udp dport {{ 514, 6514 }} ip saddr {{ 10.20.0.0/24, 10.50.0.0/16 }} ip daddr {added} accept"
    assert rules.index(inbound) < rules.index("chain output {"), "in the input chain"
    assert rules.index("tcp dport 3260 ip daddr 10.0.0.9/32 accept") > rules.index("chain output {")
    web2 = ruleset("web2")
    assert not [r for r in web2 if "514" in r or "3260" in r], "a host without allow gets none"


def test_the_summary_lists_each_hosts_allow_rules_apart_from_its_roles(shipped_roles: Path) -> None:
    """SUMMARY.md shows web1's own rules on a line of its own, and the web role's listens as the role has them."""
    lines = summary_markdown(Renderer(declared(shipped_roles))).splitlines()
    web1 = "- web1: in udp 514, 6514 from 10.20.0.0/24, 10.50.0.0/16 to 10.0.0.21, 10.20.0.21, 10.20.1.21"
    assert f"{web1}; out tcp 3260 to 10.0.0.9/32" in lines
    assert not [line for line in lines if line.startswith("- web2:")], "a host without allow rules is not listed"
    web = lines[next(i for i, line in enumerate(lines) if line.startswith("## web: ")) :]
    assert web[3] == "- listens: tcp 80 from the lb hosts", "the role's rules alone, whichever host comes first"
