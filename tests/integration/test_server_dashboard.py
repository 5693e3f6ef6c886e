"""The dashboard in a real headless Chromium (Debian's chromium + chromedriver through Selenium): it asks for the
operator's token, then shows every host, and events, alerts (the hosts', the data tier's, Alertmanager's) and
unknown machines appear without a reload."""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import hashlib
import shutil
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from kiln.db.failover import Event
from kiln.db.report import Observed, backup_event, event_payload
from tests.integration.db_views import MANIFEST, PRIMARY, REPLICA
from tests.integration.kiln_server import RunningServer, running_server
from tests.webhook import alert, notification

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


def open_dashboard(server: RunningServer, browser) -> None:
    """The dashboard afresh (filters and open timelines reset), logging in first when this test runs alone."""
    browser.get(f"{server.tls_url}/")
    if browser.current_url.endswith("/login"):
        log_in(server, browser)


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
    wait_for(browser, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#hosts tbody tr")) == 8, "8 host rows")
    names = texts(browser, "#hosts tbody td.name")
    assert names == ["lb1", "lb2", "web1", "web2", "app1", "db1", "db2", "mon1"]
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


def click_row(driver, host: str) -> bool:
    """A real click on the host's row; False when the row was redrawn under the click (the caller retries)."""
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By

    try:
        driver.find_element(By.CSS_SELECTOR, f'#hosts tr[data-host="{host}"] td.name').click()
    except StaleElementReferenceException:
        return False
    return True


def timeline_rows(driver, host: str) -> list[list[str]] | None:
    """The open timeline's events as cell texts; None while it is closed (or still loading)."""
    return driver.execute_script(
        "const t = document.querySelector(`#hosts tr.timeline-row[data-timeline='${arguments[0]}'] table`);"
        "return t && [...t.tBodies[0].rows].map(r => [...r.cells].map(c => c.innerText))",
        host,
    )


def test_a_click_opens_the_hosts_timeline_loaded_on_demand_and_a_click_or_escape_closes_it(
    server: RunningServer, browser
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    open_dashboard(server, browser)
    event(server, "db1", {"step": "install", "status": "start", "detail": "writing db.raw to /dev/vda"})
    event(server, "db1", {"step": "install", "status": "ok", "duration": 42.5, "detail": "installed"})
    wait_for(browser, lambda d: row_state(d, "db1") == "booting", "db1 shown booting")
    assert timeline_rows(browser, "db1") is None, "closed until asked for"
    wait_for(browser, lambda d: click_row(d, "db1"), "a click on db1")
    events = wait_for(browser, lambda d: timeline_rows(d, "db1"), "db1's timeline")
    assert [e[1:4] for e in events[-2:]] == [["install", "start", ""], ["install", "ok", "42.5 s"]], events
    assert events[-2][4] == "writing db.raw to /dev/vda" and events[-1][0], "the detail, and the time it came"

    evil = '<img src=x onerror="document.body.dataset.pwned=1">'  # a new event shows while it is open, as text
    event(server, "db1", {"step": "fetch", "status": "fail", "detail": evil})
    events = wait_for(browser, lambda d: (t := timeline_rows(d, "db1")) and t[-1][1] == "fetch" and t, "new event")
    assert events[-1][2:] == ["fail", "", evil]
    assert browser.execute_script("return document.body.dataset.pwned") is None
    assert not browser.find_elements(By.CSS_SELECTOR, "#hosts img")
    # an open timeline stays put between polls (its text can be selected and copied): marked, then a poll later
    mark = "const t = document.querySelector('#hosts tr.timeline-row table');"
    browser.execute_script(
        mark + "t.dataset.mark = 'kept'; window.polled = document.getElementById('updated').innerText"
    )
    wait_for(
        browser,
        lambda d: d.execute_script("return window.polled !== document.getElementById('updated').innerText"),
        "a poll",
    )
    assert browser.execute_script(mark + "return t && t.dataset.mark") == "kept"
    asked = browser.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
    assert any(u.endswith("/v1/hosts/db1") for u in asked), "the timeline comes from GET /v1/hosts/NAME"
    polls = [u for u in asked if "/v1/hosts?" in u]
    assert polls and all("timeline=0" in u for u in polls), "the list poll never carries the timelines"

    wait_for(browser, lambda d: click_row(d, "db1"), "a second click on db1")
    wait_for(browser, lambda d: timeline_rows(d, "db1") is None, "a second click closes it")
    wait_for(browser, lambda d: click_row(d, "db1"), "a click on db1 again")
    wait_for(browser, lambda d: timeline_rows(d, "db1"), "open again")
    browser.find_element(By.TAG_NAME, "body").send_keys(Keys.ESCAPE)
    wait_for(browser, lambda d: timeline_rows(d, "db1") is None, "Escape closes it")
    browser.execute_script("document.querySelector(`#hosts tr[data-host='db1']`).focus()")  # as Tab would
    browser.switch_to.active_element.send_keys(Keys.ENTER)
    wait_for(browser, lambda d: timeline_rows(d, "db1"), "Enter on the focused row opens it")


def test_the_bar_shows_the_installers_own_progress(server: RunningServer, browser) -> None:
    open_dashboard(server, browser)
    event(server, "web1", {"step": "install", "status": "start", "detail": "writing: 300 of 851 MB"})
    label = wait_for(
        browser, lambda d: (t := text_of(d, '#hosts tr[data-host="web1"] .bar .label')) and "35%" in t and t, "35%"
    )
    assert label == "install 35%"
    width = browser.execute_script(
        "const b = document.querySelector(`#hosts tr[data-host='web1'] .bar`);"
        "return b.querySelector('.fill').getBoundingClientRect().width / b.getBoundingClientRect().width"
    )
    assert 0.33 < width < 0.37, width
    event(server, "web1", {"step": "install", "status": "start", "detail": "checking: 851 of 851 MB"})
    wait_for(browser, lambda d: text_of(d, '#hosts tr[data-host="web1"] .bar .label') == "install 100%", "100%")


def test_each_error_shows_once(server: RunningServer, browser) -> None:
    open_dashboard(server, browser)
    error = "app1-checks: port 8080 closed after 30 s"
    event(server, "app1", {"step": "checks", "status": "fail", "detail": error})
    wait_for(browser, lambda d: error in (text_of(d, "#alerts") or ""), "the alert")
    wait_for(browser, lambda d: "(in the alert above)" in (text_of(d, '#hosts tr[data-host="app1"]') or ""), "row")
    page = browser.execute_script("return document.body.innerText")
    assert page.count(error) == 1, page
    assert text_of(browser, '#hosts tr[data-host="app1"] .flag') == "⚠"


def select(driver, element_id: str, value: str) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    Select(driver.find_element(By.ID, element_id)).select_by_value(value)


def test_filters_by_state_and_role_hold_through_live_updates(server: RunningServer, browser) -> None:
    open_dashboard(server, browser)
    wait_for(browser, lambda d: len(texts(d, "#hosts tbody td.name")) > 3, "every host")
    select(browser, "filter-state", "failed")
    shown = wait_for(browser, lambda d: texts(d, "#hosts tbody td.name"), "the failed hosts")
    assert "app1" in shown and "lb2" not in shown and {row_state(browser, n) for n in shown} == {"failed"}
    event(server, "lb2", {"step": "join", "status": "fail", "detail": "keepalived did not start"})
    wait_for(browser, lambda d: "lb2" in texts(d, "#hosts tbody td.name"), "lb2 joins the failed hosts on a poll")
    select(browser, "filter-role", "lb")
    wait_for(browser, lambda d: texts(d, "#hosts tbody td.name") == ["lb2"], "the failed lb hosts")
    event(server, "lb2", {"step": "join", "status": "start"})
    wait_for(browser, lambda d: texts(d, "#hosts tbody td.name") == [], "lb2 leaves the view when it resumes")
    assert "showing 0 of" in (text_of(browser, "#shown") or "")
    assert browser.execute_script("return document.getElementById('filter-state').value") == "failed"
    select(browser, "filter-state", "")
    wait_for(browser, lambda d: "lb2" in texts(d, "#hosts tbody td.name"), "every lb host again")
    assert set(texts(browser, "#hosts tbody td.name")) <= {"lb1", "lb2"}


LONG_NAME = "db-replica-eu-west-07"


@pytest.mark.parametrize("width", [900, 1400])
def test_the_layout_holds_from_900_px(server: RunningServer, browser, width: int, tmp_path: Path) -> None:
    """Nothing wider than the window, and no host name or state broken over two lines, with a long host name, a
    long unbroken detail, the alerts and an open timeline on the page."""
    if LONG_NAME not in server.roles.read_text():
        with server.client() as c:
            text = c.get(f"{server.tls_url}/v1/published").json()["roles"]
            line = f'  - {{name: {LONG_NAME}, role: db, mac: "52:54:00:10:00:43", ip: 10.10.0.43, db_role: replica}}\n'
            answer = c.post(f"{server.tls_url}/v1/publish", json={"roles": text + line})
            assert answer.status_code == 200, answer.text
        server.roles.write_text(text + line)
        path = "/srv/www/releases/2026-12-01T11:00:00Z/" + "static/assets/" * 8 + "app.js"
        event(server, LONG_NAME, {"step": "files", "status": "fail", "detail": f"cannot write {path}: no space"})
    browser.execute_cdp_cmd(
        "Emulation.setDeviceMetricsOverride", {"width": width, "height": 900, "deviceScaleFactor": 1, "mobile": False}
    )
    try:
        open_dashboard(server, browser)
        wait_for(browser, lambda d: row_state(d, LONG_NAME) == "failed", "the long-named host, failed")
        wait_for(browser, lambda d: click_row(d, LONG_NAME), "open its timeline")
        wait_for(browser, lambda d: timeline_rows(d, LONG_NAME), "its timeline")
        assert browser.execute_script("return window.innerWidth") == width
        scroll = browser.execute_script("return document.documentElement.scrollWidth")
        wide = browser.execute_script(
            """const w = e => Math.round(e.getBoundingClientRect().width);
               return [[...document.querySelectorAll('body *')].filter(e => e.getBoundingClientRect().right>innerWidth)
                         .slice(0, 8).map(e => e.tagName + '.' + e.className + ' ' + w(e)),
                       [...document.querySelectorAll('#hosts > thead th')].map(w)]"""
        )
        assert scroll <= width, f"the page is {scroll} px wide in a {width} px window: {wide[0]}; columns {wide[1]}"
        lines = browser.execute_script(
            """return [...document.querySelectorAll('#hosts td.name, #hosts .state')].map(e => {
                 const r = document.createRange(); r.selectNodeContents(e);
                 return [e.innerText, new Set([...r.getClientRects()].map(x => Math.round(x.top))).size,
                         e.scrollWidth <= e.clientWidth];
               })"""
        )
        assert len(lines) >= 2 * 7 and any(name == LONG_NAME for name, _, _ in lines)
        assert [x for x in lines if x[1] != 1] == [], "a host name or state over two lines"
        assert [x for x in lines if not x[2]] == [], "a host name or state cut short"
        browser.save_screenshot(str(tmp_path / f"dashboard-{width}.png"))
    finally:
        browser.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})


