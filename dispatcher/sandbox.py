"""A local ECDP-compatible HTTP server for integration tests, the demo and users' own tests.

It answers the two documented endpoints the way the API doc describes (201, 400, 401, 404 with
problem-details bodies), validates bodies with the same code the outbox uses at enqueue time,
records every request it receives, and can be scripted to misbehave (errors, ``Retry-After``,
latency, hangs, random failures) so delivery, retry and pause logic can be exercised without the
real service.

``capacity`` makes it behave like a real API at its limit: at most N requests are served at
once, the rest are accepted and wait inside the server (their wait counts toward the client's
timeout). A waiting request is served once a slot frees up even if its client has given up,
which is how a real API turns a client's timeout and re-send into a second trigger.

Standard library only: it runs wherever the package runs and starts in milliseconds.
The API key is never logged or printed; it only appears in recorded request headers.
"""

from __future__ import annotations

import contextlib
import hmac
import json
import logging
import random
import socket
import sys
import threading
import time
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

__all__ = ["Received", "Reply", "Sandbox", "serve_forever"]

logger = logging.getLogger(__name__)

CUSTOM_EVENTS_PATH = "/scenariocustomevents"
SEGMENTS_PATH = "/scenariocustomevents/withsegments"
_PATHS = frozenset({CUSTOM_EVENTS_PATH, SEGMENTS_PATH})

#: Status recorded for a request that was deliberately never answered (``Reply(hang=True)``).
NO_ANSWER = 0

_MAX_BODY = 10 * 1024 * 1024
_VALIDATION_TITLE = "One or more validation errors occurred."
_PROBLEM_TYPES = {
    400: "https://tools.ietf.org/html/rfc9110#section-15.5.1",
    401: "https://tools.ietf.org/html/rfc9110#section-15.5.2",
    404: "https://tools.ietf.org/html/rfc9110#section-15.5.5",
    405: "https://tools.ietf.org/html/rfc9110#section-15.5.6",
    413: "https://tools.ietf.org/html/rfc9110#section-15.5.14",
    429: "https://tools.ietf.org/html/rfc6585#section-4",
    500: "https://tools.ietf.org/html/rfc9110#section-15.6.1",
    502: "https://tools.ietf.org/html/rfc9110#section-15.6.3",
    503: "https://tools.ietf.org/html/rfc9110#section-15.6.4",
    504: "https://tools.ietf.org/html/rfc9110#section-15.6.5",
}


@dataclass(frozen=True, slots=True)
class Reply:
    """One scripted answer.

    ``body=None`` gives an empty body for 1xx-3xx and a generic problem-details body for 4xx/5xx,
    so clients that parse errors see something realistic; pass ``b""`` for a truly empty error.
    A mapping body is sent as JSON. ``headers`` are sent as given (e.g. ``Retry-After``) and may
    override ``Content-Type``. ``delay`` is added to the sandbox's ``default_delay``.
    ``hang=True`` reads the request and never answers until the sandbox stops.
    """

    status: int
    body: bytes | Mapping[str, Any] | None = None
    headers: Mapping[str, str] | None = None
    delay: float = 0.0
    hang: bool = False


