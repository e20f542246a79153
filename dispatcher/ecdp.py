"""The HTTP side: one long-lived client per worker process, one typed answer per POST.

This module is the cut-off point between the delivery logic and the network: it never raises for
an HTTP or transport failure, it returns an :class:`Answer` that :mod:`dispatcher.policy` can
judge.

Why it looks the way it does (measured with ``bench/run.py``'s sinks, 2 cores): against an API
50 ms away, one process has to keep about a hundred requests in flight to send a thousand a
second. Threads sharing one ``httpx.Client`` stop scaling at a few dozen (612 requests/s at 32
threads, 172/s at 128: the connection pool's lock and bookkeeping grow with every connection),
and ``httpx.AsyncClient`` over one shared pool fared worse (121/s with 64 tasks). What scales is
one asyncio loop on its own thread, sending each request over a keep-alive connection of its own
("a slot") with ``httpcore``, the HTTP/1.1 engine underneath httpx, on plain asyncio streams
(:mod:`dispatcher.httpcore_asyncio`): about 2,000 requests/s with 128 in flight, at less CPU per
request than a plain single-threaded ``httpx.Client`` loop.
"""

from __future__ import annotations

import asyncio
import logging
import os
import ssl
import threading
import time
import weakref
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from datetime import datetime
from urllib.parse import quote, unquote, urlsplit

import httpcore

from dispatcher.config import Secret, check_base_url
from dispatcher.db import utcnow
from dispatcher.httpcore_asyncio import AsyncioBackend

log = logging.getLogger("dispatcher.ecdp")

DRAIN_LIMIT = 8 * 1024 * 1024  # read (and drop) this much of an answer to keep its connection
KEEPALIVE_SECONDS = 5.0  # an idle connection older than this is not reused (httpx's default)

