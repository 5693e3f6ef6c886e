"""Who is asking: the operator (a token from secrets/operator.token), a host (its bound key, kiln/hostauth.py) or
a host's installer before it has a key (its enrolment token). Each check raises Denied with the HTTP status to
answer; nothing here looks at a MAC: a MAC selects a host's records, it never authorises anything.

    Authorization: Bearer OPERATOR_TOKEN           ./inv hosts, scripts, curl
    Cookie: kiln_operator=OPERATOR_TOKEN            the dashboard, after POST /login
    Authorization: Bearer ENROLMENT_TOKEN           the installer's events, the agent's enrolment
    Authorization: KilnHost host=..., sig=...       every later call of an enrolled host
    Authorization: Bearer ALERTMANAGER_TOKEN        Alertmanager's notifications (secrets/alertmanager.token)
"""

from __future__ import annotations

import hmac
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field

from starlette.requests import Request

from kiln import hostauth
from kiln.server.inputs import Event
from kiln.server.states import State
from kiln.server.store import StateStore, UnknownHost

OPERATOR_COOKIE = "kiln_operator"


class Denied(Exception):
    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


def peer(request: Request) -> str:
    return request.client.host if request.client else "?"


def bearer(request: Request) -> str | None:
    scheme, _, value = request.headers.get("authorization", "").partition(" ")
    return value.strip() if scheme.lower() == "bearer" and value.strip() else None


@dataclass
class Nonces:
    """Nonces seen within the signature window, per host, so a captured request cannot be sent again."""

    window: float = hostauth.MAX_SKEW * 2
    limit: int = 10_000  # per host: a host that signs faster than this within the window is refused
    _seen: dict[str, OrderedDict[str, float]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def first_use(self, host: str, nonce: str, now: float) -> bool:
        with self._lock:
            seen = self._seen.setdefault(host, OrderedDict())
            while seen and next(iter(seen.values())) < now - self.window:
                seen.popitem(last=False)
            if nonce in seen or len(seen) >= self.limit:
                return False
            seen[nonce] = now
            return True


@dataclass
class Authority:
    store: StateStore
    operator_token: str
    alertmanager_token: str = ""  # empty: no notification is admitted
    nonces: Nonces = field(default_factory=Nonces)

    def operator(self, request: Request) -> None:
        """The operator's token, as a bearer token or the dashboard's cookie; Denied(401) otherwise."""
        given = bearer(request) or request.cookies.get(OPERATOR_COOKIE) or ""
        if not given or not hmac.compare_digest(given.encode(), self.operator_token.encode()):
            raise Denied(401, "operator credential required (secrets/operator.token; the dashboard: /login)")

    def alertmanager(self, request: Request) -> None:
        """Alertmanager's token as a bearer token (its webhook's http_config.authorization); Denied(401) otherwise.
        The operator's token is not it: what may post alerts can do nothing else, and the reverse."""
        given = bearer(request) or ""
        token = self.alertmanager_token
        if not token or not given or not hmac.compare_digest(given.encode(), token.encode()):
            raise Denied(401, "Alertmanager's token required (secrets/alertmanager.token, as a bearer token)")

    def operator_token_ok(self, given: str) -> bool:
        return bool(given) and hmac.compare_digest(given.encode(), self.operator_token.encode())

    def host(self, request: Request, body: bytes, *, now: float | None = None) -> str:
        """The enrolled host that signed this exact request; Denied(403) for a retired host, Denied(401) for anything
        else. Reads the key from the state store: call it through Provisioner.state."""
        claim = self.claim(request)
        key_text, state = (self.store.credential(claim.host) if claim.host else None) or (None, "")
        self._admit(request, body, claim, key_text, state, time.time() if now is None else now)
        return claim.host

    def claim(self, request: Request) -> hostauth.Claim:
        """What the request's KilnHost credential says, not yet verified; Denied(401) when it has none."""
        try:
            return hostauth.parse(request.headers.get("authorization"))
        except hostauth.AuthError as e:
            raise Denied(401, f"host credential required: {e}") from None

    def signed_event(
        self, request: Request, body: bytes, claim: hostauth.Claim, event: Event, *, now: float | None = None
    ) -> State:
        """Store the event of the host `claim` names, admitted exactly as host() admits: the key is read, the
        signature checked and the event written in one transaction (one trip to the state store, the common
        request of a boot storm). Denied as host() would; through Provisioner.state."""
        now = time.time() if now is None else now

        def admit(key_text: str | None, state: str) -> None:
            self._admit(request, body, claim, key_text, state, now)

        try:
            return self.store.record_event(claim.host, event, admit=admit)
        except UnknownHost:  # as for any host without a key: whether a name exists is not told
            raise Denied(401, f"{claim.host} has no enrolled key (enrol with its token first)") from None

    def _admit(
        self, request: Request, body: bytes, claim: hostauth.Claim, key_text: str | None, state: str, now: float
    ) -> None:
        """Denied unless the claim is signed by the host's bound key; the host's `state` tells a retired host (its
        key revoked: 403) from one that never enrolled (401)."""
        if key_text is None and state == State.retired.value:  # the agent stops following its bundle on this answer
            raise Denied(403, f"{claim.host} is retired (roles.yaml no longer lists it): its key was revoked")
        if key_text is None:
            raise Denied(401, f"{claim.host} has no enrolled key (enrol with its token first)")
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        try:
            hostauth.verify(claim, hostauth.load_public(key_text), request.method, target, body, now)
        except hostauth.AuthError as e:
            raise Denied(401, f"{claim.host}: {e}") from None
        if not self.nonces.first_use(claim.host, claim.nonce, now):
            raise Denied(401, f"{claim.host}: a request was replayed (its nonce was seen)")

    def installer(self, request: Request) -> str:
        """The host whose valid enrolment token this request bears; Denied(401) otherwise. Through
        Provisioner.state."""
        token = bearer(request)
        holder = self.store.token_holder(token, unbound=True) if token else None
        if holder is None:
            raise Denied(401, "no valid credential (an enrolment token before its host enrolled, or its host key)")
        return holder