@dataclass(frozen=True, slots=True)
class Received:
    """One request as the sandbox saw it, with the status it answered (``NO_ANSWER`` if none)."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    custom_event_id: int | None
    status: int
    at: float  # time.monotonic() when it was served (after any wait for capacity)
    customer: str | None = None  # first customer identifier in the body, e.g. "customerId=7"


@dataclass(frozen=True, slots=True)
class _Answer:
    status: int
    body: bytes
    headers: tuple[tuple[str, str], ...]
    delay: float = 0.0
    hang: bool = False


class Sandbox:
    """An ECDP look-alike on loopback; ``with Sandbox() as sb: ...`` or ``start()``/``stop()``.

    All public attributes may be changed while serving (``api_key`` to simulate a revoked key,
    ``unknown_event_ids``, ``latency``, ``capacity``, ``fail_ratio``, ``fail_status``,
    ``trickle``).

    ``latency`` (seconds each answer takes, also called ``default_delay``) is spent holding one of
    ``capacity`` service slots (``None``: unlimited). ``served`` counts requests processed and
    answered (the figure to divide by events sent), ``in_flight``/``max_in_flight`` the requests
    in service now and at most, ``waiting`` those accepted and queued for a slot.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        api_key: str = "sandbox-key",
        *,
        unknown_event_ids: Iterable[int] = (),
        seed: int | None = None,
        latency: float = 0.0,
        capacity: int | None = None,
    ) -> None:
        if latency < 0:
            raise ValueError("latency: must be 0 or more seconds")
        if capacity is not None and capacity < 1:
            raise ValueError("capacity: must be at least 1 (or None for unlimited)")
        self.host = host
        self.port = port
        self.api_key = api_key
        self.unknown_event_ids: set[int] = set(unknown_event_ids)
        self.default_delay = latency
        self.fail_ratio = 0.0
        self.fail_status = 503
        self.trickle = 0.0  # seconds between the bytes of every answer (a trickling API)
        self.requests: list[Received] = []
        self.in_flight = 0  # requests in service right now (holding a capacity slot)
        self.max_in_flight = 0  # the most at any moment: for concurrency ceilings in tests
        self.waiting = 0  # requests read and queued for a capacity slot right now
        self.served = 0  # requests processed and answered (even if the client had gone)
        self._capacity = capacity
        self._random = random.Random(seed)
        self._lock = threading.Lock()
        self._slot_freed = threading.Condition(self._lock)
        self._scripts: dict[int, deque[Reply]] = {}
        self._stopping = threading.Event()
        self._connections: dict[socket.socket, threading.Thread] = {}
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    @property
    def url(self) -> str:
        """Base URL, e.g. ``http://127.0.0.1:54321``; only known once started."""
        if self._server is None:
            raise RuntimeError("sandbox is not started")
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self._server.server_port}"

    def start(self) -> Sandbox:
        """Bind and serve in a daemon thread; returns self so ``Sandbox().start()`` chains."""
        if self._server is not None or self._stopping.is_set():
            raise RuntimeError("a Sandbox can be started once")
        server_class = _Server6 if ":" in self.host else _Server
        server = server_class((self.host, self.port), _Handler)
        server.sandbox = self
        self._server = server
        self.port = server.server_port
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"ecdp-sandbox:{server.server_port}",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving, release hanging and delayed handlers, close client connections."""
        server = self._server
        if server is None or self._stopping.is_set():
            self._stopping.set()
            return
        server.shutdown()
        with self._lock:
            self._stopping.set()
            self._slot_freed.notify_all()  # requests waiting for capacity give up
            connections = list(self._connections.items())
        for sock, _ in connections:
            # Wakes handlers blocked reading an idle keep-alive connection.
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        for _, thread in connections:
            if thread is not threading.current_thread():
                thread.join(timeout=5.0)
        server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5.0)

    @property
    def latency(self) -> float:
        """Seconds each answer takes (the same setting as ``default_delay``)."""
        return self.default_delay

    @latency.setter
    def latency(self, seconds: float) -> None:
        self.default_delay = seconds

    @property
    def capacity(self) -> int | None:
        """At most this many requests served at once; ``None``: unlimited."""
        return self._capacity

    @capacity.setter
    def capacity(self, limit: int | None) -> None:
        with self._lock:
            self._capacity = limit
            self._slot_freed.notify_all()

    def __enter__(self) -> Sandbox:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # -- scripting and inspection ------------------------------------------------------------

    def script(self, custom_event_id: int, *responses: Reply) -> None:
        """Queue answers for requests carrying ``custom_event_id``, used in order before normal
        behaviour resumes. They take precedence over every other check, including the key."""
        with self._lock:
            self._scripts.setdefault(custom_event_id, deque()).extend(responses)

    def count(self, status: int | None = None, custom_event_id: int | None = None) -> int:
        """How many recorded requests match both filters (``None`` matches anything)."""
        with self._lock:
            return sum(
                1
                for r in self.requests
                if (status is None or r.status == status)
                and (custom_event_id is None or r.custom_event_id == custom_event_id)
            )

    def bodies(self, status: int | None = 201) -> list[bytes]:
        """Raw bodies of recorded requests answered with ``status`` (all if ``None``)."""
        with self._lock:
            return [r.body for r in self.requests if status is None or r.status == status]

    def by_customer(self, status: int | None = 201) -> dict[str, list[Received]]:
        """Recorded requests answered with ``status`` (all if ``None``) per customer identifier,
        each list in the order the requests were served: what each customer received, in order."""
        grouped: dict[str, list[Received]] = {}
        with self._lock:
            for r in self.requests:
                if r.customer is not None and (status is None or r.status == status):
                    grouped.setdefault(r.customer, []).append(r)
        return grouped

    def clear(self) -> None:
        """Forget recorded requests and zero the counters (scripted replies pending are kept)."""
        with self._lock:
            self.requests.clear()
            self.served = 0
            self.max_in_flight = self.in_flight

    # -- request handling (called from handler threads) --------------------------------------

    def _register(self, sock: socket.socket) -> bool:
        with self._lock:
            if self._stopping.is_set():
                return False
            self._connections[sock] = threading.current_thread()
            return True

    def _unregister(self, sock: socket.socket) -> None:
        with self._lock:
            self._connections.pop(sock, None)

    def _take_slot(self) -> bool:
        """Wait for a service slot (capacity) and take it; False if the sandbox is stopping.

        The wait does not watch the client: a request whose client gave up is still served."""
        with self._lock:
            self.waiting += 1
            try:
                while True:
                    if self._stopping.is_set():
                        return False
                    capacity = self._capacity
                    if capacity is None or self.in_flight < capacity:
                        break
                    self._slot_freed.wait()
            finally:
                self.waiting -= 1
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            return True

    def _free_slot(self, *, answered: bool) -> None:
        with self._lock:
            self.in_flight -= 1
            if answered:
                self.served += 1
            self._slot_freed.notify()

    def _record(self, received: Received) -> None:
        with self._lock:
            self.requests.append(received)

    def _next_scripted(self, custom_event_id: int | None) -> Reply | None:
        if custom_event_id is None:
            return None
        with self._lock:
            queue = self._scripts.get(custom_event_id)
            if not queue:
                return None
            reply = queue.popleft()
            if not queue:
                del self._scripts[custom_event_id]
            return reply

    def _should_fail(self) -> bool:
        ratio = self.fail_ratio
        if ratio <= 0.0:
            return False
        with self._lock:
            return self._random.random() < ratio

    def _decide(
        self, method: str, path: str, headers: Mapping[str, str], body: bytes
    ) -> tuple[_Answer, int | None]:
        """Pick the answer for one request; returns it with the custom event id, if any."""
        if path not in _PATHS:
            return _problem(404, path, "Not Found", f"No endpoint at {path}."), None
        if method != "POST":
            answer = _problem(405, path, "Method Not Allowed", f"{method} is not allowed.")
            return _with_headers(answer, ("Allow", "POST")), None

        obj, parse_error = _parse_json(body)
        event_id = _event_id_of(obj)

        scripted = self._next_scripted(event_id)
        if scripted is not None:
            return _scripted_answer(scripted, path), event_id
        if self._should_fail():
            status = self.fail_status
            return _problem(status, path, _phrase(status), "Simulated failure."), event_id

        given = headers.get("x-api-key")
        if given is None or not hmac.compare_digest(given.encode(), self.api_key.encode()):
            detail = "The API key is missing or invalid."
            return _problem(401, path, "Unauthorized", detail), event_id

        media_type = headers.get("content-type", "").split(";", 1)[0].strip().lower()
        if media_type != "application/json":
            return _invalid(path, ["Content-Type must be application/json."]), event_id
        if parse_error is not None:
            return _invalid(path, [parse_error]), event_id
        if not isinstance(obj, dict):
            return _invalid(path, ["body: must be a JSON object."]), event_id

        from dispatcher.events import SegmentEvent, ValidationError, event_from_body

        try:
            event = event_from_body(obj)
        except ValidationError as exc:
            return _invalid(path, list(exc.errors)), event_id
        is_segments = isinstance(event, SegmentEvent)
        if is_segments and path != SEGMENTS_PATH:
            errors = [f"segments: not allowed on {path}; use {SEGMENTS_PATH}."]
            return _invalid(path, errors), event_id
        if not is_segments and path == SEGMENTS_PATH:
            return _invalid(path, [f"segments: required on {path}."]), event_id

        if event_id in self.unknown_event_ids:
            detail = f"Custom event {event_id} does not exist."
            return _problem(404, path, "Custom event not found", detail), event_id
        return _CREATED, event_id


class _BodyError(Exception):
    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    # Handler threads are joined by Sandbox.stop() (with a timeout), not by server_close().
    block_on_close = False
    # Connections the kernel accepts before the serving thread does: a few hundred clients
    # connecting at once must all get in (and wait for capacity), not be refused.
    request_queue_size = 1024
    sandbox: Sandbox

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that vanished mid-request (a killed worker) is normal here, not an error."""
        if isinstance(sys.exc_info()[1], ConnectionError):
            return
        super().handle_error(request, client_address)


