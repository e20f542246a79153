"""The JSON API under ``/api``, described by :mod:`dispatcher.web.openapi`.

The same calls of :mod:`dispatcher.admin` as the pages, with stricter input: an unknown parameter
or an empty value is refused (a script's unset variable must not widen a filter). Errors are
``{"error": …, "field": …}`` with 400 (``field`` names what was refused), 404 or 409.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from dispatcher import admin
from dispatcher.db import utcnow
from dispatcher.schema import JobStatus
from dispatcher.web.access import error, guarded
from dispatcher.web.openapi import API_MAX_JOB_IDS, OPENAPI
from dispatcher.web.pages import DEAD_FIELDS, HISTORY_FIELDS
from dispatcher.web.site import mask_emails, site_of

__all__ = ["CANCEL_FIELDS", "FORGET_FIELDS", "JOBS_PARAMETERS", "REPLAY_FIELDS", "ROUTES"]

JOBS_PARAMETERS = (*HISTORY_FIELDS, "before", "per_page")  # a cursor: no offset ("page")
# The replay request's JSON fields and their types (filters are sent as JSON values, read as text).
REPLAY_FIELDS: dict[str, type] = {
    "queue": str,
    "event_id": int,
    "status_code": int,
    "since": str,
    "until": str,
    "dry_run": bool,
    "expected_count": int,
}


# The cancel request's JSON fields: ids and/or the history's filters (status: pending/retrying).
CANCEL_FIELDS: dict[str, type] = {
    "job_ids": list,
    "status": str,
    "queue": str,
    "event_id": int,
    "customer_email": str,
    "status_code": int,
    "since": str,
    "until": str,
    "dry_run": bool,
    "expected_count": int,
}
# The forget request: exactly one identifier (a customer id as a number), and dry_run.
FORGET_FIELDS: dict[str, type] = {
    **{kind: int if kind == "customer_id" else str for kind in admin.IDENTIFIER_KINDS},
    "dry_run": bool,
}


def _bad(exc: admin.AdminError) -> JSONResponse:
    """400 naming the field; 404 for a queue that does not exist (a typo must not pass)."""
    return error(404 if isinstance(exc, admin.UnknownQueue) else 400, exc.message, exc.field)


@guarded
async def queues(request: Request) -> Response:
    found = await run_in_threadpool(admin.stats, site_of(request).engine, utcnow())
    return JSONResponse({"queues": {name: q.as_dict() for name, q in found.items()}})


@guarded
async def jobs(request: Request) -> Response:
    params = request.query_params
    try:
        unknown = sorted(set(params) - set(JOBS_PARAMETERS))
        if unknown:
            raise admin.AdminError(unknown[0][:40], "unknown parameter")
        f = admin.parse_filter(params, utcnow(), fields=HISTORY_FIELDS)
        page = admin.parse_page(params)
        found, more = await run_in_threadpool(admin.history_page, site_of(request).engine, f, page)
    except admin.AdminError as exc:
        return _bad(exc)
    shown = [{**j.as_dict(), "last_error": mask_emails(j.last_error)} for j in found]
    older = int(found[-1].id) if more and found else None
    return JSONResponse(
        {"jobs": shown, "per_page": page.size, "has_more": more, "next_before": older}
    )


def _masked(job: admin.JobDetail) -> dict[str, Any]:
    shown = job.as_dict()
    for key in ("payload", "last_error"):
        shown[key] = mask_emails(shown[key])
    for attempt in shown["attempt_log"]:
        for key in ("error", "response_body"):
            attempt[key] = mask_emails(attempt[key])
    return shown


@guarded
async def job(request: Request) -> Response:
    reveal = request.query_params.get("reveal", "false")
    if reveal not in ("true", "false"):
        return error(400, "expected true or false", "reveal")
    if set(request.query_params) - {"reveal"}:
        return error(400, "unknown parameter")
    try:
        found = await run_in_threadpool(
            admin.show, site_of(request).engine, request.path_params["job_id"]
        )
    except admin.AdminError as exc:
        return _bad(exc)
    if found is None:
        return error(404, "no such job")
    return JSONResponse(found.as_dict() if reveal == "true" else _masked(found))


@guarded
async def resume(request: Request) -> Response:
    site = site_of(request)
    queue = request.path_params["queue"]
    try:
        admin.check_queue(queue)
        resumed = await run_in_threadpool(site.resume, queue)
    except admin.AdminError as exc:
        return _bad(exc)
    return JSONResponse({"queue": queue, "resumed": resumed})


async def _body(request: Request, fields: dict[str, type]) -> dict[str, Any] | Response:
    """The request's JSON object, each field known and of its type; or the 400 saying why."""
    try:
        body = json.loads(await request.body() or b"{}")
    except (ValueError, RecursionError):
        return error(400, "expected a JSON object")
    if not isinstance(body, dict):
        return error(400, "expected a JSON object")
    for key, value in body.items():
        wanted = fields.get(key)
        if wanted is None:
            return error(400, f"unknown field {key!r:.40}", key)
        if not isinstance(value, wanted) or (wanted is int and isinstance(value, bool)):
            return error(400, f"expected {wanted.__name__}", key)
    return body


