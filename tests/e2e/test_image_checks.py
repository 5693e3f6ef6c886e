"""Checks on each built role image, mounted read-only: hardening settings, the role's packages, the
agent and its unit, and what must not be there (secrets, private keys, host keys, machine-id,
password hashes, services listening before first boot)."""

from __future__ import annotations

import gzip
import json
import os
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from kiln.build.imagefs import mounted
from kiln.secrets import PASSWORDS, SecretStore
from tests.e2e.image_helpers import ROLES

pytestmark = pytest.mark.slow

PROJECT = Path(__file__).resolve().parents[2]
ROLE_PACKAGES = {
    "lb": {"haproxy", "keepalived"},
    "web": {"nginx", "prometheus-nginx-exporter"},
    "app": {"python3", "python3-venv"},
    "db": {"mariadb-server", "mariadb-backup", "prometheus-mysqld-exporter"},
    "mon": {"prometheus", "prometheus-alertmanager"},
}
EVERY_ROLE = {
    "prometheus-node-exporter",
    "systemd-journal-remote",  # systemd-journal-upload: every host sends its journal to the mon host
    "nftables",
    "auditd",
    "apparmor",
    "unattended-upgrades",
    "lynis",
    "openssh-server",
    "acct",
    "libpam-tmpdir",
    "debsums",
    "apt-show-versions",
    "aide",
    "chkrootkit",
    "mdadm",  # a mirrored root (hosts[].disk.raid): its initramfs assembles the array
}
ABSENT = {
    "telnetd",
    "rsh-server",
    "inetd",
    "xinetd",
    "nis",
    "tftpd",
    "avahi-daemon",
    "cups",
    "rpcbind",
    "samba",
    "snmpd",
    "squid",
    "vsftpd",
    "ufw",
    "prelink",
}
# a real key block, not the marker strings crypto libraries carry
PEM_PRIVATE_KEY = re.compile(rb"-----BEGIN [A-Z ]*PRIVATE KEY-----\r?\n[A-Za-z0-9+/=\r\n]{64,}-----END")
LISTENERS = {
    "lb": ("haproxy", "keepalived"),
    "web": ("nginx", "prometheus-nginx-exporter"),
    "app": (),
    "db": ("mariadb", "prometheus-mysqld-exporter"),
    "mon": ("prometheus", "prometheus-alertmanager", "systemd-journal-remote"),
}


@pytest.fixture(scope="module", params=ROLES)
def image(request: pytest.FixtureRequest, images: Path) -> Iterator[tuple[str, Path]]:
    role = request.param
    with mounted(images / role / f"{role}.raw") as root:
        yield role, root


def installed(root: Path) -> set[str]:
    status = (root / "var" / "lib" / "dpkg" / "status").read_text()
    names = set()
    for stanza in status.split("\n\n"):
        fields = dict(line.split(": ", 1) for line in stanza.splitlines() if ": " in line and not line.startswith(" "))
        if fields.get("Status", "").endswith(" installed"):
            names.add(fields["Package"])
    return names


def enabled(root: Path, unit: str) -> bool:
    """A wants/ link for `unit` (links point at absolute paths inside the image: test the link, not its target)."""
    system = root / "etc" / "systemd" / "system"
    return any(os.path.lexists(wants / unit) for wants in system.glob("*.wants"))


def test_packages(image: tuple[str, Path], images: Path) -> None:
    role, root = image
    have = installed(root)
    assert ROLE_PACKAGES[role] | EVERY_ROLE <= have
    assert not (ABSENT & have)
    manifest = json.loads((images / role / "manifest.json").read_text())
    assert ROLE_PACKAGES[role] <= set(manifest["packages"])
    assert manifest["role"] == role and manifest["elements"][-1] == f"kiln-{role}"