class _Server6(_Server):
    address_family = socket.AF_INET6


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "ecdp-sandbox"
    # Answers go out in one write; no Nagle so small responses are not held for a delayed ACK.
    disable_nagle_algorithm = True
    server: _Server

    def setup(self) -> None:
        super().setup()
        if not self.server.sandbox._register(self.connection):
            self.close_connection = True
            with contextlib.suppress(OSError):
                self.connection.shutdown(socket.SHUT_RDWR)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.sandbox._unregister(self.connection)

    def log_message(self, format: str, *args: Any) -> None:
        """Silenced: the stdlib format could grow to include request details; we log our own."""

    def _serve(self) -> None:
        sandbox = self.server.sandbox
        path = self.path.split("?", 1)[0]
        headers: dict[str, str] = {}
        for name, value in self.headers.items():
            key = name.lower()
            headers[key] = f"{headers[key]}, {value}" if key in headers else value
        try:
            body = self._read_body()
        except _BodyError as exc:
            # The connection is out of step with the client now: answer and close.
            self.close_connection = True
            sandbox._record(
                Received(self.command, path, headers, b"", None, exc.status, time.monotonic())
            )
            self._send(_problem(exc.status, path, _phrase(exc.status), str(exc)), head=False)
            return
        if not sandbox._take_slot():
            self.close_connection = True
            return
        answered = False
        try:
            answered = self._answer(sandbox, path, headers, body)
        finally:
            sandbox._free_slot(answered=answered)

    def _answer(self, sandbox: Sandbox, path: str, headers: dict[str, str], body: bytes) -> bool:
        """Decide, record, take the latency, answer; False if no answer was given (hang, stop).

        An answer whose write fails (the client gave up) still counts: the work was done."""
        try:
            answer, event_id = sandbox._decide(self.command, path, headers, body)
        except Exception:
            # A bug here must not look like a network failure to the client under test.
            logger.exception("sandbox failed on %s %s", self.command, path)
            answer, event_id = _problem(500, path, "Sandbox error", "See the sandbox log."), None
        status = NO_ANSWER if answer.hang else answer.status
        customer = _customer_of(body) if path in _PATHS else None
        sandbox._record(
            Received(
                self.command, path, headers, body, event_id, status, time.monotonic(), customer
            )
        )
        logger.debug("%s %s customEventId=%s -> %s", self.command, path, event_id, status)

        delay = sandbox.default_delay + answer.delay
        if delay > 0 and sandbox._stopping.wait(delay):
            self.close_connection = True
            return False
        if answer.hang:
            sandbox._stopping.wait()
            self.close_connection = True
            return False
        self._send(answer, head=self.command == "HEAD")
        return True

    do_POST = do_GET = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = _serve

    def _read_body(self) -> bytes:
        """The request body (Content-Length or chunked); raises _BodyError if unreadable."""
        if self.headers.get("transfer-encoding", "").lower() == "chunked":
            return self._read_chunked()
        raw = self.headers.get("content-length")
        if raw is None:
            return b""
        try:
            length = int(raw)
        except ValueError:
            raise _BodyError(400, "Invalid Content-Length.") from None
        if length < 0:
            raise _BodyError(400, "Invalid Content-Length.")
        if length > _MAX_BODY:
            raise _BodyError(413, f"Body larger than {_MAX_BODY} bytes.")
        return self.rfile.read(length) if length else b""

    def _read_chunked(self) -> bytes:
        parts: list[bytes] = []
        total = 0
        while True:
            line = self.rfile.readline(1024)
            try:
                size = int(line.split(b";", 1)[0].strip(), 16)
            except ValueError:
                raise _BodyError(400, "Invalid chunked encoding.") from None
            if size == 0:
                while self.rfile.readline(1024) not in (b"\r\n", b"\n", b""):
                    pass  # trailers
                return b"".join(parts)
            total += size
            if total > _MAX_BODY:
                raise _BodyError(413, f"Body larger than {_MAX_BODY} bytes.")
            parts.append(self.rfile.read(size))
            self.rfile.readline(1024)

    def _send(self, answer: _Answer, *, head: bool) -> None:
        phrase = _phrase(answer.status)
        lines = [
            f"HTTP/1.1 {answer.status} {phrase}",
            f"Content-Length: {len(answer.body)}",
            *(f"{name}: {value}" for name, value in answer.headers),
        ]
        if self.close_connection:
            lines.append("Connection: close")
        head_bytes = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        data = head_bytes if head else head_bytes + answer.body
        sandbox = self.server.sandbox
        try:
            if sandbox.trickle <= 0:
                self.wfile.write(data)
                return
            for i in range(len(data)):  # one byte at a time: every read gets something
                self.wfile.write(data[i : i + 1])
                self.wfile.flush()
                if sandbox._stopping.wait(sandbox.trickle):
                    self.close_connection = True
                    return
        except OSError:
            self.close_connection = True


