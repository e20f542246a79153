"""The HTTP side: one long-lived client per worker process, one typed answer per POST.

This module is the cut-off point between the delivery logic and the network: it never raises for
an HTTP or transport failure, it returns an :class:`Answer` that :mod:`dispatcher.policy` can
judge. :class:`Sender` is the seam :class:`~dispatcher.delivery.Deliverer` depends on;
:class:`EcdpClient` is the one that goes to the network.

Why aiohttp, on uvloop where it installs (``bench/clients.py``; README, "HTTP client, chosen by
measurement"): against an API 50 ms away one process has to keep about a hundred requests in
flight to send a thousand a second. ``httpx.AsyncClient`` falls over there (120-220 requests/s
and 3-5 ms of CPU per request with 128 in flight: its pool's bookkeeping grows with every
connection), and threads sharing an ``httpx.Client`` stop scaling at a few dozen. So this module
used to be a hand-made stack: httpcore on raw asyncio streams, a pool of single-connection
"slots", private APIs of two libraries. Measured side by side the way ``Deliverer`` submits
(2, 16 and 128 in flight, nginx and a 50 ms sink), one ``aiohttp.ClientSession`` takes half its
CPU per request (0.20 against 0.39 ms, medians), 0.15 ms on uvloop, at the same or more
requests/s; the rule was to keep the hand-made stack only if it beat the best of them by 1.3x.
"""

from __future__ import annotations

import asyncio
import contextvars
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
from typing import Protocol
from urllib.parse import quote, unquote, urlsplit

import aiohttp
import certifi

from dispatcher.config import Secret, check_base_url
from dispatcher.db import utcnow

log = logging.getLogger("dispatcher.ecdp")

DRAIN_LIMIT = 8 * 1024 * 1024  # read (and drop) this much of an answer to keep its connection
KEEPALIVE_SECONDS = 5.0  # an idle connection older than this is not reused (httpx's default)

# After the request has started; anything else (a bug) is logged and judged as a failure too.
NETWORK_ERRORS = (aiohttp.ClientError, ssl.SSLError, OSError)


@dataclass(frozen=True, slots=True)
class Answer:
    started_at: datetime
    duration_ms: int
    status_code: int | None  # None: no HTTP answer (see ``error``)
    body: bytes  # at most ``body_limit`` bytes of it
    body_size: int  # the whole body's size (as far as it was read), to say how much was cut
    retry_after: str | None
    error: str | None
    # Was the request's body completely written? An answer implies it. False: the request
    # cannot have reached the API (a timeout while connecting or waiting for a connection).
    sent: bool = True

    @classmethod
    def failed(cls, started_at: datetime, start: float, error: str, *, sent: bool = True) -> Answer:
        return cls(started_at, _ms_since(start), None, b"", 0, None, error[:1000], sent)


class Sender(Protocol):
    """What :class:`~dispatcher.delivery.Deliverer` needs of an HTTP client (and a test double
    provides: see :mod:`dispatcher.testing`)."""

    def submit(self, endpoint: str, payload: str | bytes, api_key: Secret) -> Future[Answer]:
        """Start one POST of ``payload`` to ``endpoint``; callable from any thread. The future's
        result is the :class:`Answer`, never an exception for an HTTP or network failure."""
        ...

    def close(self) -> None:
        """Give up what is in flight and release the connections."""
        ...


