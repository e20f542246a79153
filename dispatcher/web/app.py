"""The app factory and the server: routes, error pages, and ``dispatcher web``/``dispatcher
metrics``."""

from __future__ import annotations

import logging
from typing import Any

import jinja2
import sqlalchemy as sa
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.templating import Jinja2Templates

from dispatcher.config import Settings
from dispatcher.db import get_engine
from dispatcher.problems import is_schema_missing
from dispatcher.web import api, ingest, pages, probes, queues
from dispatcher.web.access import Gate, SecurityHeaders, check_bind, error, guarded, is_api
from dispatcher.web.metrics import CONTENT_TYPE, Metrics
from dispatcher.web.site import Site, site_of

__all__ = ["MAX_BODY_BYTES", "create_app", "serve"]

MAX_BODY_BYTES = 64 * 1024

log = logging.getLogger("dispatcher.web")


@guarded
async def metrics(request: Request) -> Response:
    body = await run_in_threadpool(site_of(request).metrics.render)
    return Response(body, media_type=CONTENT_TYPE)


async def _http_error(request: Request, exc: Exception) -> Response:
    """404/405/413 as JSON under /api (and /metrics), as a page elsewhere."""
    assert isinstance(exc, HTTPException)
    if is_api(request):
        return error(exc.status_code, exc.detail, **(exc.headers or {}))
    return site_of(request).templates.TemplateResponse(
        request,
        "error.html",
        {"status": exc.status_code, "detail": exc.detail, "login": False},
        exc.status_code,
        headers=exc.headers,
    )


async def _database_down(request: Request, exc: Exception) -> Response:
    """The database is unreachable or refused us (restart, too many clients, lock timeout), or
    its outbox tables are missing (before ``dispatcher migrate``)."""
    if is_schema_missing(exc):
        log.warning("admin: the outbox tables do not exist: run dispatcher migrate")
        message = "the outbox tables do not exist in this database: run `dispatcher migrate`"
    elif isinstance(exc, sa.exc.ProgrammingError):
        raise exc  # a bug, not the database's state: a 500 with its traceback in the log
    else:
        log.warning("admin: database unavailable: %s", type(exc).__name__)
        message = "the outbox database is unavailable or busy: try again shortly"
    if is_api(request):
        return error(503, message, **{"Retry-After": "5"})
    return site_of(request).templates.TemplateResponse(
        request, "error.html", {"status": 503, "detail": message, "login": False}, 503
    )


def create_app(
    settings: Settings, *, engine: sa.Engine | None = None, pages_and_api: bool = True
) -> Starlette:
    """The site (``pages_and_api=False``: only ``/metrics`` and the health probes, for
    ``dispatcher metrics``)."""
    engine = engine or get_engine(settings.database_url)
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("dispatcher.web", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
    )
    env.globals.update(pages.TEMPLATE_GLOBALS, **queues.TEMPLATE_GLOBALS)
    routes = [Route("/metrics", metrics), *probes.ROUTES]
    if pages_and_api:
        routes += [*pages.ROUTES, *queues.ROUTES, *api.ROUTES, *ingest.ROUTES]
    app = Starlette(
        routes=routes,
        middleware=[Middleware(SecurityHeaders)],
        exception_handlers={
            HTTPException: _http_error,
            sa.exc.OperationalError: _database_down,
            sa.exc.TimeoutError: _database_down,
            sa.exc.ProgrammingError: _database_down,  # only a missing table; others re-raised
        },
        max_body_size=MAX_BODY_BYTES,
    )
    app.state.readiness = probes.Readiness(settings.database_url, settings.broker_url)
    app.state.site = Site(
        settings,
        engine,
        Gate(settings.admin_token, ingest=settings.ingest_tokens),
        Metrics(engine),
        Jinja2Templates(env=env),
    )
    return app


def serve(
    host: str,
    port: int,
    settings: Settings,
    *,
    pages_and_api: bool = True,
) -> None:
    """Run the site with uvicorn until interrupted; refuses a non-loopback host without a token.

    Only the proxies of ``settings.trusted_proxies`` (``DISPATCHER_TRUSTED_PROXIES``) have their
    ``X-Forwarded-Proto`` and ``X-Forwarded-For`` believed; uvicorn's own default (believe
    127.0.0.1, or ``FORWARDED_ALLOW_IPS``) is off, so behind no proxy named there a client cannot
    choose the address the login throttle counts. Behind a TLS proxy named there the session
    cookie gets ``Secure`` and the throttle counts the real client's address."""
    import uvicorn

    check_bind(host, settings.admin_token)
    app = create_app(settings, pages_and_api=pages_and_api)
    uvicorn.run(app, host=host, port=port, **uvicorn_options(settings))


def uvicorn_options(settings: Settings) -> dict[str, Any]:
    """What :func:`serve` tells uvicorn besides the app and the address."""
    return {
        "server_header": False,
        # No access log: history searches put customer emails in URLs. State changes log.
        "access_log": False,
        "log_config": None,  # uvicorn's records go through dispatcher.logs (text or JSON lines)
        "proxy_headers": bool(settings.trusted_proxies),
        "forwarded_allow_ips": ",".join(settings.trusted_proxies),  # never uvicorn's default
    }
