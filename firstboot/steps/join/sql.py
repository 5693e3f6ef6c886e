"""Talk to MariaDB with its own client: as root over the local socket, or as a user to another server.

Statements go in on stdin, never on the command line; passwords for remote servers go in a 0600
option file in a private temp directory, removed afterwards.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from kiln.run import CommandError, run

DEFAULT_SOCKET = "/run/mysqld/mysqld.sock"
CLIENT = "mariadb"
DUMP = "mariadb-dump"


def quote(value: str) -> str:
    """A SQL string literal."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def ident(name: str) -> str:
    return "`" + name.replace("`", "``") + "`"


def account(user: str, host: str) -> str:
    return f"{quote(user)}@{quote(host)}"


class SqlError(Exception):
    pass


@contextlib.contextmanager
def _option_file(user: str, password: str) -> Iterator[Path]:
    tmp = Path(tempfile.mkdtemp(prefix="firstboot-sql-"))
    try:
        path = tmp / "client.cnf"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(f"[client]\nuser={user}\npassword={password}\n")
        yield path
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def parse_vertical(out: str) -> dict[str, str]:
    """The mariadb client's --vertical output of one row ("  Key: value" lines) as a dict; {} for no row."""
    result: dict[str, str] = {}
    for line in out.splitlines():
        key, sep, value = line.strip().partition(": ")
        if sep or line.strip().endswith(":"):
            result[key.rstrip(":")] = value
    return result


@dataclass(frozen=True)
class Server:
    """How to reach one server: the local one as root by socket, or a remote one by host, port, user, password."""

    socket: str = ""
    host: str = ""
    port: int = 3306
    user: str = ""
    password: str = ""
    timeout: float = 120.0
    connect_timeout: int = 5  # seconds; the client's --connect-timeout for a remote server

    @contextlib.contextmanager
    def _args(self, program: str) -> Iterator[list[str]]:
        if self.socket:
            yield [program, "--no-defaults", f"--socket={self.socket}", "--user=root"]
            return
        with _option_file(self.user, self.password) as cnf:
            args = [
                program,
                f"--defaults-extra-file={cnf}",
                "--protocol=TCP",
                f"--host={self.host}",
                f"--port={self.port}",
            ]
            yield args + ([f"--connect-timeout={self.connect_timeout}"] if program == CLIENT else [])

    def execute(self, sql: str, *, init: str = "") -> str:
        with self._args(CLIENT) as args:
            if init:
                args.append(f"--init-command={init}")
            try:
                return run([*args, "--batch", "--skip-column-names", "--raw"], input=sql, timeout=self.timeout).stdout
            except CommandError as e:
                raise SqlError(
                    f"{self.describe()}: {e.output.strip().splitlines()[-1] if e.output.strip() else e}"
                ) from None

    def rows(self, sql: str) -> list[list[str]]:
        return [line.split("\t") for line in self.execute(sql).splitlines() if line]

    def value(self, sql: str) -> str:
        rows = self.rows(sql)
        return rows[0][0] if rows and rows[0] else ""

    def status(self, sql: str) -> dict[str, str]:
        """The first row of a statement like SHOW SLAVE STATUS as a dict (vertical output)."""
        with self._args(CLIENT) as args:
            try:
                out = run([*args, "--batch", "--raw", "--vertical"], input=sql, timeout=self.timeout).stdout
            except CommandError as e:
                raise SqlError(f"{self.describe()}: {e.output.strip()}") from None
        return parse_vertical(out)

    def dump(self, out: Path, options: Sequence[str]) -> None:
        with self._args(DUMP) as args:
            try:
                run([*args, f"--result-file={out}", *options], timeout=None)
            except CommandError as e:
                raise SqlError(f"{DUMP} from {self.describe()}: {e.output.strip()}") from None

    def describe(self) -> str:
        return f"the local server ({self.socket})" if self.socket else f"{self.user}@{self.host}:{self.port}"
