"""The two Starlette applications: `http_app` (boot scripts, images) and `tls_app` (enrolment, bundles,
shared contents, events, host states, dashboard). Blocking work (the database, rendering) runs in the thread
pool. Who may call what is kiln/server/auth.py's: the operator reads, hosts write their own, nobody by MAC."""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import json
import logging
import re
import time
import urllib.parse
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prometheus_client import generate_latest
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
from starlette.types import Message, Receive, Scope, Send

from kiln import hostauth, roles, targetdisk
from kiln.mac import normalize
from kiln.model import Cluster, Host
from kiln.roles.db import NAME as DB_ROLE
from kiln.roles.db import settings_of as db_settings_of
from kiln.secrets import SecretMissing
from kiln.server import grub, ipxe
from kiln.server.alerts import MAX_BODY_BYTES as ALERTS_BODY_BYTES
from kiln.server.alerts import listing as alert_listing
from kiln.server.alerts import parse_notification
from kiln.server.auth import OPERATOR_COOKIE, Authority, Denied, bearer, peer
from kiln.server.bootplan import Install, LocalDisk, Plan, Unknown, Wait
from kiln.server.bundles import BundleCache, Signed
from kiln.server.dbreport import MAX_BODY_BYTES as DB_BODY_BYTES
from kiln.server.dbreport import parse_events, parse_view
from kiln.server.inputs import MAX_EVENT_BYTES, BadInput, Event, parse_event, parse_mac
from kiln.server.limits import Limits, ReportQueue
from kiln.server.metrics import (
    METRICS_CONTENT_TYPE,
    UNMATCHED,
    BackupCollector,
    ServerMetrics,
    StateCollector,
    healthz,
)
from kiln.server.publish import Live, Publisher, Rejected, poll_interval
from kiln.server.states import State, progress, step_progress
from kiln.server.store import CredentialError, StateStore, UnknownHost

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
    """Everything the routes share: the generation served (`live`: cluster and bundles, swapped whole by a
    publication), the state, the images. A route that reads the cluster and its bundles takes `live` once."""

    live: Live
    store: StateStore
    images: ipxe.ImageCatalog
    installer: ipxe.Installer
    authority: Authority
    publisher: Publisher | None = None  # None: this server does not take publications (tests of other routes)
    dashboard_url: str = ""  # where the HTTP listener sends a browser asking for /
    limits: Limits = field(default_factory=Limits)
    certificates: dict[str, Path] = field(default_factory=dict)  # name -> PEM whose expiry /metrics reports
    metrics: ServerMetrics = field(default_factory=ServerMetrics)

    def __post_init__(self) -> None:
        # Long database work (listings) runs off the event loop, in as many threads as the database can use at
        # once: one for SQLite (a single writer; one thread hands over faster than several queueing on its lock).
        # Short calls go through state().
        self._executor = ThreadPoolExecutor(self.store.threads, thread_name_prefix="kiln-state")
        self._running: dict[str, int] = {}  # host -> the generation it last said it runs (saves a write per poll)
        self.reports = ReportQueue(self.store.threads)  # events: one at a time, after the boot path
        self.metrics.watch(
            StateCollector(
                lambda: self.store.census(),
                lambda: self.store.host_states(),
                lambda: self.live.generation,
                self.certificates,
            )
        )
        self.metrics.watch(BackupCollector(self._backup_schedule, lambda: self.store.last_backup_at()))

    def _backup_schedule(self) -> str | None:
        backup = db_settings_of(self.cluster).backup if self.cluster.by_role(DB_ROLE) else None
        return backup.backup_at if backup is not None else None

    @property
    def cluster(self) -> Cluster:
        return self.live.cluster

    @property
    def bundles(self) -> BundleCache:
        return self.live.bundles

    async def blocking(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        """Work that may take long (a listing of every host): in the state store's threads."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, functools.partial(fn, *args, **kwargs))

    async def state(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        """A short state-store call (one host's row, one event): on SQLite right here on the event loop, where
        handing it to a thread cost more than the call (GIL handoffs: a 1000-host boot storm took 48 s, 28 s
        inline, 3.7 -> 2.3 ms of server CPU per request); on PostgreSQL, a network round trip, in a thread."""
        if self.store.local:
            return fn(*args, **kwargs)
        return await self.blocking(fn, *args, **kwargs)

    def host_by_name(self, name: str) -> Host | None:
        return self.live.by_name.get(name)

    def host_by_mac(self, mac: str) -> Host | None:
        """`mac` as parse_mac returns it (lower case, colons)."""
        return self.live.by_mac.get(mac)

    def swap(self, live: Live) -> None:
        """Serve `live` from now on; the previous generation's shared contents stay fetchable (an agent may be
        between its bundle and the contents it names)."""
        live.bundles.fallback = self.live.bundles.shared_contents()
        self.live = live

    async def running(self, name: str, generation: int) -> None:
        """Record that the host runs `generation` (it polled for a newer one) when that is news."""
        if self._running.get(name) != generation:
            await self.state(self.store.note_running, name, generation)
            self._running[name] = generation


def _error(status: int, message: str) -> JSONResponse:
    headers = {"WWW-Authenticate": 'Bearer realm="kiln"'} if status == 401 else None
    return JSONResponse({"error": message}, status_code=status, headers=headers)


async def _refused(
    p: Provisioner, request: Request, action: str, denied: Denied | CredentialError, host: str | None
) -> Response:
    """Log the refusal with the peer, keep it in the access log (the dashboard shows it), answer it."""
    reason = denied.reason
    p.metrics.refused(action, "forbidden" if denied.status == 403 else "unauthenticated")
    LOG.warning("refused %s from %s%s: %s", action, peer(request), f" for {host}" if host else "", reason)
    await p.state(p.store.note_access, peer(request), host, action, "refused", reason)
    return _error(denied.status, reason)


async def _operator_only(p: Provisioner, request: Request, action: str) -> Response | None:
    """None for the operator; the refusal (logged) for anyone else."""
    try:
        p.authority.operator(request)
    except Denied as e:
        return await _refused(p, request, action, e, None)
    return None


async def _granted(p: Provisioner, request: Request, action: str, host: str, detail: str) -> None:
    p.metrics.grants.labels(action).inc()
    LOG.info("%s %s to %s from %s", action, detail, host, peer(request))
    await p.state(p.store.note_access, peer(request), host, action, "granted", detail)


async def _body(request: Request, limit: int, action: str) -> bytes | Response:
    """The request body, at most `limit` bytes (413 beyond, counted as it arrives)."""
    p: Provisioner = request.app.state.provisioner
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > limit):
        p.metrics.refused(action, "body_too_large")
        return _error(413, f"a body here is at most {limit} bytes")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            p.metrics.refused(action, "body_too_large")
            return _error(413, f"a body here is at most {limit} bytes")
    return bytes(body)


def _throttled(p: Provisioner, request: Request, host: str | None, action: str) -> Response | None:
    """429 when the peer address (or the host) writes faster than its rate (kiln/server/limits.py)."""
    wait = p.limits.wait(peer(request), host)
    if wait <= 0:
        return None
    p.metrics.refused(action, "rate_limited")
    seconds = max(1, int(wait + 0.999))
    return JSONResponse(
        {"error": f"too many requests; retry in {seconds} s"}, status_code=429, headers={"Retry-After": str(seconds)}
    )


def _json_only(request: Request, action: str) -> Response | None:
    """POST bodies are JSON, declared so: a browser cannot send that cross-site without a preflight."""
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind == "application/json":
        return None
    p: Provisioner = request.app.state.provisioner
    p.metrics.refused(action, "not_json")
    return _error(415, "the body must be application/json")


async def _json_body(request: Request, limit: int, action: str, rate: str | None) -> bytes | Response:
    """A posted JSON body, or the answer refusing it: not JSON (415), too fast for the peer address or for `rate`
    (a host name, or a client's own bucket; 429), over `limit` bytes (413)."""
    p: Provisioner = request.app.state.provisioner
    wrong = _json_only(request, action) or _throttled(p, request, rate, action)
    return wrong if wrong is not None else await _body(request, limit, action)


def _ipxe(text: str, status: int = 200) -> PlainTextResponse:
    return PlainTextResponse(text, status_code=status, headers={"Cache-Control": "no-store"})


# --- HTTP: boot scripts ---------------------------------------------------------------------------


def _reached_as(request: Request) -> ipxe.Installer:
    p: Provisioner = request.app.state.provisioner
    return p.installer.reached_as(request.headers.get("host"))


async def boot_ipxe(request: Request) -> Response:
    return _ipxe(ipxe.boot_script(_reached_as(request).http_base))


async def boot_plan(p: Provisioner, mac: str, installer: ipxe.Installer, client: str, what: str, action: str) -> Plan:
    """What the machine with `mac` (as parse_mac returns it) boots, asked by `client` (its address) for its boot
    loader's `what` ("script", "GRUB config", in the timeline) through `action` ("ipxe", "grub": the metrics' label):
    the one decision both syntaxes render. Records what the state shows: an unknown machine, an installer served
    (the image's digest: which build a host installed)."""
    host = p.host_by_mac(mac)
    if host is None:
        await p.state(p.store.note_unknown, mac)
        p.metrics.refused(action, "unknown_machine")
        LOG.info("unknown machine %s asked for its %s", mac, what)
        return Unknown(mac)
    if await p.state(p.store.is_installed, host.name):
        return LocalDisk(host)
    token = await p.state(p.store.armed_token, host.name)
    if token is None:
        return Wait(
            host,
            (f"{host.name} is not armed (its enrolment token was spent or expired):", f"./inv reprovision {host.name}"),
        )
    try:
        p.images.check_installer()
        image = p.images.install_image(host.role)
    except ipxe.NotBuilt as e:
        LOG.warning("%s: cannot install: %s", host.name, e)
        return Wait(host, (f"cannot install {host.name} yet:", str(e)))
    # the token travels in plain HTTP or TFTP here (neither stock iPXE nor GRUB verifies a private CA):
    # docs/server.md says what that exposes
    served = f"installer {what} served ({host.role} image, digest {image.digest[:12]}) to {client}"
    await p.state(p.store.record_pxe, host.name, served)
    return Install(host, image, installer, token)


async def host_ipxe(request: Request) -> Response:
    p: Provisioner = request.app.state.provisioner
    if p.limits.wait(peer(request), None) > 0:  # a flood of made-up MACs from one address is slowed down
        p.metrics.refused("ipxe", "rate_limited")
        return _ipxe(f"#!ipxe\nsleep {ipxe.RETRY_SECONDS}\nexit 1\n", 429)
    try:
        mac = parse_mac(request.query_params.get("mac"))
    except BadInput as e:
        return _ipxe(f"#!ipxe\necho kiln: {e}\nexit 1\n".replace("$", ""), 400)
    installer = _reached_as(request)
    plan = await boot_plan(p, mac, installer, peer(request), "script", "ipxe")
    return _ipxe(ipxe.script(plan, installer.http_base))


async def grub_config(p: Provisioner, mac_text: str | None, client: str) -> str:
    """The GRUB config of the machine whose NIC has MAC `mac_text` (any form parse_mac takes), asked by `client`
    (its address). Too many asks from one address get a config that waits, then asks again. Images and kernel go
    to the installer from p.installer's address (TFTP has no Host header). Raises BadInput for a malformed MAC."""
    if p.limits.wait(client, None) > 0:
        p.metrics.refused("grub", "rate_limited")
        return grub.retry_config(["too many boot requests from this address"])
    mac = parse_mac(mac_text)
    return grub.config(await boot_plan(p, mac, p.installer, client, "GRUB config", "grub"))


async def host_grub(request: Request) -> Response:
    """GET /grub?mac=MAC: the GRUB config TFTP serves as kiln/grub/MAC, over HTTP (a GRUB with HTTP built in, and
    what an operator looks at)."""
    p: Provisioner = request.app.state.provisioner
    try:
        return _ipxe(await grub_config(p, request.query_params.get("mac"), peer(request)))
    except BadInput as e:
        return _ipxe(f"kiln: {e}\n", 400)


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


ENROL_BYTES = 4096  # an enrolment body: a public key and a few MACs


def _bundle_response(signed: Signed, host: str) -> Response:
    return Response(
        signed.body,
        media_type="application/json",
        headers={SIGNATURE_HEADER: signed.signature, "Cache-Control": "no-store", "X-Kiln-Host": host},
    )


def _signed_for(bundles: BundleCache, host: Host, with_secrets: bool) -> Signed | Response:
    """The host's signed bundle, with its secrets when `with_secrets` (and it has any). On the event loop: a
    signature over a rendered bundle takes about 0.4 ms, less than handing it to a thread and back under load."""
    if not with_secrets or not bundles.has_secrets(host):
        return bundles.without_secrets(host)
    try:
        return bundles.with_secrets(host, bundles.secret_values(host))
    except SecretMissing as e:
        LOG.error("%s: cannot hand out secrets: %s", host.name, e)
        return _error(503, f"the server lacks a secret for {host.name}: {e}")


async def enrol(request: Request) -> Response:
    """POST /v1/enrol: Bearer ENROLMENT_TOKEN, {"host_key": BASE64, "macs": [...]} -> the signed bundle with its
    secrets. Binds the host key; the same token and key again is a retry after a lost response."""
    p: Provisioner = request.app.state.provisioner
    body = await _json_body(request, ENROL_BYTES, "enrol", None)
    if isinstance(body, Response):
        return body
    try:
        data = json.loads(body)
        key = str(data["host_key"])
        hostauth.load_public(key)
        macs = {normalize(str(m)) for m in data["macs"]}
    except (ValueError, KeyError, TypeError, hostauth.AuthError):
        return _error(400, 'expected {"host_key": "<base64 Ed25519 public key>", "macs": ["aa:bb:cc:dd:ee:ff", ...]}')
    token = bearer(request)
    if token is None:
        return await _refused(p, request, "enrol", Denied(401, "an enrolment token is required"), None)
    live = p.live
    holder = await p.state(p.store.token_holder, token)
    if holder is not None and holder not in live.by_name:
        message = f"{holder} is no longer in roles.yaml (retiring): it cannot enrol"
        return await _refused(p, request, "enrol", Denied(403, message), holder)
    if holder is not None and live.by_name[holder].mac not in macs:  # checked before anything is bound
        message = f"this token is {holder}'s (MAC {live.by_name[holder].mac}), which is none of this machine's NICs"
        return await _refused(p, request, "enrol", Denied(403, message), holder)
    try:
        enrolment = await p.state(p.store.enrol, token, key, peer(request))
    except CredentialError as e:
        if e.status == 403 and e.host:
            await p.state(p.store.flag_credential, e.host, e.reason)
        return await _refused(p, request, "enrol", e, e.host)
    host = live.by_name[enrolment.host]
    signed = _signed_for(live.bundles, host, enrolment.secrets)
    if isinstance(signed, Response):
        return signed
    what = "key bound" if enrolment.first else "same key again (a retry)"
    p.metrics.enrolments.labels("bound" if enrolment.first else "retry").inc()
    await _granted(
        p, request, "enrol", host.name, f"{what}; bundle {'with' if enrolment.secrets else 'without'} secrets"
    )
    return _bundle_response(signed, host.name)


async def bundle(request: Request) -> Response:
    """GET /v1/bundle, signed by an enrolled host: its bundle, with its secrets until it acknowledged them.

    With ?after=G (a joined host's converge poll; G is the generation it runs, which is recorded): the bundle only
    when a newer generation is published, else 204 with Retry-After, the seconds until it should ask again."""
    p: Provisioner = request.app.state.provisioner
    if request.method != "GET":
        return _error(405, "GET only: a HEAD is never a grant")
    after = request.query_params.get("after")
    if after is not None and not (after.isdigit() and len(after) < 19):
        return _error(400, "after: expected the generation the host runs (an integer)")
    try:
        name = await p.state(p.authority.host, request, b"")
    except Denied as e:
        return await _refused(p, request, "bundle", e, None)
    live = p.live
    host = live.by_name.get(name)
    if after is not None:
        await p.running(name, int(after))
    if host is None or (after is not None and live.generation <= int(after)):
        # nothing newer (a retiring host gets nothing new: it keeps serving what it has until it is powered off)
        wait = str(poll_interval(len(live.cluster.hosts)))
        return Response(status_code=204, headers={"Retry-After": wait, "Cache-Control": "no-store"})
    # a converge poll never asks for secrets (they are on the host): it is not counted as asking for them again
    converging = after is not None
    with_secrets = not converging and live.bundles.has_secrets(host) and await p.state(p.store.secrets_for, name)
    signed = _signed_for(live.bundles, host, with_secrets)
    if isinstance(signed, Response):
        return signed
    if live.bundles.has_secrets(host) and not converging:
        await _granted(
            p, request, "bundle", name, "with secrets" if with_secrets else "secrets withheld (acknowledged)"
        )
    return _bundle_response(signed, name)


async def shared(request: Request) -> Response:
    """A content every host of the cluster shares (/etc/hosts, the tier sets), by the sha256 its bundle names;
    for an enrolled host (or the operator)."""
    p: Provisioner = request.app.state.provisioner
    try:
        p.authority.operator(request)
    except Denied:
        try:
            await p.state(p.authority.host, request, b"")
        except Denied as e:
            return await _refused(p, request, "shared", e, None)
    body = p.bundles.shared(request.path_params["digest"])
    if body is None:
        return _error(404, "no shared content with that sha256 (re-fetch the bundle)")
    return Response(body, media_type="text/plain; charset=utf-8", headers={"Cache-Control": "max-age=86400"})


async def _signed_event(p: Provisioner, request: Request, name: str, body: bytes) -> tuple[State, Event] | None:
    """The common event, a well-formed one signed by the host it is about, in one trip to the state store (key,
    signature and write in one transaction). None for any other: _checked_event answers it, in its order."""
    try:
        claim = hostauth.parse(request.headers.get("authorization"))
        event = parse_event(body)
    except (hostauth.AuthError, BadInput):
        return None
    if claim.host != name:
        return None
    return await p.state(p.authority.signed_event, request, body, claim, event), event


async def _checked_event(
    p: Provisioner, request: Request, name: str, body: bytes, by_key: bool
) -> tuple[State, Event] | Response:
    """Credential first (Denied), then who it may write for (403), the body (400), the host's row (404)."""
    if by_key:
        sender = await p.state(p.authority.host, request, body)
    else:  # the installer, or the agent before it enrolled: the host's enrolment token
        sender = await p.state(p.authority.installer, request)
    if sender != name:
        return await _refused(
            p, request, "event", Denied(403, f"{sender}'s credential cannot write {name[:64]}'s events"), sender
        )
    try:
        event = parse_event(body)
    except BadInput as e:
        return _error(400, str(e))
    try:
        return await p.state(p.store.record_event, name, event), event
    except UnknownHost:
        return _error(404, f"no host named {name!r} in the state database")


_UNPRINTABLE = re.compile(r"[\x00-\x1f\x7f-\x9f]+")
LOGGED_DETAIL = 300  # characters of an event's detail in the server log (the dashboard has all of it)


def _shown(detail: str | None) -> str:
    """An event's detail for one log line: a host's text on one line, control characters as spaces, cut short."""
    if not detail:
        return ""
    text = _UNPRINTABLE.sub(" ", detail).strip()
    return ": " + (text if len(text) <= LOGGED_DETAIL else text[:LOGGED_DETAIL] + "…")


async def post_event(request: Request) -> Response:
    """POST /v1/hosts/NAME/events: from NAME itself (its host key, or before it has one its enrolment token)."""
    p: Provisioner = request.app.state.provisioner
    name = request.path_params["name"]
    body = await _json_body(request, MAX_EVENT_BYTES, "event", name[:64])
    if isinstance(body, Response):
        return body
    by_key = request.headers.get("authorization", "").startswith(hostauth.SCHEME + " ")
    try:
        async with p.reports.turn():
            stored: tuple[State, Event] | Response | None = (
                await _signed_event(p, request, name, body) if by_key else None
            )
            if stored is None:
                stored = await _checked_event(p, request, name, body, by_key)
    except Denied as e:
        return await _refused(p, request, "event", e, name if p.host_by_name(name) else None)
    if isinstance(stored, Response):
        return stored
    state, event = stored
    LOG.info("%s: %s %s%s (now %s)", name, event.step, event.status, _shown(event.detail), state.value)
    if by_key and event.step == "secrets" and event.status == "ok" and await p.state(p.store.ack_secrets, name):
        await _granted(p, request, "secrets", name, "acknowledged: not handed out again, enrolment token spent")
    return JSONResponse({"host": name, "state": state.value}, status_code=201)


DISKS_BYTES = 256 * 1024  # what the installer saw of a machine with a hundred disks: about 40 KB


async def install_disk(request: Request) -> Response:
    """POST /v1/hosts/NAME/disk: from NAME's installer (its enrolment token), what it saw of its disks in lsblk's
    JSON shape (kiln/targetdisk.py disks_from_installer). The answer is one line of text, which busybox sh reads:
    `disk /dev/sdb` when NAME's disk rule picks exactly one disk, `raid1 /dev/sda /dev/sdb` when its `raid: 1` rule
    picks exactly two, else `refuse WHY`, WHY naming every disk seen."""
    p: Provisioner = request.app.state.provisioner
    name = request.path_params["name"]
    body = await _json_body(request, DISKS_BYTES, "disk", name[:64])
    if isinstance(body, Response):
        return body
    try:
        sender = await p.state(p.authority.installer, request)
    except Denied as e:
        return await _refused(p, request, "disk", e, name if p.host_by_name(name) else None)
    host = p.host_by_name(name)
    if sender != name or host is None:
        return await _refused(
            p, request, "disk", Denied(403, f"{sender}'s token cannot choose {name[:64]}'s disk"), sender
        )
    try:
        disks = targetdisk.disks_from_installer(json.loads(body))
    except (ValueError, AttributeError) as e:  # AttributeError: JSON that is no mapping
        return _error(400, f"expected what lsblk --json -b reports ({e})")
    try:
        image = p.images.install_image(host.role)
        chosen = targetdisk.targets(disks, host.disk, image.size)
    except (ipxe.NotBuilt, targetdisk.NoDisk) as e:
        LOG.warning("%s: no disk to install onto: %s", name, e)
        return PlainTextResponse(f"refuse {_UNPRINTABLE.sub(' ', str(e))}\n", headers={"Cache-Control": "no-store"})
    devices = " ".join(d.device for d in chosen)
    seen = "; ".join(d.seen() for d in chosen)
    LOG.info("%s: installs onto %s (%s): %s", name, devices, host.disk.describe(), seen)
    answer = f"raid1 {devices}" if host.disk.raid == 1 else f"disk {devices}"
    return PlainTextResponse(answer + "\n", headers={"Cache-Control": "no-store"})


async def seed(request: Request) -> Response:
    """GET /v1/hosts/NAME/seed (operator): what a machine that does not boot the PXE installer needs to enrol:
    the provisioning URL, its name and MAC, and its enrolment token (for EC2 user-data, QEMU fw_cfg, a USB key)."""
    p: Provisioner = request.app.state.provisioner
    refused = await _operator_only(p, request, "seed")
    if refused is not None:
        return refused
    host = p.host_by_name(request.path_params["name"])
    if host is None:
        return _error(404, "no such host in roles.yaml")
    token = await p.state(p.store.armed_token, host.name)
    if token is None:
        return _error(409, f"{host.name} holds no valid enrolment token: ./inv reprovision {host.name}")
    await _granted(p, request, "seed", host.name, "enrolment token handed to the operator")
    return JSONResponse(
        {"url": p.installer.provisioning_url, "host": host.name, "mac": host.mac, "token": token},
        headers={"Cache-Control": "no-store"},
    )


async def access(request: Request) -> Response:
    """GET /v1/access (operator): the newest access log lines, grants and refusals, with their peers."""
    p: Provisioner = request.app.state.provisioner
    refused = await _operator_only(p, request, "access")
    if refused is not None:
        return refused
    outcome = request.query_params.get("outcome")
    rows = await p.blocking(p.store.access_log, limit=200, outcome=outcome)
    return JSONResponse({"access": rows}, headers={"Cache-Control": "no-store"})


PUBLISH_BYTES = 8 * 1024 * 1024  # a roles.yaml of 10,000 hosts is about 1 MB


async def publish(request: Request) -> Response:
    """POST /v1/publish (operator), {"roles": TEXT, "retiring": [NAME, ...]}: the next generation (kiln/server/
    publish.py). 200 with what it did; 422 with every problem when it is refused (then nothing changed)."""
    p: Provisioner = request.app.state.provisioner
    refused = await _operator_only(p, request, "publish")
    if refused is not None:
        return refused
    if p.publisher is None:
        return _error(503, "this server does not take publications")
    wrong = _json_only(request, "publish")
    if wrong is not None:
        return wrong
    body = await _body(request, PUBLISH_BYTES, "publish")
    if isinstance(body, Response):
        return body
    try:
        data = json.loads(body)
        text, retiring = data["roles"], data.get("retiring", [])
        if not isinstance(text, str) or not isinstance(retiring, list) or not all(isinstance(n, str) for n in retiring):
            raise TypeError
    except (ValueError, KeyError, TypeError):
        return _error(400, 'expected {"roles": "<roles.yaml text>", "retiring": ["<host>", ...]}')
    live = p.live
    publisher = p.publisher
    try:
        _, outcome = await asyncio.to_thread(
            lambda: publisher.publish(text, retiring, known=live.known(), before=live.generation)
        )
    except Rejected as e:
        LOG.warning("publication refused: %s", e)
        return JSONResponse({"error": "the roles were not published", "problems": e.problems}, status_code=422)
    detail = f"generation {outcome.generation}" + ("" if outcome.changed else " (unchanged)")
    await _granted(p, request, "publish", "operator", detail)
    LOG.info(
        "published generation %d: added %s, retiring %s, retired %s",
        outcome.generation,
        list(outcome.added),
        list(outcome.retiring),
        list(outcome.retired),
    )
    return JSONResponse(outcome.as_json(), headers={"Cache-Control": "no-store"})


async def published(request: Request) -> Response:
    """GET /v1/published (operator): the generation served, its roles.yaml text and the hosts it drains."""
    p: Provisioner = request.app.state.provisioner
    refused = await _operator_only(p, request, "published")
    if refused is not None:
        return refused
    stored = await p.blocking(p.store.published)
    live = p.live
    return JSONResponse(
        {
            "generation": live.generation,
            "roles": stored.roles if stored.generation == live.generation else "",
            "retiring": [{"name": h.name, "role": h.role, "ip": str(h.ip)} for h in live.retiring],
            "hosts": len(live.cluster.hosts),
        },
        headers={"Cache-Control": "no-store"},
    )


DB_REPORTER = "operator-db"  # the rate limiter's name for the data tier's reporters (beside the peer's own rate)

DB_HINTS = {
    "failover": "./inv db status shows the primary; set db_role to match in roles.yaml, then ./inv apply",
    "switchover": "set db_role to match in roles.yaml, then ./inv apply",
    "fence": "a second writable host was made read-only: find what made it writable (./inv db status)",
    "errant": "the message says what to do; the host stays out of replication until it is re-provisioned",
    "refused": "the monitor did not act: read the message, then ./inv db status",
}


async def _db_report(request: Request, action: str, parse: Any) -> Any:
    """The operator's report, parsed by `parse` (kiln.server.dbreport), or the refusal: the operator only, JSON,
    within the rate and the size, well-formed (400 with the reason)."""
    p: Provisioner = request.app.state.provisioner
    refused = await _operator_only(p, request, action)
    if refused is not None:
        return refused
    body = await _json_body(request, DB_BODY_BYTES, action, DB_REPORTER)
    if isinstance(body, Response):
        return body
    try:
        return parse(body)
    except BadInput as e:
        return _error(400, str(e))


async def db(request: Request) -> Response:
    """GET /v1/db (operator): the data tier as last reported: the monitor's view, the last backup, the newest events
    and the alerts (with hints). PUT /v1/db (operator, the monitor): {"observed", "hosts"}, its latest look."""
    p: Provisioner = request.app.state.provisioner
    if request.method == "PUT":
        view = await _db_report(request, "db-view", parse_view)
        if isinstance(view, Response):
            return view
        await p.state(p.store.put_db_view, view)
        return Response(status_code=204)
    refused = await _operator_only(p, request, "db")
    if refused is not None:
        return refused
    report = await p.blocking(p.store.db_report)
    for alert in report["alerts"]:
        alert["hint"] = DB_HINTS.get(alert["kind"], "")
    hosts = [h.name for h in p.live.cluster.by_role(DB_ROLE)]
    return JSONResponse({**report, "db_hosts": hosts, "now": time.time()}, headers={"Cache-Control": "no-store"})


async def db_events(request: Request) -> Response:
    """POST /v1/db/events (operator: the monitor, a switchover, a backup): {"events": [...]}; 201 with how many were
    new (an id sent before is not stored twice)."""
    p: Provisioner = request.app.state.provisioner
    events = await _db_report(request, "db-events", parse_events)
    if isinstance(events, Response):
        return events
    added = await p.state(p.store.add_db_events, events)
    for one in events:
        LOG.info("db %s %s%s", one.kind, one.host, _shown(one.message))
    return JSONResponse({"added": added}, status_code=201)


# the rate limiter's name for Alertmanager (beside the peer's own rate): upper case, so no host name (lower case
# only) shares its bucket
ALERTMANAGER = "Alertmanager"


async def alerts(request: Request) -> Response:
    """GET /v1/alerts (operator): {"firing": [...], "resolved": [...], "now"} (kiln/server/alerts.py says each
    entry's fields). POST /v1/alerts (Alertmanager's webhook, its bearer token): a notification, version 4; 200 with
    how many alerts changed what is stored."""
    p: Provisioner = request.app.state.provisioner
    if request.method == "POST":
        return await _notified(p, request)
    refused = await _operator_only(p, request, "alerts")
    if refused is not None:
        return refused
    found = await p.blocking(p.store.alert_list)
    now = time.time()
    return JSONResponse({**alert_listing(found, now), "now": now}, headers={"Cache-Control": "no-store"})


async def _notified(p: Provisioner, request: Request) -> Response:
    """Alertmanager's token first (401, logged, as every refusal), then JSON, the rate, the size, the shape."""
    try:
        p.authority.alertmanager(request)
    except Denied as e:
        return await _refused(p, request, "alerts", e, None)
    body = await _json_body(request, ALERTS_BODY_BYTES, "alerts", ALERTMANAGER)
    if isinstance(body, Response):
        return body
    try:
        notification = parse_notification(body)
    except BadInput as e:
        LOG.warning("refused a notification from %s: %s", peer(request), e)
        return _error(400, str(e))
    changed = await p.state(p.store.record_alerts, notification.alerts)
    told = ", ".join(
        f"{a.labels['alertname']}{_on(a.labels)} {a.status}" for a in notification.alerts[:MAX_LOGGED_ALERTS]
    )
    more = len(notification.alerts) - MAX_LOGGED_ALERTS
    LOG.info("alertmanager told %s%s", _shown(told).removeprefix(": "), f" and {more} more" if more > 0 else "")
    return JSONResponse({"alerts": len(notification.alerts), "changed": changed})


MAX_LOGGED_ALERTS = 5  # alerts named in the log line of one notification (the dashboard has them all)


def _on(labels: dict[str, str]) -> str:
    where = labels.get("host") or labels.get("instance")
    return f" on {where}" if where else ""


SINCE_OVERLAP = 5.0  # seconds a delta poll reaches back: a change committed just after the last answer still shows


async def hosts(request: Request) -> Response:
    """Every host; with ?since=T (the `now` of an earlier answer) only the hosts changed since, with every alert."""
    p: Provisioner = request.app.state.provisioner
    refused = await _operator_only(p, request, "hosts")
    if refused is not None:
        return refused
    with_timeline = request.query_params.get("timeline", "1") not in ("0", "false", "no")
    since = None
    if "since" in request.query_params:
        try:
            since = float(request.query_params["since"]) - SINCE_OVERLAP
        except ValueError:
            return _error(400, "since: expected a number (the `now` of an earlier answer)")
    now = time.time()
    live = p.live
    rows = await p.blocking(p.store.host_rows, None, timeline=with_timeline, since=since)
    alert_rows = await p.blocking(p.store.alert_rows)
    unknown = await p.blocking(p.store.unknown_machines)
    view = hosts_view(live, rows, alert_rows, unknown, with_timeline, full=since is None)
    return JSONResponse({**view, "now": now}, headers={"Cache-Control": "no-store"})


async def one_host(request: Request) -> Response:
    """GET /v1/hosts/NAME (operator): that host's entry as /v1/hosts gives it, with its timeline (the dashboard
    asks for it when the operator opens the host); 404 for a name roles.yaml does not list."""
    p: Provisioner = request.app.state.provisioner
    refused = await _operator_only(p, request, "hosts")
    if refused is not None:
        return refused
    live = p.live
    host = live.by_name.get(request.path_params["name"])
    if host is None:
        return _error(404, "no such host in roles.yaml")
    rows = await p.state(p.store.host_rows, [host.name], timeline=True)
    entry = _host_entry(host, rows.get(host.name, {}), True, live.generation, live.cluster.access.admin_user)
    return JSONResponse({**entry, "now": time.time()}, headers={"Cache-Control": "no-store"})


def _alerts(host: Host, row: dict[str, Any], admin: str) -> list[dict[str, str]]:
    """The host's alerts, each with what to do; `admin`: the account operators log in as (access.admin_user)."""
    found = []
    if row.get("secrets_denied"):
        found.append(
            {
                "kind": "secrets-twice",
                "host": host.name,
                "message": f"{host.name} asked for its secrets again after it acknowledged them",
                "hint": f"if this host is being reinstalled on purpose, run ./inv reprovision {host.name}",
            }
        )
    if row.get("credential_alert"):
        found.append(
            {
                "kind": "credential",
                "host": host.name,
                "message": str(row["credential_alert"]),
                "hint": f"find the machine that used it; then ./inv reprovision {host.name}",
            }
        )
    if row.get("converge_error"):
        found.append(
            {
                "kind": "converge",
                "host": host.name,
                "message": f"{host.name} could not apply {row['converge_error']}",
                "hint": f"it runs the generation before; ./inv plan shows the change; ssh {admin}@{host.ip}, then sudo "
                "firstboot status",
            }
        )
    if row.get("state") == "failed":
        found.append(
            {
                "kind": "failed",
                "host": host.name,
                "message": f"{host.name} failed at {row.get('last_step')}: {row.get('last_detail') or 'no detail'}",
                "hint": f"ssh {admin}@{host.ip}, then sudo firstboot status",
            }
        )
    return found


def _host_entry(host: Host, row: dict[str, Any], with_timeline: bool, generation: int, admin: str) -> dict[str, Any]:
    last = None
    if row.get("last_step"):
        last = {
            "step": row["last_step"],
            "status": row["last_status"],
            "detail": row["last_detail"],
            "received": row["last_received"],
            "duration": row["last_duration"],
            "progress": step_progress(row["last_status"], row["last_detail"]),  # the step's own, when it says
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
        "credential": _credential_status(row, time.time()),
        "enrolled_from": row.get("enrolled_from"),
        "secrets_refused": row.get("secrets_denied", 0),
        "step_started": row.get("step_started"),
        "generation": row.get("running_generation"),  # the bundle generation it runs (null: not told yet)
        "converged": (row.get("running_generation") or 0) >= generation,
        "converge_error": row.get("converge_error"),
        "last_event": last,
        "alerts": _alerts(host, row, admin),
    }
    if with_timeline:
        entry["timeline"] = [
            {k: e[k] for k in ("step", "status", "detail", "at", "received", "duration")}
            for e in row.get("timeline", [])
        ]
    return entry


def hosts_view(
    live: Live,
    rows: dict[str, dict[str, Any]],
    alert_rows: dict[str, dict[str, Any]],
    unknown: list[dict[str, Any]],
    with_timeline: bool,
    *,
    full: bool = True,
) -> dict[str, Any]:
    """The /v1/hosts answer: every host in roles.yaml order (full), or only those in `rows` (a delta); the alerts
    of every host either way; the generation served and how many hosts run it; the hosts retired (in `rows`)."""
    cluster, generation = live.cluster, live.generation
    admin = cluster.access.admin_user
    if full:
        listed = [_host_entry(h, rows.get(h.name, {}), with_timeline, generation, admin) for h in cluster.hosts]
    else:
        listed = [
            _host_entry(live.by_name[n], row, with_timeline, generation, admin)
            for n, row in rows.items()
            if n in live.by_name
        ]
    alerts = [a for h in cluster.hosts if h.name in alert_rows for a in _alerts(h, alert_rows[h.name], admin)]
    machines = [
        {"label": "unknown machine", **{k: u[k] for k in ("mac", "first_seen", "last_seen", "requests")}}
        for u in unknown
    ]
    retired = [
        {"name": n, "was": row.get("retired_as") or "", "retired_at": row.get("retired_at")}
        for n, row in sorted(rows.items())
        if row.get("state") == "retired" and n not in live.by_name
    ]
    return {
        "cluster": cluster.name,
        "full": full,
        "count": len(cluster.hosts),
        "generation": generation,
        "retiring": [h.name for h in live.retiring],
        "hosts": listed,
        "retired": retired,
        "unknown_machines": machines,
        "alerts": alerts,
    }


def _secrets_status(row: dict[str, Any]) -> str:
    if row.get("secrets_acked_at"):
        return "withheld" if row.get("secrets_denied") else "acknowledged"
    return "handed out" if row.get("secrets_served_at") else "armed"


def _credential_status(row: dict[str, Any], now: float) -> str:
    if row.get("host_key"):
        return "enrolled"
    if not row.get("enrol_token"):
        return "spent"
    expires = row.get("enrol_expires")
    return "expired" if expires is not None and expires < now else "armed"


async def dashboard(request: Request) -> Response:
    p: Provisioner = request.app.state.provisioner
    try:
        p.authority.operator(request)
    except Denied:
        return RedirectResponse("/login", status_code=303)
    return FileResponse(STATIC / "dashboard.html", headers=DASHBOARD_HEADERS)


LOGIN_BYTES = 1024


async def login(request: Request) -> Response:
    """GET: the form; POST (form-encoded token): the operator's cookie (HttpOnly, Secure, SameSite=Strict)."""
    p: Provisioner = request.app.state.provisioner
    if request.method == "GET":
        return FileResponse(STATIC / "login.html", headers=DASHBOARD_HEADERS)
    # guesses of the token are as slow as one host's events
    throttled = _throttled(p, request, "operator-login", "login")
    if throttled is not None:
        return throttled
    body = await _body(request, LOGIN_BYTES, "login")
    if isinstance(body, Response):
        return body
    given = urllib.parse.parse_qs(body.decode(errors="replace")).get("token", [""])[0].strip()
    if not p.authority.operator_token_ok(given):
        return await _refused(p, request, "login", Denied(401, "wrong operator token"), None)
    await _granted(p, request, "login", "operator", "dashboard session")
    response = RedirectResponse("/", status_code=303)
    response.set_cookie(OPERATOR_COOKIE, given, httponly=True, secure=True, samesite="strict")
    return response


# --- both listeners: health and metrics -------------------------------------------------------------


def metrics_allowed(p: Provisioner, request: Request) -> bool:
    """/metrics is for the admin networks (where the mon host scrapes from) and loopback, or anyone holding the
    operator token: it tells host counts and states, no secret, but nothing the rest of the world needs."""
    try:
        address = ipaddress.ip_address(peer(request))
    except ValueError:
        address = None
    admin = p.live.cluster.network.admin  # the generation served: a publication may change them
    if address is not None and (address.is_loopback or any(address in net for net in admin)):
        return True
    try:
        p.authority.operator(request)
    except Denied:
        return False
    return True


async def metrics(request: Request) -> Response:
    """GET /metrics: Prometheus text format (kiln/server/metrics.py); 403 outside the admin networks."""
    p: Provisioner = request.app.state.provisioner
    if not metrics_allowed(p, request):
        p.metrics.refused("metrics", "not_admin_network")
        return _error(403, "/metrics is served to the admin networks (roles.yaml network.admin) and the operator")
    body = await p.blocking(generate_latest, p.metrics.registry)  # the host census is a query: off the loop
    return Response(body, media_type=METRICS_CONTENT_TYPE, headers={"Cache-Control": "no-store"})


async def health(request: Request) -> Response:
    """GET /healthz: 200 and {"status": "ok", ...} when the state store answers, else 503 (for a load balancer in
    front of several servers, and for monitoring). Open to anyone: it says no more than up or down."""
    p: Provisioner = request.app.state.provisioner
    try:
        status, body = await asyncio.wait_for(p.blocking(healthz, p.store.ping, p.live.generation), HEALTH_TIMEOUT)
    except TimeoutError:
        status, body = 503, {"status": "unavailable", "store": f"no answer within {HEALTH_TIMEOUT:.0f} s"}
    return JSONResponse(body, status_code=status, headers={"Cache-Control": "no-store"})


HEALTH_TIMEOUT = 5.0  # seconds the state store has to answer /healthz's query


class Instrumented:
    """ASGI middleware: counts each request by its route's template (never the raw path: a client cannot grow
    the label set) and status, and times it to its response's last byte."""

    def __init__(self, app: Starlette, listener: str, metrics: ServerMetrics) -> None:
        self.app = app
        self.listener = listener
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # what the client sees when the app raised before answering

        async def sending(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            route = getattr(scope.get("route"), "path", None) or UNMATCHED
            self.metrics.request(self.listener, route, scope["method"], status, time.perf_counter() - started)


# --- the applications -------------------------------------------------------------------------------


def _api_routes() -> list[Route | Mount]:
    return [
        Route("/metrics", metrics),
        Route("/healthz", health),
        Route("/", dashboard),
        Route("/login", login, methods=["GET", "POST"]),
        Mount("/static", app=StaticFiles(directory=STATIC), name="static"),
        Route("/v1/enrol", enrol, methods=["POST"]),
        Route("/v1/bundle", bundle),
        Route("/v1/shared/{digest:str}", shared),
        Route("/v1/hosts", hosts),
        Route("/v1/hosts/{name}", one_host),
        Route("/v1/hosts/{name}/events", post_event, methods=["POST"]),
        Route("/v1/hosts/{name}/disk", install_disk, methods=["POST"]),
        Route("/v1/hosts/{name}/seed", seed),
        Route("/v1/access", access),
        Route("/v1/publish", publish, methods=["POST"]),
        Route("/v1/published", published),
        Route("/v1/db", db, methods=["GET", "PUT"]),
        Route("/v1/db/events", db_events, methods=["POST"]),
        Route("/v1/alerts", alerts, methods=["GET", "POST"]),
    ]


def http_app(p: Provisioner, images_root: Path) -> Instrumented:
    """Boot scripts and images only: nothing that needs a credential ever goes over plain HTTP."""
    routes: list[Route | Mount] = [
        Route("/boot.ipxe", boot_ipxe),
        Route("/metrics", metrics),
        Route("/healthz", health),
        Route("/ipxe", host_ipxe),
        Route("/grub", host_grub),
        Route("/images/{role}/{name}.data", image_data),
        Mount("/images", app=StaticFiles(directory=images_root, check_dir=False), name="images"),
    ]
    routes.append(Route("/", http_root))
    app = Starlette(routes=routes)
    app.state.provisioner = p
    return Instrumented(app, "http", p.metrics)


def tls_app(p: Provisioner) -> Instrumented:
    app = Starlette(routes=_api_routes())
    app.state.provisioner = p
    return Instrumented(app, "https", p.metrics)
