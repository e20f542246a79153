"""The HTTP side: one long-lived client per worker process, one typed answer per POST.

This module is the cut-off point between the delivery logic and the network: it never raises for
an HTTP or transport failure, it returns an :class:`Answer` that :mod:`dispatcher.policy` can
judge.

Why it looks the way it does (measured with ``bench/run.py``'s sinks, 2 cores): against an API
50 ms away, one process has to keep about a hundred requests in flight to send a thousand a
second. Threads sharing one ``httpx.Client`` stop scaling at a few dozen (598 requests/s at 32
threads, 172/s at 128: the connection pool's lock and bookkeeping grow with every connection),
and ``httpx.AsyncClient`` over one shared pool fared worse (121/s with 64 tasks). What scales is
one asyncio loop on its own thread, sending each request over a keep-alive connection of its own
("a slot") with ``httpcore``, the HTTP/1.1 engine underneath httpx: 1,990 requests/s with 128 in
flight, at about the CPU per request of a plain single-threaded ``httpx.Client`` loop.
"""

from __future__ import annotations

import asyncio
import os
import ssl
import threading
import time
from collections.abc import Coroutine
from concurrent.futures import Future
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import httpcore

from dispatcher.config import Secret
from dispatcher.db import utcnow

DRAIN_LIMIT = 8 * 1024 * 1024  # read (and drop) this much of an answer to keep its connection
KEEPALIVE_SECONDS = 5.0  # an idle connection older than this is not reused (httpx's default)

NETWORK_ERRORS = (
    httpcore.NetworkError,
    httpcore.ProtocolError,
    httpcore.ProxyError,
    httpcore.UnsupportedProtocol,
)


@dataclass(frozen=True, slots=True)
class Answer:
    started_at: datetime
    duration_ms: int
    status_code: int | None  # None: no HTTP answer (see ``error``)
    body: bytes  # at most ``body_limit`` bytes of it
    body_size: int  # the whole body's size, to say how much was cut
    retry_after: str | None
    error: str | None


