"""The central journal as rendered, with the real daemons: mon1's systemd-journal-remote (its drop-in's command line,
its certificate) receives what web1's systemd-journal-upload (its drop-in's command line, its own certificate)
sends over HTTPS, in a
network namespace holding mon1's address; the entries are then read the way an operator does: journalctl -D DIR
_HOSTNAME=web1 -u nginx. An uploader checks mon1's certificate against the cluster CA: another CA's is refused.
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from kiln.render import Rendered, render
from kiln.roles import journal
from kiln.secrets import SecretStore

pytestmark = pytest.mark.integration

REMOTE = Path("/lib/systemd/systemd-journal-remote")
UPLOAD = Path("/lib/systemd/systemd-journal-upload")
if not REMOTE.exists() or not UPLOAD.exists():
    pytest.skip("systemd-journal-remote is not installed (./inv test installs it)", allow_module_level=True)

WAIT = 20.0  # seconds: the daemons start and hand one entry over in well under a second here


@pytest.fixture(scope="module")
def rendered(cluster) -> Rendered:
    return render(cluster)


@pytest.fixture(scope="module")
def netns(cluster) -> Iterator[str]:
    """A namespace with mon1's address on a NIC (its certificate names that address, the uploader checks it)."""
    name = f"kiln-jr-{uuid.uuid4().hex[:8]}"
    mon1 = cluster.host("mon1")
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        for argv in (
            ["link", "set", "lo", "up"],
            ["link", "add", "d0", "type", "veth", "peer", "name", "d0-p"],  # no dummy module on every kernel
            ["link", "set", "d0-p", "up"],
            ["addr", "add", f"{mon1.ip}/{cluster.network.subnet.prefixlen}", "dev", "d0"],
            ["link", "set", "d0", "up"],
        ):
            subprocess.run(["ip", "-n", name, *argv], check=True)
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


def _exec_start(rendered: Rendered, host: str, dropin: str, credentials: Path) -> list[str]:
    """The drop-in's command line, with the credentials directory systemd would give the daemon."""
    text = rendered.content(rendered.bundles[host], dropin)
    [line] = [x for x in text.splitlines() if x.startswith("ExecStart=/")]
    return shlex.split(line.removeprefix("ExecStart=").replace("${CREDENTIALS_DIRECTORY}", str(credentials)))


def _credentials(store: SecretStore, rendered: Rendered, host: str, where: Path) -> Path:
    """What LoadCredential= gives the daemon (key, cert, ca: those the host's bundle has), from its secrets."""
    values = store.values_for(rendered.bundles[host])
    where.mkdir(mode=0o700)
    for credential, secret in (("key", "journal_key"), ("cert", "journal_pem"), ("ca", "journal_ca")):
        if secret in values:
            (where / credential).write_text(values[secret])
            (where / credential).chmod(0o600)
    return where


def _journal_of_web1(tmp_path: Path, message: str) -> Path:
    """A journal file holding one nginx entry of web1's (what its journal-upload would read from /var/log/journal)."""
    entry = f"__REALTIME_TIMESTAMP={int(time.time() * 1e6)}\n_HOSTNAME=web1\n_SYSTEMD_UNIT=nginx.service\n"
    entry += f"MESSAGE={message}\nPRIORITY=6\n\n"
    path = tmp_path / "web1-local.journal"
    subprocess.run([str(REMOTE), f"--output={path}", "-"], input=entry.encode(), check=True, capture_output=True)
    return path


@pytest.fixture
def remote(rendered, secret_store, netns, cluster, tmp_path) -> Iterator[Path]:
    """mon1's journal-remote as its drop-in runs it, listening on mon1's address (systemd's socket unit's port);
    the directory it writes."""
    out = tmp_path / "remote"
    out.mkdir()
    argv = _exec_start(
        rendered, "mon1", journal.REMOTE_DROPIN, _credentials(secret_store, rendered, "mon1", tmp_path / "mon1")
    )
    argv = [f"--listen-https={cluster.host('mon1').ip}:{journal.PORT}" if a == "--listen-https=-3" else a for a in argv]
    argv = [f"--output={out}/" if a.startswith("--output=") else a for a in argv]
    assert argv[0] == str(REMOTE)
    log = (tmp_path / "remote.log").open("w")
    process = subprocess.Popen(["ip", "netns", "exec", netns, *argv], stdout=log, stderr=subprocess.STDOUT)
    try:
        yield out
    finally:
        process.terminate()
        process.wait(timeout=10)
        log.close()


def _upload(
    rendered, netns: str, credentials: Path, journal_file: Path, tmp_path: Path
) -> subprocess.CompletedProcess[str]:
    argv = _exec_start(rendered, "web1", journal.UPLOAD_DROPIN, credentials)
    assert argv[0] == str(UPLOAD)
    argv = [f"--save-state={tmp_path / 'upload.state'}" if a == "--save-state" else a for a in argv]
    # the journal file instead of the host's own journal; the remote's port may still be opening: a few tries
    for _ in range(int(WAIT)):
        done = subprocess.run(
            ["ip", "netns", "exec", netns, *argv, f"--file={journal_file}", "--follow=no"],  # one file, then exit
            capture_output=True,
            text=True,
            timeout=WAIT,
            check=False,
        )
        if done.returncode == 0 or "connect to server" not in done.stderr + done.stdout:
            return done
        time.sleep(1)
    return done


def _read(out: Path, *matches: str) -> str:
    return subprocess.run(
        ["journalctl", "-D", str(out), "-o", "cat", "--no-pager", *matches], capture_output=True, text=True, check=False
    ).stdout


def test_web1s_journal_reaches_mon1_and_reads_by_host_and_unit(rendered, secret_store, netns, remote, tmp_path):
    message = f"web1 nginx line {uuid.uuid4().hex}"
    credentials = _credentials(secret_store, rendered, "web1", tmp_path / "web1")
    done = _upload(rendered, netns, credentials, _journal_of_web1(tmp_path, message), tmp_path)
    assert done.returncode == 0, done.stderr + (tmp_path / "remote.log").read_text()
    deadline = time.monotonic() + WAIT
    while message not in _read(remote, "_HOSTNAME=web1", "-u", "nginx") and time.monotonic() < deadline:
        time.sleep(0.5)
    assert message in _read(remote, "_HOSTNAME=web1", "-u", "nginx")
    assert message not in _read(remote, "_HOSTNAME=web2"), "entries keep the host they came from"


def test_an_uploader_refuses_a_mon_host_whose_certificate_another_ca_issued(
    rendered, secret_store, netns, remote, tmp_path, cluster
):
    other = SecretStore(tmp_path / "other-secrets")  # another cluster's CA
    other.ensure(cluster)
    trusting_other = tmp_path / "trusting-other"
    shutil.copytree(_credentials(secret_store, rendered, "web1", tmp_path / "web1"), trusting_other, dirs_exist_ok=True)
    shutil.copy(other.ca_pem, trusting_other / "ca")
    message = f"line {uuid.uuid4().hex}"
    entries = _journal_of_web1(tmp_path, message)
    refused = _upload(rendered, netns, trusting_other, entries, tmp_path)
    assert refused.returncode != 0 and "certificate" in refused.stderr.lower(), refused.stderr
    assert message not in _read(remote)
    # the same upload trusting the cluster CA goes through: only the trust differed
    done = _upload(rendered, netns, tmp_path / "web1", entries, tmp_path)
    assert done.returncode == 0, done.stderr
