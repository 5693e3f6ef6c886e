"""`./inv serve`: load roles.yaml, make sure secrets/ is complete, open the state database, bind both
listeners, print where everything is, then run two uvicorn servers on one event loop until a signal."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import signal
import socket
import ssl
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import uvicorn

from kiln import signing
from kiln.build import manifest
from kiln.model import Cluster, Host, InvalidRoles, parse_roles
from kiln.monitoring.config import ALERTS_PATH
from kiln.secrets import SecretStore
from kiln.server import grub, ipxe, limits, netboot, publish, tftp
from kiln.server.app import Provisioner, http_app, tls_app
from kiln.server.auth import Authority
from kiln.server.bundles import ClusterHook
from kiln.server.publish import Live, Publisher
from kiln.server.store import StateStore

LOG = logging.getLogger("kiln.server")
DEFAULT_HTTP_PORT = 8080
# The PXE installer reports with busybox 1.35's wget, whose TLS offers only SHA-1 signature algorithms:
# OpenSSL 3 refuses those at its default security level. Level 0 admits them, while the cipher list keeps
# every handshake to ECDHE with an AEAD cipher on TLS 1.2 or later; other clients still get SHA-256 or
# better (and TLS 1.3). The installer's events carry no secret; bundles go to the agent, which uses TLS 1.3.
TLS_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20:@SECLEVEL=0"


class ConfigError(ValueError):
    pass


@dataclass(frozen=True)
class Address:
    host: str
    port: int

    @property
    def url_host(self) -> str:
        return f"[{self.host}]" if ":" in self.host else self.host

    @property
    def unspecified(self) -> bool:
        return self.host in ("", "0.0.0.0", "::")


def parse_address(text: str, what: str) -> Address:
    """ADDR:PORT (IPv6 as [ADDR]:PORT); port 0 picks a free port."""
    host, sep, port = text.rpartition(":")
    host = host.strip("[]")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"{what} {text!r}: expected ADDR:PORT, e.g. 0.0.0.0:8080 or 127.0.0.1:0")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise ConfigError(f"{what} {text!r}: {host!r} is not an IP address") from None
    return Address(host, int(port))


@dataclass(frozen=True)
class ServerConfig:
    project: Path
    cluster: Cluster
    secrets: Path
    images: Path
    database: str
    listen: Address
    tls_listen: Address
    cluster_hook: ClusterHook | None = None
    roles_text: str = ""  # the --roles file's text: a changed file is the next generation
    roles_shown: str = "roles.yaml"  # the --roles file as the operator typed it, for messages
    tftp_listen: Address | None = None  # the Secure Boot network boot's TFTP (kiln/server/netboot.py); None: off


def default_tls_listen(cluster: Cluster) -> str:
    return f"0.0.0.0:{urlsplit(cluster.provisioning_url).port or 443}"


def _bind(address: Address) -> socket.socket:
    family = socket.AF_INET6 if ":" in address.host else socket.AF_INET
    try:
        return socket.create_server((address.host, address.port), family=family, backlog=2048)
    except OSError as e:
        raise ConfigError(f"cannot listen on {address.url_host}:{address.port}: {e.strerror}") from None


class _Server(uvicorn.Server):
    """A uvicorn server that leaves signals to us: two of them share one loop and stop together."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def _uvicorn_config(app: Any, refused: Callable[[str, str], None], **tls: Any) -> uvicorn.Config:
    """`refused(action, reason)` counts what the protocol refuses before the app sees a request."""
    return uvicorn.Config(
        app,
        lifespan="off",
        log_level="warning",
        access_log=False,
        server_header=False,
        proxy_headers=False,
        timeout_graceful_shutdown=5,
        backlog=2048,
        **limits.uvicorn_limits(refused),
        **tls,
    )


