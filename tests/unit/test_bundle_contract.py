"""The bundle contract (kiln/bundle.py): what the renderer makes, the server signs and the agent takes.
Every rendered bundle fits its published JSON Schema; anything else is refused with the JSON path of the problem."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest

from kiln import bundle as b
from kiln.render import render_cluster

PROJECT = Path(__file__).resolve().parents[2]
PUBLISHED = PROJECT / "docs" / "bundle.schema.json"
KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFBzeWOFzYGdjWwrAlqJAJxZqUYAJKnmcP0UEySdAc1U"


@pytest.fixture(scope="module")
def bundles(cluster) -> dict[str, b.Bundle]:
    return render_cluster(cluster)


def test_the_published_schema_is_the_one_the_code_generates() -> None:
    generated = json.dumps(b.schema_document(), indent=2, sort_keys=True) + "\n"
    assert PUBLISHED.read_text() == generated, "regenerate: python -m kiln.bundle > docs/bundle.schema.json"


def test_every_rendered_bundle_validates_against_the_published_schema(bundles) -> None:
    validator = jsonschema.Draft202012Validator(json.loads(PUBLISHED.read_text()))
    for name, bundle in bundles.items():
        errors = [f"{e.json_path}: {e.message}" for e in validator.iter_errors(json.loads(bundle.to_json()))]
        assert not errors, (name, errors)


def test_json_round_trip_is_exact(bundles) -> None:
    for bundle in bundles.values():
        body = bundle.to_json()
        assert b.Bundle.from_json(body) == bundle
        assert b.Bundle.from_json(body).to_json() == body


def _mutated(bundle: b.Bundle, change) -> bytes:
    data = json.loads(bundle.to_json())
    change(data)
    return json.dumps(data).encode()


@pytest.mark.parametrize(
    ("change", "path", "words"),
    [
        (lambda d: d["files"][0].update(mode="17777"), "$.files[0].mode", "does not match"),
        (lambda d: d["files"][0].update(mode="0666"), "$.files[0].mode", "does not match"),  # world-writable
        (lambda d: d["files"][0].update(mode="4755"), "$.files[0].mode", "does not match"),  # setuid
        (lambda d: d["files"][1].update(path="/etc/../shadow"), "$.files[1].path", "does not match"),
        (lambda d: d["files"][1].update(path="etc/hosts"), "$.files[1].path", "does not match"),
        (lambda d: d["host"].update(name="web1\n"), "$.host.name", "does not match"),
        (lambda d: d["files"][2].pop("content"), None, None),  # content has a default: fine
        (lambda d: d["host"].pop("mac"), "$.host.mac", "missing"),
        (lambda d: d["network"].update(prefix="24"), "$.network.prefix", "expected an integer"),
        (lambda d: d.update(extra=1), "$.extra", "unknown key"),
        (lambda d: d["join"].update(kind="teleport"), "$.join.kind", "not a known kind"),
        (lambda d: d["checks"][0].update(argv="nft"), "$.checks[0].argv", "expected a list"),
        (lambda d: d["services"][0].update(enable="yes"), "$.services[0].enable", "expected true or false"),
        (lambda d: d.update(schema=1), "$.schema", "this agent knows schema 3"),
        (lambda d: d["admin"].update(name="root"), "$.admin", "cannot be root"),
        (lambda d: d["admin"].update(name="Kiln Admin"), "$.admin.name", "does not match"),
        # one key line each: a newline would smuggle a second line (with options) into authorized_keys
        (lambda d: d["admin"].update(keys=[KEY + '\ncommand="sh" ' + KEY]), "$.admin", "keys[0]"),
        (lambda d: d["admin"].update(keys=['from="10.0.0.1" ' + KEY]), "$.admin", "keys[0]"),
        (lambda d: d["admin"].update(keys=[KEY, "-----BEGIN OPENSSH PRIVATE KEY-----"]), "$.admin", "keys[1]"),
        (lambda d: d["admin"].update(keys=[KEY + " alice"]), None, None),
    ],
)
def test_what_does_not_fit_is_refused_with_its_json_path(bundles, change, path, words) -> None:
    body = _mutated(bundles["db2"], change)
    if path is None:
        b.Bundle.from_json(body)
        return
    with pytest.raises(b.BundleError) as refused:
        b.Bundle.from_json(body)
    assert refused.value.path == path and words in refused.value.message, str(refused.value)


@pytest.mark.parametrize("body", [b"", b"not json", b"[]", b"null", b'{"schema": 2}', b"\xff\xfe"])
def test_garbage_is_a_bundle_error_not_a_traceback(body: bytes) -> None:
    with pytest.raises(b.BundleError):
        b.Bundle.from_json(body)
