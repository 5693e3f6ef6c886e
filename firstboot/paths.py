"""Every path the agent reads or writes, under one root prefix so tests run without touching /."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Paths:
    root: Path = Path("/")

    def under(self, absolute: str) -> Path:
        """`absolute` (a path on the host) inside this root; refuses relative paths and '..', and under a root
        other than / a directory on the way that is a symlink leading out of the root (ValueError): an absolute
        symlink in an image tree must not send a write to the build machine's own /etc."""
        if not absolute.startswith("/") or ".." in Path(absolute).parts:
            raise ValueError(f"{absolute!r} is not a plain absolute path")
        path = self.root / absolute.lstrip("/")
        if not self.is_host:
            root = self.root.resolve()
            if not path.parent.resolve().is_relative_to(root):
                raise ValueError(f"{absolute!r} leads out of {self.root} through a symlink on its way")
        return path

    @property
    def is_host(self) -> bool:
        return self.root.resolve() == Path("/")

    # what the machine tells us
    @property
    def cmdline(self) -> Path:
        return self.under("/proc/cmdline")

    @property
    def sys_net(self) -> Path:
        return self.under("/sys/class/net")

    # baked into the image, or written by the installer
    @property
    def seed(self) -> Path:
        return self.under("/etc/kiln/seed.json")

    @property
    def agent_json(self) -> Path:
        return self.under("/etc/kiln/agent.json")

    @property
    def signing_pub(self) -> Path:
        return self.under("/etc/kiln/signing.pub")

    @property
    def ca_pem(self) -> Path:
        return self.under("/etc/kiln/ca.pem")

    # the agent's own state
    @property
    def state_dir(self) -> Path:
        return self.under("/var/lib/firstboot")

    @property
    def state(self) -> Path:
        return self.state_dir / "state.json"

    @property
    def done(self) -> Path:
        """Exists once the host is provisioned; firstboot.service is skipped by ConditionPathExists=!."""
        return self.state_dir / "done"

    @property
    def converge_state(self) -> Path:
        """The generation this host runs, its join, the last converge error (firstboot.state.ConvergeState)."""
        return self.state_dir / "converge.json"

    @property
    def retired(self) -> Path:
        """Exists once the server revoked this host's key (retired): kiln-converge.service is skipped by it."""
        return self.state_dir / "retired"

    @property
    def lock(self) -> Path:
        """Held by the one `firstboot run` or converge at work (firstboot.lock)."""
        return self.state_dir / "lock"

    @property
    def bundle_body(self) -> Path:
        """The verified bundle as fetched (0600, holds secrets until the host is done, then removed)."""
        return self.state_dir / "bundle.json"

    @property
    def bundle_signature(self) -> Path:
        return self.state_dir / "bundle.sig"

    @property
    def shared(self) -> Path:
        """The cluster-wide contents the fetched bundle names by digest (one file each, named by its sha256)."""
        return self.state_dir / "shared"

    @property
    def events(self) -> Path:
        return self.state_dir / "events"

    @property
    def host_key(self) -> Path:
        """The Ed25519 key this host made at its first boot (0600); the server binds it at enrolment."""
        return self.state_dir / "host.key"

    @property
    def log(self) -> Path:
        return self.under("/var/log/firstboot.log")
