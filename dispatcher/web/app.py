"""``dispatcher web``: the operators' page, its JSON API and ``/metrics`` over ``dispatcher.admin``.

Server-rendered (Starlette + Jinja2, no JavaScript, no build step). Every route needs the admin
token (``DISPATCHER_ADMIN_TOKEN``): as an ``Authorization: Bearer`` header, or typed once into the
login form, which sets an HTTP-only, SameSite=Strict cookie signed with the token (so rotating the
token logs everybody out). Requests that rely on the cookie must carry the page's CSRF token on
every POST (a form field, or the ``X-CSRF-Token`` header); bearer requests need none, since a
browser never adds that header by itself.

Without a token the server refuses to bind to anything but loopback, treats every visitor as
logged in, and only answers requests addressed to a loopback host name, so a web page cannot
reach it through DNS rebinding. Customer emails are masked (``a***@example.com``) except on a job
page whose viewer asked to reveal them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import ipaddress
import json
import logging
import re
import secrets
import time
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime
from functools import wraps
from typing import Any, ClassVar
from urllib.parse import urlencode

import jinja2
import sqlalchemy as sa
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import MutableHeaders
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Route
from starlette.templating import Jinja2Templates
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from dispatcher import admin, outbox, producer
from dispatcher.config import QUEUE_NAME, Secret, Settings
from dispatcher.db import get_engine, utcnow
from dispatcher.metrics import CONTENT_TYPE, Metrics
from dispatcher.openapi import INT32, MAX_EXPECTED, MAX_PAGE, MAX_PER_PAGE, OPENAPI, PER_PAGE
from dispatcher.schema import STATUSES

__all__ = ["BindError", "check_bind", "create_app", "mask_emails", "serve"]

SESSION_COOKIE = "dispatcher_session"
SESSION_SECONDS = 12 * 3600
MAX_BODY_BYTES = 64 * 1024

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


# --------------------------------------------------------------------------- masking (pure)

_ADDRESS_PART = r"[^\s\"'<>@,;:()\[\]\\/]+"
_EMAIL = re.compile(rf"({_ADDRESS_PART})@({_ADDRESS_PART}\.{_ADDRESS_PART})")


def mask_emails(text: str | None) -> str | None:
    """``anna@example.com`` -> ``a***@example.com`` wherever an address appears in ``text``."""
    if text is None:
        return None
    return _EMAIL.sub(lambda m: f"{m[1][0]}***@{m[2]}", text)


# --------------------------------------------------------------------------- access


class Gate:
    """Who may come in, and the CSRF token their forms must carry."""

    def __init__(self, token: Secret | None, clock: Callable[[], float] = time.time) -> None:
        self.token = token
        self._clock = clock
        # With a token, cookies are signed with it; without one, with a key of this process.
        self._key = token.reveal().encode() if token else secrets.token_bytes(32)

    def _sign(self, text: str) -> str:
        return hmac.new(self._key, text.encode(), hashlib.sha256).hexdigest()

    def token_ok(self, given: str) -> bool:
        return self.token is not None and hmac.compare_digest(
            given.encode(), self.token.reveal().encode()
        )

    def new_session(self) -> str:
        """``expires.nonce.signature``: unique per login, so each has its own CSRF token."""
        body = f"{int(self._clock()) + SESSION_SECONDS}.{secrets.token_hex(8)}"
        return f"{body}.{self._sign(f'session.{body}')}"

    def session_ok(self, cookie: str | None) -> bool:
        body, _, signature = (cookie or "").rpartition(".")
        expires = body.partition(".")[0]
        return (
            expires.isascii()
            and expires.isdigit()
            and int(expires) > self._clock()
            and hmac.compare_digest(signature.encode(), self._sign(f"session.{body}").encode())
        )

    def who(self, request: Request) -> str | None:
        """``bearer``, ``cookie`` or ``open`` (no token configured); None: not let in."""
        if self.token is None:
            return "open" if is_loopback(request.url.hostname or "") else None
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer":
            return "bearer" if self.token_ok(given.strip()) else None
        return "cookie" if self.session_ok(request.cookies.get(SESSION_COOKIE)) else None

    def csrf(self, request: Request) -> str:
        return self._sign(f"csrf.{request.cookies.get(SESSION_COOKIE, 'open')}")


def _error(status: int, message: str, field: str | None = None, **headers: str) -> JSONResponse:
    return JSONResponse({"error": message, "field": field}, status, headers=headers or None)


def _is_api(request: Request) -> bool:
    return request.url.path.startswith("/api/") or request.url.path == "/metrics"


def guarded(handler: Handler) -> Handler:
    """Let in holders of the token; check the CSRF token on POSTs that rely on a cookie."""

    @wraps(handler)
    async def endpoint(request: Request) -> Response:
        site: Site = request.app.state.site
        how = site.gate.who(request)
        if how is None:
            if _is_api(request) or request.method != "GET":
                return _error(
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
            if not hmac.compare_digest((given or "").encode(), site.gate.csrf(request).encode()):
                return _error(403, "missing or wrong CSRF token: reload the page and try again")
        return await handler(request)

    return endpoint


class _SecurityHeaders:
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


# --------------------------------------------------------------------------- filters


@dataclasses.dataclass(frozen=True)
class Filters:
    """Validated query parameters; ``form`` keeps them as typed, to refill forms and links."""

    status: str | None = None
    queue: str | None = None
    event_id: int | None = None
    customer_email: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    page: int = 1
    per_page: int = PER_PAGE
    form: dict[str, str] = dataclasses.field(default_factory=dict)

    def history(self, engine: sa.Engine) -> tuple[list[admin.JobSummary], bool]:
        """One page, newest first, and whether there is a next one."""
        end = self.page * self.per_page
        found = admin.history(
            engine,
            status=self.status,
            queue=self.queue,
            event_id=self.event_id,
            customer_email=self.customer_email,
            since=self.since,
            until=self.until,
            limit=end + 1,
        )
        return found[end - self.per_page : end], len(found) > end


def _int(name: str, text: str, low: int, high: int) -> int:
    try:
        value = int(text.strip())
    except ValueError:
        raise admin.AdminError(name, f"expected an integer (got {text!r:.40})") from None
    if not low <= value <= high:
        raise admin.AdminError(name, f"must be between {low} and {high} (got {value})")
    return value


def parse_filters(
    params: Mapping[str, str], allowed: tuple[str, ...], now: datetime, *, api: bool = False
) -> Filters:
    """Query parameters -> :class:`Filters`; raises AdminError naming the parameter. Pages send
    every field of their form, so there an empty value means "not given"; the API refuses it."""
    if api:
        unknown = sorted(set(params) - set(allowed))
        if unknown:
            raise admin.AdminError(unknown[0][:40], "unknown parameter")
        form = {k: params[k] for k in allowed if k in params}
    else:
        form = {k: params[k].strip() for k in allowed if params.get(k, "").strip()}
    for name, text in form.items():
        if not text:
            raise admin.AdminError(name, "empty (leave the parameter out instead)")
        if any(ord(c) < 32 for c in text):
            raise admin.AdminError(name, "control characters are not allowed")
    values: dict[str, Any] = {}
    if "status" in form:
        if form["status"] not in STATUSES:
            raise admin.AdminError("status", f"expected one of {', '.join(STATUSES)}")
        values["status"] = form["status"]
    if "queue" in form:
        if not QUEUE_NAME.match(form["queue"]):
            raise admin.AdminError("queue", "not a queue name (a-z, 0-9, _ and -)")
        values["queue"] = form["queue"]
    if "event_id" in form:
        values["event_id"] = _int("event_id", form["event_id"], *INT32)
    if "customer_email" in form:
        if len(form["customer_email"]) > 320:
            raise admin.AdminError("customer_email", "at most 320 characters")
        values["customer_email"] = form["customer_email"]
    for name in ("since", "until"):
        if name in form:
            try:
                values[name] = admin.parse_when(form[name], now)
            except ValueError as exc:
                raise admin.AdminError(name, str(exc)) from None
    if values.get("since") and values.get("until") and values["since"] >= values["until"]:
        raise admin.AdminError("since", "must be before until")
    if "page" in form:
        values["page"] = _int("page", form["page"], 1, MAX_PAGE)
    if "per_page" in form:
        values["per_page"] = _int("per_page", form["per_page"], 1, MAX_PER_PAGE)
    return Filters(**values, form=form)


HISTORY_FIELDS = ("status", "queue", "event_id", "customer_email", "since", "until", "page")
DEAD_FIELDS = ("queue", "event_id", "since", "until", "page")  # what both history and replay take


def _iso(value: datetime | None) -> str:
    return "" if value is None else value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _pinned(f: Filters) -> dict[str, str]:
    """The filter with ages turned into times, so a confirmed replay means what was shown."""
    pinned = {"queue": f.queue or "", "event_id": "" if f.event_id is None else str(f.event_id)}
    return {**pinned, "since": _iso(f.since), "until": _iso(f.until)}


# --------------------------------------------------------------------------- the site


@dataclasses.dataclass
class Site:
    settings: Settings
    engine: sa.Engine
    gate: Gate
    metrics: Metrics
    templates: Jinja2Templates

    def render(self, request: Request, name: str, status: int = 200, **context: Any) -> Response:
        context.update(csrf=self.gate.csrf(request), login=self.gate.token is not None)
        return self.templates.TemplateResponse(request, name, context, status_code=status)

    # Database work runs in the thread pool; these are its synchronous halves.

    def resume(self, queue: str) -> bool:
        with self.engine.begin() as conn:
            changed = outbox.resume(conn, queue, utcnow())
        if changed:
            log.info("admin: resumed queue %s", queue, extra={"queue": queue})
            producer.signal_workers([queue])
            self.metrics.invalidate()
        return changed

    def replay(
        self, f: Filters, *, expected: int | None = None, dry_run: bool = False
    ) -> tuple[admin.ReplayResult, bool]:
        """Replay the dead jobs ``f`` matches, only if they are still ``expected`` many.
        Returns the result and whether it was committed."""
        with self.engine.connect() as conn:
            result = admin.replay(
                conn,
                status="dead",
                queue=f.queue,
                event_id=f.event_id,
                since=f.since,
                until=f.until,
                dry_run=dry_run,
                now=utcnow(),
            )
            if dry_run or (expected is not None and result.count != expected):
                conn.rollback()
                return result, False
            conn.commit()
        if result.count:
            log.info(
                "admin: replayed %d dead jobs (queue=%s event_id=%s since=%s until=%s)",
                result.count, f.queue, f.event_id, _iso(f.since), _iso(f.until),
            )  # fmt: skip
            producer.signal_workers(result.queues)
            self.metrics.invalidate()
        return result, True


def _site(request: Request) -> Site:
    site: Site = request.app.state.site
    return site


NONE = "\u2013"  # an en dash: "nothing here" in a table cell


def _age(seconds: float | None) -> str:
    if seconds is None:
        return NONE
    whole = int(seconds)
    if whole < 60:
        return f"{whole}s"
    if whole < 3600:
        return f"{whole // 60}m {whole % 60}s"
    if whole < 86400:
        return f"{whole // 3600}h {whole % 3600 // 60}m"
    return f"{whole // 86400}d {whole % 86400 // 3600}h"


def _when(value: datetime | None) -> str:
    return NONE if value is None else value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _link(path: str, params: Mapping[str, str], **changes: object) -> str:
    merged = {**params, **{k: str(v) for k, v in changes.items() if v is not None}}
    query = urlencode({k: v for k, v in merged.items() if v})
    return f"{path}?{query}" if query else path


# --------------------------------------------------------------------------- pages


async def login_page(request: Request) -> Response:
    site = _site(request)
    nxt = request.query_params.get("next", "/")
    if site.gate.token is None:
        return RedirectResponse("/", 303)
    return site.render(request, "login.html", next=_safe_next(nxt), error=None)


async def login(request: Request) -> Response:
    site = _site(request)
    form = await request.form()
    nxt = _safe_next(str(form.get("next", "/")))
    if site.gate.token is None:
        return RedirectResponse(nxt, 303)
    if not site.gate.token_ok(str(form.get("token", ""))):
        return site.render(request, "login.html", 401, next=nxt, error="That is not the token.")
    response = RedirectResponse(nxt, 303)
    response.set_cookie(
        SESSION_COOKIE,
        site.gate.new_session(),
        max_age=SESSION_SECONDS,
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )
    return response


def _safe_next(target: str) -> str:
    """Only a path on this site: never ``//evil.example`` or ``https://…``."""
    ok = target.startswith("/") and not target.startswith(("//", "/\\"))
    return target if ok and target.isprintable() else "/"


