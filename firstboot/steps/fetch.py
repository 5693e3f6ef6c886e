"""The fetch step: this host's bundle, verified, before any other step runs.

`firstboot run`: find the provisioning server (firstboot.sources), reuse the bundle an earlier fetch cached or
ask for it over HTTPS with the cluster CA pinned and bounded retries: the first time with the host's enrolment
token (POST /v1/enrol, which binds the host key, firstboot.credential), then signed with that key (GET
/v1/bundle). Then verify it: the Ed25519 signature over the exact body bytes, the bundle contract (kiln.bundle:
a bundle that does not fit is refused with the JSON path of the problem), the host binding (its MAC is one of
this machine's), its cluster (the one this host belongs to), its expiry and its generation (never older than
what the host accepted before). The cluster-wide contents its files name by sha256 come from GET
/v1/shared/SHA256 (cached beside the bundle) and must match their digest. Any mismatch raises Refused and
nothing of the bundle is applied. `firstboot apply` fills the same slot from a file (`from_file`), its shared
contents from the _shared/ directory `./inv render --out` writes.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import shutil
import ssl
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from urllib.parse import urlsplit

from firstboot.backoff import Backoff, DeadlineExceeded, Retry, retry
from firstboot.credential import Credential
from firstboot.errors import FetchFailed, Refused, StepFailed
from firstboot.identity import macs
from firstboot.log import LOG
from firstboot.paths import Paths
from firstboot.redact import register_secrets
from firstboot.sources import NoSource, Settings, Source, discover
from firstboot.sources.cmdline import bootif
from firstboot.steps.context import Outcome
from firstboot.transport import request, tls_context
from kiln import hostauth, signing
from kiln.bundle import Bundle, BundleError
from kiln.fsutil import write_atomic

SIGNATURE_HEADER = "X-Kiln-Signature"
TIMEOUT = 10.0
NO_SOURCE = "boot with kiln.url= on the kernel command line, or bake /etc/kiln/agent.json into the image"
KEY_HINT = (
    "check that this image was built with the server's signing key (secrets/signing.pub); rebuild it if the key changed"
)
AGENT_HINT = "rebuild the image with an agent that matches the server (./inv freeze, ./inv build)"
CONTRACT_HINT = "check the bundle (./inv render shows it); an agent older than its server needs a rebuilt image"
SHARED_DIR = "_shared"  # ./inv render --out DIR writes DIR/<host>/bundle.json and DIR/_shared/<sha256>


@dataclass(frozen=True, kw_only=True)
class Fetched(Outcome):
    """The fetch step's outcome: the verified bundle every later step works from."""

    bundle: Bundle


def _ignore(value: object) -> None:
    pass


@dataclass(frozen=True)
class Expect:
    """What a served bundle must also be: this host's cluster's, not expired, not older than one accepted."""

    cluster_id: str = ""  # empty: the first bundle's cluster becomes this host's
    generation: int = 0
    now: Callable[[], float] = time.time  # the server's clock as the host knows it


@dataclass(frozen=True)
class FetchContext:
    paths: Paths
    credential: Credential
    sources: Settings = field(default_factory=Settings)
    backoff: Backoff = field(default_factory=Backoff)
    expect: Expect = field(default_factory=Expect)
    found: Callable[[Source], None] = _ignore  # the server is known (events can go there while the fetch retries)
    enrolled: Callable[[str], None] = _ignore  # the server bound this host's key (its name)
    verified: Callable[[Bundle], None] = _ignore  # the bundle is this host's: who the host is, which cluster


@dataclass(frozen=True)
class Signed:
    body: bytes
    signature: str | None


def parse(body: bytes, where: str = "") -> Bundle:
    """`body` as a Bundle, or Refused naming the JSON path of what does not fit; its secrets are masked from now on."""
    try:
        bundle = Bundle.from_json(body)
    except BundleError as e:
        hint = AGENT_HINT if e.path == "$.schema" else CONTRACT_HINT
        raise Refused(f"bundle refused: {where}{e}", hint) from None
    register_secrets(bundle)
    return bundle


REPLAY_HINT = "a bundle from an old or impersonating server is not applied; check the provisioning URL and its server"


