"""A bundle is applied only when its signature, schema and host binding check out; otherwise nothing of it is."""

from __future__ import annotations

import json

import pytest

from firstboot.errors import Refused
from firstboot.verify import verify_bundle
from kiln import signing
from kiln.bundle import BUNDLE_SCHEMA
from tests.unit.agent_support import MAC, OTHER_MAC, bundle, signed

KEY = signing.generate_private_key()
PUB = signing.public_key_pem(KEY.public_key())


def test_a_good_bundle_verifies() -> None:
    body, sig = signed(bundle(), KEY)
    assert verify_bundle(body, sig, PUB, ["aa:bb:cc:dd:ee:ff", MAC])["host"]["name"] == "db1"


def test_one_tampered_byte_is_refused() -> None:
    body, sig = signed(bundle(), KEY)
    tampered = body.replace(b'"db1\\n"', b'"db9\\n"')
    assert tampered != body
    with pytest.raises(Refused, match="does not match"):
        verify_bundle(tampered, sig, PUB, [MAC])


def test_a_bundle_for_another_host_is_refused() -> None:
    body, sig = signed(bundle(OTHER_MAC), KEY)
    with pytest.raises(Refused, match=f"for db1 \\({OTHER_MAC}\\), not this machine \\({MAC}\\)"):
        verify_bundle(body, sig, PUB, [MAC])


def test_an_unknown_schema_version_is_refused() -> None:
    data = bundle()
    data["schema"] = BUNDLE_SCHEMA + 1
    body, sig = signed(data, KEY)
    with pytest.raises(Refused, match=f"schema {BUNDLE_SCHEMA + 1}, this agent knows schema {BUNDLE_SCHEMA}"):
        verify_bundle(body, sig, PUB, [MAC])


def test_a_bundle_signed_by_an_unknown_key_is_refused() -> None:
    body, sig = signed(bundle(), signing.generate_private_key())
    with pytest.raises(Refused) as e:
        verify_bundle(body, sig, PUB, [MAC])
    assert "signing key" in e.value.next_action


@pytest.mark.parametrize("header", [None, "", "rsa:abcd", "ed25519:not base64!"])
def test_missing_or_malformed_signatures_are_refused(header: str | None) -> None:
    body, _ = signed(bundle(), KEY)
    with pytest.raises(Refused):
        verify_bundle(body, header, PUB, [MAC])


def test_signed_non_object_json_is_refused() -> None:
    body = json.dumps([1, 2]).encode()
    with pytest.raises(Refused, match="not a JSON object"):
        verify_bundle(body, signing.sign(body, KEY), PUB, [MAC])
