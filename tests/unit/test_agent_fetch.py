"""The fetch step: a bundle is applied only when its signature, its contract and its host binding check out;
otherwise nothing of it is, and the failure says why (for a bundle that does not fit: its JSON path).

The run-path tests fetch over real HTTPS from a loopback stand-in whose certificate a throwaway CA signed,
the CA baked into the fake machine as the image bakes /etc/kiln/ca.pem.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from firstboot import credential as credential_module
from firstboot.backoff import Backoff
from firstboot.credential import Credential
from firstboot.errors import Refused
from firstboot.paths import Paths
from firstboot.steps.fetch import download, verify
from kiln import signing
from kiln.bundle import BUNDLE_SCHEMA, Bundle, shared_digest
from tests.unit.agent_support import (
    HOSTS,
    MAC,
    OTHER_MAC,
    TOKEN,
    StandIn,
    as_data,
    bundle,
    host_public_key,
    machine,
    seed,
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
    root: Path, body: Bundle | dict[str, Any], shared: dict[str, bytes] | None = None
) -> tuple[subprocess.CompletedProcess[str], list[dict[str, Any]]]:
    """`firstboot run` on a fake machine whose seed names an HTTPS stand-in for the server (and carries the host's
    enrolment token) serving `body`, stamped and signed (and `shared` contents by digest); what it printed, and
    the events the stand-in received."""
    ca, context = tls_for_loopback(root.parent)
    machine(root, KEY, ca=ca)
    with StandIn(body, KEY, context, shared=shared or {}).running() as server:
        seed(root, server.url)
        result = run_agent(root)
    enrol = server.enrolments()[0]
    assert enrol.authorization == f"Bearer {TOKEN}" and enrol.status == 200, server.requests
    assert json.loads(enrol.body) == {"host_key": host_public_key(root), "macs": [MAC]}
    return result, [event for _, event in server.events]


def run_agent(root: Path, deadline: str = "5") -> subprocess.CompletedProcess[str]:
    argv = ["run", "--root", str(root), "--imds-endpoint", "", "--fetch-deadline", deadline]
    return subprocess.run(
        [sys.executable, "-m", "firstboot", *argv], capture_output=True, text=True, timeout=60, check=False
    )


def status(root: Path) -> str:
    return subprocess.run(
        [sys.executable, "-m", "firstboot", "status", "--root", str(root)], capture_output=True, text=True, check=False
    ).stdout


def test_a_bundle_served_over_https_provisions_the_host(tmp_path: Path) -> None:
    result, events = served(tmp_path / "root", with_shared_hosts(bundle()), {shared_digest(HOSTS): HOSTS.encode()})
    assert result.returncode == 0, result.stderr
    assert [(e["step"], e["status"]) for e in events][-2:] == [("done", "start"), ("done", "ok")]
    assert (tmp_path / "root/etc/hostname").read_text() == "db1\n"
    assert (tmp_path / "root/etc/hosts").read_text() == HOSTS  # the shared content, fetched by its digest
    assert "provisioned: db1" in status(tmp_path / "root")
    assert not (tmp_path / "root/var/lib/firstboot/shared").exists()  # the fetched copies go once the host is done


def test_a_shared_content_that_does_not_match_its_digest_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "root"
    result, _ = served(root, with_shared_hosts(bundle()), {shared_digest(HOSTS): HOSTS.encode() + b"10.10.0.66 db1\n"})
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
    root = tmp_path / "root"
    result, events = served(root, data)  # signed by the right key: the contract is checked all the same
    assert result.returncode == 1
    assert f"bundle refused: {says}" in result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    text = status(root)
    assert "FAILED at step fetch" in text and f"reason: bundle refused: {says}" in text
    assert "next:   check the bundle (./inv render shows it)" in text
    assert not (root / "etc/hostname").exists() and not (root / "var/lib/firstboot/bundle.json").exists()
    assert events[-1]["step"] == "fetch" and events[-1]["status"] == "fail"  # the server's dashboard says why
    assert f"bundle refused: {says}" in events[-1]["detail"]


def test_a_host_without_a_token_fails_its_fetch_naming_the_fix(tmp_path: Path) -> None:
    root = tmp_path / "root"
    ca, context = tls_for_loopback(tmp_path)
    machine(root, KEY, ca=ca)
    with StandIn(bundle(), KEY, context).running() as server:
        seed(root, server.url, token=None)  # a seed from before enrolment tokens, or a baked URL alone
        result = run_agent(root)
    assert result.returncode == 1
    assert "Traceback" not in result.stdout + result.stderr
    assert server.enrolments() == [] and server.host_key is None  # nothing to present: the server is not asked
    text = status(root)
    assert "FAILED at step fetch" in text and "reason: this host has no enrolment token" in text
    assert "./inv reprovision HOST" in text and "GET /v1/hosts/HOST/seed" in text  # the fix: re-arm, or its seed
    assert not (root / "etc/hostname").exists()


def test_a_lost_enrol_answer_is_asked_again_with_the_same_token_and_key(tmp_path: Path) -> None:
    root = tmp_path / "root"
    ca, context = tls_for_loopback(tmp_path)
    machine(root, KEY, ca=ca)
    with StandIn(bundle(), KEY, context, drop_enrol=1).running() as server:
        seed(root, server.url)
        result = run_agent(root)
    assert result.returncode == 0, result.stderr
    first, second = server.enrolments()
    assert (first.status, second.status) == (0, 200)  # the first answer never arrived
    assert (second.authorization, second.body) == (first.authorization, first.body)  # the same token, the same key
    assert json.loads(first.body)["host_key"] == host_public_key(root)
    state = json.loads((root / "var/lib/firstboot/state.json").read_text())
    assert state["enrolled"] is True and state["outcome"] == "done"


def test_a_run_that_never_got_its_enrol_answer_leaves_a_key_the_next_run_enrols_with(tmp_path: Path) -> None:
    root = tmp_path / "root"
    ca, context = tls_for_loopback(tmp_path)
    machine(root, KEY, ca=ca)
    with StandIn(bundle(), KEY, context, drop_enrol=1000).running() as server:
        seed(root, server.url)
        lost = run_agent(root, deadline="1")  # every answer lost: the run gives up, its enrolment unrecorded
        assert lost.returncode == 1 and "no bundle within 1s" in status(root)
        assert json.loads((root / "var/lib/firstboot/state.json").read_text())["enrolled"] is False
        server.drop_enrol = 0
        again = run_agent(root)  # the next boot
    assert again.returncode == 0, again.stderr
    bodies = {r.body for r in server.enrolments()}
    assert len(server.enrolments()) >= 2 and len(bodies) == 1  # every attempt, in both runs: the same key
    assert json.loads(bodies.pop())["host_key"] == host_public_key(root) == server.host_key
    assert (root / "etc/kiln/secrets/db_app_password").exists()


def enrolled_machine(root: Path, server: StandIn) -> Credential:
    """A machine that enrolled in an earlier run: its key on disk, bound by the stand-in, its state saying so."""
    credential = Credential(Paths(root), host="db1", enrolled=True)
    credential.paths.state_dir.mkdir(parents=True, exist_ok=True)
    server.host_key = credential.public()
    (root / "var/lib/firstboot/state.json").write_text(json.dumps({"host": "db1", "enrolled": True}))
    return credential


def test_an_enrolled_host_whose_clock_is_off_signs_with_the_servers_clock_after_one_refusal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before NTP a host's clock may be off by more than the server accepts; the first signed request of a run is
    refused (401) and its answer's Date tells the host the server's time: it signs again with that, and gets in."""
    ca, context = tls_for_loopback(tmp_path)
    root = machine(tmp_path / "root", KEY, ca=ca)
    real = time.time
    monkeypatch.setattr(credential_module, "time", SimpleNamespace(time=lambda: real() + 3600))  # an hour fast
    with StandIn(bundle(), KEY, context).running() as server:
        credential = enrolled_machine(root, server)
        got = download(server.url, [MAC], root / "etc/kiln/ca.pem", Backoff(deadline=5), credential, lambda _: None)
    assert Bundle.from_json(got.body).host.name == "db1"
    assert [r.status for r in server.requests if r.path == "/v1/bundle"] == [401, 200]


