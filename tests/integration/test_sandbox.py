"""The ECDP sandbox answered over real HTTP (httpx), the way the delivery code will see it."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner

from dispatcher.cli import main
from dispatcher.sandbox import NO_ANSWER, Received, Reply, Sandbox

KEY = "test-key-1234567890"
CUSTOM = "/scenariocustomevents"
SEGMENTS = "/scenariocustomevents/withsegments"
REPO = Path(__file__).resolve().parents[2]


def custom_body(event_id: int = 7, **extra: object) -> dict[str, object]:
    return {"customEventId": event_id, "customerEmail": "ada@example.com", **extra}


def segment_body(event_id: int = 7) -> dict[str, object]:
    return {"customEventId": event_id, "segments": [1, 5, 15]}


def wait_until(condition: object, what: str) -> None:
    """Poll a condition; the deadline only keeps a broken test from hanging forever."""
    assert callable(condition)
    deadline = time.monotonic() + 10.0
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"gave up waiting for {what}")
        time.sleep(0.01)


@pytest.fixture
def sandbox() -> Iterator[Sandbox]:
    with Sandbox(api_key=KEY, seed=1) as sb:
        yield sb


@pytest.fixture
def client(sandbox: Sandbox) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=sandbox.url, headers={"x-api-key": KEY}, timeout=10.0) as c:
        yield c


def assert_problem(response: httpx.Response, status: int, path: str) -> dict[str, object]:
    assert response.status_code == status
    assert response.headers["content-type"] == "application/problem+json"
    problem = response.json()
    assert isinstance(problem, dict)
    assert {"type", "title", "status", "detail", "instance"} <= problem.keys()
    assert problem["status"] == status
    assert problem["instance"] == path
    return problem


def assert_validation_problem(response: httpx.Response, path: str) -> list[str]:
    problem = assert_problem(response, 400, path)
    assert problem["title"] == "One or more validation errors occurred."
    assert problem["substatus"] == "CustomerInvalidModelState"
    errors = problem["errors"]
    assert isinstance(errors, list)
    assert errors
    assert all(isinstance(e, str) for e in errors)
    return errors


# -- the documented behaviour ------------------------------------------------------------------


def test_valid_custom_event_is_created(sandbox: Sandbox, client: httpx.Client) -> None:
    response = client.post(CUSTOM, json=custom_body())
    assert response.status_code == 201
    assert sandbox.count(status=201, custom_event_id=7) == 1


def test_valid_segment_event_is_created(sandbox: Sandbox, client: httpx.Client) -> None:
    response = client.post(SEGMENTS, json=segment_body())
    assert response.status_code == 201
    assert sandbox.count(status=201) == 1


@pytest.mark.parametrize("headers", [{}, {"x-api-key": "wrong"}], ids=["missing", "wrong"])
def test_bad_key_is_unauthorized(sandbox: Sandbox, headers: dict[str, str]) -> None:
    response = httpx.post(sandbox.url + CUSTOM, json=custom_body(), headers=headers)
    problem = assert_problem(response, 401, CUSTOM)
    assert "errors" not in problem
    assert sandbox.count(status=401) == 1


def test_key_can_be_revoked_while_serving(sandbox: Sandbox, client: httpx.Client) -> None:
    assert client.post(CUSTOM, json=custom_body()).status_code == 201
    sandbox.api_key = "rotated"
    assert_problem(client.post(CUSTOM, json=custom_body()), 401, CUSTOM)


def test_invalid_field_is_a_validation_problem(client: httpx.Client) -> None:
    response = client.post(CUSTOM, json=custom_body(customerEmail="x" * 400))
    errors = assert_validation_problem(response, CUSTOM)
    assert any("customerEmail" in error for error in errors)


def test_missing_custom_event_id_is_a_validation_problem(client: httpx.Client) -> None:
    response = client.post(CUSTOM, json={"customerEmail": "ada@example.com"})
    errors = assert_validation_problem(response, CUSTOM)
    assert any("customEventId" in error for error in errors)


@pytest.mark.parametrize(
    "content",
    [b"{not json", b'{"customEventId": NaN}', b"\xff\xfe{}", b"[1, 2]", b""],
    ids=["syntax", "nan", "not-utf8", "not-object", "empty"],
)
def test_unparsable_body_is_a_validation_problem(client: httpx.Client, content: bytes) -> None:
    response = client.post(CUSTOM, content=content, headers={"content-type": "application/json"})
    assert_validation_problem(response, CUSTOM)


def test_wrong_content_type_is_a_validation_problem(client: httpx.Client) -> None:
    content = json.dumps(custom_body()).encode()
    response = client.post(CUSTOM, content=content, headers={"content-type": "text/plain"})
    errors = assert_validation_problem(response, CUSTOM)
    assert any("Content-Type" in error for error in errors)


def test_segments_body_on_the_custom_endpoint_is_rejected(client: httpx.Client) -> None:
    errors = assert_validation_problem(client.post(CUSTOM, json=segment_body()), CUSTOM)
    assert any("segments" in error for error in errors)


def test_custom_body_on_the_segments_endpoint_is_rejected(client: httpx.Client) -> None:
    errors = assert_validation_problem(client.post(SEGMENTS, json=custom_body()), SEGMENTS)
    assert any("segments" in error for error in errors)


def test_unknown_custom_event_is_not_found(sandbox: Sandbox, client: httpx.Client) -> None:
    sandbox.unknown_event_ids.add(404)
    problem = assert_problem(client.post(CUSTOM, json=custom_body(404)), 404, CUSTOM)
    assert problem["title"] == "Custom event not found"
    assert client.post(CUSTOM, json=custom_body(405)).status_code == 201


def test_unknown_event_ids_from_the_constructor() -> None:
    with Sandbox(api_key=KEY, unknown_event_ids=[9]) as sb:
        response = httpx.post(sb.url + SEGMENTS, json=segment_body(9), headers={"x-api-key": KEY})
        assert_problem(response, 404, SEGMENTS)


def test_unknown_path_is_not_found(client: httpx.Client) -> None:
    assert_problem(client.post("/customers", json=custom_body()), 404, "/customers")


def test_other_methods_are_not_allowed(client: httpx.Client) -> None:
    response = client.get(CUSTOM)
    assert_problem(response, 405, CUSTOM)
    assert response.headers["allow"] == "POST"
    assert client.head(CUSTOM).status_code == 405
    # The connection is still usable afterwards (keep-alive bookkeeping stayed in step).
    assert client.post(CUSTOM, json=custom_body()).status_code == 201


# -- scripting -----------------------------------------------------------------------------------


def test_scripted_replies_are_used_in_order_then_normal(
    sandbox: Sandbox, client: httpx.Client
) -> None:
    sandbox.script(7, Reply(500), Reply(429, {"title": "slow down"}), Reply(202, b"ok"))
    statuses = [client.post(CUSTOM, json=custom_body(7)).status_code for _ in range(4)]
    assert statuses == [500, 429, 202, 201]
    # Other event ids were never affected.
    sandbox.script(7, Reply(503))
    assert client.post(CUSTOM, json=custom_body(8)).status_code == 201
    assert client.post(CUSTOM, json=custom_body(7)).status_code == 503
    assert [r.status for r in sandbox.requests] == [500, 429, 202, 201, 201, 503]


def test_scripted_bodies_and_headers_pass_through(sandbox: Sandbox, client: httpx.Client) -> None:
    sandbox.script(
        7,
        Reply(429, {"title": "Too many requests"}, headers={"Retry-After": "17"}),
        Reply(503, b"raw", headers={"Retry-After": "2", "Content-Type": "text/plain"}),
        Reply(500),
    )
    first = client.post(CUSTOM, json=custom_body())
    assert first.headers["retry-after"] == "17"
    assert first.json() == {"title": "Too many requests"}
    second = client.post(CUSTOM, json=custom_body())
    assert (second.status_code, second.headers["retry-after"], second.content) == (503, "2", b"raw")
    assert second.headers["content-type"] == "text/plain"
    third = assert_problem(client.post(CUSTOM, json=custom_body()), 500, CUSTOM)
    assert third["title"] == "Internal Server Error"


def test_scripted_replies_override_the_key_check(sandbox: Sandbox) -> None:
    sandbox.script(7, Reply(429))
    response = httpx.post(sandbox.url + CUSTOM, json=custom_body(), headers={"x-api-key": "no"})
    assert response.status_code == 429


def test_scripted_delay_still_answers(sandbox: Sandbox, client: httpx.Client) -> None:
    sandbox.script(7, Reply(201, delay=0.05))
    sandbox.default_delay = 0.01
    assert client.post(CUSTOM, json=custom_body()).status_code == 201


def test_hang_is_released_when_the_sandbox_stops() -> None:
    sb = Sandbox(api_key=KEY).start()
    sb.script(7, Reply(201, hang=True))
    outcome: list[BaseException | httpx.Response] = []

    def send() -> None:
        try:
            outcome.append(httpx.post(sb.url + CUSTOM, json=custom_body(), timeout=30.0))
        except httpx.HTTPError as exc:
            outcome.append(exc)

    thread = threading.Thread(target=send)
    thread.start()
    wait_until(lambda: sb.count(status=NO_ANSWER) == 1, "the hanging request to arrive")
    sb.stop()
    thread.join(timeout=30.0)
    assert len(outcome) == 1
    assert isinstance(outcome[0], httpx.RemoteProtocolError)


def test_fail_ratio_answers_the_fail_status(sandbox: Sandbox, client: httpx.Client) -> None:
    sandbox.fail_ratio = 1.0
    sandbox.fail_status = 502
    assert_problem(client.post(CUSTOM, json=custom_body()), 502, CUSTOM)
    sandbox.fail_ratio = 0.0
    assert client.post(CUSTOM, json=custom_body()).status_code == 201


def test_fail_ratio_is_reproducible_with_a_seed() -> None:
    def statuses(seed: int) -> list[int]:
        with Sandbox(api_key=KEY, seed=seed) as sb:
            sb.fail_ratio = 0.5
            with httpx.Client(base_url=sb.url, headers={"x-api-key": KEY}) as c:
                return [c.post(CUSTOM, json=custom_body()).status_code for _ in range(40)]

    first = statuses(3)
    assert first == statuses(3)
    assert set(first) == {201, 503}


# -- recording -----------------------------------------------------------------------------------


def test_requests_are_recorded_with_exact_bytes(sandbox: Sandbox, client: httpx.Client) -> None:
    content = b'{ "customEventId" : 7,\n  "customerEmail": "ada@example.com" }'
    headers = {"Content-Type": "application/json; charset=utf-8", "X-Trace": "abc"}
    assert client.post(CUSTOM, content=content, headers=headers).status_code == 201
    client.post("/elsewhere", content=b"?")

    first, second = sandbox.requests
    assert isinstance(first, Received)
    assert (first.method, first.path, first.body) == ("POST", CUSTOM, content)
    assert (first.custom_event_id, first.status) == (7, 201)
    assert first.headers["x-api-key"] == KEY
    assert first.headers["x-trace"] == "abc"
    assert all(name == name.lower() for name in first.headers)
    assert (second.path, second.custom_event_id, second.status) == ("/elsewhere", None, 404)
    assert second.at >= first.at

    assert sandbox.bodies() == [content]
    assert sandbox.bodies(status=404) == [b"?"]
    assert sandbox.count() == 2
    assert sandbox.count(custom_event_id=7) == 1
    sandbox.clear()
    assert sandbox.count() == 0
    assert sandbox.requests == []


def test_chunked_bodies_are_read_and_recorded(sandbox: Sandbox, client: httpx.Client) -> None:
    parts = [b'{"customEventId": 7, ', b'"customerEmail": "ada@example.com"}']
    headers = {"content-type": "application/json"}
    response = client.post(CUSTOM, content=iter(parts), headers=headers)
    assert response.status_code == 201
    assert sandbox.requests[0].headers["transfer-encoding"] == "chunked"
    assert sandbox.bodies() == [b"".join(parts)]


def test_the_key_is_never_logged(
    sandbox: Sandbox,
    client: httpx.Client,
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
) -> None:
    caplog.set_level("DEBUG")
    client.post(CUSTOM, json=custom_body())
    client.post(CUSTOM, content=b"junk", headers={"content-type": "application/json"})
    httpx.post(sandbox.url + CUSTOM, json=custom_body(), headers={"x-api-key": KEY + "-bad"})
    client.get("/")
    out, err = capfd.readouterr()
    assert KEY not in caplog.text + out + err


def test_serve_forever_prints_the_url_but_not_the_key() -> None:
    code = "from dispatcher.sandbox import serve_forever; serve_forever('127.0.0.1', 0, 'sekrit-k')"
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-c", code],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # Ctrl-C at a terminal: SIGINT as it is there. A shell's background job (`bash .ci/run &`)
        # ignores SIGINT, and the child would inherit that and never stop.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        url = line.split()[line.split().index("on") + 1]
        assert url.startswith("http://127.0.0.1:")
        response = httpx.post(url + CUSTOM, json=custom_body(), headers={"x-api-key": "sekrit-k"})
        assert response.status_code == 201
        proc.send_signal(signal.SIGINT)
        rest, err = proc.communicate(timeout=30.0)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    assert "sekrit-k" not in line + rest + err


# -- load ----------------------------------------------------------------------------------------


def test_concurrent_keep_alive_clients_are_all_answered_and_recorded(sandbox: Sandbox) -> None:
    threads, per_thread = 8, 100
    statuses: list[int] = []
    lock = threading.Lock()

    def worker(n: int) -> None:
        with httpx.Client(base_url=sandbox.url, headers={"x-api-key": KEY}, timeout=30.0) as c:
            mine = [
                c.post(CUSTOM, json=custom_body(n + 1, customerCrmId=f"{n}-{i}")).status_code
                for i in range(per_thread)
            ]
        with lock:
            statuses.extend(mine)

    pool = [threading.Thread(target=worker, args=(n,)) for n in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()

    assert statuses == [201] * (threads * per_thread)
    assert sandbox.count(status=201) == threads * per_thread
    sent_ids = {json.loads(body)["customerCrmId"] for body in sandbox.bodies()}
    assert sent_ids == {f"{n}-{i}" for n in range(threads) for i in range(per_thread)}
    for n in range(threads):
        assert sandbox.count(custom_event_id=n + 1) == per_thread


# -- an API at its capacity (latency, capacity) ------------------------------------------------


def _raw_post(sock: socket.socket, body: dict[str, object], key: str = KEY) -> None:
    content = json.dumps(body).encode()
    head = (
        f"POST {CUSTOM} HTTP/1.1\r\nHost: sandbox\r\nx-api-key: {key}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(content)}\r\n"
        "Connection: close\r\n\r\n"
    )
    sock.sendall(head.encode() + content)


def _raw_status(sock: socket.socket) -> int:
    data = b""
    while b"\r\n" not in data:
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    return int(data.split(b" ", 2)[1])


def test_hundreds_of_connections_at_once_wait_for_capacity_and_are_all_served() -> None:
    clients, capacity = 300, 32
    with Sandbox(api_key=KEY, latency=0.2, capacity=capacity) as sb:
        socks = [
            socket.create_connection(("127.0.0.1", sb.port), timeout=60.0) for _ in range(clients)
        ]
        try:
            for n, sock in enumerate(socks):
                _raw_post(sock, custom_body(customerId=n))
            statuses = [_raw_status(sock) for sock in socks]
        finally:
            for sock in socks:
                sock.close()
        assert statuses == [201] * clients
        assert sb.served == clients
        assert sb.max_in_flight == capacity  # reached and never exceeded
        assert (sb.in_flight, sb.waiting) == (0, 0)


def test_latency_is_taken_by_every_answer_and_capacity_queues_the_rest() -> None:
    latency = 0.3
    with Sandbox(api_key=KEY, latency=latency, capacity=1) as sb:
        took: list[float] = []

        def send(n: int) -> None:
            started = time.monotonic()
            response = httpx.post(
                sb.url + CUSTOM,
                json=custom_body(customerId=n),
                headers={"x-api-key": KEY},
                timeout=30,
            )
            assert response.status_code == 201
            took.append(time.monotonic() - started)

        threads = [threading.Thread(target=send, args=(n,)) for n in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        # One slot: one answer after the latency, the other after waiting for it plus its own.
        assert min(took) >= latency
        assert max(took) >= 2 * latency
        assert (sb.served, sb.max_in_flight) == (2, 1)
        first, second = sb.requests
        assert second.at - first.at >= latency  # served one after the other


def test_a_request_whose_client_gave_up_while_waiting_is_still_served(
    slow_sandbox: Callable[..., Sandbox], api_key: str
) -> None:
    sb = slow_sandbox(latency=0.5, capacity=1)
    headers = {"x-api-key": api_key}
    holder = threading.Thread(
        target=httpx.post,
        args=(sb.url + CUSTOM,),
        kwargs={"json": custom_body(1, customerId=1), "headers": headers, "timeout": 30.0},
    )
    holder.start()
    wait_until(lambda: sb.in_flight == 1, "the first request to take the only slot")
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(sb.url + CUSTOM, json=custom_body(2, customerId=2), headers=headers, timeout=0.1)
    holder.join(timeout=30.0)
    wait_until(lambda: sb.served == 2, "the abandoned request to be served anyway")
    # The API did the work: from the customer's side, that is the event triggered.
    assert sb.count(status=201, custom_event_id=2) == 1
    assert sb.max_in_flight == 1


def test_what_each_customer_received_in_order(sandbox: Sandbox, client: httpx.Client) -> None:
    for n, who in enumerate(["a@example.com", "b@example.com", "a@example.com"]):
        assert client.post(CUSTOM, json=custom_body(n + 1, customerEmail=who)).status_code == 201
    sandbox.script(9, Reply(500))
    client.post(CUSTOM, json=custom_body(9, customerEmail="a@example.com"))
    client.post(CUSTOM, json={"customEventId": 4, "customerCrmId": "crm-1"})
    got = sandbox.by_customer()
    assert {k: [r.custom_event_id for r in v] for k, v in got.items()} == {
        "customerEmail=a@example.com": [1, 3],
        "customerEmail=b@example.com": [2],
        "customerCrmId=crm-1": [4],
    }
    assert [r.status for r in sandbox.by_customer(status=None)["customerEmail=a@example.com"]] == [
        201,
        201,
        500,
    ]


def test_capacity_can_be_raised_while_requests_wait() -> None:
    outcomes: list[BaseException] = []

    def send(url: str) -> None:
        try:
            httpx.post(url + CUSTOM, json=custom_body(), headers={"x-api-key": KEY}, timeout=60)
        except httpx.HTTPError as exc:
            outcomes.append(exc)

    with Sandbox(api_key=KEY, latency=30.0, capacity=1) as sb:
        threads = [threading.Thread(target=send, args=(sb.url,)) for _ in range(3)]
        for t in threads:
            t.start()
        wait_until(lambda: (sb.in_flight, sb.waiting) == (1, 2), "two requests to queue")
        sb.capacity = 3
        wait_until(lambda: sb.in_flight == 3, "the queued requests to be let in")
    for t in threads:
        t.join(timeout=30.0)
    # stop() released them all, unanswered: none was served.
    assert len(outcomes) == 3
    assert sb.served == 0


@pytest.mark.parametrize(
    ("kwargs", "field"), [({"latency": -1.0}, "latency"), ({"capacity": 0}, "capacity")]
)
def test_bad_limits_are_refused_naming_the_field(kwargs: dict[str, Any], field: str) -> None:
    with pytest.raises(ValueError, match=field):
        Sandbox(api_key=KEY, **kwargs)


def test_cli_passes_latency_and_capacity(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: dict[str, object] = {}
    monkeypatch.setattr(
        "dispatcher.sandbox.serve_forever", lambda *args, **kwargs: seen.update(kwargs)
    )
    result = CliRunner().invoke(main, ["sandbox", "--latency", "0.25", "--capacity", "32"])
    assert result.exit_code == 0, result.output
    assert (seen["latency"], seen["capacity"]) == (0.25, 32)
    result = CliRunner().invoke(main, ["sandbox"])
    assert (seen["latency"], seen["capacity"]) == (0.0, None)


@pytest.mark.parametrize(
    ("args", "option"),
    [
        (["--latency", "-0.5"], "--latency"),
        (["--latency", "slow"], "--latency"),
        (["--capacity", "0"], "--capacity"),
        (["--capacity", "-3"], "--capacity"),
        (["--capacity", "many"], "--capacity"),
        (["--capacity", "2.5"], "--capacity"),
    ],
)
def test_cli_refuses_bad_limits_naming_the_option(
    monkeypatch: pytest.MonkeyPatch, args: list[str], option: str
) -> None:
    monkeypatch.setattr("dispatcher.sandbox.serve_forever", lambda *a, **k: pytest.fail("served"))
    result = CliRunner().invoke(main, ["sandbox", *args])
    assert result.exit_code == 2
    assert option in result.output