def test_sysctl_and_modules(image: tuple[str, Path]) -> None:
    _, root = image
    sysctl = (root / "etc/sysctl.d/90-kiln-hardening.conf").read_text()
    for setting in (
        "net.ipv4.ip_forward = 0",
        "net.ipv4.conf.all.accept_redirects = 0",
        "net.ipv4.tcp_syncookies = 1",
        "kernel.randomize_va_space = 2",
        "fs.suid_dumpable = 0",
        "kernel.kptr_restrict = 2",
    ):
        assert setting in sysctl
    blacklist = (root / "etc/modprobe.d/kiln-blacklist.conf").read_text()
    for module in ("cramfs", "udf", "squashfs", "usb-storage", "firewire-core", "firewire-ohci", "dccp", "sctp"):
        assert f"install {module} /bin/false" in blacklist
    aide_db = root / "var/lib/aide/aide.db"  # the baseline: the image as built
    assert aide_db.stat().st_size > 100_000 and aide_db.stat().st_mode & 0o077 == 0
    spec = next(line for line in gzip.open(aide_db, "rt") if line.startswith("@@db_spec")).split()
    assert "sha512" in spec and not {"md5", "sha1", "crc32", "whirlpool"} & set(spec), spec  # one strong hash
    coredump = (root / "etc/systemd/coredump.conf.d/90-kiln-nocore.conf").read_text()
    assert "Storage=none" in coredump and "ProcessSizeMax=0" in coredump
    assert "ulimit -c 0" in (root / "etc/profile.d/kiln-umask.sh").read_text()
    start_timeout = (root / "etc/systemd/system.conf.d/60-kiln-start-timeout.conf").read_text()
    assert "\nDefaultTimeoutStartSec=300s\n" in start_timeout, "a busy host's first boot waits for its daemons"
    # boot work a kiln host never needs: udev-settle (only growroot wants it) is masked, e2scrub_reap off
    assert os.readlink(root / "etc/systemd/system/systemd-udev-settle.service") == "/dev/null"
    assert not enabled(root, "e2scrub_reap.service")


def test_sshd_keys_only_no_root(image: tuple[str, Path]) -> None:
    _, root = image
    conf = (root / "etc/ssh/sshd_config.d/50-kiln.conf").read_text()
    for line in (
        "PermitRootLogin no",
        "PasswordAuthentication no",
        "KbdInteractiveAuthentication no",
        "PermitEmptyPasswords no",
        "X11Forwarding no",
        "MaxAuthTries 3",
    ):
        assert re.search(rf"^{line}$", conf, re.M), line
    assert "cbc" not in conf.lower() and "sha1" not in conf.lower()
    assert "Include /etc/ssh/sshd_config.d/*.conf" in (root / "etc/ssh/sshd_config").read_text()
    for banner in ("etc/issue", "etc/issue.net"):  # a legal warning, no system details
        text = (root / banner).read_text()
        assert "unauthorized use is prohibited" in text and "Debian" not in text and "\\" not in text
    assert (root / "etc/ssh/sshd_config").stat().st_mode & 0o077 == 0
    assert not list((root / "etc/ssh").glob("ssh_host_*")), "no SSH host keys in the image"
    # first boot makes only the keys sshd offers (DSA and RSA-3072 prime searches are the slowest part of keygen)
    host_keys = re.findall(r"^HostKey (\S+)$", conf, re.M)
    assert host_keys == ["/etc/ssh/ssh_host_ed25519_key", "/etc/ssh/ssh_host_ecdsa_key"]
    dropin = (root / "etc/systemd/system/ssh-keygen.service.d/kiln-host-keys.conf").read_text()
    assert "ExecStart=/usr/local/sbin/kiln-ssh-host-keys" in dropin
    assert (root / "usr/local/sbin/kiln-ssh-host-keys").stat().st_mode & 0o111


def test_accounts_have_no_passwords(image: tuple[str, Path]) -> None:
    _, root = image
    for line in (root / "etc/shadow").read_text().splitlines():
        user, hashed = line.split(":")[:2]
        assert not hashed.lstrip("!").startswith("$") and hashed != "", f"{user} has a password"
    defs = (root / "etc/login.defs").read_text()
    assert re.search(r"^PASS_MAX_DAYS 365$", defs, re.M) and re.search(r"^UMASK 027$", defs, re.M)