class EcdpClient:
    """POSTs outbox payloads to the ECDP API. Thread-safe: call :meth:`submit` from any thread.

    Requests run on an event loop in a daemon thread that the client starts (and starts again in
    a forked child, where the parent's thread does not exist). At most ``max_connections`` are
    in flight; more wait for a free slot. Redirects are never followed: a redirect is an answer
    to judge, not a reason to send the API key somewhere else.
    """

    def __init__(
        self,
        base_url: str,
        *,
        timeout: float = 10.0,
        connect_timeout: float = 5.0,
        max_connections: int = 16,
        body_limit: int = 8192,
        proxy_url: str | None = None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        url = httpcore.URL(base_url.rstrip("/"))
        if url.scheme not in (b"http", b"https"):
            raise ValueError(f"ECDP_BASE_URL: must be an http:// or https:// URL, not {base_url!r}")
        self.base_url = base_url.rstrip("/")
        self.body_limit = body_limit
        self._scheme, self._host, self._port = url.scheme, url.host, url.port
        self._path = url.target.rstrip(b"/")
        default_port = 443 if url.scheme == b"https" else 80
        self._host_header = (
            url.host
            if url.port in (None, default_port)
            else b"%s:%d"
            % (
                url.host,
                url.port,
            )
        )
        self._timeouts = {"connect": connect_timeout, "read": timeout, "write": timeout}
        self._max_connections = max_connections
        self._proxy = httpcore.Proxy(proxy_url) if proxy_url else None
        self._ssl_context = ssl_context
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._owner_pid = 0
        self._thread: threading.Thread | None = None
        self._slots: asyncio.LifoQueue[httpcore.AsyncConnectionPool] | None = None

    # -- the calling threads' side --------------------------------------------------------

    def submit(self, endpoint: str, payload: str | bytes, api_key: Secret) -> Future[Answer]:
        """Start one POST; the future's result is its :class:`Answer` (never an HTTP error)."""
        body = payload.encode() if isinstance(payload, str) else payload
        return self._run(self._post(endpoint, body, api_key))

    def post(self, endpoint: str, payload: str | bytes, api_key: Secret) -> Answer:
        return self.submit(endpoint, payload, api_key).result()

    def close(self) -> None:
        with self._lock:
            loop, thread = self._loop, self._thread
            if loop is None or thread is None or self._owner_pid != os.getpid():
                return
            self._loop = self._thread = None
        asyncio.run_coroutine_threadsafe(self._close_slots(), loop).result(timeout=10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        loop.close()

    def _run(self, coro: Coroutine[Any, Any, Answer]) -> Future[Answer]:
        loop = self._loop
        if loop is None or self._owner_pid != os.getpid():
            loop = self._start()
        return asyncio.run_coroutine_threadsafe(coro, loop)

    def _start(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is not None and self._owner_pid == os.getpid():
                return self._loop
            loop = asyncio.new_event_loop()
            ready = threading.Event()

            def run() -> None:
                asyncio.set_event_loop(loop)
                self._slots = asyncio.LifoQueue()
                for _ in range(self._max_connections):
                    self._slots.put_nowait(self._new_slot())
                ready.set()
                loop.run_forever()

            thread = threading.Thread(target=run, name="ecdp-http", daemon=True)
            thread.start()
            ready.wait()
            self._loop, self._thread, self._owner_pid = loop, thread, os.getpid()
            return loop

    # -- the loop's side ------------------------------------------------------------------

    def _new_slot(self) -> httpcore.AsyncConnectionPool:
        # A pool of one: it reconnects when the server closed the connection, and expires idle
        # ones; nothing is shared between slots, so no bookkeeping grows with their number.
        return httpcore.AsyncConnectionPool(
            ssl_context=self._ssl_context,
            proxy=self._proxy,
            max_connections=1,
            keepalive_expiry=KEEPALIVE_SECONDS,
        )

    async def _post(self, endpoint: str, body: bytes, api_key: Secret) -> Answer:
        assert self._slots is not None
        started_at = utcnow()
        start = time.perf_counter()
        slot = await self._slots.get()
        try:
            request = httpcore.Request(
                b"POST",
                httpcore.URL(
                    scheme=self._scheme,
                    host=self._host,
                    port=self._port,
                    target=self._path + endpoint.encode(),
                ),
                headers=[
                    (b"Host", self._host_header),
                    (b"User-Agent", b"ecdp-dispatcher"),
                    (b"Accept", b"*/*"),
                    (b"x-api-key", api_key.reveal().encode()),
                    (b"Content-Type", b"application/json"),
                    (b"Content-Length", str(len(body)).encode()),
                ],
                content=body,
                extensions={"timeout": self._timeouts},
            )
            response = await slot.handle_async_request(request)
            try:
                kept, size = await self._read_capped(response)
            finally:
                await response.aclose()
            return Answer(
                started_at=started_at,
                duration_ms=_ms_since(start),
                status_code=response.status,
                body=kept,
                body_size=size,
                retry_after=_header(response, b"retry-after"),
                error=None,
            )
        except httpcore.TimeoutException as exc:
            error = f"timeout: {type(exc).__name__}"  # ReadTimeout etc., named as httpx names them
        except NETWORK_ERRORS as exc:
            error = f"connection error: {type(exc).__name__}: {exc}"
        finally:
            self._slots.put_nowait(slot)
        return Answer(started_at, _ms_since(start), None, b"", 0, None, error[:1000])

    async def _read_capped(self, response: httpcore.Response) -> tuple[bytes, int]:
        """Keep the first ``body_limit`` bytes; read and drop the rest (up to a few MiB) so the
        connection can be reused. A body larger than that is abandoned with its connection."""
        kept = bytearray()
        size = 0
        async for chunk in response.aiter_stream():
            size += len(chunk)
            if len(kept) < self.body_limit:
                kept += chunk[: self.body_limit - len(kept)]
            if size > DRAIN_LIMIT:
                break
        return bytes(kept), size

    async def _close_slots(self) -> None:
        assert self._slots is not None
        while not self._slots.empty():
            await self._slots.get_nowait().aclose()


def _header(response: httpcore.Response, name: bytes) -> str | None:
    for key, value in response.headers:
        if key.lower() == name:
            return value.decode("latin-1")
    return None


def _ms_since(start: float) -> int:
    return round((time.perf_counter() - start) * 1000)
