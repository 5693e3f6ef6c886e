"""The two Starlette applications: `http_app` (boot scripts, images) and `tls_app` (bundles, events,
host states, dashboard). Blocking work (the database, rendering) runs in the thread pool."""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import (
    FileResponse,
    JSONResponse,
    PlainTextResponse,
    RedirectResponse,
    Response,
    StreamingResponse,
)
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from kiln import roles
from kiln.model import Cluster, Host
from kiln.secrets import SecretMissing
from kiln.server import ipxe
from kiln.server.bundles import BundleCache
from kiln.server.inputs import MAX_EVENT_BYTES, BadInput, parse_event, parse_mac
from kiln.server.states import progress
from kiln.server.store import StateStore, UnknownHost

LOG = logging.getLogger("kiln.server")
STATIC = Path(__file__).resolve().parent / "static"
SIGNATURE_HEADER = "X-Kiln-Signature"
DASHBOARD_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-store",
}


@dataclass
class Provisioner:
    """Everything the routes share: the cluster, its state, its bundles and images."""

    cluster: Cluster
    store: StateStore
    bundles: BundleCache
    images: ipxe.ImageCatalog
    installer: ipxe.Installer
    dashboard_url: str = ""  # where the HTTP listener sends a browser asking for /

    def __post_init__(self) -> None:
        self._by_name = {h.name: h for h in self.cluster.hosts}
        self._by_mac = {h.mac: h for h in self.cluster.hosts}
        # Database work runs off the event loop, in as many threads as the database can use at once:
        # one for SQLite (a single writer; one thread hands over faster than several queueing on its lock).
        self._executor = ThreadPoolExecutor(self.store.threads, thread_name_prefix="kiln-state")

    async def blocking(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._executor, functools.partial(fn, *args, **kwargs))

    def host_by_name(self, name: str) -> Host | None:
        return self._by_name.get(name)

    def host_by_mac(self, mac: str) -> Host | None:
        """`mac` as parse_mac returns it (lower case, colons)."""
        return self._by_mac.get(mac)


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def _ipxe(text: str, status: int = 200) -> PlainTextResponse:
    return PlainTextResponse(text, status_code=status, headers={"Cache-Control": "no-store"})


# --- HTTP: boot scripts ---------------------------------------------------------------------------


def _reached_as(request: Request) -> ipxe.Installer:
    p: Provisioner = request.app.state.provisioner
    return p.installer.reached_as(request.headers.get("host"))


async def boot_ipxe(request: Request) -> Response:
    return _ipxe(ipxe.boot_script(_reached_as(request).http_base))


async def host_ipxe(request: Request) -> Response:
    p: Provisioner = request.app.state.provisioner
    try:
        mac = parse_mac(request.query_params.get("mac"))
    except BadInput as e:
        return _ipxe(f"#!ipxe\necho kiln: {e}\nexit 1\n".replace("$", ""), 400)
    installer = _reached_as(request)
    host = p.host_by_mac(mac)
    if host is None:
        await p.blocking(p.store.note_unknown, mac)
        LOG.info("unknown machine %s asked for its boot script", mac)
        return _ipxe(ipxe.unknown_script(mac, installer.http_base))
    if await p.blocking(p.store.is_installed, host.name):
        return _ipxe(ipxe.disk_script(host))
    try:
        p.images.check_installer()
        image = p.images.install_image(host.role)
    except ipxe.NotBuilt as e:
        LOG.warning("%s: cannot install: %s", host.name, e)
        return _ipxe(ipxe.retry_script([f"cannot install {host.name} yet:", str(e)], installer.http_base))
    await p.blocking(p.store.record_pxe, host.name, f"installer script served ({host.role} image)")
    return _ipxe(ipxe.install_script(host, image, installer))


async def image_data(request: Request) -> Response:
    """The data chunks of a role's raw image in block-map order: what the PXE installer downloads."""
    p: Provisioner = request.app.state.provisioner
    role, name = request.path_params["role"], request.path_params["name"]
    if name != role or role not in roles.names():
        return PlainTextResponse("no such image\n", status_code=404)
    try:
        size, chunks = await asyncio.to_thread(p.images.data_chunks, role)
    except ipxe.NotBuilt as e:
        return PlainTextResponse(f"{e}\n", status_code=404)
    return StreamingResponse(chunks, media_type="application/octet-stream", headers={"Content-Length": str(size)})


