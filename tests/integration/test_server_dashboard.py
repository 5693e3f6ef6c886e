"""The dashboard in a real headless Chromium (Debian's chromium + chromedriver through Selenium): it loads,
shows every host, and events, alerts and unknown machines appear without a reload."""

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
        f"--ignore-certificate-errors-spki-list={spki_hash((server.secrets.root / 'tls.pem').read_bytes())}",
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


def row_state(driver, host: str) -> str | None:
    from selenium.webdriver.common.by import By

    rows = driver.find_elements(By.CSS_SELECTOR, f'#hosts tr[data-host="{host}"]')
    return rows[0].get_attribute("data-state") if rows else None


def test_dashboard_shows_every_host_and_updates_live(server: RunningServer, browser, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By

    browser.get(f"{server.tls_url}/")
    wait_for(browser, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#hosts tbody tr")) == 7, "7 host rows")
    names = [e.text for e in browser.find_elements(By.CSS_SELECTOR, "#hosts tbody td.name")]
    assert names == ["lb1", "lb2", "web1", "web2", "app1", "db1", "db2"]
    assert {row_state(browser, n) for n in names} == {"waiting"}
    loaded = browser.execute_script("return performance.timeOrigin")

    with server.client() as c:
        c.post(
            f"{server.tls_url}/v1/hosts/web1/events",
            json={"step": "install", "status": "start", "detail": "writing web.raw"},
        )
        c.post(
            f"{server.tls_url}/v1/hosts/app1/events",
            json={"step": "join", "status": "fail", "detail": "db1:3306 refused"},
        )
        for _ in range(2):  # the second fetch is refused its secrets and raises the alert
            c.get(f"{server.tls_url}/v1/bundle", params={"mac": "52:54:00:10:00:42"})
    httpx.get(f"{server.http_url}/ipxe", params={"mac": "52:54:00:de:ad:01"})

    wait_for(browser, lambda d: row_state(d, "web1") == "installing", "web1 shown installing")
    web1 = browser.find_element(By.CSS_SELECTOR, '#hosts tr[data-host="web1"]')
    assert "install start" in web1.find_element(By.CSS_SELECTOR, "td.step").text
    assert "writing web.raw" in web1.text
    wait_for(browser, lambda d: row_state(d, "app1") == "failed", "app1 shown failed")
    alerts = wait_for(
        browser, lambda d: [a.text for a in d.find_elements(By.CSS_SELECTOR, "#alerts .alert")] or None, "alerts"
    )
    assert any("secrets requested twice for db2" in a for a in alerts), alerts
    assert any("app1 failed at join: db1:3306 refused" in a for a in alerts), alerts
    unknown = wait_for(
        browser, lambda d: d.find_elements(By.CSS_SELECTOR, '#unknown tr[data-mac="52:54:00:de:ad:01"]'), "unknown"
    )
    assert "unknown machine" in unknown[0].text
    assert browser.execute_script("return performance.timeOrigin") == loaded  # no reload happened
    browser.save_screenshot(str(tmp_path / "dashboard.png"))


def test_event_detail_is_shown_as_text_never_as_html(server: RunningServer, browser) -> None:
    from selenium.webdriver.common.by import By

    browser.get(f"{server.tls_url}/")
    evil = '<img src=x onerror="document.body.dataset.pwned=1">'
    with server.client() as c:
        c.post(f"{server.tls_url}/v1/hosts/lb2/events", json={"step": "files", "status": "start", "detail": evil})
    wait_for(
        browser,
        lambda d: evil in d.find_element(By.CSS_SELECTOR, '#hosts tr[data-host="lb2"] td.detail').text,
        "detail",
    )
    assert browser.execute_script("return document.body.dataset.pwned") is None
    assert not browser.find_elements(By.CSS_SELECTOR, "#hosts img")
