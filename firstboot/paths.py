"""Every path the agent reads or writes, under one root prefix so tests run without touching /."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Paths:
    root: Path = Path("/")

    def under(self, absolute: str) -> Path:
        """`absolute` (a path on the host) inside this root; refuses relative paths and '..'."""
        if not absolute.startswith("/") or ".." in Path(absolute).parts:
            raise ValueError(f"{absolute!r} is not a plain absolute path")
        return self.root / absolute.lstrip("/")

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
    def log(self) -> Path:
        return self.under("/var/log/firstboot.log")
