"""The ipmi driver: ipmitool over IPMI 2.0 (-I lanplus). The password reaches ipmitool through its environment
(-E reads IPMI_PASSWORD), never its command line, which other users see in ps and kiln's errors quote."""

from __future__ import annotations

import os

from kiln.power.chassis import OFF, ON, BadCredentials, Chassis, PowerError, State, Unreachable
from kiln.run import CommandError, run

PORT = 623
# What ipmitool -v prints when the BMC refused the session's login (wrong password; unknown user)
_REFUSED = ("RAKP 2 HMAC is invalid", "unauthorized name", "Invalid user name", "insufficient resources for session")
_NO_ANSWER = ("Get Auth Capabilities error", "No response", "Unable to Get Channel Cipher Suites")


def split_address(address: str) -> tuple[str, int]:
    """HOST[:PORT] (roles.yaml bmc.address) → (host, port); UDP 623 by default."""
    host, _, port = address.partition(":")
    return host, int(port) if port else PORT


class Ipmi(Chassis):
    def __init__(
        self,
        host: str,
        address: str,
        username: str,
        password: str,
        *,
        cipher_suite: int | None = None,
        retries: int = 3,
        interval: int = 2,
    ) -> None:
        """`retries` and `interval` (seconds): ipmitool's -R and -N, how long an unreachable BMC is waited for
        (about retries × interval seconds)."""
        super().__init__(host)
        self.address = address
        self._bmc, self._port = split_address(address)
        self._username = username
        self._password = password
        self._cipher = cipher_suite
        self._retries = retries
        self._interval = interval

    def _ipmitool(self, *command: str) -> str:
        argv = ["ipmitool", "-I", "lanplus", "-H", self._bmc, "-p", str(self._port), "-U", self._username, "-E"]
        argv += ["-N", str(self._interval), "-R", str(self._retries), "-v"]  # -v: says why a session failed
        if self._cipher is not None:
            argv += ["-C", str(self._cipher)]
        env = {**os.environ, "IPMI_PASSWORD": self._password}
        timeout = 30 + 2 * self._retries * self._interval
        try:
            return run([*argv, *command], env=env, timeout=timeout).stdout
        except CommandError as e:
            raise self._error(" ".join(command), e) from None

    def _error(self, what: str, e: CommandError) -> PowerError:
        out = e.output
        where = f"the BMC at {self.address} (ipmi)"
        if any(s in out for s in _REFUSED):
            return BadCredentials(
                f"{self.host}: {where} refused the login of {self._username!r}: check its secrets file"
            )
        if e.returncode == 127:
            return PowerError(f"{self.host}: ipmitool is not installed (Debian package ipmitool)")
        if any(s in out for s in _NO_ANSWER) or "Unable to establish" in out or e.returncode == -9:
            return Unreachable(f"{self.host}: no answer from {where}")
        tail = " ".join(line.strip() for line in out.strip().splitlines()[-2:])
        return PowerError(f"{self.host}: {where} failed `{what}`: {tail}")

    def status(self) -> State:
        out = self._ipmitool("chassis", "power", "status")
        for line in out.splitlines():
            if line.startswith("Chassis Power is "):
                state = line.removeprefix("Chassis Power is ").strip()
                if state in (ON, OFF):
                    return ON if state == ON else OFF
        raise PowerError(f"{self.host}: the BMC at {self.address} answered no power state: {out.strip()[-200:]}")

    def power_on(self) -> None:
        self._ipmitool("chassis", "power", "on")

    def power_off(self) -> None:
        self._ipmitool("chassis", "power", "off")

    def power_cycle(self) -> None:
        # IPMI refuses (or ignores) a power cycle of a chassis that is off
        self._ipmitool("chassis", "power", "cycle" if self.status() == ON else "on")

    def bootdev_pxe(self) -> None:
        self._ipmitool("chassis", "bootdev", "pxe")  # without options=persistent: the next boot only