@guarded
async def logout(request: Request) -> Response:
    response = RedirectResponse("/login", 303)
    response.delete_cookie(SESSION_COOKIE)
    return response


@guarded
async def overview(request: Request) -> Response:
    site = _site(request)
    queues = await run_in_threadpool(admin.stats, site.engine, utcnow())
    return site.render(
        request,
        "overview.html",
        queues=queues,
        statuses=STATUSES,
        resumed=request.query_params.get("resumed"),
    )


@guarded
async def resume_page(request: Request) -> Response:
    queue = request.path_params["queue"]
    if not QUEUE_NAME.match(queue):
        raise HTTPException(404)
    await run_in_threadpool(_site(request).resume, queue)
    return RedirectResponse("/?" + urlencode({"resumed": queue}), 303)


def _refused(request: Request, page: str, form: dict[str, str], exc: admin.AdminError) -> Response:
    """A filter page again, with what was typed and why it was refused."""
    return _site(request).render(
        request,
        page,
        400,
        f=Filters(form=form),
        error=exc,
        jobs=[],
        more=False,
        statuses=STATUSES,
        count=0,
        pinned={},
        replayed=None,
    )


@guarded
async def history_page(request: Request) -> Response:
    site = _site(request)
    try:
        f = parse_filters(request.query_params, HISTORY_FIELDS, utcnow())
        found, more = await run_in_threadpool(f.history, site.engine)
    except admin.AdminError as exc:
        return _refused(request, "history.html", dict(request.query_params), exc)
    return site.render(
        request, "history.html", f=f, jobs=found, more=more, error=None, statuses=STATUSES
    )