def verify(
    body: bytes, signature: str | None, public_key_pem: bytes, host_macs: list[str], expect: Expect | None = None
) -> Bundle:
    """The signature over exactly `body`, the contract, the binding to one of this machine's MACs, then (`expect`)
    the cluster, the expiry and the generation a served bundle is stamped with."""
    try:
        signing.verify(body, signature, signing.load_public_key(public_key_pem))
    except signing.SignatureError as e:
        raise Refused(f"bundle refused: {e}", KEY_HINT) from None
    bundle = parse(body)
    if bundle.host.mac not in host_macs:
        raise Refused(
            f"bundle refused: it is for {bundle.host.name} ({bundle.host.mac}), "
            f"not this machine ({', '.join(host_macs) or 'no MACs'})",
            "check this machine's MAC in roles.yaml",
        )
    if expect is not None:
        _check_stamp(bundle, expect)
    return bundle


def _check_stamp(bundle: Bundle, expect: Expect) -> None:
    if not bundle.cluster_id or not bundle.expires_at:
        raise Refused("bundle refused: it names no cluster or expiry (not stamped by a kiln server)", AGENT_HINT)
    if expect.cluster_id and bundle.cluster_id != expect.cluster_id:
        raise Refused(
            f"bundle refused: it is cluster {bundle.cluster_id}'s ({bundle.cluster}), this host belongs to cluster "
            f"{expect.cluster_id}",
            REPLAY_HINT,
        )
    now = expect.now()
    if bundle.expires_at <= now:
        raise Refused(
            f"bundle refused: it expired {int(now - bundle.expires_at)} s ago (issued at {bundle.issued_at})",
            REPLAY_HINT,
        )
    if bundle.generation < expect.generation:
        raise Refused(
            f"bundle refused: generation {bundle.generation} is older than generation {expect.generation}, "
            "which this host already accepted",
            REPLAY_HINT,
        )


def baked_cluster_id(paths: Paths) -> str:
    """The cluster the image was built for (/etc/kiln/agent.json "cluster_id"), or "" for an older image."""
    try:
        data = json.loads(paths.agent_json.read_text())
    except (OSError, ValueError):
        return ""
    value = data.get("cluster_id") if isinstance(data, dict) else None
    return value if isinstance(value, str) else ""


def _this_machine(paths: Paths, first: str) -> list[str]:
    """This machine's MACs, the boot interface first (`first`, else BOOTIF from the kernel command line)."""
    return macs(paths, first or bootif(paths))


def _signing_key(paths: Paths) -> bytes:
    """The public key baked into the image (PEM)."""
    try:
        return paths.signing_pub.read_bytes()
    except FileNotFoundError:
        raise Refused(f"no signing key at {paths.signing_pub}", "the image lacks the baked key; rebuild it") from None


def _cached(paths: Paths, key: bytes, host_macs: list[str], expect: Expect) -> Bundle | None:
    """The bundle an earlier fetch left, verified like a fresh one; None when there is none (a refused one is gone,
    an expired one too: the host fetches a fresh one)."""
    if not (paths.bundle_body.exists() and paths.bundle_signature.exists()):
        return None
    body, signature = paths.bundle_body.read_bytes(), paths.bundle_signature.read_text().strip()
    try:
        return verify(body, signature, key, host_macs, expect)
    except Refused as e:
        LOG.warning("discarding the cached bundle: %s", e.reason)
        forget(paths)
        return None


def forget(paths: Paths) -> None:
    """Remove the cached bundle (it holds the secrets until the host is done) and its shared contents."""
    paths.bundle_body.unlink(missing_ok=True)
    paths.bundle_signature.unlink(missing_ok=True)
    shutil.rmtree(paths.shared, ignore_errors=True)


def tls_for(url: str, ca_pem: Path) -> ssl.SSLContext:
    """The context for the provisioning server: https only, the cluster CA pinned."""
    if urlsplit(url).scheme != "https":
        raise FetchFailed(
            f"{url}: the provisioning URL must be https (the cluster CA is pinned)", "fix the URL in the source"
        )
    try:
        return tls_context(ca_pem)
    except (OSError, ssl.SSLError) as e:
        raise FetchFailed(
            f"cannot load the cluster CA {ca_pem}: {e}", "the image lacks /etc/kiln/ca.pem; rebuild it"
        ) from None


def call(
    url: str, path: str, context: ssl.SSLContext, credential: Credential, *, body: bytes | None = None
) -> tuple[int, bytes, dict[str, str]]:
    """Status, body and headers of GET (or POST `body` as JSON) `path` under `url`, with the host's credential;
    Retry for what may pass later."""
    method = "GET" if body is None else "POST"
    target = urlsplit(url).path.rstrip("/") + path  # what the server sees, so what is signed
    headers = credential.headers(method, target, body or b"")
    if body is not None:
        headers["Content-Type"] = "application/json"
    try:
        answer = request(method, url, path, context=context, timeout=TIMEOUT, body=body, headers=headers)
    except ssl.SSLCertVerificationError as e:
        raise Retry(f"TLS: {e.verify_message} (is {url} serving a certificate from the cluster CA?)") from None
    except (TimeoutError, OSError, http.client.HTTPException) as e:
        raise Retry(f"{url}: {e.__class__.__name__}: {e}") from None
    credential.observe(answer.headers.get("date"))
    return answer.status, answer.body, answer.headers


