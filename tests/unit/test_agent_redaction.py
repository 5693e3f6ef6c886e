"""No secret value reaches the log, the state file, status output, events or exception text."""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

import pytest

from firstboot import agent, log, status
from firstboot.apply import apply
from firstboot.paths import Paths
from firstboot.redact import MASK, REDACTOR, RedactingFilter, Redactor
from firstboot.run import RunOptions, run
from firstboot.sources import Settings
from firstboot.state import State
from firstboot.steps.context import Outcome, StepContext
from kiln import signing
from kiln.bundle import File
from kiln.run import run as run_command
from tests.unit.agent_support import SECRETS, bundle, cache_bundle, machine

KEY = signing.generate_private_key()
TLS = (
    "-----BEGIN PRIVATE KEY-----\nMIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQg\n"
    "Zm9vYmFyYmF6cXV4cXV1eHF1dXhxdXV4cXV1eA==\n-----END PRIVATE KEY-----\n"
)
ALL = {**SECRETS, "tls_pem": TLS}


def test_redactor_masks_whole_values_and_the_lines_of_multi_line_ones() -> None:
    r = Redactor()
    r.add("s3cret-password")
    r.add(TLS)
    assert r("login with s3cret-password now") == f"login with {MASK} now"
    line = TLS.splitlines()[1]
    assert r(f"key line: {line}") == f"key line: {MASK}"
    assert line not in r(TLS.replace("\n", "\r\n"))


def test_the_logging_filter_masks_messages_arguments_and_tracebacks(tmp_path: Path) -> None:
    REDACTOR.add("hunter2-very-secret")
    record = logging.LogRecord(
        "firstboot", logging.ERROR, __file__, 1, "connect with %s", ("hunter2-very-secret",), None
    )
    try:
        raise RuntimeError("password hunter2-very-secret rejected")
    except RuntimeError:
        import sys

        record.exc_info = sys.exc_info()
    RedactingFilter().filter(record)
    text = logging.Formatter().format(record)
    assert "hunter2-very-secret" not in text and MASK in text and "RuntimeError" in text


def failing_join(ctx: StepContext) -> Outcome:
    """A join whose error quotes every secret, as a careless client library might."""
    quoted = " ".join(f"{k}={v}" for k, v in ALL.items())
    run_command(["sh", "-c", f"echo 'denied: {quoted}' >&2; exit 3"])  # the CommandError carries the output tail
    return Outcome("unreachable")


def texts_in(value: object) -> list[str]:
    """Every string in a JSON value, as a script reading it sees them (newlines and quotes unescaped)."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [t for v in value.values() for t in texts_in(v)]
    if isinstance(value, list):
        return [t for v in value for t in texts_in(v)]
    return []


def test_a_run_full_of_secrets_leaks_none(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    machine(tmp_path, KEY)
    data = bundle(secrets=dict(ALL))
    cache_bundle(tmp_path, data, KEY)
    state = State(url="https://10.10.0.1:8443", source="seed file", host="db1")
    state.steps["fetch"].outcome = "ok"
    state.save(Paths(tmp_path).state)
    monkeypatch.setitem(agent.STEP_FUNCTIONS, "join", failing_join)
    log.setup(Paths(tmp_path).log, verbose=True)
    try:
        assert run(RunOptions(paths=Paths(tmp_path), sources=Settings(imds_endpoint=""))) == 1
    finally:
        log.setup(None)
    text, _ = status.render(Paths(tmp_path))
    print(text)
    out, err = capfd.readouterr()
    places = {
        "log file": Paths(tmp_path).log.read_text(),
        "state": Paths(tmp_path).state.read_text(),
        "status": text,
        "stdout/stderr": out + err,
        "events": "".join(p.read_text() for p in Paths(tmp_path).events.iterdir()),
        "status --json": status.to_json(Paths(tmp_path))[0],
        "status --json, its texts decoded": "\n".join(texts_in(status.summary(Paths(tmp_path)))),
    }
    assert "sh -c" in places["state"] and MASK in places["state"]  # the failure is there, its secrets are not
    for where, content in places.items():
        for name, value in ALL.items():
            for part in [value, *[line for line in value.splitlines() if len(line) >= 12]]:
                assert part not in content, f"{name} leaked into the {where}"
    # the secrets did reach their files
    assert (tmp_path / "etc/kiln/secrets/db_app_password").read_text() == SECRETS["db_app_password"]


def test_apply_output_carries_no_secret(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "bundle.json"
    b = bundle(secrets=dict(ALL))
    path.write_bytes(replace(b, files=(*b.files, File("/etc/bad", "x", owner="nobody_such"))).to_json())
    assert apply(path, tmp_path / "root", live=False) == 0
    out, err = capfd.readouterr()
    for value in ALL.values():
        assert value not in out + err