@guarded
async def job_page(request: Request) -> Response:
    site = _site(request)
    try:
        job = await run_in_threadpool(admin.show, site.engine, request.path_params["job_id"])
    except admin.AdminError:
        job = None
    if job is None:
        raise HTTPException(404, f"no job {request.path_params['job_id']:.40}")
    reveal = request.query_params.get("reveal") == "1"
    return site.render(request, "job.html", job=job, reveal=reveal)


@guarded
async def dead_page(request: Request) -> Response:
    site = _site(request)
    try:
        f = parse_filters(request.query_params, DEAD_FIELDS, utcnow())
        f = dataclasses.replace(f, status="dead")
        found, more = await run_in_threadpool(f.history, site.engine)
        matching, _ = await run_in_threadpool(lambda: site.replay(f, dry_run=True))
    except admin.AdminError as exc:
        return _refused(request, "dead.html", dict(request.query_params), exc)
    return site.render(
        request,
        "dead.html",
        f=f,
        jobs=found,
        more=more,
        count=matching.count,
        pinned=_pinned(f),
        error=None,
        replayed=request.query_params.get("replayed"),
    )


@guarded
async def replay_page(request: Request) -> Response:
    """GET: confirm ("Replay N jobs?"); POST: replay, if the filter still matches N jobs."""
    site = _site(request)
    params = await request.form() if request.method == "POST" else request.query_params
    fields = {k: str(v) for k, v in params.items()}
    try:
        f = parse_filters(fields, DEAD_FIELDS, utcnow())
        expected = (
            _int("expected", fields.get("expected", ""), 0, MAX_EXPECTED)
            if request.method == "POST"
            else None
        )
        result, done = await run_in_threadpool(
            lambda: site.replay(f, expected=expected, dry_run=request.method == "GET")
        )
    except admin.AdminError as exc:
        return _refused(request, "dead.html", fields, exc)
    if done:
        return RedirectResponse(_link("/dead", _pinned(f), replayed=result.count), 303)
    changed = expected is not None and expected != result.count
    return site.render(
        request,
        "confirm.html",
        409 if changed else 200,
        count=result.count,
        queues=result.queues,
        pinned=_pinned(f),
        was=expected if changed else None,
    )