def serve(config: ServerConfig) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr)
    if config.tftp_listen is not None:  # said before any key is made or any bundle rendered
        try:
            netboot.signed_files()
        except netboot.Missing as e:
            raise ConfigError(f"--tftp-listen: {e}") from None
    cluster = config.cluster
    store_keys = SecretStore(config.secrets)
    created = store_keys.ensure(cluster)
    for path in created:
        print(f"created {path}", flush=True)
    for note in store_keys.notes:
        print(note, flush=True)
    problems = store_keys.check_site(cluster)
    if problems:  # the load balancers would serve it: refuse before any host gets it
        raise ConfigError("the site certificate cannot be served: " + "; ".join(problems))
    key = signing.load_private_key(config.secrets / "signing.key")
    fingerprint = signing.fingerprint(key.public_key())

    store = StateStore.open(config.database, config.project)
    publisher = Publisher(store, store_keys, key, config.cluster_hook)
    started = time.monotonic()
    live, note = _first_generation(publisher, store, config)
    print(f"rendered {len(live.cluster.hosts)} bundles in {time.monotonic() - started:.2f}s", flush=True)
    if note:
        print(note, flush=True)
    cluster, generation = live.cluster, live.generation

    http_sock = _bind(config.listen)
    tls_sock = _bind(config.tls_listen)
    http_port = http_sock.getsockname()[1]
    tls_port = tls_sock.getsockname()[1]
    public = config.listen
    if public.unspecified:  # the address hosts reach us on: the provisioning URL's host
        public = Address(urlsplit(cluster.provisioning_url).hostname or "127.0.0.1", http_port)
    http_base = f"http://{public.url_host}:{http_port}"
    tls_host = (
        config.tls_listen.url_host
        if not config.tls_listen.unspecified
        else (urlsplit(cluster.provisioning_url).hostname or "")
    )
    tls_base = f"https://{tls_host}:{tls_port}"

    images = ipxe.ImageCatalog(config.images, manifest.baked(cluster, store_keys, config.roles_shown))
    provisioner = Provisioner(
        live=live,
        store=store,
        images=images,
        installer=ipxe.Installer(http_base=http_base, provisioning_url=cluster.provisioning_url),
        authority=Authority(store, store_keys.operator_token(), store_keys.alertmanager_token()),
        publisher=publisher,
        dashboard_url=f"{tls_base}/",
        certificates={"ca": store_keys.ca_pem, "server": store_keys.server_pem, "site": store_keys.site_pem},
    )
    publisher.on_swap = provisioner.swap
    tls_config = _uvicorn_config(
        tls_app(provisioner),
        refused=provisioner.metrics.refused,
        ssl_certfile=str(store_keys.server_pem),  # the server's own identity: never in a bundle
        ssl_keyfile=str(store_keys.server_key),
        ssl_ciphers=TLS_CIPHERS,
    )
    tls_config.load()
    assert tls_config.ssl is not None
    tls_config.ssl.minimum_version = ssl.TLSVersion.TLSv1_2
    servers = [
        _Server(_uvicorn_config(http_app(provisioner, config.images), refused=provisioner.metrics.refused)),
        _Server(tls_config),
    ]
    # the loop both servers run on, made now: the TFTP listener's thread hands it each GRUB config to decide
    loop = (servers[0].config.get_loop_factory() or asyncio.new_event_loop)()
    try:
        tftp_listener = _start_tftp(config, provisioner, loop)
    except ConfigError:
        loop.close()
        http_sock.close()
        tls_sock.close()
        store.close()
        raise
    lines = [
        f"kiln serve: cluster {cluster.name}, {len(cluster.hosts)} hosts, generation {generation}, "
        f"state in {_redacted(config.database)}",
        f"  boot scripts   {http_base}/boot.ipxe   (HTTP, also /ipxe?mac=MAC and /images/)",
        f"  bundles        {tls_base}/v1/enrol, /v1/bundle   (HTTPS, {store_keys.server_pem.name} from the cluster CA "
        f"{config.secrets / 'ca.pem'}; hosts authenticate)",
        f"  events         {tls_base}/v1/hosts/NAME/events",
        f"  dashboard      {tls_base}/   (log in with {config.secrets / 'operator.token'})",
        f"  publications   {tls_base}/v1/publish   (./inv plan, ./inv apply: the next generation, no restart)",
        f"  alerts         {tls_base}{ALERTS_PATH}   (Alertmanager's webhook: "
        f"{config.secrets / 'alertmanager.token'} as a bearer token)",
        f"  monitoring     {http_base}/metrics, /healthz   (also over HTTPS; /metrics to "
        f"{', '.join(str(n) for n in cluster.network.admin)} and loopback)",
        f"  signing key    {fingerprint}   ({config.secrets / 'signing.pub'})",
    ]
    if tftp_listener is not None:
        tftp = Address(tftp_listener.host, tftp_listener.port)
        if tftp.unspecified:  # as for HTTP: the address machines reach us on, not 0.0.0.0
            tftp = Address(public.host, tftp.port)
        lines.append(
            f"  network boot   tftp://{tftp.url_host}:{tftp.port}/{netboot.BOOT_FILE}   (UEFI Secure "
            f"Boot: shim, GRUB, {grub.CONFIG_DIR}/MAC, the installer)"
        )
    if config.listen.unspecified and config.listen.port == 0:
        lines.append(f"  (listening on all addresses, HTTP port {http_port}, HTTPS port {tls_port})")
    for role in sorted(cluster.roles_used):  # said now, not first when a machine boots into a refusal
        try:
            images.install_image(role)
        except ipxe.NotBuilt as e:
            lines.append(f"  not served     {e}")
    # A signal from the moment we say we are up stops us cleanly, also before the event loop takes it over.
    early: list[int] = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda signum, frame: early.append(signum))
    print("\n".join(lines), flush=True)

    async def run_both() -> None:
        def stop() -> None:
            for s in servers:
                s.should_exit = True

        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop)
        if early:
            stop()
        follower = asyncio.create_task(_follow(provisioner, publisher, store))
        try:
            await asyncio.gather(servers[0].serve([http_sock]), servers[1].serve([tls_sock]))
        finally:
            follower.cancel()
            if tftp_listener is not None:  # off the loop, which decides the configs its thread may still wait for
                await asyncio.to_thread(tftp_listener.stop)

    try:
        with asyncio.Runner(loop_factory=lambda: loop) as runner:
            runner.run(run_both())
    finally:
        if tftp_listener is not None:
            tftp_listener.stop()  # again (it may not have got that far): at once when it has stopped
        store.close()
    print("kiln serve: stopped", flush=True)
    return 0


