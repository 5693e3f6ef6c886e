"""The fetch step: a bundle is applied only when its signature, its contract and its host binding check out;
otherwise nothing of it is, and the failure says why (for a bundle that does not fit: its JSON path).

The run-path tests fetch over real HTTPS from a loopback stand-in whose certificate a throwaway CA signed,
the CA baked into the fake machine as the image bakes /etc/kiln/ca.pem.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from firstboot.errors import Refused
from firstboot.steps.fetch import verify
from kiln import signing
from kiln.bundle import BUNDLE_SCHEMA, shared_digest
from tests.unit.agent_support import (
    HOSTS,
    MAC,
    OTHER_MAC,
    as_data,
    bundle,
    http_stand_in,
    machine,
    reply,
    signed,
    tls_for_loopback,
    with_shared_hosts,
)

KEY = signing.generate_private_key()
PUB = signing.public_key_pem(KEY.public_key())


def test_a_good_bundle_verifies() -> None:
    body, sig = signed(bundle(), KEY)
    assert verify(body, sig, PUB, ["aa:bb:cc:dd:ee:ff", MAC]) == bundle()


def test_one_tampered_byte_is_refused() -> None:
    body, sig = signed(bundle(), KEY)
    tampered = body.replace(b'"db1\\n"', b'"db9\\n"')
    assert tampered != body
    with pytest.raises(Refused, match="does not match"):
        verify(tampered, sig, PUB, [MAC])


def test_a_bundle_for_another_host_is_refused() -> None:
    body, sig = signed(bundle(OTHER_MAC), KEY)
    with pytest.raises(Refused, match=f"for db1 \\({OTHER_MAC}\\), not this machine \\({MAC}\\)"):
        verify(body, sig, PUB, [MAC])


def test_an_unknown_schema_version_is_refused() -> None:
    data = as_data(bundle())
    data["schema"] = BUNDLE_SCHEMA + 1
    body, sig = signed(data, KEY)
    with pytest.raises(Refused, match=f"schema: {BUNDLE_SCHEMA + 1}: this agent knows schema {BUNDLE_SCHEMA}") as e:
        verify(body, sig, PUB, [MAC])
    assert "./inv freeze" in e.value.next_action


def test_a_bundle_signed_by_an_unknown_key_is_refused() -> None:
    body, sig = signed(bundle(), signing.generate_private_key())
    with pytest.raises(Refused) as e:
        verify(body, sig, PUB, [MAC])
    assert "signing key" in e.value.next_action


@pytest.mark.parametrize("header", [None, "", "rsa:abcd", "ed25519:not base64!"])
def test_missing_or_malformed_signatures_are_refused(header: str | None) -> None:
    body, _ = signed(bundle(), KEY)
    with pytest.raises(Refused):
        verify(body, header, PUB, [MAC])


def test_signed_non_object_json_is_refused_at_its_root() -> None:
    body = json.dumps([1, 2]).encode()
    with pytest.raises(Refused, match=r"bundle refused: \$: expected an object, got a list"):
        verify(body, signing.sign(body, KEY), PUB, [MAC])


def test_a_world_writable_secret_is_refused_with_its_json_path() -> None:
    data = as_data(bundle())
    data["secrets"][0]["mode"] = "0666"
    body, sig = signed(data, KEY)
    with pytest.raises(Refused, match=r"\$\.secrets\[0\]\.mode: '0666' does not match"):
        verify(body, sig, PUB, [MAC])


def served(
    root: Path, body: bytes, signature: str, shared: dict[str, bytes] | None = None
) -> tuple[subprocess.CompletedProcess[str], list[dict[str, Any]]]:
    """`firstboot run` on a fake machine whose seed names an HTTPS stand-in serving `body` for its MAC (and
    `shared` contents by digest); what it printed, and the events the stand-in received."""
    ca, context = tls_for_loopback(root.parent)
    machine(root, KEY, ca=ca)
    routes = {
        ("GET", "/v1/bundle"): reply(200, body, {"X-Kiln-Signature": signature}),
        ("POST", "/v1/hosts/db1/events"): reply(201),
    }
    routes |= {("GET", f"/v1/shared/{digest}"): reply(200, content) for digest, content in (shared or {}).items()}
    with http_stand_in(routes, tls=context) as (url, seen):
        (root / "etc/kiln/seed.json").write_text(json.dumps({"url": url, "host": "db1"}))
        argv = ["run", "--root", str(root), "--imds-endpoint", "", "--fetch-deadline", "5"]
        result = subprocess.run(
            [sys.executable, "-m", "firstboot", *argv], capture_output=True, text=True, timeout=60, check=False
        )
    assert ("GET", f"/v1/bundle?mac={MAC.replace(':', '%3A')}", b"") in seen, seen
    return result, [json.loads(body) for method, _, body in seen if method == "POST"]


def status(root: Path) -> str:
    return subprocess.run(
        [sys.executable, "-m", "firstboot", "status", "--root", str(root)], capture_output=True, text=True, check=False
    ).stdout


def test_a_bundle_served_over_https_provisions_the_host(tmp_path: Path) -> None:
    body, sig = signed(with_shared_hosts(bundle()), KEY)
    result, events = served(tmp_path / "root", body, sig, {shared_digest(HOSTS): HOSTS.encode()})
    assert result.returncode == 0, result.stderr
    assert [(e["step"], e["status"]) for e in events][-2:] == [("done", "start"), ("done", "ok")]
    assert (tmp_path / "root/etc/hostname").read_text() == "db1\n"
    assert (tmp_path / "root/etc/hosts").read_text() == HOSTS  # the shared content, fetched by its digest
    assert "provisioned: db1" in status(tmp_path / "root")
    assert not (tmp_path / "root/var/lib/firstboot/shared").exists()  # the fetched copies go once the host is done


def test_a_shared_content_that_does_not_match_its_digest_is_refused(tmp_path: Path) -> None:
    body, sig = signed(with_shared_hosts(bundle()), KEY)
    root = tmp_path / "root"
    result, _ = served(root, body, sig, {shared_digest(HOSTS): HOSTS.encode() + b"10.10.0.66 db1\n"})
    assert result.returncode == 1
    assert f"/v1/shared/{shared_digest(HOSTS)} does not match its sha256" in status(root)
    assert not (root / "etc/hosts").exists() and not (root / "etc/hostname").exists()


@pytest.mark.parametrize(
    ("change", "says"),
    [
        pytest.param(
            lambda d: d["files"][1].update(mode="17777"), "$.files[1].mode: '17777' does not match", id="mode"
        ),
        pytest.param(lambda d: d["host"].pop("mac"), "$.host.mac: missing", id="missing-key"),
        pytest.param(lambda d: d["network"].update(prefix="24"), "$.network.prefix: expected an integer", id="type"),
    ],
)
def test_a_served_bundle_that_does_not_fit_is_refused_with_its_json_path(
    tmp_path: Path, change: Callable[[dict[str, Any]], None], says: str
) -> None:
    data = as_data(bundle())
    change(data)
    body, sig = signed(data, KEY)  # signed by the right key: the contract is checked all the same
    root = tmp_path / "root"
    result, events = served(root, body, sig)
    assert result.returncode == 1
    assert f"bundle refused: {says}" in result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    text = status(root)
    assert "FAILED at step fetch" in text and f"reason: bundle refused: {says}" in text
    assert "next:   check the bundle (./inv render shows it)" in text
    assert not (root / "etc/hostname").exists() and not (root / "var/lib/firstboot/bundle.json").exists()
    assert events[-1]["step"] == "fetch" and events[-1]["status"] == "fail"  # the server's dashboard says why
    assert f"bundle refused: {says}" in events[-1]["detail"]