async def http_root(request: Request) -> Response:
    p: Provisioner = request.app.state.provisioner
    return RedirectResponse(p.dashboard_url, status_code=307)


# --- HTTPS: bundles, events, hosts, dashboard ------------------------------------------------------


async def bundle(request: Request) -> Response:
    p: Provisioner = request.app.state.provisioner
    try:
        mac = parse_mac(request.query_params.get("mac"))
    except BadInput as e:
        return _error(400, str(e))
    host = p.host_by_mac(mac)
    if host is None:
        await p.blocking(p.store.note_unknown, mac)
        return _error(404, f"no host with MAC {mac} in roles.yaml")
    signed = await asyncio.to_thread(_signed_bundle, p, host)  # renders on first use: keep the state thread free
    if isinstance(signed, Response):
        return signed
    return Response(
        signed.body,
        media_type="application/json",
        headers={SIGNATURE_HEADER: signed.signature, "Cache-Control": "no-store"},
    )


def _signed_bundle(p: Provisioner, host: Host) -> Any:
    if not p.bundles.has_secrets(host):
        return p.bundles.without_secrets(host)
    try:
        values = p.bundles.secret_values(host)  # read before claiming: a missing file must not use up the claim
    except SecretMissing as e:
        LOG.error("%s: cannot hand out secrets: %s", host.name, e)
        return _error(503, f"the server lacks a secret for {host.name}: {e}")
    claim = p.store.claim_secrets(host.name)
    if claim.granted:
        LOG.info("%s: bundle with secrets handed out (once per provisioning)", host.name)
        return p.bundles.with_secrets(host, values)
    LOG.warning(
        "%s: secrets requested again (%d refused before); bundle sent without them", host.name, claim.denied_before
    )
    return p.bundles.without_secrets(host)


async def shared(request: Request) -> Response:
    """A content every host of the cluster shares (/etc/hosts, the tier sets), by the sha256 its bundle names."""
    p: Provisioner = request.app.state.provisioner
    body = p.bundles.shared(request.path_params["digest"])
    if body is None:
        return _error(404, "no shared content with that sha256 (re-fetch the bundle)")
    return Response(body, media_type="text/plain; charset=utf-8", headers={"Cache-Control": "max-age=86400"})


async def post_event(request: Request) -> Response:
    p: Provisioner = request.app.state.provisioner
    name = request.path_params["name"]
    if p.host_by_name(name) is None:
        return _error(404, f"no host named {name[:64]!r} in roles.yaml")
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > MAX_EVENT_BYTES):
        return _error(413, f"an event body is at most {MAX_EVENT_BYTES} bytes")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_EVENT_BYTES:
            return _error(413, f"an event body is at most {MAX_EVENT_BYTES} bytes")
    try:
        event = parse_event(bytes(body))
    except BadInput as e:
        return _error(400, str(e))
    try:
        state = await p.blocking(p.store.record_event, name, event)
    except UnknownHost:
        return _error(404, f"no host named {name!r} in the state database")
    return JSONResponse({"host": name, "state": state.value}, status_code=201)


SINCE_OVERLAP = 5.0  # seconds a delta poll reaches back: a change committed just after the last answer still shows


async def hosts(request: Request) -> Response:
    """Every host; with ?since=T (the `now` of an earlier answer) only the hosts changed since, with every alert."""
    p: Provisioner = request.app.state.provisioner
    with_timeline = request.query_params.get("timeline", "1") not in ("0", "false", "no")
    since = None
    if "since" in request.query_params:
        try:
            since = float(request.query_params["since"]) - SINCE_OVERLAP
        except ValueError:
            return _error(400, "since: expected a number (the `now` of an earlier answer)")
    now = time.time()
    rows = await p.blocking(p.store.host_rows, None, timeline=with_timeline, since=since)
    alert_rows = await p.blocking(p.store.alert_rows)
    unknown = await p.blocking(p.store.unknown_machines)
    view = hosts_view(p.cluster, rows, alert_rows, unknown, with_timeline, full=since is None)
    return JSONResponse({**view, "now": now}, headers={"Cache-Control": "no-store"})


