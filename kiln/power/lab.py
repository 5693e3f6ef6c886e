"""The lab driver: a lab VM's power through QEMU's machine protocol (QMP, run/<host>.qmp); powering on is the lab's
own VM start (kiln.lab.vm.start), so the VM comes back as `lab up` made it.

PXE on the next boot, the QEMU way: the VM starts with `-boot once=n` (QEMU puts the usual order back at the
first reset); a running VM is stopped (quit) and started so. QMP has no one-time boot order for a reset: a NIC's
bootindex set with qom-set does reach the firmware at the next reset (QEMU rewrites fw_cfg "bootorder" at each),
but SeaBIOS answers that reset with a second one of its own ("Attempting a hard reboot"), so putting the old
bootindex back after the RESET event loses the override, and waiting for the firmware's reset is a race.
"""

from __future__ import annotations

import contextlib
import errno
import socket
import time
from collections.abc import Callable
from pathlib import Path

from kiln.lab.qmp import Qmp, QmpError
from kiln.power.chassis import OFF, ON, Chassis, PowerError, State, Unreachable

QUIT_WAIT = 10.0  # seconds QEMU gets to exit once told to quit


class LabVm(Chassis):
    def __init__(
        self,
        host: str,
        qmp: Path,
        start: Callable[[bool], object],
        running: Callable[[], bool] = lambda: False,
    ) -> None:
        """`qmp`: the VM's QMP socket; `start(pxe_once)`: powers the VM on (the lab's start); `running()`: whether the
        lab's process of the VM lives (kiln.lab.vm.running)."""
        super().__init__(host)
        self.qmp = qmp
        self._start = start
        self._running = running

    def _session(self) -> Qmp:
        return Qmp(self.qmp)

    def status(self) -> State:
        try:
            with self._session() as q:
                state = q.command("query-status")["status"]
        except QmpError as e:
            if self._gone() and self._running():
                raise Unreachable(
                    f"{self.host}: its VM runs without a QMP socket (started before kiln gave it one): "
                    "./inv lab down, then up"
                ) from None
            if self._gone():
                return OFF
            raise Unreachable(f"{self.host}: QEMU does not answer on {self.qmp}: {e}") from None
        return OFF if state == "shutdown" else ON

    def _gone(self) -> bool:
        """No QEMU behind the socket: no socket file, or nobody listening on it."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(1)
            try:
                s.connect(str(self.qmp))
            except OSError as e:
                return e.errno in (errno.ENOENT, errno.ECONNREFUSED)
        return False

    def power_on(self) -> None:
        self.on()

    def on(self, *, pxe: bool = False) -> None:
        if self.status() == OFF:
            self._start(pxe)

    def power_off(self) -> None:
        # quit: QEMU exits at once, the lab's pull-the-plug; the guest gets no shutdown, as with IPMI's power off.
        # QEMU may close the socket before its answer arrives: whether it went is for control.confirm to see.
        with contextlib.suppress(QmpError), self._session() as q:
            q.command("quit")

    def power_cycle(self) -> None:
        self.cycle()

    def cycle(self, *, pxe: bool = False) -> None:
        if self.status() == OFF:
            self._start(pxe)
            return
        if pxe:  # QEMU has no one-time boot order for a reset (module docstring): off, then on with -boot once=n
            self.power_off()
            deadline = time.monotonic() + QUIT_WAIT
            while not self._gone():
                if time.monotonic() > deadline:
                    raise PowerError(f"{self.host}: QEMU still runs {QUIT_WAIT:g} s after quit")
                time.sleep(0.1)
            self._start(True)
            return
        try:
            with self._session() as q:
                q.command("system_reset")
        except QmpError as e:
            raise PowerError(f"{self.host}: QEMU: {e}") from None

    def bootdev_pxe(self) -> None:
        raise PowerError(f"{self.host}: a lab VM boots from the network once only with on or cycle (--pxe)")
