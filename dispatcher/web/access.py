"""Who may come in, and the headers every answer carries.

Every route needs the admin token (``DISPATCHER_ADMIN_TOKEN``): as an ``Authorization: Bearer``
header, or typed once into the login form, which sets an HTTP-only, SameSite=Strict cookie signed
with the token (so rotating the token logs everybody out). Requests that rely on the cookie must
carry the page's CSRF token on every POST (a form field, or the ``X-CSRF-Token`` header); bearer
requests need none, since a browser never adds that header by itself.

Without a token the server refuses to bind to anything but loopback, treats every visitor as
logged in, and only answers requests addressed to a loopback host name, so a web page cannot
reach it through DNS rebinding.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import logging
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from functools import wraps
from typing import ClassVar
from urllib.parse import urlencode

from starlette.datastructures import MutableHeaders
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from dispatcher.config import Secret

__all__ = [
    "PROBES",
    "SESSION_COOKIE",
    "SESSION_SECONDS",
    "BindError",
    "Gate",
    "SecurityHeaders",
    "Throttle",
    "check_bind",
    "client_address",
    "error",
    "guarded",
    "ingesting",
    "is_api",
    "is_loopback",
    "probe",
    "safe_next",
]

SESSION_COOKIE = "dispatcher_session"
SESSION_SECONDS = 12 * 3600
# The only routes open without the token: health probes, whose answers hold no data.
PROBES = ("/healthz", "/readyz")

Handler = Callable[[Request], Awaitable[Response]]

log = logging.getLogger("dispatcher.web")


class BindError(RuntimeError):
    """Serving on this address without an admin token would expose the outbox."""


def is_loopback(host: str) -> bool:
    host = host.strip().strip("[]").lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_bind(host: str, token: Secret | None) -> None:
    if token is None and not is_loopback(host):
        raise BindError(
            f"refusing to serve on {host!r} without DISPATCHER_ADMIN_TOKEN: set it (16+ "
            "characters), or bind to 127.0.0.1"
        )


class Throttle:
    """Wrong tokens per client address: the first :attr:`FREE` cost nothing, then each one locks
    that address out for twice as long as the one before (1 s, 2 s, 4 s … at most
    :attr:`MAX_LOCK` s); :attr:`FORGET_AFTER` seconds without a wrong one clear the address.
    Kept in memory (at most :attr:`MAX_CLIENTS` addresses, the longest idle dropped first).

    The lock holds back wrong tokens only: :meth:`Gate.who` and the login form let a right
    token in whatever the address did before (the operator and Prometheus' scrape often share
    an address with whoever typed a wrong one), and it does not clear the address either, or a
    scrape every 15 s would lift the lock of a guesser behind the same address. Guessing is
    made hopeless by the token's length (16 characters at least); the lock slows clients that
    honour 429 and keeps the log short."""

    FREE = 5
    MAX_LOCK = 900.0
    FORGET_AFTER = 3600.0
    MAX_CLIENTS = 10_000

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        # count, locked until, last failure
        self._failures: OrderedDict[str, tuple[int, float, float]] = OrderedDict()
        self._lock = threading.Lock()

    def wait(self, client: str) -> float:
        """Seconds ``client``'s wrong tokens are refused for without being counted (0: none)."""
        with self._lock:
            _, until, _ = self._failures.get(client, (0, 0.0, 0.0))
        return max(0.0, until - self._clock())

    def failed(self, client: str) -> tuple[int, float]:
        """Count a wrong token; return the address's failures and its lock in seconds."""
        with self._lock:
            now = self._clock()
            count, _, last = self._failures.pop(client, (0, 0.0, now))
            count = 1 if now - last >= self.FORGET_AFTER else count + 1
            # The exponent is capped: 2.0 ** 1024 overflows (after about 1,030 failures).
            doubling = min(count - self.FREE - 1, 32)
            lock = 0.0 if count <= self.FREE else min(self.MAX_LOCK, 2.0**doubling)
            self._failures[client] = (count, now + lock, now)
            while len(self._failures) > self.MAX_CLIENTS:
                self._failures.popitem(last=False)
        return count, lock