# Everything a broken network, TLS session or peer can raise from httpcore on asyncio: anyio
# passes ssl.SSLError and OSError through where httpx's sync backend wrapped them.
NETWORK_ERRORS = (
    httpcore.NetworkError,
    httpcore.ProtocolError,
    httpcore.ProxyError,
    httpcore.UnsupportedProtocol,
    ssl.SSLError,
    OSError,
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

    @classmethod
    def failed(cls, started_at: datetime, start: float, error: str) -> Answer:
        return cls(started_at, _ms_since(start), None, b"", 0, None, error[:1000])


@dataclass
class _Loop:
    """The event loop thread and what lives on it; made on first use in each process."""

    loop: asyncio.AbstractEventLoop
    thread: threading.Thread
    slots: asyncio.LifoQueue[httpcore.AsyncConnectionPool]


class EcdpClient:
    """POSTs outbox payloads to the ECDP API. Thread-safe: call :meth:`submit` from any thread.

    Requests run on an event loop in a daemon thread that the client starts on first use (and
    again in a forked child, which has no copy of the parent's threads). At most
    ``max_connections`` are in flight; more wait for a free slot. Redirects are never followed: a
    redirect is an answer to judge, not a reason to send the API key somewhere else.
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
        self.base_url = check_base_url(base_url)
        parts = urlsplit(self.base_url)
        assert parts.hostname is not None  # check_base_url saw to it
        self.body_limit = body_limit
        self._scheme = parts.scheme.lower().encode()
        self._host = parts.hostname.encode("idna")
        self._port = parts.port
        self._path = quote(parts.path, safe="/%:@!$&'()*+,;=").encode()
        host = b"[%s]" % self._host if b":" in self._host else self._host
        self._host_header = host if parts.port is None else b"%s:%d" % (host, parts.port)
        self._timeouts = {"connect": connect_timeout, "read": timeout, "write": timeout}
        # The whole request, connection to last byte: a per-read timeout alone lets an API that
        # trickles its answer a byte at a time hold a request (and its job's lease) forever.
        self._deadline = timeout
        self._max_connections = max_connections
        # One context for every connection: building one reads the CA bundle (tens of ms).
        self._ssl_context = ssl_context or httpcore.default_ssl_context()
        self._proxy = _proxy(proxy_url, self._ssl_context) if proxy_url else None
        self._network = AsyncioBackend()
        self._lock = threading.Lock()
        self._running: _Loop | None = None
        self._closed = False
        os.register_at_fork(after_in_child=_forget_loop(weakref.ref(self)))

    # -- the calling threads' side --------------------------------------------------------

    def submit(self, endpoint: str, payload: str | bytes, api_key: Secret) -> Future[Answer]:
        """Start one POST; the future's result is its :class:`Answer` (never an HTTP error)."""
        body = payload.encode() if isinstance(payload, str) else payload
        running = self._loop()
        return asyncio.run_coroutine_threadsafe(
            self._post(running, endpoint, body, api_key), running.loop
        )

    def post(self, endpoint: str, payload: str | bytes, api_key: Secret) -> Answer:
        return self.submit(endpoint, payload, api_key).result()

    def close(self) -> None:
        """Stop the loop. Requests still in flight are cancelled (their futures say so)."""
        with self._lock:
            running, self._running, self._closed = self._running, None, True
        if running is None or not running.thread.is_alive():
            return
        asyncio.run_coroutine_threadsafe(self._shutdown(running), running.loop).result(timeout=30)
        running.loop.call_soon_threadsafe(running.loop.stop)
        running.thread.join(timeout=10)
        if not running.thread.is_alive():
            # A submit() that raced close() may have left a task behind: cancel it here, so
            # that its future says so instead of never resolving.
            running.loop.run_until_complete(self._shutdown(running))
            running.loop.close()

    def _loop(self) -> _Loop:
        running = self._running
        if running is not None and running.thread.is_alive():
            return running
        with self._lock:
            if self._closed:
                raise RuntimeError("EcdpClient is closed")
            if self._running is None or not self._running.thread.is_alive():
                self._running = self._start()
            return self._running

    def _start(self) -> _Loop:
        loop = asyncio.new_event_loop()
        slots: asyncio.LifoQueue[httpcore.AsyncConnectionPool] = asyncio.LifoQueue()
        for _ in range(self._max_connections):
            # A pool of one: it reconnects when the server closed the connection and expires
            # idle ones; nothing is shared between slots, so no bookkeeping grows with them.
            slots.put_nowait(
                httpcore.AsyncConnectionPool(
                    ssl_context=self._ssl_context,
                    proxy=self._proxy,
                    max_connections=1,
                    keepalive_expiry=KEEPALIVE_SECONDS,
                    network_backend=self._network,
                )
            )
        thread = threading.Thread(target=loop.run_forever, name="ecdp-http", daemon=True)
        thread.start()
        return _Loop(loop, thread, slots)

    # -- the loop's side ------------------------------------------------------------------

    async def _post(self, running: _Loop, endpoint: str, body: bytes, api_key: Secret) -> Answer:
        if self._closed:  # submitted as close() began: its slots are gone
            raise RuntimeError("EcdpClient is closed")
        slot = await running.slots.get()
        started_at = utcnow()
        start = time.perf_counter()
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
            async with asyncio.timeout(self._deadline):
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
        except httpcore.TimeoutException as exc:  # ReadTimeout etc., named as httpx names them
            return Answer.failed(started_at, start, f"timeout: {type(exc).__name__}")
        except TimeoutError:  # before NETWORK_ERRORS: TimeoutError is an OSError
            return Answer.failed(
                started_at, start, f"timeout: no complete answer within {self._deadline:g}s"
            )
        except NETWORK_ERRORS as exc:
            # h11 quotes a header it refuses: keep the key out of the attempt row regardless.
            error = f"{type(exc).__name__}: {exc}".replace(api_key.reveal(), "***")
            return Answer.failed(started_at, start, f"connection error: {error}")
        except Exception as exc:  # a bug, not the API's answer: judged as a failed attempt
            log.exception("unexpected error sending to %s", self.base_url)
            return Answer.failed(started_at, start, f"unexpected error: {type(exc).__name__}")
        finally:
            running.slots.put_nowait(slot)

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

    @staticmethod
    async def _shutdown(running: _Loop) -> None:
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        slots = []
        while not running.slots.empty():
            slots.append(running.slots.get_nowait())
        await asyncio.gather(*(slot.aclose() for slot in slots), return_exceptions=True)


# A forked child's copies of its parent's loops, kept from the garbage collector: collecting one
# would unregister its sockets from the epoll instance that parent and child share (and close
# TLS sessions the parent still uses), and the parent would never hear its answers again. So a
# child must end with os._exit(), as Celery's prefork pool and multiprocessing's children do; and
# Celery forks before any client exists anyway.
_INHERITED: list[_Loop] = []


def _forget_loop(ref: weakref.ref[EcdpClient]) -> Callable[[], None]:
    def after_fork_in_child() -> None:
        client = ref()
        if client is not None:  # the parent's loop thread does not exist here
            if client._running is not None:
                _INHERITED.append(client._running)
            client._lock = threading.Lock()
            client._running = None

    return after_fork_in_child


def _proxy(url: str, ssl_context: ssl.SSLContext) -> httpcore.Proxy:
    """httpcore takes a proxy's credentials apart from its URL, and an https proxy's context
    (else it builds one per connection)."""
    parts = urlsplit(url)
    auth = None
    if parts.username is not None:
        auth = (unquote(parts.username), unquote(parts.password or ""))
        url = parts._replace(netloc=parts.netloc.rpartition("@")[2]).geturl()
    return httpcore.Proxy(url, auth=auth, ssl_context=ssl_context)


def _header(response: httpcore.Response, name: bytes) -> str | None:
    for key, value in response.headers:
        if key.lower() == name:
            return value.decode("latin-1")
    return None


def _ms_since(start: float) -> int:
    return round((time.perf_counter() - start) * 1000)