def _alerts(host: Host, row: dict[str, Any]) -> list[dict[str, str]]:
    found = []
    if row.get("secrets_denied"):
        found.append(
            {
                "kind": "secrets-twice",
                "host": host.name,
                "message": f"secrets requested twice for {host.name}",
                "hint": f"if this host is being reinstalled on purpose, run ./inv reprovision {host.name}",
            }
        )
    if row.get("state") == "failed":
        found.append(
            {
                "kind": "failed",
                "host": host.name,
                "message": f"{host.name} failed at {row.get('last_step')}: {row.get('last_detail') or 'no detail'}",
                "hint": f"ssh to {host.ip} and run firstboot status",
            }
        )
    return found


def _host_entry(host: Host, row: dict[str, Any], with_timeline: bool) -> dict[str, Any]:
    last = None
    if row.get("last_step"):
        last = {
            "step": row["last_step"],
            "status": row["last_status"],
            "detail": row["last_detail"],
            "received": row["last_received"],
            "duration": row["last_duration"],
        }
    entry: dict[str, Any] = {
        "name": host.name,
        "role": host.role,
        "mac": host.mac,
        "ip": str(host.ip),
        "state": row.get("state", "waiting"),
        "progress": progress(row.get("max_ok_index", -1)),
        "installed": bool(row.get("installed")),
        "provisioning": row.get("generation", 1),
        "secrets": _secrets_status(row),
        "secrets_refused": row.get("secrets_denied", 0),
        "step_started": row.get("step_started"),
        "last_event": last,
        "alerts": _alerts(host, row),
    }
    if with_timeline:
        entry["timeline"] = [
            {k: e[k] for k in ("step", "status", "detail", "at", "received", "duration")}
            for e in row.get("timeline", [])
        ]
    return entry


def hosts_view(
    cluster: Cluster,
    rows: dict[str, dict[str, Any]],
    alert_rows: dict[str, dict[str, Any]],
    unknown: list[dict[str, Any]],
    with_timeline: bool,
    *,
    full: bool = True,
) -> dict[str, Any]:
    """The /v1/hosts answer: every host in roles.yaml order (full), or only those in `rows` (a delta); the alerts
    of every host either way."""
    if full:
        listed = [_host_entry(h, rows.get(h.name, {}), with_timeline) for h in cluster.hosts]
    else:
        listed = [_host_entry(cluster.host(n), row, with_timeline) for n, row in rows.items() if n in cluster.names]
    alerts = [a for h in cluster.hosts if h.name in alert_rows for a in _alerts(h, alert_rows[h.name])]
    machines = [
        {"label": "unknown machine", **{k: u[k] for k in ("mac", "first_seen", "last_seen", "requests")}}
        for u in unknown
    ]
    return {
        "cluster": cluster.name,
        "full": full,
        "count": len(cluster.hosts),
        "hosts": listed,
        "unknown_machines": machines,
        "alerts": alerts,
    }


def _secrets_status(row: dict[str, Any]) -> str:
    if row.get("secrets_denied"):
        return "withheld"
    return "handed out" if row.get("secrets_served_at") else "armed"


async def dashboard(request: Request) -> Response:
    return FileResponse(STATIC / "dashboard.html", headers=DASHBOARD_HEADERS)


# --- the applications -------------------------------------------------------------------------------


def _api_routes() -> list[Route | Mount]:
    return [
        Route("/", dashboard),
        Mount("/static", app=StaticFiles(directory=STATIC), name="static"),
        Route("/v1/bundle", bundle),
        Route("/v1/shared/{digest:str}", shared),
        Route("/v1/hosts", hosts),
        Route("/v1/hosts/{name}/events", post_event, methods=["POST"]),
    ]


def http_app(p: Provisioner, images_root: Path, *, allow_http_bundles: bool = False) -> Starlette:
    routes: list[Route | Mount] = [
        Route("/boot.ipxe", boot_ipxe),
        Route("/ipxe", host_ipxe),
        Route("/images/{role}/{name}.data", image_data),
        Mount("/images", app=StaticFiles(directory=images_root, check_dir=False), name="images"),
    ]
    routes += _api_routes() if allow_http_bundles else [Route("/", http_root)]
    app = Starlette(routes=routes)
    app.state.provisioner = p
    return app


def tls_app(p: Provisioner) -> Starlette:
    app = Starlette(routes=_api_routes())
    app.state.provisioner = p
    return app
