"""The redfish driver: the BMC's Redfish API through sushy (OpenStack's Redfish client library)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kiln.power.chassis import OFF, ON, BadCredentials, Chassis, PowerError, State, Unreachable


class Redfish(Chassis):
    def __init__(
        self,
        host: str,
        address: str,
        username: str,
        password: str,
        *,
        system: str | None = None,
        ca: Path | None = None,
        timeout: float = 30.0,
    ) -> None:
        """`address`: http(s)://HOST[:PORT] of the BMC; `system`: the ComputerSystem id (None: the only one);
        `ca`: the CA certificate the BMC's HTTPS certificate is checked against (None: the system's CAs);
        `timeout`: seconds per request."""
        super().__init__(host)
        self.address = address.rstrip("/")
        self._username = username
        self._password = password
        self._system_id = system
        self._verify: bool | str = str(ca) if ca is not None else True
        self._timeout = timeout
        self._system: Any = None

    def _call(self, what: str, action: Any) -> Any:
        """`action()` with sushy's errors turned into PowerErrors naming the host."""
        import requests
        import sushy.exceptions as sx

        where = f"the BMC at {self.address} (redfish)"
        try:
            return action()
        except sx.AccessError:
            raise BadCredentials(
                f"{self.host}: {where} refused the login of {self._username!r}: check its secrets file"
            ) from None
        except (sx.ConnectionError, requests.exceptions.ConnectionError, requests.exceptions.Timeout) as e:
            if "CERTIFICATE_VERIFY_FAILED" in str(e) or isinstance(e, requests.exceptions.SSLError):
                raise PowerError(
                    f"{self.host}: {where} shows an HTTPS certificate this machine does not trust: "
                    "put its CA certificate under secrets/ and name it as bmc.ca"
                ) from None
            raise Unreachable(f"{self.host}: no answer from {where}") from None
        except sx.SushyError as e:
            raise PowerError(f"{self.host}: {where} failed to {what}: {e}") from None

    def _connect(self) -> Any:
        if self._system is None:
            import sushy

            def connect() -> Any:
                conn = sushy.Sushy(
                    f"{self.address}/redfish/v1",
                    username=self._username,
                    password=self._password,
                    verify=self._verify,
                    server_side_retries=2,
                    server_side_retries_delay=1,
                    read_timeout=self._timeout,
                    connect_timeout=self._timeout,
                )
                if self._system_id is not None:
                    return conn.get_system(f"/redfish/v1/Systems/{self._system_id}")
                members = conn.get_system_collection().members_identities
                if len(members) != 1:
                    raise PowerError(
                        f"{self.host}: the BMC at {self.address} has {len(members)} systems: name one as bmc.system"
                    )
                return conn.get_system(members[0])

            self._system = self._call("connect", connect)
        return self._system

    def status(self) -> State:
        import sushy

        system = self._connect()
        self._call("read the power state", system.refresh)
        state = system.power_state
        # PoweringOn and PoweringOff are on their way: not yet the state they lead to
        return ON if state in (sushy.PowerState.ON, sushy.PowerState.POWERING_OFF) else OFF

    def _reset(self, kind: Any) -> None:
        system = self._connect()
        self._call(f"reset ({kind.value})", lambda: system.reset_system(kind))

    def power_on(self) -> None:
        import sushy

        self._reset(sushy.ResetType.ON)

    def power_off(self) -> None:
        import sushy

        self._reset(sushy.ResetType.FORCE_OFF)

    def power_cycle(self) -> None:
        import sushy

        self._reset(sushy.ResetType.FORCE_RESTART if self.status() == ON else sushy.ResetType.ON)

    def bootdev_pxe(self) -> None:
        import sushy

        system = self._connect()
        once = sushy.BootSourceOverrideEnabled.ONCE
        self._call("set the boot override", lambda: system.set_system_boot_options(sushy.BootSource.PXE, enabled=once))
