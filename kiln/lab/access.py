"""The lab's SSH access to its hosts: a key pair under state/lab/ssh/ and the files a host needs for it.

The images permit no root login and bake no keys. For the lab, the server the lab runs adds to every
bundle root's authorized key and an sshd drop-in that permits key-only root login from the lab's own
address (a Match block: `sshd -T` and Lynis still see PermitRootLogin no). Production clusters bring
their own access; nothing here reaches a bundle outside the lab.
"""

from __future__ import annotations

from pathlib import Path

from kiln.bundle import Bundle, Directory, File, Service
from kiln.run import run

SSHD_DROPIN = "/etc/ssh/sshd_config.d/40-kiln-lab.conf"
AUTHORIZED_KEYS = "/root/.ssh/authorized_keys"


def ensure_key(key: Path) -> str:
    """Create the key pair when missing; return the public key line."""
    if not key.exists():
        key.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "kiln-lab", "-f", str(key)])
    return key.with_suffix(".pub").read_text().strip()


def sshd_dropin(admin_address: str) -> str:
    return (
        "# kiln lab: root may log in with the lab's key from the lab's address only\n"
        f"Match Address {admin_address}\n"
        "    PermitRootLogin prohibit-password\n"
    )


def add_to_bundle(bundle: Bundle, public_key: str, admin_address: str) -> Bundle:
    """`bundle` with the lab's access files (and sshd restarted when they change)."""
    return bundle.extended(
        directories=(Directory(path="/root/.ssh", mode="0700"),),
        files=(
            File(path=AUTHORIZED_KEYS, content=public_key + "\n", mode="0600"),
            File(path=SSHD_DROPIN, content=sshd_dropin(admin_address), mode="0600"),
        ),
        services=(Service(unit="ssh.service", restart_on=(SSHD_DROPIN,)),),
    )
