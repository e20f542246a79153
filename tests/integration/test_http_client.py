"""``dispatcher.ecdp.EcdpClient`` against real servers on loopback: the sandbox, and small raw
socket servers where a test needs to control the connection itself (close, TLS, a proxy)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import multiprocessing
import os
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Self

import pytest

from dispatcher import ecdp
from dispatcher.config import Secret
from dispatcher.ecdp import DRAIN_LIMIT, Answer, EcdpClient
from dispatcher.sandbox import CUSTOM_EVENTS_PATH, Reply, Sandbox
from tests.support import free_port, wait_until

KEY = Secret("client-test-key")
BODY = b'{"customEventId":7,"customerEmail":"a@example.com"}'


@pytest.fixture(autouse=True, params=["uvloop", "asyncio"])
def event_loop_kind(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Every test on both loops: uvloop where it is installed (the default), asyncio's else."""
    if request.param == "asyncio":
        monkeypatch.setattr(ecdp, "new_event_loop", asyncio.new_event_loop)
    else:
        pytest.importorskip("uvloop")
    kind: str = request.param
    return kind


@pytest.fixture
def box() -> Iterator[Sandbox]:
    with Sandbox(api_key=KEY.reveal()) as server:
        yield server


@pytest.fixture
def client(box: Sandbox) -> Iterator[EcdpClient]:
    c = EcdpClient(box.url, timeout=5, max_connections=64, body_limit=1000)
    yield c
    c.close()


def post_to(url: str, times: int = 1, **options: Any) -> list[Answer]:
    """``times`` POSTs, one after the other, from a client of their own."""
    c = EcdpClient(url, **options)
    try:
        return [c.post(CUSTOM_EVENTS_PATH, BODY, KEY) for _ in range(times)]
    finally:
        c.close()


def test_201_sends_the_body_and_headers_as_given(box: Sandbox, client: EcdpClient) -> None:
    answer = client.post(CUSTOM_EVENTS_PATH, BODY, KEY)
    assert (answer.status_code, answer.error) == (201, None)
    (seen,) = box.requests
    assert (seen.method, seen.path, seen.body) == ("POST", CUSTOM_EVENTS_PATH, BODY)
    headers = {k.lower(): v for k, v in seen.headers.items()}
    assert headers["x-api-key"] == KEY.reveal()
    assert headers["content-type"] == "application/json"
    assert headers["content-length"] == str(len(BODY))
    assert headers["host"] == f"127.0.0.1:{box.url.rsplit(':', 1)[1]}"


def test_error_body_and_retry_after_are_returned(box: Sandbox, client: EcdpClient) -> None:
    box.script(7, Reply(429, body={"title": "slow down"}, headers={"Retry-After": "3"}))
    answer = client.post(CUSTOM_EVENTS_PATH, BODY, KEY)
    assert answer.status_code == 429
    assert answer.retry_after == "3"
    assert b"slow down" in answer.body


def test_a_large_body_is_cut_and_the_client_goes_on(box: Sandbox, client: EcdpClient) -> None:
    box.script(7, Reply(500, body=b"x" * 300_000))
    answer = client.post(CUSTOM_EVENTS_PATH, BODY, KEY)
    assert (answer.status_code, len(answer.body), answer.body_size) == (500, 1000, 300_000)
    assert client.post(CUSTOM_EVENTS_PATH, BODY, KEY).status_code == 201


def test_a_body_past_the_drain_limit_is_abandoned_with_its_connection(
    box: Sandbox, client: EcdpClient
) -> None:
    box.script(7, Reply(500, body=b"x" * (DRAIN_LIMIT + 1_000_000)))
    answer = client.post(CUSTOM_EVENTS_PATH, BODY, KEY)
    assert (answer.status_code, len(answer.body)) == (500, 1000)
    assert DRAIN_LIMIT < answer.body_size < DRAIN_LIMIT + 1_000_000
    assert client.post(CUSTOM_EVENTS_PATH, BODY, KEY).status_code == 201


def test_a_trickling_answer_ends_at_the_total_deadline(box: Sandbox) -> None:
    """Each byte comes well within any per-read timeout, the whole answer would take seconds:
    the HTTP timeout bounds the request from connection to last byte."""
    box.trickle = 0.05
    started = time.monotonic()
    (answer,) = post_to(box.url, timeout=0.5)
    took = time.monotonic() - started
    assert (answer.status_code, answer.error) == (None, "timeout: no complete answer within 0.5s")
    assert took < 1.5
    assert box.count() == 1


