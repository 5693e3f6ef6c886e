"""Ed25519 signatures over a bundle's exact bytes. The server signs; the agent verifies with the baked key."""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

PREFIX = "ed25519:"


class SignatureError(Exception):
    """A signature is missing, malformed or does not match the body."""


def generate_private_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def private_key_pem(key: Ed25519PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def public_key_pem(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def load_private_key(path: Path) -> Ed25519PrivateKey:
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise SignatureError(f"{path}: not an Ed25519 private key")
    return key


def load_public_key(pem: bytes) -> Ed25519PublicKey:
    try:
        key = serialization.load_pem_public_key(pem)
    except ValueError as e:
        raise SignatureError(f"not a PEM public key: {e}") from None
    if not isinstance(key, Ed25519PublicKey):
        raise SignatureError("the public key is not Ed25519")
    return key


def sign(body: bytes, key: Ed25519PrivateKey) -> str:
    """The X-Kiln-Signature header value for `body`."""
    return PREFIX + base64.b64encode(key.sign(body)).decode()


def verify(body: bytes, header: str | None, key: Ed25519PublicKey) -> None:
    """Raise SignatureError unless `header` is a valid signature of exactly `body`."""
    if not header:
        raise SignatureError("the bundle carries no signature")
    if not header.startswith(PREFIX):
        raise SignatureError(f"unknown signature scheme {header.split(':', 1)[0]!r} (expected ed25519)")
    try:
        signature = base64.b64decode(header[len(PREFIX) :], validate=True)
    except ValueError:
        raise SignatureError("the signature is not valid base64") from None
    try:
        key.verify(signature, body)
    except InvalidSignature:
        raise SignatureError("the signature does not match the bundle (altered, or signed by another key)") from None


def fingerprint(key: Ed25519PublicKey) -> str:
    """SHA256 fingerprint of the raw public key, as OpenSSH prints them."""
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return "SHA256:" + base64.b64encode(hashlib.sha256(raw).digest()).decode().rstrip("=")