def report_db(server: RunningServer) -> None:
    """The failover monitor's view (db1 primary, db2 its replica, 3 s behind), a failover and a backup, as the
    monitor and the backup runner send them."""
    failover = Event(
        "failover", "db1", "promoted: db2 out of sight 10.4s and no replica heard it; writable at 0-2-1187"
    )
    seen = Observed([PRIMARY, REPLICA], time.time()).payload()
    with server.client() as c:
        assert c.put(f"{server.tls_url}/v1/db", json=seen).status_code == 204
        events = {"events": [event_payload(failover), backup_event(MANIFEST)]}
        assert c.post(f"{server.tls_url}/v1/db/events", json=events).status_code == 201


@pytest.mark.parametrize("width", [900, 1400])
def test_the_database_panel_shows_roles_the_last_backup_and_failover_alerts(
    server: RunningServer, browser, width: int, tmp_path: Path
) -> None:
    report_db(server)
    browser.execute_cdp_cmd(
        "Emulation.setDeviceMetricsOverride", {"width": width, "height": 900, "deviceScaleFactor": 1, "mobile": False}
    )
    try:
        open_dashboard(server, browser)
        db1 = wait_for(browser, lambda d: text_of(d, '#db-hosts tr[data-host="db1"]'), "db1 in the database panel")
        assert "primary" in db1 and "0-2-1187" in db1 and "on" in db1.split()  # semi-sync on
        db2 = text_of(browser, '#db-hosts tr[data-host="db2"]') or ""
        cells = browser.execute_script(
            "return [...document.querySelectorAll(`#db-hosts tr[data-host='db2'] td`)].map(c => c.innerText)"
        )
        assert cells == ["db2", "replica", "0-2-1185", "db1", "Yes / Yes", "3 s", "-"], (cells, db2)
        backup = text_of(browser, "#db-backup") or ""
        assert "20261201T110000Z-db2" in backup and "GTID 0-1-1150" in backup and "1.6 MiB stored" in backup, backup
        alert = wait_for(browser, lambda d: text_of(d, '#alerts .alert[data-kind="db-failover"]'), "the failover alert")
        assert "database failover on db1: promoted: db2 out of sight 10.4s" in alert and "db_role" in alert, alert
        assert not browser.find_elements("css selector", '#alerts .alert[data-kind="db-backup"]'), (
            "a backup is no alert"
        )
        assert "as the failover monitor saw it" in (text_of(browser, "#db-observed") or "")
        scroll = browser.execute_script("return document.documentElement.scrollWidth")
        assert scroll <= width, f"the page is {scroll} px wide in a {width} px window"
        lines = browser.execute_script(
            """return [...document.querySelectorAll('#db-hosts td.name, #db-hosts .state')].map(e => {
                 const r = document.createRange(); r.selectNodeContents(e);
                 return [e.innerText, new Set([...r.getClientRects()].map(x => Math.round(x.top))).size];
               })"""
        )
        assert len(lines) == 4 and all(n == 1 for _, n in lines), lines
        browser.save_screenshot(str(tmp_path / f"dashboard-db-{width}.png"))
    finally:
        browser.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})


