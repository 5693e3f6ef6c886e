"""The redfish power driver (sushy) against a real Redfish service: sushy-tools' emulator with its fake driver, an
in-memory system that takes each power change 1 to 11 s after the request, as hardware does (so the driver's wait
for the new state is exercised; those tests are slow)."""

from __future__ import annotations

import json
import time
import urllib.request
from base64 import b64encode
from collections.abc import Iterator

import pytest

from kiln.power import control
from kiln.power.chassis import BadCredentials, PowerError, Unreachable
from kiln.power.redfish import Redfish
from tests.integration.bmc import PASSWORD, USER, free_port, sushy_emulator
from tests.integration.bmc import Redfish as Emulator

pytest.importorskip("sushy_tools", reason="needs sushy-tools (pip, the dev extra)")
pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Emulator]:
    with sushy_emulator(tmp_path_factory.mktemp("redfish")) as running:
        yield running


def system(emulator: Emulator) -> dict:
    """The system as the emulator serves it, read without kiln's code."""
    request = urllib.request.Request(f"{emulator.url}/redfish/v1/Systems/{emulator.system}")
    request.add_header("Authorization", "Basic " + b64encode(f"{USER}:{PASSWORD}".encode()).decode())
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def chassis(emulator: Emulator, password: str = PASSWORD, **options) -> Redfish:
    return Redfish("web1", emulator.url, USER, password, **options)


def test_status_as_the_emulator_reports_it(emulator: Emulator):
    want = "on" if system(emulator)["PowerState"] == "On" else "off"
    assert control.run(chassis(emulator), "status") == want
    assert control.run(chassis(emulator, system=emulator.system), "status") == want


def test_bad_credentials_name_the_host_and_change_nothing(emulator: Emulator):
    before = system(emulator)
    with pytest.raises(
        BadCredentials, match=r"^web1: the BMC at http://127\.0\.0\.1:\d+ \(redfish\) refused the login"
    ):
        control.run(chassis(emulator, password="wrong"), "cycle", pxe=True)
    after = system(emulator)
    assert (after["PowerState"], after["Boot"]) == (before["PowerState"], before["Boot"])


def test_an_unreachable_bmc_names_the_host():
    began = time.monotonic()
    silent = Redfish("web1", f"http://127.0.0.1:{free_port()}", USER, PASSWORD, timeout=5)
    with pytest.raises(Unreachable, match=r"^web1: no answer from the BMC at http://127\.0\.0\.1:\d+ \(redfish\)$"):
        control.run(silent, "on")
    assert time.monotonic() - began < 15


def test_an_unknown_system_is_a_clear_error(emulator: Emulator):
    with pytest.raises(PowerError, match=r"^web1: the BMC at .* failed to connect"):
        control.run(chassis(emulator, system="no-such-system"), "status")


@pytest.mark.slow
def test_on_with_pxe_then_cycle_then_off_each_confirmed(emulator: Emulator):
    """Power changes land 1-11 s after the request: up to about 35 s for the three."""
    if system(emulator)["PowerState"] == "On":
        control.run(chassis(emulator), "off", timeout=30)
    assert control.run(chassis(emulator), "on", pxe=True, timeout=30) == "on"
    served = system(emulator)
    assert served["PowerState"] == "On"
    # the emulator keeps the target; it always reports BootSourceOverrideEnabled as Continuous (its template)
    assert served["Boot"]["BootSourceOverrideTarget"] == "Pxe"
    assert control.run(chassis(emulator), "cycle", timeout=30) == "on"
    assert control.run(chassis(emulator), "off", timeout=30) == "off"
    assert system(emulator)["PowerState"] == "Off"
