"""Bundle verification: the Ed25519 signature over the exact body bytes, the schema, the host binding.

Any mismatch raises Refused and nothing of the bundle is applied.
"""

from __future__ import annotations

import json
from typing import Any

from firstboot.errors import Refused

KEY_HINT = (
    "check that this image was built with the server's signing key (secrets/signing.pub); rebuild it if the key changed"
)


def verify_bundle(body: bytes, signature: str | None, public_key_pem: bytes, macs: list[str]) -> dict[str, Any]:
    from kiln import signing
    from kiln.bundle import BUNDLE_SCHEMA

    try:
        key = signing.load_public_key(public_key_pem)
        signing.verify(body, signature, key)
    except signing.SignatureError as e:
        raise Refused(f"bundle refused: {e}", KEY_HINT) from None
    try:
        bundle = json.loads(body)
    except ValueError as e:
        raise Refused(f"bundle refused: not JSON ({e.__class__.__name__})") from None
    if not isinstance(bundle, dict):
        raise Refused("bundle refused: not a JSON object")
    schema = bundle.get("schema")
    if schema != BUNDLE_SCHEMA:
        raise Refused(
            f"bundle refused: schema {schema!r}, this agent knows schema {BUNDLE_SCHEMA}",
            "rebuild the image with an agent that matches the server (./inv freeze, ./inv build)",
        )
    host = bundle.get("host") if isinstance(bundle.get("host"), dict) else {}
    mac = str(host.get("mac", "")).lower()
    if mac not in macs:
        raise Refused(
            f"bundle refused: it is for {host.get('name', '?')} ({mac or 'no MAC'}), "
            f"not this machine ({', '.join(macs) or 'no MACs'})",
            "check this machine's MAC in roles.yaml",
        )
    return bundle
