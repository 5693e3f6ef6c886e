"""The dashboard in a real headless Chromium (Debian's chromium + chromedriver through Selenium): it asks for the
operator's token, then shows every host, and events, alerts and unknown machines appear without a reload."""

from __future__ import annotations

import base64
import hashlib
import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from tests.integration.kiln_server import RunningServer, running_server

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        not (shutil.which("chromium") and shutil.which("chromedriver")), reason="needs chromium and chromium-driver"
    ),
]

WAIT = 15  # seconds; the page polls every second


def spki_hash(cert_pem: bytes) -> str:
    """What --ignore-certificate-errors-spki-list takes: base64 sha256 of the certificate's public key."""
    spki = (
        x509.load_pem_x509_certificate(cert_pem)
        .public_key()
        .public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    return base64.b64encode(hashlib.sha256(spki).digest()).decode()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    with running_server(tmp_path_factory.mktemp("serve")) as s:
        yield s


@pytest.fixture(scope="module")
def browser(server: RunningServer, tmp_path_factory: pytest.TempPathFactory):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or "/usr/bin/chromium"
    for arg in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--disable-quic",
        "--window-size=1400,900",
        f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}",
        # trust exactly the server's certificate (the cluster CA is not in the browser's store)
        f"--ignore-certificate-errors-spki-list={spki_hash(server.secrets.server_pem.read_bytes())}",
    ):
        options.add_argument(arg)
    driver = webdriver.Chrome(options=options, service=Service(shutil.which("chromedriver") or "/usr/bin/chromedriver"))
    try:
        yield driver
    finally:
        driver.quit()


def wait_for(driver, condition, message: str):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, WAIT, poll_frequency=0.1).until(lambda d: condition(d), message)


def event(server: RunningServer, host: str, body: dict) -> None:
    """An event as the host's installer sends it (with its enrolment token)."""
    with server.client(operator=False, headers={"Authorization": f"Bearer {server.token(host)}"}) as c:
        assert c.post(f"{server.tls_url}/v1/hosts/{host}/events", json=body).status_code == 201