# -- answers (pure) ---------------------------------------------------------------------------

_CREATED = _Answer(201, b"", ())


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Unknown"


def _json_bytes(obj: Mapping[str, Any]) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def _problem(
    status: int, instance: str, title: str, detail: str, errors: list[str] | None = None
) -> _Answer:
    body: dict[str, Any] = {
        "type": _PROBLEM_TYPES.get(status, "about:blank"),
        "title": title,
        "status": status,
    }
    if errors is not None:
        body["substatus"] = "CustomerInvalidModelState"
    body["detail"] = detail
    body["instance"] = instance
    if errors is not None:
        body["errors"] = errors
    return _Answer(status, _json_bytes(body), (("Content-Type", "application/problem+json"),))


def _invalid(instance: str, errors: list[str]) -> _Answer:
    detail = "; ".join(errors) if errors else "The request body is invalid."
    return _problem(400, instance, _VALIDATION_TITLE, detail, errors)


def _with_headers(answer: _Answer, *headers: tuple[str, str]) -> _Answer:
    return _Answer(answer.status, answer.body, answer.headers + headers, answer.delay, answer.hang)


def _scripted_answer(reply: Reply, instance: str) -> _Answer:
    extra = tuple(
        (name, value)
        for name, value in (reply.headers or {}).items()
        if name.lower() not in ("content-length", "transfer-encoding")
    )
    if reply.body is None and reply.status >= 400:
        base = _problem(reply.status, instance, _phrase(reply.status), "Scripted reply.")
        body, content_type = base.body, "application/problem+json"
    elif reply.body is None:
        body, content_type = b"", None
    elif isinstance(reply.body, bytes):
        body, content_type = reply.body, None
    else:
        body = _json_bytes(reply.body)
        content_type = "application/problem+json" if reply.status >= 400 else "application/json"
    if content_type and not any(name.lower() == "content-type" for name, _ in extra):
        extra = (("Content-Type", content_type), *extra)
    return _Answer(reply.status, body, extra, reply.delay, reply.hang)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _parse_json(body: bytes) -> tuple[object, str | None]:
    """Strict JSON as the real API reads it: UTF-8, no NaN/Infinity. Returns (obj, error)."""
    try:
        return json.loads(body.decode("utf-8"), parse_constant=_reject_constant), None
    except UnicodeDecodeError:
        return None, "body: must be UTF-8 encoded JSON."
    except ValueError as exc:
        return None, f"body: invalid JSON ({exc})."


