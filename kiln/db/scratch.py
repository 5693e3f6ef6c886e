"""A scratch MariaDB server on a restored datadir: unix socket only (no network), its own directory, an
administrative account of its own made at start-up (the restored grants are the source's, which this machine's
users may not match); stopped and its files removed afterwards.

What a restore reads was written by a db host, which the runner must not trust with its own files (it holds every
secret): run as root, the tools that parse it (mbstream, mariadb-backup --prepare, mariadb-binlog) and the server
run as the OS user mysql (`Scratch.argv`), so a crafted stream can write nowhere but the scratch directory.
"""

from __future__ import annotations

import os
import pwd
import secrets
import shutil
import subprocess
import time
from pathlib import Path

from kiln.db.source import DbHost

ADMIN = "kiln_restore"
OWNER = "mysql"  # the OS user the scratch tools and server run as, when the runner is root


MAX_PACKET = "1G"  # the server's and the client's max_allowed_packet while binlogs are applied


class ScratchError(Exception):
    pass


class Scratch:
    """directory/: data/ (the datadir, prepared), mysqld.sock, error.log, client.cnf (0600)."""

    def __init__(self, directory: Path, *, buffer_pool: str = "128M") -> None:
        self.directory = directory
        self.datadir = directory / "data"
        self.buffer_pool = buffer_pool
        self.process: subprocess.Popen[bytes] | None = None
        self.owner = _owner()
        self.datadir.mkdir(parents=True, exist_ok=True)
        if self.owner:
            for path in (directory, self.datadir):
                os.chown(path, self.owner.pw_uid, self.owner.pw_gid)

    def argv(self, command: list[str]) -> list[str]:
        """`command` as the scratch owner (unchanged when the runner is not root)."""
        if not self.owner:
            return command
        return ["setpriv", f"--reuid={self.owner.pw_uid}", f"--regid={self.owner.pw_gid}", "--init-groups", *command]

    @property
    def socket(self) -> Path:
        return self.directory / "mysqld.sock"

    @property
    def error_log(self) -> Path:
        return self.directory / "error.log"

    @property
    def client_cnf(self) -> Path:
        return self.directory / "client.cnf"

    @property
    def host(self) -> DbHost:
        return DbHost("scratch", client=(f"--defaults-file={self.client_cnf}",))

    def start(self, timeout: float = 120.0) -> None:
        password = secrets.token_hex(16)
        init = self.directory / "init.sql"
        for path, text in (
            (
                init,
                f"CREATE OR REPLACE USER '{ADMIN}'@'localhost' IDENTIFIED BY '{password}';\n"
                f"GRANT ALL PRIVILEGES ON *.* TO '{ADMIN}'@'localhost' WITH GRANT OPTION;\n",
            ),
            (self.client_cnf, f"[client]\nuser={ADMIN}\npassword={password}\nsocket={self.socket}\n"),
        ):
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(text)
        if self.owner:  # the server reads the init file; the client (the runner's user) reads client.cnf
            os.chown(init, self.owner.pw_uid, self.owner.pw_gid)
        argv = [
            "mariadbd",
            "--no-defaults",
            f"--datadir={self.datadir}",
            f"--socket={self.socket}",
            "--skip-networking",
            f"--pid-file={self.directory / 'mysqld.pid'}",
            f"--log-error={self.error_log}",
            f"--init-file={init}",
            "--skip-slave-start",
            "--server-id=4294967295",
            f"--innodb-buffer-pool-size={self.buffer_pool}",
            "--performance-schema=OFF",
            # a binlog's row events come back as BINLOG statements as large as their transaction: MariaDB's 16 MB
            # default refused an 18 MB insert ("Server has gone away", bench/db_backup.py); 1 GB is its maximum
            f"--max-allowed-packet={MAX_PACKET}",
            *(["--user=root"] if os.geteuid() == 0 else []),
        ]
        self.process = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise ScratchError(f"the scratch mariadbd exited {self.process.returncode}:\n{self._log_tail()}")
            if self.socket.exists():
                try:
                    self.host.value("SELECT 1")
                    init.unlink()
                    return
                except Exception:
                    pass
            time.sleep(0.1)
        self.stop()
        raise ScratchError(f"the scratch mariadbd did not answer within {timeout:.0f}s:\n{self._log_tail()}")

    def _log_tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.error_log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no error log)"

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.directory, ignore_errors=True)


def _owner() -> pwd.struct_passwd | None:
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam(OWNER)
    except KeyError:
        raise ScratchError(f"no OS user {OWNER!r} to run the scratch server as (install mariadb-server)") from None
