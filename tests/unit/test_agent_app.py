"""The demo app (kilnapp) without a database: health says 503, metrics count, bad notes are refused."""

from __future__ import annotations

import io
import json
import socket
from pathlib import Path
from typing import Any

from kilnapp.config import Config
from kilnapp.wsgi import make_app


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def call(
    app: Any, method: str, path: str, body: bytes = b"", ctype: str = "application/json"
) -> tuple[str, dict, bytes]:
    seen: dict[str, Any] = {}

    def start_response(status: str, headers: list[tuple[str, str]]) -> None:
        seen["status"], seen["headers"] = status, dict(headers)

    environ = {
        "REQUEST_METHOD": method,
        "PATH_INFO": path,
        "CONTENT_LENGTH": str(len(body)),
        "CONTENT_TYPE": ctype,
        "wsgi.input": io.BytesIO(body),
    }
    out = b"".join(app(environ, start_response))
    return seen["status"], seen["headers"], out


def app_without_db(tmp_path: Path) -> Any:
    (tmp_path / "pw").write_text("not-used\n")
    port = closed_port()
    env = {
        "KILN_HOST": "app9",
        "KILN_DB_PASSWORD_FILE": str(tmp_path / "pw"),
        "KILN_DB_WRITE_HOST": "127.0.0.1",
        "KILN_DB_READ_HOST": "127.0.0.1",
        "KILN_DB_PORT": str(port),
        "KILN_DB_NAME": "foobar",
    }
    return make_app(Config.from_env(env))


def test_health_is_503_while_the_database_does_not_answer(tmp_path: Path) -> None:
    status, headers, body = call(app_without_db(tmp_path), "GET", "/health")
    assert status.startswith("503")
    assert json.loads(body) == {"status": "fail", "app": "app9", "db": "NoWriter"}  # no server answered
    assert headers["X-Kiln-App"] == "app9"


def test_the_page_says_which_node_served_it_even_when_the_database_is_down(tmp_path: Path) -> None:
    status, _, body = call(app_without_db(tmp_path), "GET", "/")
    assert status.startswith("503") and b"served by app node <b>app9</b>" in body and b"does not answer" in body


def test_metrics_count_requests_by_path_and_status_and_the_app_port_serves_none(tmp_path: Path) -> None:
    """The samples the app keeps (one process here: prometheus_client's registry; under gunicorn the workers' sum,
    tests/integration/test_app_metrics.py); /metrics is not the app port's, which the web tier and the VIP reach."""
    from prometheus_client import REGISTRY, generate_latest

    app = app_without_db(tmp_path)
    before = REGISTRY.get_sample_value("kilnapp_requests_total", {"path": "other", "status": "404"}) or 0
    call(app, "GET", "/health")
    status, _, _ = call(app, "GET", "/metrics")
    assert status.startswith("404")
    text = generate_latest().decode()
    assert 'kilnapp_requests_total{path="/health",status="503"}' in text
    assert REGISTRY.get_sample_value("kilnapp_requests_total", {"path": "other", "status": "404"}) == before + 1
    assert "kilnapp_db_up 0.0" in text


def test_notes_need_text_and_a_known_method(tmp_path: Path) -> None:
    app = app_without_db(tmp_path)
    assert call(app, "POST", "/api/notes", b'{"text": "  "}')[0].startswith("400")
    assert call(app, "POST", "/api/notes", b"text=", "application/x-www-form-urlencoded")[0].startswith("400")
    assert call(app, "DELETE", "/api/notes")[0].startswith("405")
    status, _, body = call(app, "POST", "/api/notes", b'{"text": "hello"}')
    assert status.startswith("503") and b"database" in body  # valid, but the primary is down