class Gate:
    """Who may come in, and the CSRF token their forms must carry.

    A session cookie is ``expires.session-id.signature``; logging out revokes that session id in
    this process (until it would have expired anyway), so the old cookie no longer lets anyone
    in. Wrong tokens (the login form's and bearer tokens) are throttled per client address
    (:class:`Throttle`) and each refusal is logged with the address, never the token tried."""

    def __init__(
        self,
        token: Secret | None,
        clock: Callable[[], float] = time.time,
        ingest: tuple[Secret, ...] = (),
    ) -> None:
        self.token = token
        self.ingest = ingest  # tokens that may only enqueue (see ingesting)
        self._clock = clock
        # With a token, cookies are signed with it; without one, with a key of this process.
        self._key = token.reveal().encode() if token else secrets.token_bytes(32)
        self.throttle = Throttle()
        self._revoked: dict[str, int] = {}  # session id -> when it expires
        self._revoked_lock = threading.Lock()

    def revoke(self, cookie: str | None) -> None:
        """End the session ``cookie`` names (a logout): its cookie is refused from now on."""
        if not self.session_ok(cookie):
            return
        expires, session_id = (cookie or "").split(".")[:2]
        now = self._clock()
        with self._revoked_lock:
            for old in [k for k, until in self._revoked.items() if until <= now]:
                del self._revoked[old]  # expired cookies are refused anyway
            self._revoked[session_id] = int(expires)

    def refused(self, request: Request, how: str) -> None:
        """Count and log a wrong token from ``request``'s client address."""
        client = client_address(request)
        count, lock = self.throttle.failed(client)
        log.warning(
            "admin: refused a wrong token (%s) from %s: %d wrong in a row%s",
            how,
            client,
            count,
            f"; locked out for {lock:g}s" if lock else "",
        )

    def _sign(self, text: str) -> str:
        return hmac.new(self._key, text.encode(), hashlib.sha256).hexdigest()

    def token_ok(self, given: str) -> bool:
        return self.token is not None and hmac.compare_digest(
            given.encode(), self.token.reveal().encode()
        )

    def ingest_ok(self, given: str) -> bool:
        """Whether ``given`` is one of the ingestion tokens (each compared in constant time)."""
        found = False
        for token in self.ingest:
            found |= hmac.compare_digest(given.encode(), token.reveal().encode())
        return found

    def bearer(self, request: Request) -> str | None:
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        return given.strip() if scheme.lower() == "bearer" else None

    def new_session(self) -> str:
        """``expires.nonce.signature``: unique per login, so each has its own CSRF token."""
        body = f"{int(self._clock()) + SESSION_SECONDS}.{secrets.token_hex(8)}"
        return f"{body}.{self._sign(f'session.{body}')}"

    def session_ok(self, cookie: str | None) -> bool:
        body, _, signature = (cookie or "").rpartition(".")
        expires, _, session_id = body.partition(".")
        return (
            expires.isascii()
            and expires.isdigit()
            and int(expires) > self._clock()
            and hmac.compare_digest(signature.encode(), self._sign(f"session.{body}").encode())
            and session_id not in self._revoked
        )

    def who(self, request: Request) -> str | None:
        """``bearer``, ``cookie`` or ``open`` (no token configured); None: not let in."""
        if self.token is None:
            return "open" if is_loopback(request.url.hostname or "") else None
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer":
            if self.token_ok(given.strip()):  # never refused, whatever the address did before
                return "bearer"
            if self.throttle.wait(client_address(request)) <= 0:  # locked: refused, not counted
                self.refused(request, "bearer")
            return None
        return "cookie" if self.session_ok(request.cookies.get(SESSION_COOKIE)) else None

    def csrf(self, request: Request) -> str:
        return self._sign(f"csrf.{request.cookies.get(SESSION_COOKIE, 'open')}")