def test_a_hanging_server_gives_a_timeout_answer(box: Sandbox) -> None:
    box.script(7, Reply(201, hang=True))
    (answer,) = post_to(box.url, timeout=0.3)
    assert (answer.status_code, answer.error) == (None, "timeout: no complete answer within 0.3s")


def test_nothing_listening_gives_a_connection_error_answer() -> None:
    (answer,) = post_to(f"http://127.0.0.1:{free_port()}", connect_timeout=2)
    assert answer.status_code is None
    assert answer.error is not None and answer.error.startswith("connection error: ConnectError")


def test_a_server_that_never_accepts_gives_a_connect_timeout_before_the_deadline() -> None:
    """A listener whose backlog is full drops further SYNs: only the connect timeout ends it."""
    with contextlib.ExitStack() as stack:
        server = stack.enter_context(socket.create_server(("127.0.0.1", 0), backlog=0))
        for _ in range(4):  # fill the backlog
            sock = stack.enter_context(socket.socket())
            sock.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                sock.connect(server.getsockname())
        started = time.monotonic()
        (answer,) = post_to(f"http://127.0.0.1:{server.getsockname()[1]}", connect_timeout=0.3)
        took = time.monotonic() - started
    assert (answer.status_code, answer.error) == (None, "timeout: ConnectTimeout")
    assert took < 2  # the deadline (the HTTP timeout) is 10 s


def test_a_path_prefix_in_the_base_url_is_kept(box: Sandbox) -> None:
    (answer,) = post_to(box.url + "/v2/")
    assert answer.status_code == 404  # the sandbox knows no /v2 prefix: what counts is the path
    assert [r.path for r in box.requests] == ["/v2" + CUSTOM_EVENTS_PATH]


@pytest.mark.parametrize(("ceiling", "submitted", "most"), [(64, 40, 40), (8, 24, 8)])
def test_requests_run_concurrently_up_to_the_ceiling(
    box: Sandbox, ceiling: int, submitted: int, most: int
) -> None:
    """A slow API: requests submitted at once are all in flight together, up to the ceiling."""
    box.default_delay = 0.3
    c = EcdpClient(box.url, timeout=5, max_connections=ceiling)
    try:
        futures = [c.submit(CUSTOM_EVENTS_PATH, BODY, KEY) for _ in range(submitted)]
        answers = [f.result() for f in futures]
    finally:
        c.close()
    assert [a.status_code for a in answers] == [201] * submitted
    assert box.max_in_flight == most


# -- raw servers: one thread per connection, each answering with ``respond(request_head)`` ----


class Listener:
    """A loopback server with a thread per connection, each handled by ``serve(conn)``."""

    def __init__(self) -> None:
        self.connections = 0
        self.heads: list[bytes] = []
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self.serve, args=(conn,), daemon=True).start()

    def serve(self, conn: socket.socket) -> None:
        raise NotImplementedError

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.sock.close()


class RawServer(Listener):
    def __init__(
        self,
        respond: Callable[[bytes], bytes],
        *,
        close_after: bool = False,
        tls: Path | None = None,
        garbage: bool = False,
        unasked: bytes = b"",
    ) -> None:
        self.respond = respond
        self.close_after = close_after
        self.garbage = garbage  # answer with bytes that are not a TLS record (a bad MAC)
        self.unasked = unasked  # sent after each answer, on the idle connection
        self.unasked_sent = 0
        self.tls: ssl.SSLContext | None = None
        if tls is not None:
            self.tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            self.tls.load_cert_chain(tls / "cert.pem", tls / "key.pem")
        super().__init__()

    def serve(self, conn: socket.socket) -> None:
        try:
            if self.tls is not None:
                conn = self.tls.wrap_socket(conn, server_side=True)
            stream = conn.makefile("rb")
            while True:
                head = b""
                while not head.endswith(b"\r\n\r\n"):
                    line = stream.readline()
                    if not line:
                        return
                    head += line
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                stream.read(length)
                self.heads.append(head)
                if self.garbage:  # behind TLS's back, on the raw socket
                    os.write(conn.fileno(), b"\x17\x03\x03\x00\x20" + b"\x00" * 32)
                    return
                conn.sendall(self.respond(head))
                if self.unasked:  # later, as a server's idle timeout would
                    time.sleep(0.1)
                    conn.sendall(self.unasked)
                    self.unasked_sent += 1
                if self.close_after:
                    return
        except (OSError, ssl.SSLError):
            return
        finally:
            conn.close()