def test_a_rearmed_host_given_its_new_token_enrols_again_though_it_had_enrolled(tmp_path: Path) -> None:
    """Re-arming unbinds the host's key and mints a new token (GET /v1/hosts/HOST/seed gives it): a host that kept
    its disk, given that token as the fetch failure says, enrols again instead of failing forever signed."""
    root = tmp_path / "root"
    ca, context = tls_for_loopback(tmp_path)
    machine(root, KEY, ca=ca)
    with StandIn(bundle(), KEY, context, token="new-token-after-rearm").running() as server:
        enrolled_machine(root, server)
        server.host_key = None  # re-armed: the old key is no longer bound
        seed(root, server.url, token="new-token-after-rearm")
        result = run_agent(root)
    assert result.returncode == 0, result.stderr
    assert [(r.path, r.status) for r in server.requests if r.path in ("/v1/bundle", "/v1/enrol")] == [
        ("/v1/bundle", 401),
        ("/v1/enrol", 200),
    ]
    assert server.host_key == host_public_key(root)  # the key the host kept, bound again


def test_an_enrolled_host_keeps_its_name_when_its_source_names_none(tmp_path: Path) -> None:
    """The server names the host at enrolment; a source without kiln.host= (a URL and a token only) must not erase
    that name, or the next run could not sign its requests as that host."""
    root = tmp_path / "root"
    ca, context = tls_for_loopback(tmp_path)
    machine(root, KEY, ca=ca)
    with StandIn(bundle(), KEY, context, stamp={"issued": time.time() - 7200}).running() as server:  # expired
        enrolled_machine(root, server)
        (root / "etc/kiln/seed.json").write_text(json.dumps({"url": server.url, "token": TOKEN}))
        assert run_agent(root).returncode == 1
        assert "it expired" in status(root)
        assert json.loads((root / "var/lib/firstboot/state.json").read_text())["host"] == "db1"
        server.stamp = {}
        assert run_agent(root).returncode == 0
    asked = [r for r in server.requests if r.path in ("/v1/bundle", "/v1/enrol")]
    assert [(r.path, r.status) for r in asked] == [("/v1/bundle", 200), ("/v1/bundle", 200)]  # signed, as db1
