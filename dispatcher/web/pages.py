"""The server-rendered pages (Starlette + Jinja2, no JavaScript, no build step).

Each page turns what the operator typed into a call of :mod:`dispatcher.admin` and renders what
it returns; the filters, their limits and every operator rule are the service's. A form sends
every field, so here an empty field means "not given".
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from dispatcher import admin
from dispatcher.db import utcnow
from dispatcher.schema import STATUSES, JobStatus
from dispatcher.web.access import (
    SESSION_COOKIE,
    SESSION_SECONDS,
    client_address,
    guarded,
    safe_next,
)
from dispatcher.web.site import mask_emails, site_of

log = logging.getLogger("dispatcher.web")

__all__ = ["DEAD_FIELDS", "HISTORY_FIELDS", "ROUTES", "TEMPLATE_GLOBALS"]

HISTORY_FIELDS = admin.FILTER_FIELDS
DEAD_FIELDS = ("queue", "event_id", "status_code", "since", "until")  # what replay takes too
NONE = "\u2013"  # an en dash: "nothing here" in a table cell


@dataclasses.dataclass(frozen=True)
class Typed:
    """What the operator typed (to refill the form and build links) and the page shown."""

    form: dict[str, str]
    before: int | None = None  # the cursor: jobs older than this id (None: the newest)


def _typed(params: Mapping[str, str], fields: tuple[str, ...], before: int | None = None) -> Typed:
    return Typed({k: params[k].strip() for k in fields if params.get(k, "").strip()}, before)


def age(seconds: float | None) -> str:
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


def when(value: datetime | None) -> str:
    return NONE if value is None else value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def link(path: str, params: Mapping[str, str], **changes: object) -> str:
    merged = {**params, **{k: str(v) for k, v in changes.items() if v is not None}}
    query = urlencode({k: v for k, v in merged.items() if v})
    return f"{path}?{query}" if query else path


async def login_page(request: Request) -> Response:
    site = site_of(request)
    nxt = request.query_params.get("next", "/")
    if site.gate.token is None:
        return RedirectResponse("/", 303)
    return site.render(request, "login.html", next=safe_next(nxt), error=None)


async def login(request: Request) -> Response:
    site = site_of(request)
    form = await request.form()
    nxt = safe_next(str(form.get("next", "/")))
    if site.gate.token is None:
        return RedirectResponse(nxt, 303)
    client = client_address(request)
    if not site.gate.token_ok(str(form.get("token", ""))):  # a right one is never refused
        wait = site.gate.throttle.wait(client)
        if wait > 0:  # locked out: refused, and not counted again
            log.warning("admin: refused a login from %s: locked out for %.0fs more", client, wait)
            return site.render(
                request,
                "login.html",
                429,
                next=nxt,
                error=f"Too many wrong tokens: try again in {int(wait + 0.999)} s.",
            )
        site.gate.refused(request, "login form")
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


@guarded
async def logout(request: Request) -> Response:
    site_of(request).gate.revoke(request.cookies.get(SESSION_COOKIE))  # ends it server-side
    response = RedirectResponse("/login", 303)
    response.delete_cookie(SESSION_COOKIE)
    return response


@guarded
async def overview(request: Request) -> Response:
    site = site_of(request)
    now = utcnow()
    queues = await run_in_threadpool(admin.stats, site.engine, now)
    delivered = await run_in_threadpool(admin.delivered_per_minute, site.engine, now)
    return site.render(
        request,
        "overview.html",
        queues=queues,
        statuses=STATUSES,
        delivered=delivered,
        quiet=(0,) * admin.ACTIVITY_WINDOWS["1h"][1],
        resumed=request.query_params.get("resumed"),
        paused=request.query_params.get("paused"),
    )


@guarded
async def resume_page(request: Request) -> Response:
    site = site_of(request)
    queue = request.path_params["queue"]
    try:
        admin.check_queue(queue)
        await run_in_threadpool(site.resume, queue)
    except admin.AdminError:  # not a queue name, or a queue that does not exist
        raise HTTPException(404) from None
    back = f"/queues/{queue}" if (await request.form()).get("back") == "queue" else "/"
    return RedirectResponse(f"{back}?" + urlencode({"resumed": queue}), 303)


def _refused(request: Request, page: str, typed: Typed, exc: admin.AdminError) -> Response:
    """A filter page again, with what was typed and why it was refused."""
    return site_of(request).render(
        request,
        page,
        400,
        f=typed,
        error=exc,
        jobs=[],
        more=False,
        statuses=STATUSES,
        count=0,
        pinned={},
        replayed=None,
    )


def _read(
    params: Mapping[str, str], fields: tuple[str, ...], status: JobStatus | None = None
) -> tuple[admin.Filter, admin.Page, Typed]:
    f = admin.parse_filter(params, utcnow(), fields=fields, blank="ignore")
    if status is not None:
        f = dataclasses.replace(f, status=status)
    page = admin.parse_page({"before": params.get("before", "")}, blank="ignore")
    return f, page, _typed(params, fields, page.before)


@guarded
async def history_page(request: Request) -> Response:
    site = site_of(request)
    params = request.query_params
    try:
        f, page, typed = _read(params, HISTORY_FIELDS)
        found, more = await run_in_threadpool(admin.history_page, site.engine, f, page)
    except admin.AdminError as exc:
        return _refused(request, "history.html", _typed(params, HISTORY_FIELDS), exc)
    return site.render(
        request, "history.html", f=typed, jobs=found, more=more, error=None, statuses=STATUSES
    )


@guarded
async def job_page(request: Request) -> Response:
    site = site_of(request)
    try:
        job = await run_in_threadpool(admin.show, site.engine, request.path_params["job_id"])
    except admin.AdminError:
        job = None
    if job is None:
        raise HTTPException(404, f"no job {request.path_params['job_id']:.40}")
    reveal = request.query_params.get("reveal") == "1"
    cancelled = request.query_params.get("cancelled") == "1"
    return site.render(request, "job.html", job=job, reveal=reveal, cancelled=cancelled, error=None)


@guarded
async def cancel_job(request: Request) -> Response:
    """POST: cancel this waiting job (:func:`dispatcher.admin.cancel` by its id)."""
    site = site_of(request)
    number = request.path_params["job_id"]
    try:
        await run_in_threadpool(lambda: admin.cancel(site.engine, job_ids=[number], now=utcnow()))
    except admin.AdminError as exc:
        job = await run_in_threadpool(_job_or_none, site, number)
        if job is None:
            raise HTTPException(404, f"no job {number:.40}") from None
        return site.render(
            request, "job.html", 409, job=job, reveal=False, cancelled=False, error=exc.message
        )
    site.metrics.invalidate()
    return RedirectResponse(f"/jobs/{number}?cancelled=1", 303)


def _job_or_none(site: Any, number: str) -> admin.JobDetail | None:
    try:
        return admin.show(site.engine, number)
    except admin.AdminError:
        return None


@guarded
async def forget_page(request: Request) -> Response:
    """GET: the form; POST: what it would erase, and with ``confirm=1``, erase it."""
    site = site_of(request)

    def page(status: int = 200, **shown: Any) -> Response:
        context: dict[str, Any] = {"kinds": list(admin.IDENTIFIER_KINDS), "kind": "email"}
        context["value"] = ""
        context |= {"error": None, "planned": None, "done": None, **shown}
        return site.render(request, "forget.html", status, **context)

    if request.method == "GET":
        return page()
    form = await request.form()
    kind, value = str(form.get("kind", "")), str(form.get("value", ""))
    confirm = form.get("confirm") == "1"
    try:
        if kind not in admin.IDENTIFIER_KINDS:
            raise admin.AdminError("kind", f"expected one of {', '.join(admin.IDENTIFIER_KINDS)}")
        customer = admin.parse_customer({kind: value})
        result = await run_in_threadpool(
            lambda: admin.forget(site.engine, customer, dry_run=not confirm, now=utcnow())
        )
    except admin.AdminError as exc:
        return page(400, kind=kind if kind in admin.IDENTIFIER_KINDS else "email", error=exc)
    if confirm:
        site.metrics.invalidate()
        return page(kind=kind, done=result)
    return page(kind=kind, value=customer.value, planned=result)


@guarded
async def dead_page(request: Request) -> Response:
    site = site_of(request)
    params = request.query_params
    try:
        f, page, typed = _read(params, DEAD_FIELDS, JobStatus.DEAD)
        found, more = await run_in_threadpool(admin.history_page, site.engine, f, page)
        matching = await run_in_threadpool(
            lambda: admin.replay(site.engine, f, dry_run=True, now=utcnow())
        )
    except admin.AdminError as exc:
        return _refused(request, "dead.html", _typed(params, DEAD_FIELDS), exc)
    return site.render(
        request,
        "dead.html",
        f=typed,
        jobs=found,
        more=more,
        count=matching.count,
        pinned=f.as_text(DEAD_FIELDS),
        error=None,
        replayed=params.get("replayed"),
    )


@guarded
async def replay_page(request: Request) -> Response:
    """GET: confirm ("Replay N jobs?"); POST: replay, if the filter still matches N jobs."""
    site = site_of(request)
    params = await request.form() if request.method == "POST" else request.query_params
    fields = {k: str(v) for k, v in params.items()}
    confirm = request.method == "GET"
    try:
        f, _, _ = _read(fields, DEAD_FIELDS, JobStatus.DEAD)
        expected = (
            None
            if confirm
            else admin.parse_int("expected", fields.get("expected", ""), 0, admin.MAX_EXPECTED)
        )
        result = await run_in_threadpool(
            lambda: admin.replay(site.engine, f, dry_run=confirm, expected=expected, now=utcnow())
        )
    except admin.ExpectedCountMismatch as exc:
        return site.render(
            request,
            "confirm.html",
            409,
            count=exc.result.count,
            queues=exc.result.queues,
            pinned=f.as_text(DEAD_FIELDS),
            was=exc.expected,
        )
    except admin.AdminError as exc:
        return _refused(request, "dead.html", _typed(fields, DEAD_FIELDS), exc)
    if not confirm:
        site.metrics.invalidate()
        return RedirectResponse(link("/dead", f.as_text(DEAD_FIELDS), replayed=result.count), 303)
    return site.render(
        request,
        "confirm.html",
        count=result.count,
        queues=result.queues,
        pinned=f.as_text(DEAD_FIELDS),
        was=None,
    )


ROUTES = [
    Route("/", overview),
    Route("/login", login_page),
    Route("/login", login, methods=["POST"]),
    Route("/logout", logout, methods=["POST"]),
    Route("/queues/{queue}/resume", resume_page, methods=["POST"]),
    Route("/jobs", history_page),
    Route("/jobs/{job_id}", job_page),
    Route("/jobs/{job_id}/cancel", cancel_job, methods=["POST"]),
    Route("/forget", forget_page, methods=["GET", "POST"]),
    Route("/dead", dead_page),
    Route("/dead/replay", replay_page, methods=["GET", "POST"]),
]
# What templates call, besides the context a page passes.
TEMPLATE_GLOBALS = {"mask": mask_emails, "age": age, "when": when, "link": link}