def created(_: bytes) -> bytes:
    return b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n"


def test_connections_are_kept_alive_and_reused() -> None:
    with RawServer(created) as server:
        answers = post_to(server.url, 20)
    assert [a.status_code for a in answers] == [201] * 20
    assert server.connections == 1


def test_a_server_that_closes_every_connection_is_reconnected_to() -> None:
    closing = b"HTTP/1.1 201 Created\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
    with RawServer(lambda _: closing, close_after=True) as server:
        answers = post_to(server.url, 5)
    assert [a.status_code for a in answers] == [201] * 5
    assert server.connections == 5


def test_bytes_sent_unasked_on_an_idle_connection_are_never_taken_for_an_answer() -> None:
    """asyncio reads an idle connection's socket, so such bytes sit in the reader's buffer; the
    connection must not be reused, or every later answer would belong to the request before."""
    numbers = itertools.count(1)

    def numbered(_: bytes) -> bytes:
        return b"HTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nr%d" % next(numbers)

    stale = b"HTTP/1.1 408 Request Timeout\r\nContent-Length: 5\r\n\r\nstale"
    with RawServer(numbered, unasked=stale) as server:
        c = EcdpClient(server.url)
        try:
            first = c.post(CUSTOM_EVENTS_PATH, BODY, KEY)
            wait_until(lambda: server.unasked_sent == 1, "the unasked bytes to be sent")
            time.sleep(0.2)  # setup, not a measurement: let the client's loop read them
            second = c.post(CUSTOM_EVENTS_PATH, BODY, KEY)
        finally:
            c.close()
    assert (first.status_code, first.body) == (201, b"r1")
    assert (second.status_code, second.body) == (201, b"r2")
    assert server.connections == 2


def test_a_redirect_is_an_answer_not_followed() -> None:
    redirect = (
        b"HTTP/1.1 307 Temporary Redirect\r\nLocation: http://evil.example/\r\n"
        b"Content-Length: 0\r\n\r\n"
    )
    with RawServer(lambda _: redirect) as server:
        (answer,) = post_to(server.url)
    assert answer.status_code == 307
    assert len(server.heads) == 1


@pytest.fixture
def certificate(tmp_path: Path) -> Path:
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"),
            *("-keyout", str(key), "-out", str(cert)),
            *("-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost"),
        ],
        check=True,
        capture_output=True,
    )
    return tmp_path


def test_https_with_a_trusted_certificate(certificate: Path) -> None:
    trusting = ssl.create_default_context(cafile=str(certificate / "cert.pem"))
    with RawServer(created, tls=certificate) as server:
        url = f"https://localhost:{server.port}"
        (good,) = post_to(url, ssl_context=trusting)
        (refused,) = post_to(url, connect_timeout=2)  # self-signed: not trusted by default
    assert good.status_code == 201
    assert refused.status_code is None
    assert refused.error is not None and "CERTIFICATE_VERIFY_FAILED" in refused.error
    assert len(server.heads) == 1


def test_a_broken_tls_session_is_a_connection_error_answer(certificate: Path) -> None:
    """asyncio passes ssl.SSLError through where httpx's sync client wrapped it: still an
    answer to judge (and retry), never an exception out of the client."""
    trusting = ssl.create_default_context(cafile=str(certificate / "cert.pem"))
    with RawServer(created, tls=certificate, garbage=True) as server:
        (answer,) = post_to(f"https://localhost:{server.port}", ssl_context=trusting, timeout=3)
    assert answer.status_code is None
    assert answer.error is not None and answer.error.startswith("connection error: ")
    assert "SSL" in answer.error


def test_a_proxy_gets_the_request_with_its_absolute_url() -> None:
    with RawServer(created) as proxy:
        (answer,) = post_to("http://api.invalid:8080", proxy_url=proxy.url)
    assert answer.status_code == 201
    assert proxy.heads[0].startswith(b"POST http://api.invalid:8080" + CUSTOM_EVENTS_PATH.encode())


