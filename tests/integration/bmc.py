"""Real BMC emulators on loopback for the power tests: OpenIPMI's ipmi_sim (IPMI 2.0 lanplus, its chassis power
and boot device through a chassis-control script that keeps them in files) and sushy-tools' Redfish emulator with
its fake driver (an in-memory system: no libvirt)."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from kiln.lab import procs

USER, PASSWORD = "admin", "kiln-bmc-s3cret"

# ipmi_sim calls it as: chassis DIR get PARM... | set PARM VALUE... (OpenIPMI's ipmi_sim_chassiscontrol contract).
# It logs every call to DIR/calls; with DIR/stuck present the BMC takes power commands and changes nothing.
CHASSIS_SCRIPT = """#!/bin/sh
dir=$1; op=$2; shift 2
echo "$op $*" >> "$dir/calls"
case $op in
get) for p in "$@"; do
       case $p in
       power) echo "power:$(cat "$dir/power" 2>/dev/null || echo 0)";;
       boot) echo "boot:$(cat "$dir/boot" 2>/dev/null || echo default)";;
       esac
     done;;
set) while [ $# -gt 0 ]; do
       case $1 in
       power) [ -e "$dir/stuck" ] || echo "$2" > "$dir/power";;
       reset) echo reset >> "$dir/resets";;
       boot) echo "$2" > "$dir/boot";;
       esac
       shift 2
     done;;
esac
exit 0
"""


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(what: str, ready: Callable[[], bool], timeout: float, log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        if time.monotonic() > deadline:
            tail = log.read_text(errors="replace")[-2000:] if log and log.exists() else ""
            raise TimeoutError(f"{what} not ready after {timeout} s\n{tail}")
        time.sleep(0.1)


@contextlib.contextmanager
def running(name: str, argv: list[str], log: Path, ready: Callable[[], bool], timeout: float) -> Iterator[None]:
    """`argv` running (its output in `log`) from the moment `ready()` holds until the block ends."""
    with open(log, "wb") as out:
        process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_until(name, lambda: ready() or process.poll() is not None, timeout, log)
        if process.poll() is not None:
            raise RuntimeError(f"{name} exited {process.returncode}:\n{log.read_text(errors='replace')}")
        yield
    finally:
        procs.stop_pid(process.pid, grace=5)


@dataclass
class IpmiSim:
    address: str  # 127.0.0.1:PORT
    dir: Path  # the chassis script's files: power (0/1), boot, calls, resets, stuck

    @property
    def power(self) -> str:
        return (self.dir / "power").read_text().strip() if (self.dir / "power").exists() else "0"

    @power.setter
    def power(self, value: str) -> None:
        (self.dir / "power").write_text(f"{value}\n")

    @property
    def boot(self) -> str:
        return (self.dir / "boot").read_text().strip() if (self.dir / "boot").exists() else "default"

    def calls(self) -> list[str]:
        path = self.dir / "calls"
        return path.read_text().splitlines() if path.exists() else []

    def changes(self) -> list[str]:
        """The set calls the BMC made to the chassis: what an IPMI command changed."""
        return [c for c in self.calls() if c.startswith("set ")]

    def reset_files(self) -> None:
        for name in ("power", "boot", "calls", "resets", "stuck"):
            (self.dir / name).unlink(missing_ok=True)


@contextlib.contextmanager
def ipmi_sim(directory: Path, program: str = CHASSIS_SCRIPT, extra: str = "") -> Iterator[IpmiSim]:
    """ipmi_sim listening on a free UDP port of 127.0.0.1, user USER/PASSWORD with admin rights. `program`: the
    text of its chassis-control program (called with the chassis directory first); `extra`: lan.conf lines."""
    directory.mkdir(parents=True, exist_ok=True)
    chassis_dir = directory / "chassis"
    chassis_dir.mkdir(exist_ok=True)
    script = directory / "chassis-control"
    script.write_text(program)
    script.chmod(0o755)
    port = free_port(socket.SOCK_DGRAM)
    auths = "none md2 md5 straight"
    (directory / "lan.conf").write_text(
        f"""name "kiln-test"
set_working_mc 0x20
  startlan 1
    addr 127.0.0.1 {port}
    priv_limit admin
    allowed_auths_callback {auths}
    allowed_auths_user {auths}
    allowed_auths_operator {auths}
    allowed_auths_admin {auths}
    guid a123456789abcdefa123456789abcdef
  endlan
  chassis_control "{script} {chassis_dir}"
  user 2 true "{USER}" "{PASSWORD}" admin 10 {auths}
{extra}"""
    )
    (directory / "cmds.emu").write_text(
        "mc_setbmc 0x20\nmc_add 0x20 0 no-device-sdrs 0x23 9 8 0x9f 0x1291 0xf02 persist_sdr\nmc_enable 0x20\n"
    )
    state = directory / "state"
    argv = ["ipmi_sim", "-c", str(directory / "lan.conf"), "-f", str(directory / "cmds.emu"), "-n", "-s", str(state)]
    with running("ipmi_sim", argv, directory / "ipmi_sim.log", lambda: _udp_bound(port), 10):
        yield IpmiSim(f"127.0.0.1:{port}", chassis_dir)


def _udp_bound(port: int) -> bool:
    """Some socket of this machine has 127.0.0.1:PORT (UDP) bound: the simulator is listening."""
    with open("/proc/net/udp") as f:
        return any(line.split()[1] == f"0100007F:{port:04X}" for line in f.readlines()[1:])


@dataclass
class Redfish:
    url: str  # http://127.0.0.1:PORT
    system: str  # the fake system's id (its UUID)


@contextlib.contextmanager
def sushy_emulator(
    directory: Path, *, name: str = "web1", power: str = "Off", tls: tuple[Path, Path] | None = None
) -> Iterator[Redfish]:
    """sushy-emulator --fake on a free port of 127.0.0.1 with HTTP basic auth for USER/PASSWORD and one system;
    `tls`: (certificate, key) files: HTTPS."""
    import bcrypt

    directory.mkdir(parents=True, exist_ok=True)
    htpasswd = directory / "htpasswd"
    htpasswd.write_text(f"{USER}:{bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(4)).decode()}\n")
    uuid = "27946b59-9e44-4fa7-8e91-f3527a1ef094"
    system = {"uuid": uuid, "name": name, "power_state": power, "nics": [{"mac": "52:54:00:10:00:21"}]}
    config = directory / "emulator.conf"
    config.write_text(
        f"SUSHY_EMULATOR_AUTH_FILE = {str(htpasswd)!r}\n"
        f"SUSHY_EMULATOR_STATE_DIR = {str(directory / 'state')!r}\n"
        f"SUSHY_EMULATOR_FAKE_SYSTEMS = [{system!r}]\n"
        + (f"SUSHY_EMULATOR_SSL_CERT = {str(tls[0])!r}\nSUSHY_EMULATOR_SSL_KEY = {str(tls[1])!r}\n" if tls else "")
    )
    port = free_port()
    emulator = Path(sys.executable).parent / "sushy-emulator"
    argv = [str(emulator), "--config", str(config), "--fake", "-i", "127.0.0.1", "-p", str(port)]
    with running("sushy-emulator", argv, directory / "emulator.log", lambda: _listening(port), 30):
        yield Redfish(f"{'https' if tls else 'http'}://127.0.0.1:{port}", uuid)


def _listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0
