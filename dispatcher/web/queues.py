"""A queue's own page (``/queues/NAME``: its state, Pause/Resume, and charts of its attempts)
and pausing from the page (``/queues/NAME/pause``: GET asks to confirm, POST pauses).

The rules are the operator service's: :func:`dispatcher.admin.check_queue` for the name and
:func:`dispatcher.admin.require_queue` for its existence (a name either refuses is a 404 here),
:func:`dispatcher.admin.pause_queue` for the pause (a reason is required; it returns once no
worker sends for the queue), :func:`dispatcher.admin.activity` for the numbers the charts draw.
"""

from __future__ import annotations

from urllib.parse import urlencode

from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from dispatcher import admin
from dispatcher.db import utcnow
from dispatcher.schema import STATUSES
from dispatcher.web import charts
from dispatcher.web.access import guarded
from dispatcher.web.site import site_of

__all__ = ["ROUTES", "TEMPLATE_GLOBALS"]


def _queue(request: Request) -> str:
    """The path's queue name, or 404 if the service's rule refuses it."""
    queue: str = request.path_params["queue"]
    try:
        return admin.check_queue(queue)
    except admin.AdminError:
        raise HTTPException(404, f"no queue {queue:.64}") from None


@guarded
async def queue_page(request: Request) -> Response:
    site = site_of(request)
    queue = _queue(request)
    now = utcnow()
    found = await run_in_threadpool(admin.stats, site.engine, now)
    if queue not in found:
        raise HTTPException(404, f"no queue {queue}: nothing was ever enqueued to it")
    windows = {
        window: await run_in_threadpool(admin.activity, site.engine, queue, now, window)
        for window in admin.ACTIVITY_WINDOWS
    }
    return site.render(
        request,
        "queue.html",
        queue=queue,
        q=found[queue],
        statuses=STATUSES,
        windows=windows,
        colors=charts.COLORS,
        paused=request.query_params.get("paused"),
        resumed=request.query_params.get("resumed"),
    )


@guarded
async def pause_page(request: Request) -> Response:
    """GET: "Pause queue X?" with the reason to confirm or change; POST: pause it."""
    site = site_of(request)
    queue = _queue(request)
    params = await request.form() if request.method == "POST" else request.query_params
    reason = str(params.get("reason", ""))
    back = "queue" if params.get("back") == "queue" else ""  # where to go afterwards
    try:
        await run_in_threadpool(admin.require_queue, site.engine, queue)
    except admin.UnknownQueue as exc:  # a typo pauses nothing (the CLI's --create is for that)
        raise HTTPException(404, exc.message) from None
    if request.method == "GET":
        return site.render(request, "pause.html", queue=queue, reason=reason, back=back, error=None)
    try:
        await run_in_threadpool(site.pause, queue, reason)
    except admin.AdminError as exc:
        return site.render(
            request, "pause.html", 400, queue=queue, reason=reason, back=back, error=exc
        )
    target = f"/queues/{queue}" if back else "/"
    return RedirectResponse(f"{target}?" + urlencode({"paused": queue}), 303)


ROUTES = [
    Route("/queues/{queue}", queue_page),
    Route("/queues/{queue}/pause", pause_page, methods=["GET", "POST"]),
]
# What the templates call to draw (see dispatcher.web.charts).
TEMPLATE_GLOBALS = {
    "sparkline": charts.sparkline,
    "counts_chart": charts.counts_chart,
    "times_chart": charts.times_chart,
}
