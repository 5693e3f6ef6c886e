"""The central journal: every host's systemd-journal-upload sends its journal to systemd-journal-remote on the mon
host, over HTTPS with the cluster CA on both sides. Without a mon host in roles.yaml, none of it is rendered: no
unit enabled, no port open, no certificate issued.

TLS: each host holds its own certificate (secrets/hosts/<host>/journal.pem, issued by the cluster CA for its name
and address, for server and client use: kiln/secrets.py). The mon host serves with its own; every uploader checks
it against the cluster CA and shows its own (journal-upload always sends one over https). Debian 12's
systemd-journal-remote cannot check a client certificate (built without GnuTLS: "Option --trust is not
available"; tests/integration/test_journal_remote.py runs the real daemons), so who may upload is the firewall's to
say: the mon host admits port 19532 from the cluster's own addresses only. Each entry keeps the _HOSTNAME of the
journal it came from; journal-remote writes one file per uploading peer (/var/log/journal/remote/).

Both daemons read their files through systemd's LoadCredential= (root reads the 0600 files; the daemon sees a copy
in its own credentials directory): journal-upload runs as a dynamic user no file could be owned by.

With several mon hosts, every host uploads to the first of them in roles.yaml (journal-upload sends to one URL).

    parts(cluster, host)       -> Parts: files, secrets, services, firewall rules of one host (empty: no mon host)
"""

from __future__ import annotations

from dataclasses import dataclass

from kiln.model.cluster import Cluster, Host
from kiln.roles.context import SECRETS_DIR
from kiln.roles.spec import FileSpec, Rule, SecretSpec, ServiceSpec

MON = "mon"
PORT = 19532  # systemd-journal-remote's HTTPS port (its socket unit's ListenStream)
REMOTE_DIR = "/var/log/journal/remote"  # journalctl -D REMOTE_DIR _HOSTNAME=web1 -u nginx
KEY = f"{SECRETS_DIR}/journal.key"
CERT = f"{SECRETS_DIR}/journal.pem"
CA = f"{SECRETS_DIR}/journal-ca.pem"
UPLOAD_DROPIN = "/etc/systemd/system/systemd-journal-upload.service.d/kiln.conf"
REMOTE_DROPIN = "/etc/systemd/system/systemd-journal-remote.service.d/kiln.conf"
SECRETS = (
    SecretSpec("journal_key", KEY),  # the host's own (kiln/secrets.py)
    SecretSpec("journal_pem", CERT),
    SecretSpec("journal_ca", CA),  # the cluster CA: public, handed out like the secrets (one path for both)
)


@dataclass(frozen=True)
class Parts:
    files: tuple[FileSpec, ...] = ()
    secrets: tuple[SecretSpec, ...] = ()
    services: tuple[ServiceSpec, ...] = ()
    inbound: tuple[Rule, ...] = ()
    outbound: tuple[Rule, ...] = ()


def sink(cluster: Cluster) -> Host | None:
    """The mon host every host uploads to: the first in roles.yaml; None without one."""
    mons = cluster.by_role(MON)
    return mons[0] if mons else None


def parts(cluster: Cluster, host: Host) -> Parts:
    if sink(cluster) is None:
        return Parts()
    upload = Parts(
        files=(FileSpec(UPLOAD_DROPIN, "journal-upload.conf.j2"),),
        secrets=SECRETS,
        services=(ServiceSpec("systemd-journal-upload.service", (UPLOAD_DROPIN, KEY, CERT, CA)),),
        outbound=(Rule("tcp", (PORT,), daddr="$MON_NODES"),),
    )
    if host.role != MON:
        return upload
    return Parts(
        files=(*upload.files, FileSpec(REMOTE_DROPIN, "journal-remote.conf.j2")),
        secrets=SECRETS,
        services=(
            # the socket listens and starts the service; the service listed too so a changed key restarts it
            ServiceSpec("systemd-journal-remote.socket", ()),
            ServiceSpec("systemd-journal-remote.service", (REMOTE_DROPIN, KEY, CERT)),
            *upload.services,
        ),
        inbound=(Rule("tcp", (PORT,), saddr="$CLUSTER_HOSTS"),),
        outbound=upload.outbound,
    )


def context(cluster: Cluster) -> dict[str, object]:
    """The templates' values (empty without a mon host: no template of this module is rendered then)."""
    target = sink(cluster)
    if target is None:
        return {}
    return {
        "journal_url": f"https://{target.ip}:{PORT}",
        "journal_key": KEY,
        "journal_cert": CERT,
        "journal_ca": CA,
        "journal_remote_dir": REMOTE_DIR,
    }
