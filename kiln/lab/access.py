"""The lab's SSH access to its hosts: a key pair under state/lab/ssh/, added to the cluster's operator keys.

The images permit no root login and bake no keys. The server the lab runs adds the lab's public key to the
model's `access.ssh_keys` before it renders (kiln.lab.serve), so the key reaches every host exactly as an
operator's key from roles.yaml does: in the bundle's admin account, written by the agent, converged on day 2.
The lab logs in as that account (roles.yaml access.admin_user) and runs what needs root through `sudo -n`.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from kiln.model import Cluster
from kiln.run import run


def ensure_key(key: Path) -> str:
    """Create the key pair when missing; return the public key line."""
    if not key.exists():
        key.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "kiln-lab", "-f", str(key)])
    return key.with_suffix(".pub").read_text().strip()


def with_lab_key(cluster: Cluster, public_key: str) -> Cluster:
    """`cluster` whose every host also accepts the lab's key (once: a roles file that lists it already keeps it)."""
    if public_key in cluster.access.ssh_keys:
        return cluster
    return replace(cluster, access=cluster.access.with_keys(public_key))
