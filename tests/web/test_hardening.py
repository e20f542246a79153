"""Issue 14 on the site: logging out ends the session on the server, wrong tokens are throttled
per client address and logged (never the token), the cookie is Secure behind a trusted TLS proxy,
and every value of an email field is masked by one rule (property-tested)."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st
from starlette.applications import Starlette
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

from dispatcher.web.access import SESSION_COOKIE, Throttle
from dispatcher.web.site import mask_email, mask_emails

from .conftest import AUTH, TOKEN


class Asgi:
    """A synchronous client over an ASGI app in process, from a chosen client address."""

    def __init__(self, app: Any, client: str = "10.1.2.3") -> None:
        self.app, self.client = app, client

    def _send(self, method: str, url: str, **kw: Any) -> httpx.Response:
        async def go() -> httpx.Response:
            transport = httpx.ASGITransport(app=self.app, client=(self.client, 5000))
            async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as c:
                return await c.request(method, url, **kw)

        return asyncio.run(go())

    def post(self, url: str, **kw: Any) -> httpx.Response:
        return self._send("POST", url, **kw)

    def get(self, url: str, **kw: Any) -> httpx.Response:
        return self._send("GET", url, **kw)


def _login(client: httpx.Client | Asgi, token: str = TOKEN) -> httpx.Response:
    return client.post("/login", data={"token": token, "next": "/"}, follow_redirects=False)


# --------------------------------------------------------------------------- logout


def test_logout_ends_the_session_server_side(client: httpx.Client) -> None:
    assert _login(client).status_code == 303
    cookie = client.cookies[SESSION_COOKIE]
    page = client.get("/")
    assert page.status_code == 200
    csrf = page.text.split('name="csrf" value="', 1)[1].split('"', 1)[0]
    assert client.post("/logout", data={"csrf": csrf}).status_code == 303
    # The browser dropped the cookie; someone who copied it before cannot use it any more.
    with httpx.Client(base_url=str(client.base_url), follow_redirects=False) as thief:
        thief.cookies.set(SESSION_COOKIE, cookie)
        assert thief.get("/api/queues").status_code == 401
        assert thief.get("/").status_code == 303  # to the login form
    # A new login works, with a new session.
    assert _login(client).status_code == 303
    assert client.cookies[SESSION_COOKIE] != cookie
    assert client.get("/api/queues").status_code == 200


# --------------------------------------------------------------------------- throttle


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_wrong_logins_are_throttled_per_address_and_logged_without_the_token(
    app: Starlette, caplog: pytest.LogCaptureFixture
) -> None:
    clock = FakeClock()
    app.state.site.gate.throttle = Throttle(clock)
    tried = "wrong-token-attempt-xyz"
    c = Asgi(app)
    wrong = {"Authorization": f"Bearer {tried}"}
    with caplog.at_level(logging.INFO, logger="dispatcher.web"):
        for _ in range(Throttle.FREE):
            assert _login(c, tried).status_code == 401
        assert _login(c, tried).status_code == 401  # the 6th is checked, then locks for 1 s
        locked = _login(c, tried)  # locked out: a wrong token is refused with 429
        assert locked.status_code == 429 and "try again" in locked.text
        assert c.get("/api/queues", headers=wrong).status_code == 429
        # The right token is never refused, whoever failed from the address before.
        assert c.get("/api/queues", headers=AUTH).status_code == 200
        assert c.get("/metrics", headers=AUTH).status_code == 200  # Prometheus' scrape
        clock.now += 1.5
        assert _login(c, tried).status_code == 401  # the count went on: locked again
        assert _login(c, tried).status_code == 429
        assert _login(c, TOKEN).status_code == 303  # the right token, during the lock
        assert _login(c, tried).status_code == 429  # which does not lift the lock
    refusals = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
    assert len(refusals) >= Throttle.FREE + 2
    assert all("10.1.2.3" in m for m in refusals)  # the client's address
    assert "locked out for 1s" in refusals[Throttle.FREE]
    assert all(tried not in r.getMessage() and TOKEN not in r.getMessage() for r in caplog.records)


def test_twelve_wrong_tokens_never_lock_out_the_right_one(app: Starlette) -> None:
    clock = FakeClock()
    app.state.site.gate.throttle = Throttle(clock)
    c = Asgi(app)
    wrong = {"Authorization": "Bearer not-the-token-at-all"}
    answers = [c.get("/api/queues", headers=wrong).status_code for _ in range(12)]
    assert answers[: Throttle.FREE] == [401] * Throttle.FREE and answers[-1] == 429
    for _ in range(3):  # a wrong token every 15 minutes keeps the address locked for them...
        clock.now += 900
        c.get("/api/queues", headers=wrong)
        assert c.get("/api/queues", headers=wrong).status_code == 429
        # ...never for the right one
        assert c.get("/metrics", headers=AUTH).status_code == 200
        assert c.get("/api/queues", headers=AUTH).status_code == 200
        assert _login(c).status_code == 303


def test_spaced_out_failures_never_crash_the_throttle() -> None:
    """2.0 ** (count - 6) overflowed a float after about 1,030 failures (each one counted once
    its lock ran out)."""
    clock = FakeClock()
    throttle = Throttle(clock)
    for n in range(1, 2001):
        count, lock = throttle.failed("10.0.0.1")
        assert count == n
        clock.now += lock + 0.5
    assert lock == Throttle.MAX_LOCK
    assert throttle.failed("10.0.0.1") == (2001, Throttle.MAX_LOCK)
    assert throttle.wait("10.0.0.1") == Throttle.MAX_LOCK


def test_an_address_quiet_for_an_hour_starts_afresh() -> None:
    clock = FakeClock()
    throttle = Throttle(clock)
    for _ in range(Throttle.FREE + 3):
        throttle.failed("10.0.0.1")
    clock.now += Throttle.FORGET_AFTER
    assert throttle.failed("10.0.0.1") == (1, 0.0)


def test_the_throttle_is_per_address() -> None:
    clock = FakeClock()
    throttle = Throttle(clock)
    for n in range(1, 12):
        count, lock = throttle.failed("10.0.0.1")
        assert count == n
        assert lock == (0 if n <= Throttle.FREE else 2.0 ** (n - Throttle.FREE - 1))
    assert throttle.wait("10.0.0.1") == 32.0
    assert throttle.wait("10.0.0.2") == 0  # another address is not slowed
    for _ in range(40):
        throttle.failed("10.0.0.3")
    assert throttle.wait("10.0.0.3") == Throttle.MAX_LOCK


# --------------------------------------------------------------------------- behind a TLS proxy


def _cookie_line(app: Any, client_ip: str = "10.1.2.3") -> str:
    response = _login(Asgi(app, client_ip))
    assert response.status_code == 303
    return str(response.headers["set-cookie"])


def test_the_cookie_is_secure_behind_a_trusted_tls_proxy(app: Starlette) -> None:
    # What `dispatcher web --trusted-proxies 10.1.2.3` runs: uvicorn's proxy headers.
    trusted = ProxyHeadersMiddleware(app, trusted_hosts="10.1.2.3")

    class Forwarded:
        def __init__(self, inner: Any, proto: str) -> None:
            self.inner, self.proto = inner, proto

        async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
            scope = {**scope, "headers": [*scope["headers"], (b"x-forwarded-proto", self.proto)]}
            await self.inner(scope, receive, send)

    assert "secure" in _cookie_line(Forwarded(trusted, b"https")).lower().split("; ")
    assert "secure" not in _cookie_line(Forwarded(trusted, b"http")).lower().split("; ")
    # The same header from an address not listed is not believed.
    untrusted = ProxyHeadersMiddleware(app, trusted_hosts="10.9.9.9")
    assert "secure" not in _cookie_line(Forwarded(untrusted, b"https")).lower().split("; ")


@pytest.mark.parametrize(
    ("env", "args", "proxy_headers", "allowed"),
    [
        ({}, [], False, ""),  # uvicorn's default (believe 127.0.0.1) is off
        ({"FORWARDED_ALLOW_IPS": "*"}, [], False, ""),  # and so is its variable
        ({"DISPATCHER_TRUSTED_PROXIES": "10.0.0.5, 10.1.0.0/16"}, [], True, "10.0.0.5,10.1.0.0/16"),
        ({}, ["--trusted-proxies", "10.0.0.0/8"], True, "10.0.0.0/8"),
        ({}, ["--forwarded-allow-ips", "::1"], True, "::1"),  # the old name
    ],
)
def test_dispatcher_web_trusts_only_the_proxies_it_is_told(
    monkeypatch: pytest.MonkeyPatch,
    env: dict[str, str],
    args: list[str],
    proxy_headers: bool,
    allowed: str,
) -> None:
    from click.testing import CliRunner

    from dispatcher.cli import main
    from dispatcher.config import get_settings

    seen: dict[str, Any] = {}
    monkeypatch.setattr("uvicorn.run", lambda app, **kw: seen.update(kw))
    monkeypatch.setenv("DISPATCHER_ADMIN_TOKEN", TOKEN)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    get_settings.cache_clear()
    try:
        result = CliRunner().invoke(main, ["web", *args])
    finally:
        get_settings.cache_clear()
    assert result.exit_code == 0, result.output
    assert (seen["proxy_headers"], seen["forwarded_allow_ips"]) == (proxy_headers, allowed)


@pytest.mark.parametrize(
    ("env", "args"),
    [({"DISPATCHER_TRUSTED_PROXIES": "*"}, []), ({}, ["--trusted-proxies", "proxy.local"])],
)
def test_a_trusted_proxy_must_be_an_address(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], args: list[str]
) -> None:
    from click.testing import CliRunner

    from dispatcher.cli import main
    from dispatcher.config import get_settings

    monkeypatch.setattr("uvicorn.run", lambda app, **kw: None)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    get_settings.cache_clear()
    try:
        result = CliRunner().invoke(main, ["web", *args])
    finally:
        get_settings.cache_clear()
    assert result.exit_code in (2, 3), result.output
    assert "TRUSTED_PROXIES" in result.output.upper().replace("-", "_")


def _wrong_tokens_through(app: Starlette, trusted: tuple[str, ...]) -> list[int]:
    """Wrong tokens, each with a new X-Forwarded-For, to uvicorn run as `dispatcher web` runs
    it (from 127.0.0.1, where a local proxy would be)."""
    import threading

    import uvicorn

    from dispatcher.config import Settings
    from dispatcher.web.app import uvicorn_options

    options = uvicorn_options(Settings(trusted_proxies=trusted))
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=0, lifespan="off", **options)
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        for _ in range(400):
            if server.started:
                break
            threading.Event().wait(0.05)
        port = server.servers[0].sockets[0].getsockname()[1]
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as c:
            return [
                c.get(
                    "/api/queues",
                    headers={"Authorization": "Bearer wrong", "X-Forwarded-For": f"10.9.0.{n}"},
                ).status_code
                for n in range(Throttle.FREE + 5)
            ]
    finally:
        server.should_exit = True
        thread.join(10)


def test_a_forged_x_forwarded_for_is_not_believed(app: Starlette) -> None:
    answers = _wrong_tokens_through(app, ())
    assert answers[-1] == 429  # one address, 127.0.0.1, however many headers it forged


def test_x_forwarded_for_is_believed_from_a_trusted_proxy(app: Starlette) -> None:
    assert set(_wrong_tokens_through(app, ("127.0.0.1",))) == {401}  # each a client of its own


# --------------------------------------------------------------------------- email masking

SEEN = [
    ("anna@example.com", "a***@example.com"),
    ("user@localhost", "u***@localhost"),
    ("user@[127.0.0.1]", "u***@[127.0.0.1]"),
    ("first(comment)@example.com", "f***@example.com"),
    ('"quoted local"@example.com', '"***@example.com'),
    ('"a@b"@example.com', '"***@example.com'),
    ("o'brien@example.com", "o***@example.com"),
    ("no-at-sign", "n***"),
]


@pytest.mark.parametrize(("value", "masked"), SEEN)
def test_every_kind_of_address_is_masked_by_the_one_rule(value: str, masked: str) -> None:
    assert mask_email(value) == masked
    body = json.dumps({"customEventId": 1, "customerEmail": value})
    assert json.loads(mask_emails(body) or "")["customerEmail"] == masked


def _allowed(value: str) -> str:
    """The rule: the first character, ***, and what follows the last @ after it."""
    _local, at, domain = value[1:].rpartition("@")
    return value[0] + "***" + ("@" + domain if at else "")


@given(st.text(min_size=1, max_size=80))
def test_the_mask_of_any_email_value_reveals_no_more_than_the_rule(value: str) -> None:
    masked = mask_email(value)
    assert masked == _allowed(value)
    # Of the local part, only its first character shows: whatever else it holds is gone.
    domain = value[1:].rpartition("@")[2] if "@" in value[1:] else ""
    assert len(masked) == 4 + (len(domain) + 1 if "@" in value[1:] else 0)
    assert masked.startswith(value[0] + "***")


@given(st.text(min_size=1, max_size=60), st.sampled_from(["customerEmail", "email", "EMAIL"]))
def test_every_value_of_an_email_field_in_a_body_is_masked(value: str, key: str) -> None:
    body = json.dumps({"customEventId": 7, key: value, "customerEmailMd5": "a" * 32})
    shown = json.loads(mask_emails(body) or "")
    assert shown[key] == _allowed(value)
    assert shown["customEventId"] == 7 and shown["customerEmailMd5"] == "a" * 32


def test_addresses_in_free_text_are_masked() -> None:
    text = "customerEmail: no such customer o'brien@example.com, nor user@[127.0.0.1]"
    shown = mask_emails(text) or ""
    assert "brien" not in shown and "user@" not in shown
    assert "o***@example.com" in shown and "u***@[127.0.0.1]" in shown


# --------------------------------------------------------------------------- history by cursor


def test_the_history_page_pages_by_cursor(client: httpx.Client, engine: Any) -> None:
    import re

    from dispatcher import CustomEvent, enqueue_many

    ids = [int(i) for i in enqueue_many([CustomEvent(9, customer_id=n) for n in range(120)])]
    first = client.get("/jobs", headers=AUTH)
    shown = [int(i) for i in re.findall(r'id="job-(\d+)"', first.text)]
    assert shown == sorted(ids, reverse=True)[:50]
    older = re.search(r'href="([^"]*)" id="older"', first.text)
    assert older is not None and f"before={shown[-1]}" in older[1]
    second = client.get(older[1].replace("&amp;", "&"), headers=AUTH)
    assert [int(i) for i in re.findall(r'id="job-(\d+)"', second.text)] == sorted(
        ids, reverse=True
    )[50:100]
    assert 'id="newer"' in second.text  # back to the newest
    # An offset is not a thing any more: page=20 shows the newest, not a deep scan.
    assert re.findall(r'id="job-(\d+)"', client.get("/jobs?page=20", headers=AUTH).text)[0] == str(
        max(ids)
    )