def test_audit_apparmor_upgrades_firewall_mounts(image: tuple[str, Path]) -> None:
    _, root = image
    rules = (root / "etc/audit/rules.d/50-kiln.rules").read_text()
    assert "-w /etc/shadow -p wa -k identity" in rules and rules.rstrip().endswith("-e 2")
    for unit in (
        "auditd.service",
        "apparmor.service",
        "nftables.service",
        "unattended-upgrades.service",
        "systemd-networkd.service",
        "tmp.mount",
        "ssh.service",
    ):
        assert enabled(root, unit), f"{unit} is not enabled"
    for unit in ("open-iscsi.service", "iscsid.socket"):  # DIB's vm element brings them; unused, slow to boot
        assert not enabled(root, unit), f"{unit} is enabled"
    grub = (root / "boot/grub/grub.cfg").read_text()
    assert "apparmor=1" in grub and "audit=1" in grub
    # the console a BMC's serial-over-LAN shows (docs/access.md): GRUB and the kernel on ttyS0 at 115200
    assert "console=ttyS0,115200" in grub and "serial --speed=115200 --unit=0" in grub
    assert 'Unattended-Upgrade "1"' in (root / "etc/apt/apt.conf.d/20auto-upgrades").read_text()
    assert 'Automatic-Reboot "false"' in (root / "etc/apt/apt.conf.d/52kiln-no-reboot").read_text()
    nft = (root / "etc/nftables.conf").read_text()
    assert "policy drop" in nft and "10.10.0.0/24" in nft and "tcp dport 22" in nft
    assert "noexec" in (root / "etc/systemd/system/tmp.mount").read_text()
    growroot = (root / "etc/systemd/system/growroot.service.d/kiln-md.conf").read_text()
    assert "ExecStart=/usr/local/sbin/kiln-growroot" in growroot, "growroot knows a mirrored root"
    assert re.search(r"^tmpfs /dev/shm tmpfs \S*noexec", (root / "etc/fstab").read_text(), re.M)
    assert (root / "etc/systemd/network/99-kiln-dhcp.network").is_file()
    assert (root / "etc/machine-id").read_text().strip() in ("", "uninitialized")


def _esp_file(raw: Path, offset: int, path: str) -> bytes:
    """A file of the FAT filesystem at byte `offset` of `raw`, read with mtools (no mount, no vfat needed)."""
    return subprocess.run(
        ["mcopy", "-n", "-i", f"{raw}@@{offset}", f"::{path}", "-"], capture_output=True, check=True
    ).stdout


def test_one_gpt_disk_boots_on_bios_and_uefi(image: tuple[str, Path], images: Path) -> None:
    """BIOS boot partition, ESP with Debian's signed chain (shim as the removable-media loader), root last; the
    Secure Boot boot itself is in test_image_boot."""
    role, root = image
    raw = images / role / f"{role}.raw"
    table = json.loads(subprocess.run(["sfdisk", "--json", raw], capture_output=True, check=True).stdout)
    parts = table["partitiontable"]["partitions"]
    assert table["partitiontable"]["label"] == "gpt"
    assert [(p["name"], p["type"]) for p in parts] == [
        ("BSP", "21686148-6449-6E6F-744E-656564454649"),
        ("ESP", "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"),
        ("root", "0FC63DAF-8483-4772-8E79-3D69D8477DE4"),
    ]
    assert parts[2]["start"] > parts[1]["start"] > parts[0]["start"], "root is last: growroot grows it"
    esp = parts[1]["start"] * table["partitiontable"].get("sectorsize", 512)
    shim = (root / "usr/lib/shim/shimx64.efi.signed").read_bytes()
    grub = (root / "usr/lib/grub/x86_64-efi-signed/grubx64.efi.signed").read_bytes()
    for directory in ("EFI/BOOT", "EFI/debian"):
        assert _esp_file(raw, esp, f"/{directory}/grubx64.efi") == grub, f"{directory}: not Debian's signed GRUB"
        stub = _esp_file(raw, esp, f"/{directory}/grub.cfg").decode()
        assert re.search(r"^search\.fs_uuid [0-9a-f-]{36} root$", stub, re.M) and "/boot/grub" in stub, stub
    assert _esp_file(raw, esp, "/EFI/BOOT/BOOTX64.EFI") == shim, "the removable-media loader is not the signed shim"
    assert _esp_file(raw, esp, "/EFI/debian/shimx64.efi") == shim
    volume = subprocess.run(
        ["blkid", "-p", "-O", str(esp), "-s", "UUID", "-o", "value", raw], capture_output=True, text=True, check=True
    ).stdout.strip()
    fstab = (root / "etc/fstab").read_text()
    assert re.search(rf"^UUID={volume} /boot/efi vfat \S*umask=0077", fstab, re.M), fstab
    assert not any((root / "boot/efi").iterdir()), "the ESP's files live on the ESP, not under its mount point"
    hook = (root / "etc/apt/apt.conf.d/53kiln-no-efi-fallback").read_text()
    assert 'DPkg::Post-Invoke { "rm -f /boot/efi/EFI/BOOT/fbx64.efi' in hook, "no fallback loader after upgrades"