def _start_tftp(
    config: ServerConfig, provisioner: Provisioner, loop: asyncio.AbstractEventLoop
) -> tftp.Listener | None:
    """The TFTP listener of --tftp-listen, serving; None without it. Raises ConfigError when this machine lacks the
    signed boot files or the address cannot be listened on."""
    address = config.tftp_listen
    if address is None:
        return None
    try:
        listener = tftp.Listener(address.host, address.port, netboot.TftpFiles(provisioner, config.images, loop))
    except (netboot.Missing, ValueError) as e:
        raise ConfigError(f"--tftp-listen: {e}") from None
    try:
        listener.start()
    except OSError as e:
        raise ConfigError(f"cannot listen for TFTP on {address.host}:{address.port}: {e.strerror or e}") from None
    return listener


def _first_generation(publisher: Publisher, store: StateStore, config: ServerConfig) -> tuple[Live, str]:
    """What the server serves at its start, and a note on why: its --roles file, unless `./inv apply` published
    other roles since the file last changed (the file is then older than what runs: serving it would undo the
    apply). Hosts the previous roles listed and these do not are retired (a restart cannot drain them first)."""
    stored = store.published()
    file_digest = publish.digest(config.roles_text)
    text, note = config.roles_text, ""
    if stored.roles and stored.file_digest == file_digest and stored.digest != file_digest:
        text = stored.roles
        note = (
            f"serving generation {stored.generation}, published by ./inv apply: the roles file is unchanged since "
            "this server last started (./inv plan --roles FILE shows how a file differs from what runs)"
        )
    known: dict[str, Host] = {}
    if stored.roles:
        try:
            known = {h.name: h for h in parse_roles(stored.roles).hosts}
        except InvalidRoles:
            LOG.warning("the roles published before no longer parse: hosts they dropped are not retired")
    try:
        live, _ = publisher.publish(text, known=known, file_digest=file_digest)
    except publish.Rejected as e:
        raise ConfigError("; ".join(e.problems)) from None
    store.retire({n: "" for n in stored.retiring if n not in live.by_name})  # drained before the restart
    return live, note


FOLLOW_EVERY = 5.0  # seconds between two looks for a generation another server published (shared PostgreSQL)


async def _follow(provisioner: Provisioner, publisher: Publisher, store: StateStore) -> None:
    """Serve what another server sharing the database publishes, within FOLLOW_EVERY seconds."""
    while True:
        await asyncio.sleep(FOLLOW_EVERY)
        try:
            stored = await provisioner.blocking(store.published)
            live = provisioner.live
            if stored.generation > live.generation and stored.roles:
                await asyncio.to_thread(publisher.follow, stored, live.known())
                LOG.info("now serving generation %d (published by another server)", stored.generation)
        except Exception:  # a database hiccup or a bad publication must not stop the server: try again later
            LOG.exception("following the published generation failed; retrying in %.0f s", FOLLOW_EVERY)


def _redacted(url: str) -> str:
    """The database URL without its password (the URL may carry one; logs never do)."""
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)
