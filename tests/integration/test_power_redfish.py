"""The redfish power driver (sushy) against a real Redfish service: sushy-tools' emulator with its fake driver, an
in-memory system that takes each power change 1 to 11 s after the request, as hardware does (so the driver's wait
for the new state is exercised; those tests are slow)."""

from __future__ import annotations

import json
import time
import urllib.request
from base64 import b64encode
from collections.abc import Iterator
from pathlib import Path

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


def _ca_and_leaf(directory: Path) -> tuple[Path, Path, Path]:
    """A throwaway CA and a certificate it issued for 127.0.0.1: (ca.pem, leaf.pem, leaf.key)."""
    import datetime as dt
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = dt.datetime.now(dt.UTC)
    ca_key, leaf_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test BMC CA")])
    ca = (
        x509.CertificateBuilder(subject_name=ca_name, issuer_name=ca_name, public_key=ca_key.public_key())
        .serial_number(1)
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    leaf = (
        x509.CertificateBuilder(
            subject_name=x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]),
            issuer_name=ca_name,
            public_key=leaf_key.public_key(),
        )
        .serial_number(2)
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
        .sign(ca_key, hashes.SHA256())
    )
    paths = directory / "ca.pem", directory / "leaf.pem", directory / "leaf.key"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    key = leaf_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    paths[2].write_bytes(key)
    return paths


def test_https_checks_the_bmcs_certificate_against_the_named_ca(tmp_path: Path):
    ca, leaf, key = _ca_and_leaf(tmp_path)
    with sushy_emulator(tmp_path / "redfish", tls=(leaf, key)) as tls:
        assert tls.url.startswith("https://")
        assert control.run(Redfish("web1", tls.url, USER, PASSWORD, ca=ca), "status") == "off"
        untrusted = r"^web1: the BMC at https://.* shows an HTTPS certificate this machine does not trust: .*bmc\.ca$"
        with pytest.raises(PowerError, match=untrusted):
            control.run(Redfish("web1", tls.url, USER, PASSWORD), "on")