def notify(server: RunningServer, *alerts: dict) -> None:
    """A notification as Alertmanager's webhook sends it, with its token."""
    token = {"Authorization": f"Bearer {server.secrets.alertmanager_token()}"}
    with server.client(operator=False, headers=token) as c:
        assert c.post(f"{server.tls_url}/v1/alerts", json=notification(*alerts)).status_code == 200


def test_alertmanagers_firing_alerts_show_with_severity_summary_runbook_and_since_when(
    server: RunningServer, browser, tmp_path: Path
) -> None:
    started = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=3)
    since = started.isoformat().replace("+00:00", "Z")
    down = alert("InstanceDown", "web2", fingerprint="a" * 16, startsAt=since)
    down["annotations"] = {"summary": "web2 does not answer <b>scrapes</b>", "runbook": "./inv power web2 status"}
    full = alert("DiskAlmostFull", "db2", fingerprint="b" * 16, startsAt=since, labels={"severity": "warning"})
    notify(server, full, down)
    open_dashboard(server, browser)
    shown = wait_for(
        browser, lambda d: len(t := texts(d, '#alerts .alert[data-kind="firing"]')) == 2 and t, "two firing alerts"
    )
    assert "critical InstanceDown on web2: web2 does not answer <b>scrapes</b>" in shown[0], "critical first"
    assert "./inv power web2 status" in shown[0], "the runbook below"
    assert "warning DiskAlmostFull on db2" in shown[1]
    assert shown[0].startswith("since ") and "3 min" in shown[0], shown[0]
    assert not browser.find_elements("css selector", "#alerts b"), "an annotation is text, never HTML"
    colours = browser.execute_script(
        "return [...document.querySelectorAll('#alerts .alert[data-kind=\"firing\"]')]"
        ".map(e => getComputedStyle(e).backgroundColor)"
    )
    assert colours[0] != colours[1], "a warning does not look like a critical alert"
    browser.save_screenshot(str(tmp_path / "dashboard-firing.png"))
    notify(server, {**down, "status": "resolved", "endsAt": dt.datetime.now(dt.UTC).isoformat()})
    firing = "return [...document.querySelectorAll('#alerts [data-kind=\"firing\"]')].map(e => e.dataset.alertname)"
    wait_for(
        browser, lambda d: d.execute_script(firing) == ["DiskAlmostFull"], "the resolved alert leaves, the other stays"
    )
    # not told again for 9 h (two of Alertmanager's 4 h repeats missed): said so, it may be over or Alertmanager gone
    with contextlib.closing(sqlite3.connect(server.database.removeprefix("sqlite:///"))) as db, db:
        db.execute("UPDATE alerts SET updated = ? WHERE fingerprint = ?", (time.time() - 9 * 3600, "b" * 16))
    note = wait_for(browser, lambda d: text_of(d, "#alerts .stale-note"), "the stale note")
    assert "Alertmanager has not repeated it since" in note, note
