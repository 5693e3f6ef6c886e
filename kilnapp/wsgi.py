"""The demo app: /, /health, /api/notes. Plain WSGI, run by gunicorn as kilnapp.wsgi:app. Its metrics are served
apart, summed over gunicorn's workers, on the admin network (kilnapp.gunicorn_conf)."""

from __future__ import annotations

import html
import json
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs

import pymysql
from prometheus_client import Counter, Gauge, Histogram

from kilnapp import db
from kilnapp.config import Config

REQUESTS = Counter("kilnapp_requests_total", "HTTP requests", ["path", "status"])
LATENCY = Histogram("kilnapp_request_seconds", "HTTP request latency", ["path"])
# the latest check of any worker (a worker's own last check may be minutes old)
DB_UP = Gauge(
    "kilnapp_db_up", "1 when the primary database answered the last health check", multiprocess_mode="mostrecent"
)
NOTES_WRITTEN = Counter("kilnapp_notes_written_total", "notes written to the primary")

StartResponse = Callable[..., Any]
Response = tuple[str, str, bytes]  # status, content type, body
MAX_BODY = 16 * 1024
ROUTED = ("/", "/health", "/api/notes")
HEALTH_FRESH = 1.0  # seconds an answer of /health is given again: the LBs' and webs' checks need not each reach the DB


@dataclass
class State:
    """One worker's app: its settings, its database connections and its last health answer."""

    config: Config
    db: db.Connections
    clock: Callable[[], float] = time.monotonic
    health: tuple[float, Response] | None = None


def _json(status: str, data: object) -> Response:
    return status, "application/json", json.dumps(data).encode() + b"\n"


def index(app: State, environ: dict[str, Any]) -> Response:
    config = app.config
    try:
        primary = db.server_identity(app.db, db.writer(app.db))
        reader = db.server_identity(app.db, db.reader(app.db))
        rows = (
            f"<li>writes go to the primary <b>{html.escape(str(primary['hostname']))}</b> ({primary['address']},"
            f" server_id {primary['server_id']})</li>"
            f"<li>reads are served by <b>{html.escape(str(reader['hostname']))}</b> ({reader['address']},"
            f" server_id {reader['server_id']}, {'replica, read-only' if reader['read_only'] else 'primary'})</li>"
        )
        status = "200 OK"
    except (pymysql.MySQLError, OSError) as e:
        rows = f"<li>the database does not answer: {html.escape(e.__class__.__name__)}</li>"
        status = "503 Service Unavailable"
    page = (
        "<!doctype html><html><head><meta charset=utf-8><title>kiln demo</title></head><body>"
        f"<h1>kiln demo app</h1><p>served by app node <b>{html.escape(config.host)}</b></p><ul>{rows}</ul>"
        "<p><a href=/api/notes>notes</a> · <a href=/health>health</a></p>"
        "</body></html>"
    )
    return status, "text/html; charset=utf-8", page.encode()


def health(app: State, environ: dict[str, Any]) -> Response:
    """Whether the writable server answered, asked at most once a second per worker."""
    now = app.clock()
    if app.health is not None and 0 <= now - app.health[0] < HEALTH_FRESH:
        return app.health[1]
    config = app.config
    try:
        primary = db.ping(app.db)
    except (pymysql.MySQLError, OSError) as e:
        DB_UP.set(0)
        answer = _json("503 Service Unavailable", {"status": "fail", "app": config.host, "db": e.__class__.__name__})
    else:
        DB_UP.set(1)
        answer = _json("200 OK", {"status": "ok", "app": config.host, "db": primary})
    app.health = (app.clock(), answer)  # fresh from when the answer came, not from when it was asked
    return answer


def _note_text(environ: dict[str, Any]) -> str:
    length = int(environ.get("CONTENT_LENGTH") or 0)
    if length > MAX_BODY:
        raise ValueError("body too large")
    body = environ["wsgi.input"].read(length) if length else b""
    if environ.get("CONTENT_TYPE", "").startswith("application/json"):
        data = json.loads(body or b"{}")
        text = data.get("text") if isinstance(data, dict) else None
    else:
        text = (parse_qs(body.decode()).get("text") or [None])[0]
    if not isinstance(text, str) or not text.strip():
        raise ValueError('a note needs a non-empty "text"')
    return text.strip()


def notes(app: State, environ: dict[str, Any]) -> Response:
    try:
        if environ["REQUEST_METHOD"] == "POST":
            try:
                text = _note_text(environ)
            except ValueError as e:
                return _json("400 Bad Request", {"error": str(e)})
            note = db.add_note(app.db, text)
            NOTES_WRITTEN.inc()
            return _json("201 Created", note)
        if environ["REQUEST_METHOD"] in ("GET", "HEAD"):
            host = db.reader(app.db)
            return _json("200 OK", {"read_from": host, "notes": db.list_notes(app.db, host)})
        return _json("405 Method Not Allowed", {"error": "GET or POST"})
    except (pymysql.MySQLError, OSError) as e:
        return _json("503 Service Unavailable", {"error": f"database: {e.__class__.__name__}"})


ROUTES: dict[str, Callable[[State, dict[str, Any]], Response]] = {
    "/": index,
    "/health": health,
    "/api/notes": notes,
}


def make_app(
    config: Config | None = None, *, clock: Callable[[], float] = time.monotonic
) -> Callable[[dict[str, Any], StartResponse], Iterable[bytes]]:
    cfg = config or Config.from_env()
    state = State(cfg, db.Connections(cfg), clock)

    def application(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO") or "/"
        started = time.perf_counter()
        handler = ROUTES.get(path)
        status, ctype, body = handler(state, environ) if handler else _json("404 Not Found", {"error": "not found"})
        label = path if path in ROUTED else "other"
        REQUESTS.labels(label, status.split()[0]).inc()
        LATENCY.labels(label).observe(time.perf_counter() - started)
        headers = [
            ("Content-Type", ctype),
            ("Content-Length", str(len(body))),
            ("X-Kiln-App", cfg.host),
            ("Cache-Control", "no-store"),
        ]
        start_response(status, headers)
        return [b"" if environ.get("REQUEST_METHOD") == "HEAD" else body]

    return application


app = make_app()