def new_event_loop() -> asyncio.AbstractEventLoop:
    """uvloop's where it is installed (not on Windows), else asyncio's, which does the same job
    at about 1.5 times the CPU per request."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


@dataclass
class _Loop:
    """The event loop thread and the session on it; made on first use in each process."""

    loop: asyncio.AbstractEventLoop
    thread: threading.Thread
    session: aiohttp.ClientSession


class EcdpClient:
    """POSTs outbox payloads to the ECDP API. Thread-safe: call :meth:`submit` from any thread.

    Requests run on an event loop in a daemon thread that the client starts on first use (and
    again in a forked child, which has no copy of the parent's threads), through one
    ``aiohttp.ClientSession`` with keep-alive connections. At most ``max_connections`` are open;
    more requests wait for one. Redirects are never followed: a redirect is an answer to judge,
    not a reason to send the API key somewhere else. Each request ends within ``timeout``,
    connection to last byte (a server that trickles its answer included); connecting has
    ``connect_timeout`` of that.
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
        loop_factory: Callable[[], asyncio.AbstractEventLoop] | None = None,
    ) -> None:
        self.base_url = check_base_url(base_url)
        parts = urlsplit(self.base_url)
        path = quote(parts.path, safe="/%:@!$&'()*+,;=")
        self._prefix = parts._replace(path=path).geturl()
        self.body_limit = body_limit
        # The whole request, connection to last byte: a per-read timeout alone lets an API that
        # trickles its answer a byte at a time hold a request (and its job's lease) forever.
        self._deadline = timeout
        self._timeouts = aiohttp.ClientTimeout(total=None, sock_connect=connect_timeout)
        self._max_connections = max_connections
        # One context for every connection: building one reads the CA bundle (tens of ms). The
        # system's CAs and certifi's, as httpx (and this client before aiohttp) trusted.
        if ssl_context is None:
            ssl_context = ssl.create_default_context()
            ssl_context.load_verify_locations(certifi.where())
        self._ssl_context = ssl_context
        self._headers = {"Content-Type": "application/json"}
        self._proxy: str | None = None
        self._proxy_headers: dict[str, str] | None = None
        if proxy_url:
            self._proxy, credentials = _proxy(proxy_url)
            if credentials and parts.scheme == "https":  # for the CONNECT, not the API
                self._proxy_headers = {"Proxy-Authorization": credentials}
            elif credentials:  # a plain-http request goes to the proxy as it is
                self._headers["Proxy-Authorization"] = credentials
        self._loop_factory = loop_factory
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
            self._post(running.session, endpoint, body, api_key), running.loop
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
        loop = (self._loop_factory or new_event_loop)()
        thread = threading.Thread(target=loop.run_forever, name="ecdp-http", daemon=True)
        thread.start()
        session = asyncio.run_coroutine_threadsafe(self._session(), loop).result(timeout=30)
        return _Loop(loop, thread, session)

    async def _session(self) -> aiohttp.ClientSession:
        """Made on the loop (aiohttp asks for a running one)."""
        connector = aiohttp.TCPConnector(
            limit=self._max_connections,
            limit_per_host=self._max_connections,
            keepalive_timeout=KEEPALIVE_SECONDS,
            ssl=self._ssl_context,
        )
        return aiohttp.ClientSession(
            connector=connector,
            timeout=self._timeouts,
            headers={"User-Agent": "ecdp-dispatcher", "Accept": "*/*"},
            skip_auto_headers=("Accept-Encoding",),  # we never decompress
            auto_decompress=False,
            cookie_jar=aiohttp.DummyCookieJar(),  # each request stands alone
            trust_env=False,  # the proxy is config.proxy_for()'s, passed in
            request_class=_Request,
        )

    # -- the loop's side ------------------------------------------------------------------

    async def _post(
        self, session: aiohttp.ClientSession, endpoint: str, body: bytes, api_key: Secret
    ) -> Answer:
        if self._closed:  # submitted as close() began: its session is going
            raise RuntimeError("EcdpClient is closed")
        started_at = utcnow()
        start = time.perf_counter()
        url = self._prefix + endpoint
        headers = {**self._headers, "x-api-key": api_key.reveal()}
        written = _Written()
        _WRITTEN.set(written)  # the request's body-writing task gets a copy of this context
        try:
            async with asyncio.timeout(self._deadline):
                for _ in range(self._max_connections + 1):  # each stale one is closed: a new one
                    try:
                        async with session.post(
                            url,
                            data=body,
                            headers=headers,
                            allow_redirects=False,
                            proxy=self._proxy,
                            proxy_headers=self._proxy_headers,
                        ) as response:
                            kept, size = await self._read_capped(response)
                            return Answer(
                                started_at=started_at,
                                duration_ms=_ms_since(start),
                                status_code=response.status,
                                body=kept,
                                body_size=size,
                                retry_after=response.headers.get("Retry-After"),
                                error=None,
                            )
                    except StaleConnection:
                        continue
                raise StaleConnection("every connection had bytes nobody asked for")
        except aiohttp.ConnectionTimeoutError:  # before TimeoutError: it is one too
            return Answer.failed(started_at, start, "timeout: ConnectTimeout", sent=False)
        except TimeoutError:  # our deadline; before NETWORK_ERRORS: TimeoutError is an OSError
            if not written.body:
                return Answer.failed(
                    started_at,
                    start,
                    f"timeout: request not sent within {self._deadline:g}s (waiting for a "
                    "connection)",
                    sent=False,
                )
            return Answer.failed(
                started_at, start, f"timeout: no complete answer within {self._deadline:g}s"
            )
        except NETWORK_ERRORS as exc:
            # A header refused or echoed in a message: keep the key out of the attempt row.
            error = f"{_kind(exc)}: {exc}".replace(api_key.reveal(), "***")
            return Answer.failed(started_at, start, f"connection error: {error}", sent=written.body)
        except Exception as exc:  # a bug, not the API's answer: judged as a failed attempt
            log.exception("unexpected error sending to %s", self.base_url)
            return Answer.failed(
                started_at, start, f"unexpected error: {type(exc).__name__}", sent=written.body
            )

    async def _read_capped(self, response: aiohttp.ClientResponse) -> tuple[bytes, int]:
        """Keep the first ``body_limit`` bytes; read and drop the rest (up to a few MiB) so the
        connection can be reused. A body larger than that is abandoned with its connection."""
        kept = bytearray()
        size = 0
        async for chunk in response.content.iter_any():
            size += len(chunk)
            if len(kept) < self.body_limit:
                kept += chunk[: self.body_limit - len(kept)]
            if size > DRAIN_LIMIT:
                response.close()  # closes the connection: not worth reading to its end
                break
        return bytes(kept), size

    @staticmethod
    async def _shutdown(running: _Loop) -> None:
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await running.session.close()


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