def log_in(server: RunningServer, browser) -> None:
    from selenium.webdriver.common.by import By

    browser.get(f"{server.tls_url}/")
    wait_for(browser, lambda d: d.current_url.endswith("/login"), "the dashboard sends a stranger to /login")
    browser.find_element(By.ID, "token").send_keys(server.secrets.operator_token())
    browser.find_element(By.CSS_SELECTOR, "form.login button").click()
    wait_for(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#hosts"), "the dashboard after logging in")


def text_of(driver, selector: str) -> str | None:
    """The element's text in one call (the page redraws its rows every second: a held element goes stale)."""
    return driver.execute_script("const e = document.querySelector(arguments[0]); return e && e.innerText", selector)


def texts(driver, selector: str) -> list[str]:
    return driver.execute_script("return [...document.querySelectorAll(arguments[0])].map(e => e.innerText)", selector)


def row_state(driver, host: str) -> str | None:
    """The row's data-state, read in one call (rows are redrawn every second)."""
    return driver.execute_script(
        "const r = document.querySelector(`#hosts tr[data-host='${arguments[0]}']`); return r && r.dataset.state",
        host,
    )


def test_dashboard_shows_every_host_and_updates_live(server: RunningServer, browser, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By

    log_in(server, browser)
    wait_for(browser, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#hosts tbody tr")) == 7, "7 host rows")
    names = texts(browser, "#hosts tbody td.name")
    assert names == ["lb1", "lb2", "web1", "web2", "app1", "db1", "db2"]
    assert {row_state(browser, n) for n in names} == {"waiting"}
    loaded = browser.execute_script("return performance.timeOrigin")

    event(server, "web1", {"step": "install", "status": "start", "detail": "writing web.raw"})
    event(server, "app1", {"step": "join", "status": "fail", "detail": "db1:3306 refused"})
    db2, token = server.host("db2", "52:54:00:10:00:42"), server.token("db2")
    assert db2.enrol(token).status_code == 200
    assert server.host("db2", "52:54:00:10:00:42").enrol(token).status_code == 403  # another machine, same token
    httpx.get(f"{server.http_url}/ipxe", params={"mac": "52:54:00:de:ad:01"})
    with server.client(operator=False) as anyone:  # someone on the network asks for a bundle by MAC
        assert anyone.get(f"{server.tls_url}/v1/bundle", params={"mac": "52:54:00:10:00:41"}).status_code == 401

    wait_for(browser, lambda d: row_state(d, "web1") == "installing", "web1 shown installing")
    row = wait_for(browser, lambda d: text_of(d, '#hosts tr[data-host="web1"]'), "web1's row")
    assert "install start" in row and "writing web.raw" in row
    wait_for(browser, lambda d: row_state(d, "app1") == "failed", "app1 shown failed")
    alerts = wait_for(browser, lambda d: texts(d, "#alerts .alert") or None, "alerts")
    assert any("db2's enrolment token was already used by another machine" in a for a in alerts), alerts
    assert any("app1 failed at join: db1:3306 refused" in a for a in alerts), alerts
    unknown = wait_for(browser, lambda d: text_of(d, '#unknown tr[data-mac="52:54:00:de:ad:01"]'), "unknown")
    assert "unknown machine" in unknown
    refused = wait_for(browser, lambda d: text_of(d, '#refused tr[data-action="bundle"]'), "the refusal, with its peer")
    assert "127.0.0.1" in refused and "host credential required" in refused
    assert browser.execute_script("return performance.timeOrigin") == loaded  # no reload happened
    browser.save_screenshot(str(tmp_path / "dashboard.png"))


def test_event_detail_is_shown_as_text_never_as_html(server: RunningServer, browser) -> None:
    from selenium.webdriver.common.by import By

    browser.get(f"{server.tls_url}/")  # logged in already: the session cookie
    evil = '<img src=x onerror="document.body.dataset.pwned=1">'
    event(server, "lb2", {"step": "files", "status": "start", "detail": evil})
    wait_for(browser, lambda d: evil in (text_of(d, '#hosts tr[data-host="lb2"] td.detail') or ""), "detail")
    assert browser.execute_script("return document.body.dataset.pwned") is None
    assert not browser.find_elements(By.CSS_SELECTOR, "#hosts img")


def test_dashboard_shows_generations_converge_failures_and_retired_hosts(server: RunningServer, browser) -> None:
    """Day 2 on the page: the generation each host runs, a host that could not apply one, and a retired host."""
    import json

    browser.get(f"{server.tls_url}/")
    lb1 = server.host("lb1", "52:54:00:10:00:11")
    assert lb1.enrol().status_code == 200
    for step in ("secrets", "done"):
        lb1.event(step, "ok")
    with server.client() as c:
        generation = c.get(f"{server.tls_url}/v1/published").json()["generation"]
    assert lb1.signed("GET", f"/v1/bundle?after={generation}").status_code == 204
    wait_for(
        browser,
        lambda d: (text_of(d, '#hosts tr[data-host="lb1"] td.generation') or "") == str(generation),
        "lb1 runs the served generation",
    )
    summary = wait_for(browser, lambda d: text_of(d, "#summary"), "the summary")
    assert f"generation {generation}: 1/1 running hosts converged" in summary

    text = server.roles.read_text()
    smaller = "".join(line for line in text.splitlines(keepends=True) if "name: web2," not in line)
    with server.client() as c:
        assert c.post(f"{server.tls_url}/v1/publish", json={"roles": smaller}).status_code == 200
    failed = {"step": "converge", "status": "fail", "generation": generation + 1, "detail": "haproxy -c: [ALERT] bad"}
    lb1.signed("POST", "/v1/hosts/lb1/events", json.dumps(failed).encode(), **{"Content-Type": "application/json"})
    retired = wait_for(browser, lambda d: text_of(d, '#retired tr[data-host="web2"]'), "web2 listed as retired")
    assert "web 10.10.0.22" in retired and "credential revoked" in retired
    wait_for(browser, lambda d: "web2" not in texts(d, "#hosts tbody td.name"), "web2 leaves the host table")
    behind = wait_for(
        browser, lambda d: "behind" in (text_of(d, '#hosts tr[data-host="lb1"] td.generation') or "") or None, "behind"
    )
    assert behind
    alerts = wait_for(browser, lambda d: texts(d, '#alerts .alert[data-kind="converge"]') or None, "converge alert")
    assert f"lb1 could not apply generation {generation + 1}: haproxy -c: [ALERT] bad" in alerts[0]
