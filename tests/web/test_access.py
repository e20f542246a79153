"""Who may use the site: the token (bearer or login cookie), CSRF on cookie POSTs, loopback only
without a token. Plain HTTP requests to the site served on loopback (no browser)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import httpx
import pytest
import sqlalchemy as sa
from click.testing import CliRunner
from starlette.applications import Starlette

from dispatcher.cli import main
from dispatcher.config import Secret, Settings
from dispatcher.web import BindError, check_bind, create_app, mask_emails
from dispatcher.web.access import SESSION_COOKIE, Gate

from .conftest import AUTH, TOKEN, Outbox

EVERY_GET = ["/", "/jobs", "/jobs/1", "/dead", "/dead/replay", "/metrics"]
EVERY_API_GET = ["/api/queues", "/api/jobs", "/api/jobs/1", "/api/openapi.json", "/metrics"]
EVERY_POST = ["/queues/eu-shop/resume", "/dead/replay", "/logout"]
EVERY_API_POST = ["/api/queues/eu-shop/resume", "/api/dead/replay"]


def log_in(client: httpx.Client, token: str = TOKEN) -> str:
    """Log in through the form; returns the CSRF token of the pages."""
    response = client.post("/login", data={"token": token, "next": "/dead"})
    assert response.status_code == 303 and response.headers["location"] == "/dead"
    page = client.get("/").text
    return page.split('name="csrf" value="', 1)[1].split('"', 1)[0]


def test_no_token_is_refused(client: httpx.Client, outbox: Outbox) -> None:
    for path in EVERY_API_GET:
        response = client.get(path)
        assert response.status_code == 401, path
        assert response.headers["www-authenticate"] == "Bearer"
        assert response.json()["error"] == "a valid admin token is required"
    for path in EVERY_GET[:-1]:  # pages send the browser to the login form
        response = client.get(path, params={"queue": "eu-shop"})
        assert response.status_code == 303, path
        assert response.headers["location"].startswith("/login?next=%2F")
    for path in EVERY_POST + EVERY_API_POST:
        assert client.post(path).status_code == 401, path


def test_wrong_token_is_refused(
    client: httpx.Client, outbox: Outbox, signalled: list, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("dispatcher.web.access.Throttle.FREE", 1000)  # test_hardening: throttle
    for wrong in ("Bearer nope", f"Bearer {TOKEN}x", f"Bearer {TOKEN[:-1]}", "Bearer", TOKEN):
        for path in EVERY_API_GET:
            assert client.get(path, headers={"Authorization": wrong}).status_code == 401, path
        for path in EVERY_API_POST:
            assert client.post(path, headers={"Authorization": wrong}).status_code == 401
    response = client.post("/login", data={"token": "not-the-token", "next": "/"})
    assert response.status_code == 401 and "That is not the token." in response.text
    assert SESSION_COOKIE not in response.cookies
    client.cookies.set(SESSION_COOKIE, "9999999999.forged")
    assert client.get("/api/queues").status_code == 401
    assert signalled == []


def test_bearer_token_opens_everything(client: httpx.Client, outbox: Outbox) -> None:
    for path in [*EVERY_GET, *EVERY_API_GET]:
        assert client.get(path, headers=AUTH).status_code == 200, path
    assert client.get("/api/jobs/424242", headers=AUTH).status_code == 404
    assert client.get("/jobs/424242", headers=AUTH).status_code == 404


def test_login_sets_an_http_only_cookie_and_logout_clears_it(
    client: httpx.Client, outbox: Outbox
) -> None:
    response = client.post("/login", data={"token": TOKEN, "next": "/jobs?queue=eu-shop"})
    assert response.status_code == 303 and response.headers["location"] == "/jobs?queue=eu-shop"
    cookie = response.headers["set-cookie"]
    assert cookie.startswith(f"{SESSION_COOKIE}=") and TOKEN not in cookie
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/" in cookie
    assert client.get("/jobs?queue=eu-shop").status_code == 200
    assert client.get("/api/queues").status_code == 200
    csrf = client.get("/").text.split('name="csrf" value="', 1)[1].split('"', 1)[0]
    response = client.post("/logout", data={"csrf": csrf})
    assert response.status_code == 303
    assert 'dispatcher_session=""' in response.headers["set-cookie"]
    client.cookies.clear()
    assert client.get("/").status_code == 303


def test_login_redirects_only_within_the_site(client: httpx.Client) -> None:
    for target in ("//evil.example/", "https://evil.example/", "/\\evil.example", "evil"):
        response = client.post("/login", data={"token": TOKEN, "next": target})
        assert response.headers["location"] == "/", target


def test_posts_without_the_csrf_token_are_refused(
    client: httpx.Client, outbox: Outbox, signalled: list, engine: sa.Engine
) -> None:
    csrf = log_in(client)
    with httpx.Client(base_url=client.base_url) as other:
        not_ours = log_in(other)  # valid, but for another session
    assert not_ours != csrf
    for path, data in (
        ("/queues/eu-shop/resume", {}),
        ("/dead/replay", {"expected": "5"}),
        ("/logout", {}),
    ):
        assert client.post(path, data=data).status_code == 403, path
        assert client.post(path, data={**data, "csrf": "0" * 64}).status_code == 403, path
        assert client.post(path, data={**data, "csrf": csrf[:-1]}).status_code == 403, path
        assert client.post(path, data={**data, "csrf": not_ours}).status_code == 403, path
    for path in EVERY_API_POST:  # a cookie session calling the API needs the header
        assert client.post(path, json={}).status_code == 403, path
        assert client.post(path, json={}, headers={"X-CSRF-Token": "x"}).status_code == 403
    assert signalled == [], "nothing was resumed or replayed"
    assert client.get("/api/queues").json()["queues"]["eu-shop"]["paused"] is True

    # With it, they work; bearer calls need none (a browser never sends that header itself).
    response = client.post("/queues/eu-shop/resume", data={"csrf": csrf})
    assert response.status_code == 303 and signalled == [("eu-shop",)]
    dry_run = {"dry_run": True}
    response = client.post("/api/dead/replay", json=dry_run, headers={"X-CSRF-Token": csrf})
    assert response.json() == {"count": 5, "queues": ["default"], "dry_run": True}
    client.cookies.clear()
    assert client.post("/api/dead/replay", json=dry_run, headers=AUTH).status_code == 200


def test_expired_or_tampered_sessions_are_refused() -> None:
    now = [1_000_000.0]
    gate = Gate(Secret(TOKEN), clock=lambda: now[0])
    cookie = gate.new_session()
    assert gate.session_ok(cookie)
    expires, nonce, signature = cookie.split(".")
    assert not gate.session_ok(f"{int(expires) + 1}.{nonce}.{signature}")
    assert not gate.session_ok(f"{expires}.{nonce}.{'0' * len(signature)}")
    assert not gate.session_ok(f"{expires}.{signature}")
    assert not gate.session_ok("") and not gate.session_ok("٣.x") and not gate.session_ok(None)
    assert not Gate(Secret(TOKEN + "rotated")).session_ok(cookie), "a new token logs everyone out"
    now[0] += 13 * 3600
    assert not gate.session_ok(cookie)


def test_without_a_token_only_loopback(
    settings: Settings, engine: sa.Engine, outbox: Outbox, serve: Callable[[Starlette], str]
) -> None:
    check_bind("127.0.0.1", None)
    check_bind("localhost", None)
    check_bind("::1", None)
    check_bind("[::1]", None)
    for host in ("0.0.0.0", "::", "192.168.1.10", "example.com", ""):
        with pytest.raises(BindError, match="DISPATCHER_ADMIN_TOKEN"):
            check_bind(host, None)
        check_bind(host, Secret(TOKEN))
    url = serve(create_app(dataclasses.replace(settings, admin_token=None), engine=engine))
    with httpx.Client(base_url=url) as local:
        assert local.get("/api/queues").status_code == 200
        assert local.get("/login").status_code == 303
        # A page on another origin whose name resolves to 127.0.0.1 (DNS rebinding): refused.
        assert local.get("/api/queues", headers={"Host": "evil.example"}).status_code == 401
        # CSRF still guards the loopback's open door.
        assert local.post("/queues/eu-shop/resume").status_code == 403


def test_cli_refuses_to_bind_publicly_without_a_token(env: pytest.MonkeyPatch) -> None:
    result = CliRunner().invoke(main, ["web", "--host", "0.0.0.0"])
    assert result.exit_code == 3  # configuration, as docs/operations/errors.md's table says
    assert "refusing to serve on '0.0.0.0' without DISPATCHER_ADMIN_TOKEN" in result.output
    result = CliRunner().invoke(main, ["metrics", "--host", "0.0.0.0"])
    assert result.exit_code == 3 and "DISPATCHER_ADMIN_TOKEN" in result.output


def test_emails_are_masked_unless_revealed(client: httpx.Client, outbox: Outbox) -> None:
    assert mask_emails('{"customerEmail":"Anna.Smith@Example.com"}') == (
        '{"customerEmail":"A***@Example.com"}'
    )
    assert mask_emails("no customer ghost@example.com.") == "no customer g***@example.com."
    masked = client.get(f"/api/jobs/{outbox.anna}", headers=AUTH).json()
    assert "Anna.Smith" not in masked["payload"] and "A***@Example.com" in masked["payload"]
    shown = client.get(f"/api/jobs/{outbox.anna}", params={"reveal": "true"}, headers=AUTH).json()
    assert shown["payload"] == '{"customEventId":101,"customerEmail":"Anna.Smith@Example.com"}'
    page = client.get(f"/jobs/{outbox.ghost}", headers=AUTH).text
    assert "ghost@example.com" not in page and "g***@example.com" in page
    assert "ghost@example.com" in client.get(f"/jobs/{outbox.ghost}?reveal=1", headers=AUTH).text
    listing = client.get("/api/jobs", params={"status": "dead"}, headers=AUTH).text
    assert "ghost@example.com" not in listing and "g***@example.com" in listing


def test_security_headers(client: httpx.Client) -> None:
    response = client.get("/login")
    assert response.headers["x-frame-options"] == "DENY"
    assert "frame-ancestors 'none'" in response.headers["content-security-policy"]
    assert response.headers["cache-control"] == "no-store"
