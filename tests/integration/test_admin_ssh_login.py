"""A real sshd with the image's own hardening drop-in (elements/kiln-base/.../50-kiln.conf), on a loopback port,
over the accounts, shadow and homes the agent made in a host tree: the operator's key logs in as the admin
account, the same key cannot log in as root (even listed in root's own authorized_keys), a key roles.yaml does not
list cannot log in, and once a converge drops the operator's key from roles.yaml that key is refused too.

sshd runs in a private mount namespace where the tree's /etc/passwd, /etc/shadow, /etc/group, /home and /root
are bound over this machine's (and a private /run holds its privilege-separation directory), so nothing outside
changes. It needs root and an sshd binary: /usr/sbin/sshd (Debian's openssh-server) or KILN_TEST_SSHD.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from firstboot import agent
from firstboot.converge import STEPS, ConvergePolicy, Record
from firstboot.paths import Paths
from firstboot.report import EventQueue, Reporter
from firstboot.steps.fetch import Fetched
from tests.integration.test_agent_access import _apply, _bundle, _tree

pytestmark = pytest.mark.integration

PROJECT = Path(__file__).resolve().parents[2]
IMAGE_SSHD = PROJECT / "elements/kiln-base/static/etc/ssh/sshd_config.d/50-kiln.conf"
SSHD = os.environ.get("KILN_TEST_SSHD", "/usr/sbin/sshd")

if os.geteuid() != 0 or not Path(SSHD).exists() or not shutil.which("unshare"):
    pytest.skip("needs root, unshare and sshd (openssh-server, or KILN_TEST_SSHD=PATH)", allow_module_level=True)

# binds the tree over this machine's accounts and homes, a private /run for sshd's privsep directory, then sshd
_NAMESPACE_SH = (
    'for f in passwd shadow group; do mount --bind "$1/etc/$f" "/etc/$f" || exit 125; done; '
    'mount --bind "$1/home" /home && mount --bind "$1/root" /root || exit 125; '
    "mount -t tmpfs -o mode=0755 tmpfs /run && mkdir -m 0755 /run/sshd || exit 125; "
    'shift; exec "$@"'
)


def _keypair(directory: Path, name: str) -> tuple[Path, str]:
    key = directory / name
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", name, "-f", str(key)], check=True)
    return key, key.with_suffix(".pub").read_text().strip()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def _sshd(root: Path, work: Path) -> Iterator[int]:
    """sshd on 127.0.0.1:PORT: the test's own settings first (sshd keeps the first value it reads), then the
    image's drop-in as it ships. No PAM here (this machine has no /etc/pam.d/sshd): sshd checks the account's
    expiry and lock from shadow itself."""
    port = _free_port()
    host_key, _ = _keypair(work, "host_key")
    if "\nsshd:" not in (root / "etc/passwd").read_text():  # the privilege-separation account, as Debian makes it
        with (root / "etc/passwd").open("a") as passwd:
            passwd.write("sshd:x:64999:65534::/run/sshd:/usr/sbin/nologin\n")
    config = work / "sshd_config"
    config.write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {host_key}\nPidFile none\nUsePAM no\n"
        f"Banner none\nInclude {IMAGE_SSHD}\n"
    )
    namespace = ["unshare", "--mount", "--propagation", "private", "sh", "-c", _NAMESPACE_SH, "sh", str(root)]
    checked = subprocess.run([*namespace, SSHD, "-t", "-f", str(config)], capture_output=True, text=True, check=False)
    assert checked.returncode == 0, checked.stderr  # sshd -t: the image's drop-in is a valid sshd configuration
    process = subprocess.Popen(
        [*namespace, SSHD, "-D", "-e", "-f", str(config)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and process.poll() is None:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.05)
        assert process.poll() is None, process.communicate()[0]
        yield port
    finally:
        process.terminate()
        process.wait(timeout=10)


def _login(port: int, user: str, key: Path) -> subprocess.CompletedProcess[str]:
    argv = ["ssh", "-F", "/dev/null", "-p", str(port), "-i", str(key), "-o", "IdentitiesOnly=yes"]
    argv += ["-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null"]
    argv += ["-o", "LogLevel=ERROR", "-o", "ConnectTimeout=10", f"{user}@127.0.0.1", "id -un"]
    return subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)


def test_the_operators_key_logs_in_as_the_admin_and_never_as_root(shipped_roles: Path, tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    alice, alice_pub = _keypair(work, "alice")
    mallory, _ = _keypair(work, "mallory")
    root = _tree(tmp_path / "web1")
    first = _apply(_bundle(shipped_roles, [alice_pub], 1), root, tmp_path)
    assert first.returncode == 0, first.stdout + first.stderr
    # root's own authorized_keys holds the key too (a leftover, or planted): PermitRootLogin no must still refuse
    (root / "root/.ssh").mkdir(parents=True, mode=0o700)
    (root / "root/.ssh/authorized_keys").write_text(alice_pub + "\n")
    (root / "root/.ssh/authorized_keys").chmod(0o600)
    with _sshd(root, work) as port:
        ok = _login(port, "ops", alice)
        assert (ok.returncode, ok.stdout.strip()) == (0, "ops"), ok.stderr
        as_root = _login(port, "root", alice)
        assert as_root.returncode == 255 and "Permission denied" in as_root.stderr, as_root.stderr
        stranger = _login(port, "ops", mallory)
        assert stranger.returncode == 255 and "Permission denied" in stranger.stderr, stranger.stderr

        # day 2: alice's key leaves roles.yaml (another stays, so the file is not simply emptied)
        _, other_pub = _keypair(work, "other")
        paths = Paths(root)
        second = _bundle(shipped_roles, [other_pub], 2)
        policy = ConvergePolicy(
            paths, lambda: Fetched("the test", bundle=second), Record(paths, Reporter(EventQueue(paths.events)))
        )
        assert agent.execute(policy, STEPS) == 0
        gone = _login(port, "ops", alice)
        assert gone.returncode == 255 and "Permission denied" in gone.stderr, gone.stderr