@guarded
async def pause(request: Request) -> Response:
    """Body ``{"reason": "…"}``: answers once no worker sends for the queue. A queue that does
    not exist is a 404, unless ``"create": true`` (pause it ahead of its first job)."""
    site = site_of(request)
    queue = request.path_params["queue"]
    body = await _body(request, {"reason": str, "create": bool})
    if isinstance(body, Response):
        return body
    try:
        admin.check_queue(queue)
        paused = await run_in_threadpool(
            lambda: site.pause(queue, body.get("reason", ""), create=bool(body.get("create")))
        )
    except admin.AdminError as exc:
        return _bad(exc)
    return JSONResponse({"queue": queue, "paused": paused})


@guarded
async def replay(request: Request) -> Response:
    def call(engine: Any, f: admin.Filter, body: dict[str, Any], **kw: Any) -> Any:
        return admin.replay(engine, admin.Filter(**{**f.given(), "status": JobStatus.DEAD}), **kw)

    return await _move(request, REPLAY_FIELDS, DEAD_FIELDS, call)


@guarded
async def cancel(request: Request) -> Response:
    """Cancel waiting jobs by ``job_ids`` and/or filters; in-flight ones are left alone."""

    def call(engine: Any, f: admin.Filter, body: dict[str, Any], **kw: Any) -> Any:
        ids = body.get("job_ids")
        if ids is not None and len(ids) > API_MAX_JOB_IDS:
            raise admin.AdminError("job_ids", f"at most {API_MAX_JOB_IDS} per call (or a filter)")
        return admin.cancel(engine, f, job_ids=ids, **kw)

    return await _move(request, CANCEL_FIELDS, admin.FILTER_FIELDS, call)


async def _move(
    request: Request,
    fields: dict[str, type],
    filters: tuple[str, ...],
    call: Callable[..., Any],
) -> Response:
    """What replay and cancel share: the body's filter, ``dry_run`` and ``expected_count``
    (409 if the count changed), the metrics told after a change."""
    site = site_of(request)
    body = await _body(request, fields)
    if isinstance(body, Response):
        return body
    texts = {k: str(v) for k, v in body.items() if k in filters}
    dry_run = bool(body.get("dry_run"))
    try:
        f = admin.parse_filter(texts, utcnow(), fields=filters)
        result = await run_in_threadpool(
            lambda: call(
                site.engine,
                f,
                body,
                dry_run=dry_run,
                expected=body.get("expected_count"),
                now=utcnow(),
            )
        )
    except admin.ExpectedCountMismatch as exc:
        return error(409, exc.message)
    except admin.AdminError as exc:
        return _bad(exc)
    if result.count and not dry_run:
        site.metrics.invalidate()
    return JSONResponse(result.as_dict())


@guarded
async def forget(request: Request) -> Response:
    """Erase one customer's personal data (see :func:`dispatcher.admin.forget`)."""
    site = site_of(request)
    body = await _body(request, FORGET_FIELDS)
    if isinstance(body, Response):
        return body
    dry_run = bool(body.get("dry_run"))
    try:
        customer = admin.parse_customer({k: v for k, v in body.items() if k != "dry_run"})
        result = await run_in_threadpool(
            lambda: admin.forget(site.engine, customer, dry_run=dry_run, now=utcnow())
        )
    except admin.AdminError as exc:
        return _bad(exc)
    if not dry_run:
        site.metrics.invalidate()
    return JSONResponse(result.as_dict())


@guarded
async def openapi(request: Request) -> Response:
    return JSONResponse(OPENAPI)


ROUTES = [
    Route("/api/openapi.json", openapi),
    Route("/api/queues", queues),
    Route("/api/queues/{queue}/pause", pause, methods=["POST"]),
    Route("/api/queues/{queue}/resume", resume, methods=["POST"]),
    Route("/api/jobs", jobs),
    Route("/api/jobs/cancel", cancel, methods=["POST"]),
    Route("/api/jobs/{job_id}", job),
    Route("/api/dead/replay", replay, methods=["POST"]),
    Route("/api/forget", forget, methods=["POST"]),
]