class _Written:
    """Set once a request's body has been handed to the connection whole: before that, the API
    cannot have acted on it (it has not got a complete request)."""

    __slots__ = ("body",)

    def __init__(self) -> None:
        self.body = False


_WRITTEN: contextvars.ContextVar[_Written] = contextvars.ContextVar("ecdp_written")


class StaleConnection(aiohttp.ClientConnectionError):
    """A kept-alive connection received bytes while it idled (a server's 408 before it closes,
    say): they would be taken for the answer to the next request sent on it."""


class _Request(aiohttp.ClientRequest):
    """aiohttp (3.14) hands out a pooled connection without asking whether an answer nobody
    asked for arrived on it while it idled (it parses and queues one), so the next request on it
    would get that answer. Refuse such a connection before anything is written on it: aiohttp
    closes it, and :meth:`EcdpClient._post` sends the request on another."""

    async def send(self, conn: aiohttp.connector.Connection) -> aiohttp.ClientResponse:
        if conn.protocol is not None and conn.protocol.should_close:
            raise StaleConnection("bytes arrived on the idle connection")
        return await super().send(conn)

    async def write_bytes(
        self,
        writer: aiohttp.abc.AbstractStreamWriter,
        conn: aiohttp.connector.Connection,
        content_length: int | None = None,
    ) -> None:
        """Runs in a task of its own (a copy of :meth:`EcdpClient._post`'s context): says when
        the whole body has been written."""
        await super().write_bytes(writer, conn, content_length)
        written = _WRITTEN.get(None)
        if written is not None:
            written.body = True


def _proxy(url: str) -> tuple[str, str | None]:
    """A proxy's URL without its credentials, and those as a ``Proxy-Authorization`` value
    (percent-decoded, as curl reads them)."""
    parts = urlsplit(url)
    if parts.username is None:
        return url, None
    credentials = aiohttp.encode_basic_auth(unquote(parts.username), unquote(parts.password or ""))
    return parts._replace(netloc=parts.netloc.rpartition("@")[2]).geturl(), credentials


def _kind(exc: BaseException) -> str:
    """A failure's name as the attempt rows have always said it: ``ConnectError`` before a
    connection stood, else aiohttp's (or the OS's) own name for it."""
    if isinstance(exc, aiohttp.ClientProxyConnectionError | aiohttp.ClientHttpProxyError):
        return "ProxyError"
    if isinstance(exc, aiohttp.ClientConnectorError):
        return "ConnectError"
    return type(exc).__name__


def _ms_since(start: float) -> int:
    return round((time.perf_counter() - start) * 1000)