# --------------------------------------------------------------------------- JSON API


def _bad(exc: admin.AdminError) -> JSONResponse:
    return _error(400, exc.message, exc.field)


@guarded
async def api_queues(request: Request) -> Response:
    queues = await run_in_threadpool(admin.stats, _site(request).engine, utcnow())
    return JSONResponse({"queues": {name: q.as_dict() for name, q in queues.items()}})


@guarded
async def api_jobs(request: Request) -> Response:
    try:
        f = parse_filters(request.query_params, (*HISTORY_FIELDS, "per_page"), utcnow(), api=True)
        found, more = await run_in_threadpool(f.history, _site(request).engine)
    except admin.AdminError as exc:
        return _bad(exc)
    jobs = [{**j.as_dict(), "last_error": mask_emails(j.last_error)} for j in found]
    return JSONResponse({"jobs": jobs, "page": f.page, "per_page": f.per_page, "has_more": more})


def _masked(job: admin.JobDetail) -> dict[str, Any]:
    shown = job.as_dict()
    for key in ("payload", "last_error"):
        shown[key] = mask_emails(shown[key])
    for attempt in shown["attempt_log"]:
        for key in ("error", "response_body"):
            attempt[key] = mask_emails(attempt[key])
    return shown


@guarded
async def api_job(request: Request) -> Response:
    reveal = request.query_params.get("reveal", "false")
    if reveal not in ("true", "false"):
        return _error(400, "expected true or false", "reveal")
    if set(request.query_params) - {"reveal"}:
        return _error(400, "unknown parameter")
    try:
        job = await run_in_threadpool(
            admin.show, _site(request).engine, request.path_params["job_id"]
        )
    except admin.AdminError as exc:
        return _bad(exc)
    if job is None:
        return _error(404, "no such job")
    return JSONResponse(job.as_dict() if reveal == "true" else _masked(job))


