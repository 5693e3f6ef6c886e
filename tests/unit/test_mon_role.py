"""The mon role's bundle (Prometheus, Alertmanager and their files), the central journal every host uploads to it,
the firewall rules both bring, and a cluster without a mon host rendering none of it."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from kiln.model import parse_roles
from kiln.monitoring import CA_FILE, RULES
from kiln.monitoring import config as mc
from kiln.render import Rendered, render
from kiln.roles import journal, mon
from kiln.secrets import SecretMissing, SecretStore


@pytest.fixture(scope="module")
def rendered(cluster) -> Rendered:
    return render(cluster)


def _file(rendered: Rendered, host: str, path: str) -> str:
    return rendered.content(rendered.bundles[host], path)


def test_mon1_gets_prometheus_alertmanager_and_their_files(rendered, cluster):
    bundle = rendered.bundles["mon1"]
    assert _file(rendered, "mon1", mon.PROMETHEUS_YML) == mc.prometheus_config(cluster)
    assert _file(rendered, "mon1", mon.ALERTMANAGER_YML) == mc.alertmanager_config(cluster)
    assert _file(rendered, "mon1", mon.RULES_YML) == RULES.read_text()
    # the relative paths in the configs resolve beside them (Prometheus and Alertmanager read them so)
    prometheus = yaml.safe_load(_file(rendered, "mon1", mon.PROMETHEUS_YML))
    config_dir = Path(mon.PROMETHEUS_YML).parent
    assert [str(config_dir / f) for f in prometheus["rule_files"]] == [mon.RULES_YML]
    secrets = {s.name: s.path for s in bundle.secrets}
    assert secrets["ca_pem"] == str(config_dir / CA_FILE) and secrets["alertmanager_token"] == mon.ALERTS_TOKEN
    assert all(s.value is None for s in bundle.secrets), "secrets travel by reference"
    units = [s.unit for s in bundle.services]
    assert {"prometheus.service", "prometheus-alertmanager.service", "systemd-journal-remote.socket"} <= set(units)
    assert bundle.join.kind == "service" and bundle.join.health_url == "http://10.10.0.51:9090/-/ready"
    assert "--storage.tsdb.retention.time=15d" in _file(rendered, "mon1", mon.PROMETHEUS_DEFAULT)
    assert '--cluster.listen-address="' in _file(rendered, "mon1", mon.ALERTMANAGER_DEFAULT), "no gossip port"


def test_mon1_firewall_scrapes_every_host_and_answers_the_admin_network_and_the_uploaders(rendered, cluster):
    nft = _file(rendered, "mon1", "/etc/nftables.conf")
    every = ", ".join(str(h.ip) for h in cluster.hosts)
    assert f"define CLUSTER_HOSTS = {{ {every} }}" in nft
    assert "tcp dport { 8404, 9100, 9104, 9113, 9180 } ip daddr $CLUSTER_HOSTS accept" in nft
    assert "tcp dport { 9100, 9090, 9093 } ip saddr $ADMIN_NET ct state new accept" in nft
    assert "tcp dport 19532 ip saddr $CLUSTER_HOSTS ct state new accept" in nft
    for name in ("lb1", "web1", "app1", "db2"):
        other = _file(rendered, name, "/etc/nftables.conf")
        assert "tcp dport 19532 ip daddr $MON_NODES accept" in other, name
        assert "9090" not in other and "19532 ip saddr" not in other, name
    assert "define MON_NODES = { 10.10.0.51 }" in _file(rendered, "web1", "/etc/nftables.d/kiln-tiers.nft")


def test_every_host_uploads_its_journal_to_mon1_checking_its_certificate(rendered):
    for name, bundle in rendered.bundles.items():
        dropin = _file(rendered, name, journal.UPLOAD_DROPIN)
        assert "--url=https://10.10.0.51:19532" in dropin and f"LoadCredential=ca:{journal.CA}" in dropin, name
        assert {"journal_key", "journal_pem", "journal_ca"} <= set(bundle.secret_names()), name
        assert "systemd-journal-upload.service" in [s.unit for s in bundle.services], name
    remote = _file(rendered, "mon1", journal.REMOTE_DROPIN)
    assert "--split-mode=host" in remote and f"--output={journal.REMOTE_DIR}/" in remote
    assert journal.REMOTE_DROPIN not in [f.path for f in rendered.bundles["web1"].files]


def test_without_a_mon_host_nothing_uploads_and_no_port_opens(shipped_roles: Path):
    text = "\n".join(line for line in shipped_roles.read_text().splitlines() if "mon" not in line) + "\n"
    cluster = parse_roles(text)
    assert not cluster.by_role("mon")
    rendered = render(cluster)
    for name, bundle in rendered.bundles.items():
        assert not [f.path for f in bundle.files if "journal" in f.path], name
        assert not [s.name for s in bundle.secrets if s.name.startswith("journal")], name
        assert "systemd-journal-upload.service" not in [s.unit for s in bundle.services], name
        assert "19532" not in _file(rendered, name, "/etc/nftables.conf"), name


def test_each_host_gets_its_own_journal_certificate_for_its_address(cluster, secret_store: SecretStore):
    from cryptography import x509

    ca = x509.load_pem_x509_certificate(secret_store.ca_pem.read_bytes())
    cert = x509.load_pem_x509_certificate(secret_store.value("journal_pem", "mon1").encode())
    assert cert.issuer == ca.subject
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert {str(a) for a in names.get_values_for_type(x509.IPAddress)} == {"10.10.0.51"}
    assert "PRIVATE KEY" in secret_store.value("journal_key", "mon1")
    assert secret_store.value("journal_ca", "web1") == secret_store.ca_pem.read_text()
    keys = {secret_store.value("journal_key", h.name) for h in cluster.hosts}
    assert len(keys) == len(cluster.hosts), "each host its own key (an uploader must show one)"
    with pytest.raises(SecretMissing, match="each host's own"):
        secret_store.value("journal_key")
