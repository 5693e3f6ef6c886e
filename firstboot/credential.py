"""This host's credential toward the provisioning server (kiln/hostauth.py says how the server checks it).

Until it has enrolled, the host holds only its one-time enrolment token (from the kernel command line, the
installer's seed, QEMU fw_cfg or EC2 user-data): its first bundle request (POST /v1/enrol) and the events it
sends before that carry it. The enrolment binds the Ed25519 key the host made at its first boot
(/var/lib/firstboot/host.key, 0600); every later request is signed with that key, the token no longer used.

A host's clock may be off before NTP: requests are signed with the server's clock as last seen in its Date
header (the server's TLS identity is pinned, so that header can be trusted).
"""

from __future__ import annotations

import email.utils
import threading
import time
from dataclasses import dataclass, field

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from firstboot.errors import StepFailed
from firstboot.paths import Paths
from kiln import hostauth
from kiln.fsutil import write_atomic


@dataclass
class Credential:
    paths: Paths
    host: str = ""
    token: str = ""
    enrolled: bool = False
    offset: float = 0.0  # the server's clock minus this host's, seconds
    synced: bool = False  # `offset` comes from a Date header the server sent in this run
    _key: Ed25519PrivateKey | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def key(self) -> Ed25519PrivateKey:
        """The host key: made once, at the first run, and kept."""
        with self._lock:
            if self._key is None:
                path = self.paths.host_key
                try:
                    self._key = hostauth.load_private(path.read_bytes())
                except FileNotFoundError:
                    self._key = hostauth.generate_key()
                    write_atomic(path, hostauth.private_pem(self._key), 0o600, durable=True)
                except (ValueError, hostauth.AuthError) as e:
                    raise StepFailed(
                        f"{path} is not an Ed25519 key ({e})",
                        "remove it and re-arm the host (./inv reprovision HOST): a new key needs a new token",
                    ) from None
            return self._key

    def public(self) -> str:
        return hostauth.public_text(self.key().public_key())

    def now(self) -> float:
        return time.time() + self.offset

    def observe(self, date_header: str | None) -> None:
        """Learn the server's clock from its Date header (seconds)."""
        if not date_header:
            return
        try:
            server = email.utils.parsedate_to_datetime(date_header).timestamp()
        except (TypeError, ValueError):
            return
        self.offset, self.synced = server - time.time(), True

    def headers(self, method: str, target: str, body: bytes) -> dict[str, str]:
        """The Authorization header for a request: signed with the key once enrolled, else the token."""
        if self.enrolled and self.host:
            return {
                "Authorization": hostauth.authorization(self.key(), self.host, method, target, body, now=self.now())
            }
        if self.token:
            return {"Authorization": f"Bearer {self.token}"}
        return {}