@guarded
async def api_resume(request: Request) -> Response:
    queue = request.path_params["queue"]
    if not QUEUE_NAME.match(queue):
        return _error(400, "not a queue name (a-z, 0-9, _ and -)", "queue")
    resumed = await run_in_threadpool(_site(request).resume, queue)
    return JSONResponse({"queue": queue, "resumed": resumed})


_REPLAY_KEYS = {"queue": str, "event_id": int, "since": str, "until": str}


@guarded
async def api_replay(request: Request) -> Response:
    try:
        body = json.loads(await request.body() or b"{}")
    except (ValueError, RecursionError):
        return _error(400, "expected a JSON object")
    if not isinstance(body, dict):
        return _error(400, "expected a JSON object")
    for key, value in body.items():
        wanted = {**_REPLAY_KEYS, "dry_run": bool, "expected_count": int}.get(key)
        if wanted is None:
            return _error(400, f"unknown field {key!r:.40}", key)
        if not isinstance(value, wanted) or (wanted is int and isinstance(value, bool)):
            return _error(400, f"expected {wanted.__name__}", key)
    fields = {k: str(v) for k, v in body.items() if k in _REPLAY_KEYS}
    expected = body.get("expected_count")
    try:
        f = parse_filters(fields, DEAD_FIELDS[:-1], utcnow(), api=True)
        if expected is not None and not 0 <= expected <= MAX_EXPECTED:
            raise admin.AdminError("expected_count", f"must be between 0 and {MAX_EXPECTED}")
        result, done = await run_in_threadpool(
            lambda: _site(request).replay(f, expected=expected, dry_run=bool(body.get("dry_run")))
        )
    except admin.AdminError as exc:
        return _bad(exc)
    if not done and not result.dry_run:
        return _error(409, f"the filter matches {result.count} jobs, not {expected}: nothing done")
    return JSONResponse(result.as_dict())


