"""How a host proves who it is to the provisioning server (the agent signs, the server verifies; frozen into the
agent: standard library and cryptography only).

Enrolment: arming a host mints a one-time token for that provisioning. The host's first bundle request
(POST /v1/enrol) carries it as `Authorization: Bearer TOKEN`, with the Ed25519 public key the host made at
its first boot; the server binds that key to the host. Every later call is signed with the key:

    Authorization: KilnHost host=NAME, ts=UNIX_SECONDS, nonce=HEX, sig=BASE64

where sig is the Ed25519 signature over the canonical request:

    "kiln-host-v1\\n" METHOD "\\n" PATH_AND_QUERY "\\n" ts "\\n" nonce "\\n" hex(sha256(body))

The server accepts a timestamp within MAX_SKEW seconds of its clock and each nonce once within that window,
so a captured request cannot be replayed; the signed path and body bind the signature to that one request.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import re
import secrets
import time
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from kiln import signing

SCHEME = "KilnHost"
MAX_SKEW = 300  # seconds between a host's clock and the server's
_HEADER = re.compile(
    r"^KilnHost host=(?P<host>[a-z][a-z0-9-]{0,62}), ts=(?P<ts>[0-9]{1,12}), "
    r"nonce=(?P<nonce>[0-9a-f]{32}), sig=(?P<sig>[A-Za-z0-9+/]{86}==)$"
)


class AuthError(Exception):
    """A request whose credential is missing, malformed, stale, replayed or not the host's."""


# a host key is an Ed25519 key like the bundle signing key: made and written the same way
generate_key = signing.generate_private_key
private_pem = signing.private_key_pem


def load_private(pem: bytes) -> Ed25519PrivateKey:
    key = serialization.load_pem_private_key(pem, password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise AuthError("the host key is not Ed25519")
    return key


def public_text(key: Ed25519PublicKey) -> str:
    """The raw public key as base64 (44 characters): what enrolment registers."""
    return base64.b64encode(key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)).decode()


@functools.lru_cache(maxsize=16384)  # a host's key is parsed once, not on every request it signs
def load_public(text: str) -> Ed25519PublicKey:
    try:
        raw = base64.b64decode(text, validate=True)
        return Ed25519PublicKey.from_public_bytes(raw)
    except ValueError:
        raise AuthError("not an Ed25519 public key (base64 of 32 bytes)") from None


def canonical(method: str, target: str, ts: int, nonce: str, body: bytes) -> bytes:
    return f"kiln-host-v1\n{method.upper()}\n{target}\n{ts}\n{nonce}\n{hashlib.sha256(body).hexdigest()}".encode()


def authorization(
    key: Ed25519PrivateKey, host: str, method: str, target: str, body: bytes = b"", *, now: float | None = None
) -> str:
    """The Authorization header value for one request (`target`: path and query, as sent; `now`: the server's
    clock as the host best knows it, when its own may be off before NTP)."""
    ts, nonce = int(time.time() if now is None else now), secrets.token_hex(16)
    sig = base64.b64encode(key.sign(canonical(method, target, ts, nonce, body))).decode()
    return f"{SCHEME} host={host}, ts={ts}, nonce={nonce}, sig={sig}"


@dataclass(frozen=True)
class Claim:
    """What a KilnHost header says, before it is verified."""

    host: str
    ts: int
    nonce: str
    signature: bytes


def parse(header: str | None) -> Claim:
    if not header:
        raise AuthError("no credential")
    found = _HEADER.fullmatch(header.strip())
    if found is None:
        raise AuthError("malformed KilnHost credential")
    return Claim(found["host"], int(found["ts"]), found["nonce"], base64.b64decode(found["sig"]))


def verify(claim: Claim, key: Ed25519PublicKey, method: str, target: str, body: bytes, now: float) -> None:
    """Raise AuthError unless the claim is fresh and signed by `key` over exactly this request (the caller checks
    the nonce was not seen before)."""
    if abs(now - claim.ts) > MAX_SKEW:
        raise AuthError(f"timestamp {claim.ts} is more than {MAX_SKEW} s from the server's clock (check NTP)")
    try:
        key.verify(claim.signature, canonical(method, target, claim.ts, claim.nonce, body))
    except InvalidSignature:
        raise AuthError("the signature does not match this host's key and request") from None
