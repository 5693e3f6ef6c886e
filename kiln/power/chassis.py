"""The interface every power driver implements, and the errors it raises. States are "on" and "off"."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Literal

State = Literal["on", "off"]
ON: State = "on"
OFF: State = "off"


class PowerError(Exception):
    """A power action failed; the message names the host and says what failed."""


class BadCredentials(PowerError):
    """The BMC refused the login in secrets/."""


class Unreachable(PowerError):
    """No answer from the BMC (address, port, network, or the BMC is down)."""


class NotConfirmed(PowerError):
    """The BMC took the command but did not report the new state in time."""


class Chassis(ABC):
    """One host's power through its BMC. Each call is one exchange with the BMC; none waits for the new state
    (kiln.power.control does). Errors are PowerError subclasses naming `host`."""

    def __init__(self, host: str) -> None:
        self.host = host

    @abstractmethod
    def status(self) -> State:
        """The chassis power state as the BMC reports it now."""

    @abstractmethod
    def power_on(self) -> None:
        """Power on (nothing when it is on)."""

    @abstractmethod
    def power_off(self) -> None:
        """Power off at once, as a held power button (no shutdown of the operating system)."""

    @abstractmethod
    def power_cycle(self) -> None:
        """A hard reset of a machine that is on (off, then on again for IPMI); power on one that is off."""

    @abstractmethod
    def bootdev_pxe(self) -> None:
        """Make the next boot (only the next) a network boot; later boots use the configured order again."""

    def on(self, *, pxe: bool = False) -> None:
        """power_on, after a one-time PXE override with `pxe`. Drivers whose override works differently replace it."""
        if pxe:
            self.bootdev_pxe()
        self.power_on()

    def cycle(self, *, pxe: bool = False) -> None:
        """power_cycle, after a one-time PXE override with `pxe`."""
        if pxe:
            self.bootdev_pxe()
        self.power_cycle()