def server_said(body: bytes) -> str:
    try:
        return str(json.loads(body)["error"])
    except (ValueError, KeyError, TypeError):
        return body[:200].decode(errors="replace")


def _gave_up(url: str, backoff: Backoff, e: DeadlineExceeded) -> FetchFailed:
    return FetchFailed(
        f"no bundle within {backoff.deadline:.0f}s: {e.last}",
        f"check that the provisioning server ({url}) is up (./inv serve) and reachable from this host, "
        "then reboot or run `firstboot run`",
    )


REARM = (
    "re-arm the host on the server (./inv reprovision HOST) and reinstall it, or give it its new token "
    "(GET /v1/hosts/HOST/seed as the operator)"
)


def download(
    url: str,
    host_macs: list[str],
    ca_pem: Path,
    backoff: Backoff,
    credential: Credential,
    enrolled: Callable[[str], None],
) -> Signed:
    """The host's bundle: enrol with its token the first time (the server binds the host key), then signed with
    that key. Transient failures are retried; a refused credential is not (it needs an operator)."""
    context = tls_for(url, ca_pem)
    if not host_macs:
        raise FetchFailed("this machine has no network interface with a MAC address")

    def attempt() -> Signed:
        if credential.enrolled:
            synced = credential.synced
            status, body, headers = call(url, "/v1/bundle", context, credential)
            what = "the signed bundle request"
            if status == 401 and not synced and credential.synced and abs(credential.offset) >= hostauth.MAX_SKEW - 2:
                # signed with this host's own clock, off by more than the server takes (before NTP): now the
                # server's clock is known (its Date header), the next attempt is signed with it
                raise Retry(f"{url}: HTTP 401: {server_said(body)} (signing with the server's clock next)")
            if status == 401 and credential.token:
                # the server knows no key for this host (re-armed): the token it was given enrols it again
                LOG.warning("the server refused the host key (%s); enrolling again with the token", server_said(body))
                credential.enrolled = False
        if not credential.enrolled:
            if not credential.token:
                raise FetchFailed(
                    "this host has no enrolment token (not on the kernel command line, the seed, fw_cfg or "
                    "user-data), so the server will not give it its bundle",
                    REARM,
                )
            payload = json.dumps({"host_key": credential.public(), "macs": host_macs}).encode()
            status, body, headers = call(url, "/v1/enrol", context, credential, body=payload)
            what = "this host's enrolment token"
        if status == 200:
            if not credential.enrolled:
                credential.host, credential.enrolled = headers.get("x-kiln-host", ""), True
                enrolled(credential.host)
            LOG.info("fetched the bundle (%d bytes)", len(body))
            return Signed(body, headers.get(SIGNATURE_HEADER.lower()))
        if status in (401, 403):
            raise FetchFailed(f"the server refused {what}: HTTP {status}: {server_said(body)}", REARM)
        raise Retry(f"{url}: HTTP {status}: {server_said(body)}")

    try:
        return retry(attempt, "fetch bundle", backoff)
    except DeadlineExceeded as e:
        raise _gave_up(url, backoff, e) from None


# --- shared contents: what every host's bundle would repeat (/etc/hosts, the tier sets), named by sha256 ---


def _checked(digest: str, data: bytes, where: str) -> str:
    if hashlib.sha256(data).hexdigest() != digest:
        raise Refused(f"bundle refused: the shared content {where} does not match its sha256 {digest}", CONTRACT_HINT)
    return data.decode()


def with_shared(bundle: Bundle, contents: Mapping[str, str]) -> Bundle:
    """The bundle with the text of every file that names a shared content inline (`contents`: sha256 -> text)."""
    return replace(bundle, files=tuple(replace(f, content=contents[f.shared]) if f.shared else f for f in bundle.files))


def _cached_shared(paths: Paths, digests: list[str]) -> dict[str, str]:
    """The shared contents an earlier fetch kept that still match their digest."""
    found = {}
    for digest in digests:
        try:
            found[digest] = _checked(digest, (paths.shared / digest).read_bytes(), str(paths.shared / digest))
        except (OSError, Refused):
            continue
    return found


