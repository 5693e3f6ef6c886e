"""Bundles are signed over their exact bytes; any change of one byte, or another key, is refused."""

from __future__ import annotations

import pytest

from kiln import bundle, signing
from kiln.render import render_host


@pytest.fixture(scope="module")
def key():
    return signing.generate_private_key()


@pytest.fixture(scope="module")
def body(cluster) -> bytes:
    return render_host(cluster, cluster.host("db2")).to_json()


def test_a_signed_bundle_verifies(key, body):
    signing.verify(body, signing.sign(body, key), key.public_key())


def test_every_single_byte_change_is_detected(key, body):
    header = signing.sign(body, key)
    for i in range(0, len(body), max(1, len(body) // 200)):
        altered = bytearray(body)
        altered[i] ^= 0x01
        with pytest.raises(signing.SignatureError):
            signing.verify(bytes(altered), header, key.public_key())


def test_another_key_is_refused(key, body):
    other = signing.generate_private_key()
    with pytest.raises(signing.SignatureError, match="does not match"):
        signing.verify(body, signing.sign(body, other), key.public_key())


@pytest.mark.parametrize("header", [None, "", "rsa:AAAA", "ed25519:not base64!", "ed25519:"])
def test_malformed_headers_are_refused(key, body, header):
    with pytest.raises(signing.SignatureError):
        signing.verify(body, header, key.public_key())


def test_public_key_round_trips_through_pem(key, body):
    pem = signing.public_key_pem(key.public_key())
    assert pem.startswith(b"-----BEGIN PUBLIC KEY-----")
    signing.verify(body, signing.sign(body, key), signing.load_public_key(pem))
    assert signing.fingerprint(signing.load_public_key(pem)).startswith("SHA256:")


def test_canonical_bytes_do_not_depend_on_key_order():
    assert bundle.dumps({"b": 1, "a": [1, {"d": 2, "c": 3}]}) == bundle.dumps({"a": [1, {"c": 3, "d": 2}], "b": 1})