def test_a_proxy_gets_its_credentials_apart_from_the_url() -> None:
    with RawServer(created) as proxy:
        proxy_url = f"http://us%40er:p%3Ass@127.0.0.1:{proxy.port}"
        (answer,) = post_to("http://api.invalid", proxy_url=proxy_url)
    assert answer.status_code == 201
    expected = b"Basic " + base64.b64encode(b"us@er:p:ss")
    assert b"Proxy-Authorization: " + expected + b"\r\n" in proxy.heads[0]


class ConnectProxy(Listener):
    """A forward proxy for https: answers a CONNECT with 200, then relays bytes both ways to
    127.0.0.1 (whatever host was asked for), keeping each CONNECT's head."""

    def serve(self, conn: socket.socket) -> None:
        with conn:
            head = b""
            while not head.endswith(b"\r\n\r\n"):
                chunk = conn.recv(1)
                if not chunk:
                    return
                head += chunk
            self.heads.append(head)
            port = int(head.split(b" ", 2)[1].rsplit(b":", 1)[1])
            with socket.create_connection(("127.0.0.1", port)) as upstream:
                conn.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
                back = threading.Thread(target=self._pipe, args=(upstream, conn), daemon=True)
                back.start()
                self._pipe(conn, upstream)
                back.join(10)

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                dst.sendall(data)
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)


def test_https_through_a_proxy_tunnels_with_credentials_only_to_the_proxy(
    certificate: Path,
) -> None:
    trusting = ssl.create_default_context(cafile=str(certificate / "cert.pem"))
    with RawServer(created, tls=certificate) as server, ConnectProxy() as proxy:
        proxy_url = proxy.url.replace("http://", "http://us%40er:p%3Ass@")
        answers = post_to(
            f"https://localhost:{server.port}", 2, proxy_url=proxy_url, ssl_context=trusting
        )
    assert [a.status_code for a in answers] == [201, 201]
    (head,) = proxy.heads  # one tunnel, kept alive
    assert head.startswith(b"CONNECT localhost:%d HTTP/1.1\r\n" % server.port)
    assert b"Proxy-Authorization: Basic " + base64.b64encode(b"us@er:p:ss") + b"\r\n" in head
    assert not any(b"proxy-authorization" in h.lower() for h in server.heads)


def test_an_ipv6_base_url_sends_a_bracketed_host(api_key: str) -> None:
    with Sandbox(host="::1", api_key=KEY.reveal()) as box6:
        assert post_to(box6.url)[0].status_code == 201
        port = box6.url.rsplit(":", 1)[1]
        assert {k.lower(): v for k, v in box6.requests[0].headers.items()}[
            "host"
        ] == f"[::1]:{port}"


def test_close_cancels_what_is_in_flight_and_refuses_more(box: Sandbox) -> None:
    box.script(7, Reply(201, hang=True))
    c = EcdpClient(box.url, timeout=30)
    hanging = c.submit(CUSTOM_EVENTS_PATH, BODY, KEY)
    wait_until(lambda: box.in_flight == 1, "the request to arrive")
    c.close()
    assert hanging.cancelled()
    with pytest.raises(RuntimeError, match="closed"):
        c.submit(CUSTOM_EVENTS_PATH, BODY, KEY)


def _post_in_child(client: EcdpClient, out: multiprocessing.Queue[object]) -> None:
    out.put(client.post(CUSTOM_EVENTS_PATH, BODY, KEY).status_code)


def test_a_forked_child_gets_a_working_client_of_its_own(box: Sandbox, client: EcdpClient) -> None:
    """Celery's prefork pool: the parent's loop thread does not exist in the child."""
    assert client.post(CUSTOM_EVENTS_PATH, BODY, KEY).status_code == 201  # parent's loop runs
    ctx = multiprocessing.get_context("fork")
    out: multiprocessing.Queue[object] = ctx.Queue()
    child = ctx.Process(target=_post_in_child, args=(client, out))
    child.start()
    child.join(30)
    assert child.exitcode == 0
    assert out.get(timeout=5) == 201
    assert client.post(CUSTOM_EVENTS_PATH, BODY, KEY).status_code == 201  # parent's still does
    assert box.count(201) == 3


def test_bad_base_urls_are_refused_with_the_variable_named() -> None:
    with pytest.raises(ValueError, match="ECDP_BASE_URL"):
        EcdpClient("ftp://example.com")