def download_shared(
    paths: Paths, url: str, digests: list[str], ca_pem: Path, backoff: Backoff, credential: Credential
) -> dict[str, str]:
    """Every content in `digests`: kept from an earlier fetch, or GET /v1/shared/SHA256 (then kept)."""
    contents = _cached_shared(paths, digests)
    missing = [d for d in digests if d not in contents]
    if not missing:
        return contents
    context = tls_for(url, ca_pem)

    def attempt() -> None:
        for digest in [d for d in missing if d not in contents]:
            status, body, _ = call(url, f"/v1/shared/{digest}", context, credential)
            if status != 200:
                raise Retry(f"{url}/v1/shared/{digest}: HTTP {status}: {server_said(body)}")
            contents[digest] = _checked(digest, body, f"{url}/v1/shared/{digest}")
            write_atomic(paths.shared / digest, body, 0o600, durable=True)

    try:
        retry(attempt, "fetch shared contents", backoff)
    except DeadlineExceeded as e:
        raise _gave_up(url, backoff, e) from None
    return contents


def _from_tree(bundle_file: Path, digest: str) -> str:
    """A shared content from the _shared/ directory beside the bundle file or beside its directory."""
    places = [bundle_file.parent / SHARED_DIR / digest, bundle_file.parent.parent / SHARED_DIR / digest]
    for place in places:
        if place.is_file():
            return _checked(digest, place.read_bytes(), str(place))
    raise StepFailed(
        f"the bundle names shared content {digest}, found in neither {places[0].parent} nor {places[1].parent}",
        "apply a bundle from a tree ./inv render --out DIR wrote (it keeps shared contents in DIR/_shared/)",
    )


def verify_served(paths: Paths, signed: Signed, expect: Expect, first_mac: str = "") -> Bundle:
    """A bundle as the server sent it, verified (`verify`) with the key baked into this image, against this
    machine's MACs (`first_mac` first) and `expect`; Refused otherwise."""
    key, host_macs = _signing_key(paths), _this_machine(paths, first_mac)
    return verify(signed.body, signed.signature, key, host_macs, expect)


def cached_bundle(paths: Paths, first_mac: str, expect: Expect) -> Bundle | None:
    """The bundle a finished fetch step left, with its shared contents, verified again; None when any is gone."""
    bundle = _cached(paths, _signing_key(paths), _this_machine(paths, first_mac), expect)
    if bundle is None:
        return None
    contents = _cached_shared(paths, bundle.shared_digests())
    if len(contents) < len(bundle.shared_digests()):
        return None
    return with_shared(bundle, contents)


def fetch(ctx: FetchContext) -> Fetched:
    """`firstboot run`'s fetch step: discover the server, then the cached bundle or a fresh one, verified."""
    paths = ctx.paths
    try:
        src = discover(paths, ctx.sources)
    except NoSource as e:
        raise StepFailed(str(e), NO_SOURCE) from None
    if src.token:
        ctx.credential.token = src.token
    ctx.found(src)
    host_macs = _this_machine(paths, src.mac)
    bundle = _cached(paths, _signing_key(paths), host_macs, ctx.expect)
    if bundle is None:
        signed = download(src.url, host_macs, paths.ca_pem, ctx.backoff, ctx.credential, ctx.enrolled)
        bundle = verify_served(paths, signed, ctx.expect, src.mac)
        write_atomic(paths.bundle_body, signed.body, 0o600, durable=True)
        write_atomic(paths.bundle_signature, (signed.signature or "").encode(), 0o600, durable=True)
    ctx.verified(bundle)
    digests = bundle.shared_digests()
    shared = download_shared(paths, src.url, digests, paths.ca_pem, ctx.backoff, ctx.credential)
    bundle = with_shared(bundle, shared)
    h = bundle.host
    detail = f"bundle for {h.name} ({h.role}, {h.mac}) from {src.url} ({src.origin}) verified"
    return Fetched(detail + (f", {len(digests)} shared contents" if digests else ""), bundle=bundle)


def from_file(path: Path) -> Fetched:
    """`firstboot apply`'s fetch slot: a bundle file as rendered or as served (unsigned), under the same contract."""
    try:
        body = path.read_bytes()
    except OSError as e:
        raise StepFailed(f"cannot read {path}: {e.strerror}", "name a bundle file (./inv render writes them)") from None
    bundle = parse(body, f"{path}: ")
    bundle = with_shared(bundle, {d: _from_tree(path, d) for d in bundle.shared_digests()})
    h = bundle.host
    return Fetched(f"bundle for {h.name} ({h.role}, {h.mac}) read from {path}", bundle=bundle)