def client_address(request: Request) -> str:
    """The client's address (behind a proxy of ``DISPATCHER_TRUSTED_PROXIES``, the one it
    forwarded: :func:`dispatcher.web.serve` has uvicorn believe those proxies alone)."""
    return request.client.host if request.client is not None else "unknown"


def error(status: int, message: str, field: str | None = None, **headers: str) -> JSONResponse:
    """The JSON API's error body: ``{"error": …, "field": …}``."""
    return JSONResponse({"error": message, "field": field}, status, headers=headers or None)


def is_api(request: Request) -> bool:
    path = request.url.path
    return path.startswith("/api/") or path == "/metrics" or path in PROBES


def safe_next(target: str) -> str:
    """Only a path on this site: never ``//evil.example`` or ``https://…``."""
    ok = target.startswith("/") and not target.startswith(("//", "/\\"))
    return target if ok and target.isprintable() else "/"


def _secs(wait: float) -> str:
    return str(max(1, int(wait + 0.999)))


def guarded(handler: Handler) -> Handler:
    """Let in holders of the token; check the CSRF token on POSTs that rely on a cookie."""

    @wraps(handler)
    async def endpoint(request: Request) -> Response:
        gate: Gate = request.app.state.site.gate
        how = gate.who(request)
        if how is None and gate.ingest_ok(gate.bearer(request) or ""):
            return error(403, "this token may only enqueue events (POST /api/events)")
        if how is None:
            wait = gate.throttle.wait(client_address(request))
            if wait > 0 and request.headers.get("authorization"):
                return error(
                    429, "too many wrong tokens: try again later", **{"Retry-After": _secs(wait)}
                )
            if is_api(request) or request.method != "GET":
                return error(
                    401, "a valid admin token is required", **{"WWW-Authenticate": "Bearer"}
                )
            target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
            return RedirectResponse("/login?" + urlencode({"next": target}), 303)
        if request.method == "POST" and how != "bearer":
            given = request.headers.get("x-csrf-token")
            if given is None and request.headers.get("content-type", "").startswith(
                "application/x-www-form-urlencoded"
            ):
                given = str((await request.form()).get("csrf", ""))
            if not hmac.compare_digest((given or "").encode(), gate.csrf(request).encode()):
                return error(403, "missing or wrong CSRF token: reload the page and try again")
        return await handler(request)

    return endpoint


def ingesting(handler: Handler) -> Handler:
    """:func:`guarded`, and also open to the ingestion tokens (``DISPATCHER_INGEST_TOKENS``),
    which every other route refuses with a 403."""
    admin = guarded(handler)

    @wraps(handler)
    async def endpoint(request: Request) -> Response:
        gate: Gate = request.app.state.site.gate
        if gate.ingest_ok(gate.bearer(request) or ""):
            return await handler(request)
        return await admin(request)

    return endpoint


def probe(handler: Handler) -> Handler:
    """For :data:`PROBES` alone: no token needed, but without one configured only requests
    addressed to a loopback host name are answered, as everywhere else (no DNS rebinding)."""

    @wraps(handler)
    async def endpoint(request: Request) -> Response:
        if request.url.path not in PROBES:
            raise AssertionError(f"{request.url.path} is not a probe: use guarded")
        gate: Gate = request.app.state.site.gate
        if gate.token is None and gate.who(request) is None:
            return error(401, "a valid admin token is required", **{"WWW-Authenticate": "Bearer"})
        return await handler(request)

    return endpoint


class SecurityHeaders:
    """No framing, no third-party anything, no caching of pages that show customer data."""

    HEADERS: ClassVar[dict[str, str]] = {
        "content-security-policy": "default-src 'none'; style-src 'unsafe-inline'; "
        "img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        "x-frame-options": "DENY",
        "x-content-type-options": "nosniff",
        "referrer-policy": "no-referrer",
        "cache-control": "no-store",
    }

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in self.HEADERS.items():
                    headers.setdefault(name, value)
            await send(message)

        await self.app(scope, receive, send_with_headers)
