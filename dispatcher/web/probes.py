"""``GET /healthz`` and ``GET /readyz``: health probes for container platforms and load balancers.

Both answer without the admin token (a probe has none) and with a body that names each
component's state and nothing else: no queue names, no counts, no data. They still obey the
host rule without a token (:data:`dispatcher.web.access.PROBES`).

- ``/healthz`` (liveness): ``{"status": "ok"}`` whenever the process serves.
- ``/readyz`` (readiness): :func:`dispatcher.health.readiness` (the outbox database answers, its
  schema is at the latest migration, the broker answers), 200 when all are ``ok``, 503
  otherwise. The check blocks for up to a few seconds when something is down, so it runs in a
  worker thread, one at a time, and its answer is kept for ``ttl_seconds``: a storm of probes
  costs the database and the broker one check every two seconds.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import anyio
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from dispatcher import health
from dispatcher.web.access import probe

__all__ = ["ROUTES", "Readiness"]


class Readiness:
    """The readiness answer for a database and a broker, cached for ``ttl_seconds``."""

    def __init__(
        self,
        database_url: str,
        broker_url: str,
        *,
        ttl_seconds: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
        check: Callable[[str, str], dict[str, str]] = health.readiness,
    ) -> None:
        self.database_url = database_url
        self.broker_url = broker_url
        self.ttl_seconds = ttl_seconds
        self._clock = clock
        self._check = check
        self._lock = anyio.Lock()
        self._answer: dict[str, str] | None = None
        self._at = 0.0

    async def components(self) -> dict[str, str]:
        async with self._lock:  # concurrent probes wait for the one check and share it
            if self._answer is None or self._clock() - self._at >= self.ttl_seconds:
                self._answer = await run_in_threadpool(
                    self._check, self.database_url, self.broker_url
                )
                self._at = self._clock()
            return dict(self._answer)


@probe
async def healthz(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


@probe
async def readyz(request: Request) -> Response:
    readiness: Readiness = request.app.state.readiness
    components = await readiness.components()
    ready = health.is_ready(components)
    return JSONResponse({"ready": ready, **components}, 200 if ready else 503)


ROUTES = [Route("/healthz", healthz), Route("/readyz", readyz)]