def test_agent_and_trust_material(image: tuple[str, Path]) -> None:
    _, root = image
    agent = root / "usr/local/lib/firstboot/firstboot"
    assert agent.is_file() and os.access(agent, os.X_OK)
    assert os.readlink(root / "usr/local/bin/firstboot") == "/usr/local/lib/firstboot/firstboot"
    unit = (root / "etc/systemd/system/firstboot.service").read_text()
    assert "ExecStart=/usr/local/bin/firstboot run" in unit and "Type=exec" in unit
    assert enabled(root, "firstboot.service")
    # converge takes over once the first boot wrote its done file, and never runs on a retired host
    converge = (root / "etc/systemd/system/kiln-converge.service").read_text()
    assert "ExecStart=/usr/local/bin/firstboot converge" in converge and "Restart=always" in converge
    assert "ConditionPathExists=/var/lib/firstboot/done" in converge
    assert "ConditionPathExists=!/var/lib/firstboot/retired" in converge
    assert "PathExists=/var/lib/firstboot/done" in (root / "etc/systemd/system/kiln-converge.path").read_text()
    assert enabled(root, "kiln-converge.service") and enabled(root, "kiln-converge.path")
    store = SecretStore(PROJECT / "secrets")
    assert (root / "etc/kiln/signing.pub").read_bytes() == store.signing_pub.read_bytes()
    assert (root / "etc/kiln/ca.pem").read_bytes() == store.ca_pem.read_bytes()
    from kiln.model import load_roles

    url = load_roles(PROJECT / "roles.yaml").provisioning_url
    cluster_id = SecretStore(PROJECT / "secrets").cluster_id()
    assert json.loads((root / "etc/kiln/agent.json").read_text()) == {"url": url, "cluster_id": cluster_id}


def test_no_secrets_or_private_keys(image: tuple[str, Path]) -> None:
    _, root = image
    store = SecretStore(PROJECT / "secrets")
    needles = [store.value(name).encode() for name in PASSWORDS]
    needles += [
        (store.root / name).read_bytes().strip()
        for name in ("signing.key", "ca.key", "server.key", "site.key", "operator.token")
    ]
    found = []
    for top in ("etc", "opt", "root", "home", "srv", "usr/local", "var/lib"):
        for path in (root / top).rglob("*"):
            if not path.is_file() or path.is_symlink() or path.stat().st_size > 5_000_000:
                continue
            data = path.read_bytes()
            if PEM_PRIVATE_KEY.search(data) or any(n in data for n in needles):
                found.append(str(path.relative_to(root)))
    assert not found, f"secrets or private keys in the image: {found}"


def test_nothing_but_sshd_enabled_to_listen(image: tuple[str, Path]) -> None:
    role, root = image
    for service in (*LISTENERS[role], "prometheus-node-exporter", "kiln-app", "systemd-journal-upload"):
        assert not enabled(root, f"{service}.service"), f"{service} would listen before first boot"
    assert not enabled(root, "systemd-journal-remote.socket"), "journal-remote's socket would listen"
    assert enabled(root, "ssh.service")