@guarded
async def api_openapi(request: Request) -> Response:
    return JSONResponse(OPENAPI)


@guarded
async def metrics(request: Request) -> Response:
    body = await run_in_threadpool(_site(request).metrics.render)
    return Response(body, media_type=CONTENT_TYPE)


async def _http_error(request: Request, exc: Exception) -> Response:
    """404/405/413 as JSON under /api (and /metrics), as a page elsewhere."""
    assert isinstance(exc, HTTPException)
    if _is_api(request):
        return _error(exc.status_code, exc.detail, **(exc.headers or {}))
    return _site(request).templates.TemplateResponse(
        request,
        "error.html",
        {"status": exc.status_code, "detail": exc.detail, "login": False},
        exc.status_code,
        headers=exc.headers,
    )


async def _database_down(request: Request, exc: Exception) -> Response:
    """The database is unreachable or refused us (restart, too many clients, lock timeout)."""
    log.warning("admin: database unavailable: %s", type(exc).__name__)
    message = "the outbox database is unavailable or busy: try again shortly"
    if _is_api(request):
        return _error(503, message, **{"Retry-After": "5"})
    return _site(request).templates.TemplateResponse(
        request, "error.html", {"status": 503, "detail": message, "login": False}, 503
    )


# --------------------------------------------------------------------------- app and server


def create_app(
    settings: Settings, *, engine: sa.Engine | None = None, pages: bool = True
) -> Starlette:
    """The site (``pages=False``: only ``/metrics``, for ``dispatcher metrics``)."""
    engine = engine or get_engine(settings.database_url)
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("dispatcher", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
    )
    env.globals.update(mask=mask_emails, age=_age, when=_when, link=_link)
    routes = [Route("/metrics", metrics)]
    if pages:
        routes += [
            Route("/", overview),
            Route("/login", login_page),
            Route("/login", login, methods=["POST"]),
            Route("/logout", logout, methods=["POST"]),
            Route("/queues/{queue}/resume", resume_page, methods=["POST"]),
            Route("/jobs", history_page),
            Route("/jobs/{job_id}", job_page),
            Route("/dead", dead_page),
            Route("/dead/replay", replay_page, methods=["GET", "POST"]),
            Route("/api/openapi.json", api_openapi),
            Route("/api/queues", api_queues),
            Route("/api/queues/{queue}/resume", api_resume, methods=["POST"]),
            Route("/api/jobs", api_jobs),
            Route("/api/jobs/{job_id}", api_job),
            Route("/api/dead/replay", api_replay, methods=["POST"]),
        ]
    app = Starlette(
        routes=routes,
        middleware=[Middleware(_SecurityHeaders)],
        exception_handlers={
            HTTPException: _http_error,
            sa.exc.OperationalError: _database_down,
            sa.exc.TimeoutError: _database_down,
        },
        max_body_size=MAX_BODY_BYTES,
    )
    app.state.site = Site(
        settings, engine, Gate(settings.admin_token), Metrics(engine), Jinja2Templates(env=env)
    )
    return app


def serve(host: str, port: int, settings: Settings, *, pages: bool = True) -> None:
    """Run the site with uvicorn until interrupted; refuses a non-loopback host without a token."""
    import uvicorn

    check_bind(host, settings.admin_token)
    # No access log: history searches put customer emails in URLs. State changes log themselves.
    app = create_app(settings, pages=pages)
    uvicorn.run(app, host=host, port=port, server_header=False, access_log=False)