def _customer_of(body: bytes) -> str | None:
    """``"name=value"`` of the body's first customer identifier; ``None`` if it has none."""
    from dispatcher.events import CUSTOMER_KEYS

    obj, error = _parse_json(body)
    if error is not None or not isinstance(obj, dict):
        return None
    for name in CUSTOMER_KEYS:
        value = obj.get(name)
        if value is not None:
            return f"{name}={value}"
    return None


def _event_id_of(obj: object) -> int | None:
    if isinstance(obj, dict):
        value = obj.get("customEventId")
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return None


# -- command line -----------------------------------------------------------------------------


def serve_forever(
    host: str,
    port: int,
    api_key: str,
    unknown_event_ids: Iterable[int] = (),
    *,
    latency: float = 0.0,
    capacity: int | None = None,
) -> None:
    """Serve until Ctrl-C, for ``dispatcher sandbox --port N``. Prints the URL, never the key."""
    sandbox = Sandbox(
        host, port, api_key, unknown_event_ids=unknown_event_ids, latency=latency, capacity=capacity
    ).start()
    limits = f"{latency:g}s per answer, " if latency else ""
    limits += f"{capacity} at once" if capacity else "no capacity limit"
    print(f"ECDP sandbox listening on {sandbox.url} ({limits}; Ctrl-C to stop)", flush=True)
    try:
        while not sandbox._stopping.wait(1.0):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        sandbox.stop()
