"""The app's settings, from the environment that /etc/kiln/app.env (rendered by kiln) provides."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Config:
    host: str
    db_name: str
    db_user: str
    db_password_file: Path
    db_write_host: str  # the primary roles.yaml names: asked first when looking for the writable server
    db_read_host: str
    db_port: int
    db_hosts: tuple[str, ...] = ()  # every db server: the writable one among them takes the writes

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> Config:
        return cls(
            host=env.get("KILN_HOST", "app"),
            db_name=env.get("KILN_DB_NAME", "kiln"),
            db_user=env.get("KILN_DB_USER", "app"),
            db_password_file=Path(env.get("KILN_DB_PASSWORD_FILE", "/etc/kiln/secrets/db_app_password")),
            db_write_host=env.get("KILN_DB_WRITE_HOST", "127.0.0.1"),
            db_read_host=env.get("KILN_DB_READ_HOST", "") or env.get("KILN_DB_WRITE_HOST", "127.0.0.1"),
            db_port=int(env.get("KILN_DB_PORT", "3306")),
            db_hosts=tuple(h for h in env.get("KILN_DB_HOSTS", "").split(",") if h),
        )

    @property
    def candidates(self) -> tuple[str, ...]:
        """The db servers to look for the writable one in, the named primary first."""
        return (self.db_write_host, *(h for h in self.db_hosts if h != self.db_write_host))

    def password(self) -> str:
        return self.db_password_file.read_text().strip()
