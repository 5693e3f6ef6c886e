"""The shipped roles.yaml means the reference cluster; defaults come from the schema."""

from __future__ import annotations

import ipaddress
from pathlib import Path

from kiln.model import DbRole, DiskRule, load_roles, parse_roles
from kiln.roles import app, lb


def test_shipped_roles_is_the_reference_cluster(cluster):
    roles = [(h.name, h.role) for h in cluster.hosts]
    assert roles == [
        ("lb1", "lb"),
        ("lb2", "lb"),
        ("web1", "web"),
        ("web2", "web"),
        ("app1", "app"),
        ("db1", "db"),
        ("db2", "db"),
        ("mon1", "mon"),
    ]
    assert cluster.domain == "www.foobar.com"
    assert cluster.network.vip == ipaddress.IPv4Address("10.10.0.100")
    assert cluster.db_primary.name == "db1"
    assert [h.name for h in cluster.db_replicas] == ["db2"]
    assert cluster.host("db2").db_role is DbRole.replica
    assert cluster.provisioning_url == "https://10.10.0.1:8443"


def test_omitted_settings_take_the_schema_defaults(shipped_roles: Path):
    text = shipped_roles.read_text()
    text = text.replace("{balance: roundrobin, virtual_router_id: 51}", "{}").replace("{port: 8080, workers: 2}", "{}")
    text = text.replace("image:        {release: bookworm, mirror: auto, size: 2G}", "image: {release: bookworm}")
    cluster = parse_roles(text)
    assert lb.settings_of(cluster) == lb.LbSettings(balance="roundrobin", virtual_router_id=51)
    assert app.settings_of(cluster) == app.AppSettings(port=8080, workers=2)
    assert (cluster.image.mirror, cluster.image.size) == ("auto", "4G")
    assert cluster.hosts[0].disk == DiskRule() and cluster.hosts[0].disk.is_default


def test_a_disk_is_a_rule_or_a_device_name(shipped_roles: Path):
    text = shipped_roles.read_text()
    text = text.replace(
        "ip: 10.10.0.11,", 'ip: 10.10.0.11, disk: {min_size: 400G, max_size: 1T, model: "SAMSUNG MZ7*"},'
    )
    text = text.replace(
        "ip: 10.10.0.12,", "ip: 10.10.0.12, disk: {wwn: 0x5002538e40a1b2c3, path: pci-0000:00:1f.2-ata-*},"
    )
    text = text.replace("ip: 10.10.0.21", "ip: 10.10.0.21, disk: /dev/sdb")
    cluster = parse_roles(text)
    assert cluster.host("lb1").disk == DiskRule(min_size=400 << 30, max_size=1 << 40, model="SAMSUNG MZ7*")
    assert cluster.host("lb1").disk.describe() == 'the rule min_size 400G, max_size 1T, model "SAMSUNG MZ7*"'
    assert cluster.host("lb2").disk == DiskRule(wwn="0x5002538e40a1b2c3", path="pci-0000:00:1f.2-ata-*")
    assert cluster.host("web1").disk == DiskRule(name="sdb")


def test_alerts_go_to_the_provisioning_server_unless_roles_yaml_says_where(shipped_roles: Path):
    text = shipped_roles.read_text()
    assert parse_roles(text).monitoring.alerts_to == ("provisioning",), "no monitoring section: the default"
    named = "monitoring: {alerts_to: [provisioning, 'https://alerts.example.org:8443/hooks/kiln', 'https://10.9.0.5']}"
    cluster = parse_roles(text.replace("\nroles:", f"\n{named}\nroles:", 1))
    assert cluster.monitoring.alerts_to == (
        "provisioning",
        "https://alerts.example.org:8443/hooks/kiln",
        "https://10.9.0.5",
    )
    assert parse_roles(text.replace("\nroles:", "\nmonitoring: {}\nroles:", 1)).monitoring.alerts_to == (
        "provisioning",
    )


def test_macs_are_normalised_to_lower_case(shipped_roles: Path):
    cluster = parse_roles(shipped_roles.read_text().replace("52:54:00:10:00:11", "52:54:00:10:00:AB"))
    assert cluster.host("lb1").mac == "52:54:00:10:00:ab"


def test_validating_is_side_effect_free(shipped_roles: Path, tmp_path: Path):
    before = sorted(p.name for p in tmp_path.iterdir())
    load_roles(shipped_roles)
    assert sorted(p.name for p in tmp_path.iterdir()) == before