def test_app_venv(image: tuple[str, Path]) -> None:
    role, root = image
    if role != "app":
        pytest.skip("the demo app is in the app image only")
    venv = root / "opt/kiln-app/venv"
    assert (venv / "bin/gunicorn").is_file()
    site = next((venv / "lib").glob("python3*/site-packages"))
    for package in ("kilnapp", "pymysql", "prometheus_client", "gunicorn"):
        assert (site / package).is_dir(), package
    assert (site / "kilnapp" / "wsgi.py").is_file()


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _get_json(url: str) -> Any:
    import urllib.request

    with urllib.request.urlopen(url, timeout=5) as r:
        return json.loads(r.read())


def _ready(url: str, process: subprocess.Popen[bytes], log: Path, timeout: float = 90) -> None:
    import urllib.error
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, f"exited {process.returncode}: {log.read_text()[-2000:]}"
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.5)
    raise AssertionError(f"{url} not ready in {timeout:.0f} s: {log.read_text()[-2000:]}")


def test_prometheus_and_alertmanager_load_the_rendered_configs(
    image: tuple[str, Path], cluster, secret_store, tmp_path: Path
) -> None:
    """The mon image's own Prometheus and Alertmanager, run on loopback with mon1's rendered files laid out as the
    agent writes them (relative paths resolve beside the configs): every rule loads, every job is configured, and
    Alertmanager routes to kiln's webhook."""
    from kiln.monitoring import alerts
    from kiln.monitoring.config import JOBS
    from kiln.render.check import lay_out
    from kiln.roles import mon
    from tests.integration.hostroot import applied_bundles

    role, root = image
    if role != "mon":
        pytest.skip("Prometheus and Alertmanager are in the mon image only")
    files = lay_out(applied_bundles(cluster, secret_store)["mon1"], tmp_path / "mon1")
    started: list[subprocess.Popen[bytes]] = []
    try:
        port = _free_port()
        log = tmp_path / "prometheus.log"
        started.append(
            subprocess.Popen(
                [
                    str(root / "usr/bin/prometheus"),
                    f"--config.file={files}{mon.PROMETHEUS_YML}",
                    f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                    f"--web.listen-address=127.0.0.1:{port}",
                ],
                stdout=log.open("w"),
                stderr=subprocess.STDOUT,
            )
        )
        _ready(f"http://127.0.0.1:{port}/-/ready", started[-1], log)
        rules = _get_json(f"http://127.0.0.1:{port}/api/v1/rules")["data"]["groups"]
        assert {r["name"] for g in rules for r in g["rules"] if r["type"] == "alerting"} == set(alerts())
        config = yaml.safe_load(_get_json(f"http://127.0.0.1:{port}/api/v1/status/config")["data"]["yaml"])
        jobs = {job["job_name"] for job in config["scrape_configs"]}
        assert {job.name for job in JOBS} | {"app", "kiln-server"} <= jobs

        am_port = _free_port()
        am_log = tmp_path / "alertmanager.log"
        default = (files / mon.ALERTMANAGER_DEFAULT.lstrip("/")).read_text()
        assert "--cluster.listen-address=" in default
        started.append(
            subprocess.Popen(
                [
                    str(root / "usr/bin/prometheus-alertmanager"),
                    f"--config.file={files}{mon.ALERTMANAGER_YML}",
                    f"--storage.path={tmp_path / 'am'}",
                    f"--web.listen-address=127.0.0.1:{am_port}",
                    "--cluster.listen-address=",  # as /etc/default/prometheus-alertmanager says
                ],
                stdout=am_log.open("w"),
                stderr=subprocess.STDOUT,
            )
        )
        _ready(f"http://127.0.0.1:{am_port}/-/ready", started[-1], am_log)
        status = _get_json(f"http://127.0.0.1:{am_port}/api/v2/status")
        assert "kiln-webhook" in status["config"]["original"] and "/v1/alerts" in status["config"]["original"]
    finally:
        for process in started:
            process.terminate()
            process.wait(timeout=30)
