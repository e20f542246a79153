"""``GET /healthz`` and ``GET /readyz`` on ``dispatcher web`` and ``dispatcher metrics``: open
without the token (and to nothing else), a body naming each component's state and nothing more,
each state of readiness, the check kept off the event loop and cached."""

from __future__ import annotations

import dataclasses
import re
import threading
import time
from collections.abc import Callable
from pathlib import Path

import anyio
import httpx
import pytest
import sqlalchemy as sa
from starlette.applications import Starlette

from dispatcher.config import Secret, Settings
from dispatcher.migrate import HEAD, VERSION_TABLE
from dispatcher.web import create_app
from dispatcher.web.access import PROBES
from dispatcher.web.probes import Readiness

from .conftest import TOKEN, Outbox

COMPONENTS = {"ready", "database", "schema", "broker"}
UNREACHABLE_BROKER = "redis://127.0.0.1:1/0"  # nothing listens on port 1: refused at once


@pytest.fixture
def probe(
    settings: Settings, engine: sa.Engine, serve: Callable[[Starlette], str]
) -> Callable[..., httpx.Response]:
    """GET a path of a freshly served site (token set) whose settings are changed by ``**given``."""

    def get(path: str, *, pages_and_api: bool = True, **given: object) -> httpx.Response:
        given = {"admin_token": Secret(TOKEN), "broker_url": "memory://", **given}
        changed = dataclasses.replace(settings, **given)  # type: ignore[arg-type]
        url = serve(create_app(changed, engine=engine, pages_and_api=pages_and_api))
        return httpx.get(url + path, timeout=30)

    return get


def test_healthz_is_open_and_says_only_ok(probe: Callable[..., httpx.Response]) -> None:
    for pages_and_api in (True, False):  # dispatcher web, dispatcher metrics
        response = probe("/healthz", pages_and_api=pages_and_api)
        assert response.status_code == 200 and response.json() == {"status": "ok"}
        assert response.headers["cache-control"] == "no-store"


def test_ready(probe: Callable[..., httpx.Response], outbox: Outbox) -> None:
    for pages_and_api in (True, False):
        response = probe("/readyz", pages_and_api=pages_and_api)
        assert response.status_code == 200, response.text
        assert response.json() == {"ready": True, "database": "ok", "schema": "ok", "broker": "ok"}
        assert "eu-shop" not in response.text and "default" not in response.text


def test_database_unreachable(probe: Callable[..., httpx.Response], tmp_path: Path) -> None:
    response = probe("/readyz", database_url=f"sqlite:///{tmp_path}/no/such/folder/outbox.db")
    assert response.status_code == 503
    assert response.json() == {
        "ready": False, "database": "unreachable", "schema": "unknown", "broker": "ok",
    }  # fmt: skip


def test_database_server_unreachable(probe: Callable[..., httpx.Response]) -> None:
    response = probe("/readyz", database_url="postgresql://nobody@127.0.0.1:1/outbox")
    assert response.status_code == 503 and response.json()["database"] == "unreachable"
    assert "127.0.0.1" not in response.text and "nobody" not in response.text, "no URL shown"


def test_schema_missing(probe: Callable[..., httpx.Response], tmp_path: Path) -> None:
    empty = tmp_path / "empty.db"
    sa.create_engine(f"sqlite:///{empty}").connect().close()  # a database without our tables
    response = probe("/readyz", database_url=f"sqlite:///{empty}")
    assert response.status_code == 503
    body = response.json()
    assert body["ready"] is False and body["database"] == "ok" and body["broker"] == "ok"
    assert body["schema"] == "missing: run dispatcher migrate"


def test_schema_behind(probe: Callable[..., httpx.Response], engine: sa.Engine) -> None:
    with engine.begin() as conn:
        conn.exec_driver_sql(f"UPDATE {VERSION_TABLE} SET version_num = '0001'")
    try:
        response = probe("/readyz")
    finally:
        with engine.begin() as conn:
            conn.exec_driver_sql(f"UPDATE {VERSION_TABLE} SET version_num = '{HEAD}'")
    assert response.status_code == 503
    body = response.json()
    assert body["ready"] is False and body["database"] == "ok"
    assert body["schema"] == f"at 0001, not {HEAD}: run dispatcher migrate"


def test_broker_unreachable(probe: Callable[..., httpx.Response]) -> None:
    response = probe("/readyz", broker_url=UNREACHABLE_BROKER)
    assert response.status_code == 503
    assert response.json() == {
        "ready": False, "database": "ok", "schema": "ok", "broker": "unreachable",
    }  # fmt: skip


def test_the_probes_open_nothing_else(app: Starlette, client: httpx.Client, outbox: Outbox) -> None:
    """Every other route still wants the token; the probes answer without it, also when a wrong
    one is sent, and say nothing but component states."""
    open_paths = {"/login", *PROBES}
    for route in app.routes:
        path = re.sub(r"\{[^}]+\}", "1", route.path)  # type: ignore[attr-defined]
        for method in route.methods or ():  # type: ignore[attr-defined]
            if method == "HEAD":
                continue
            response = client.request(method, path)
            if route.path in open_paths:  # type: ignore[attr-defined]
                continue
            assert response.status_code in (303, 401), (method, path)
            if response.status_code == 303:
                assert response.headers["location"].startswith("/login?next="), path
    for path in PROBES:
        for headers in ({}, {"Authorization": "Bearer wrong"}):
            response = client.get(path, headers=headers)
            assert response.status_code in (200, 503), path
            assert set(response.json()) <= COMPONENTS | {"status"}
            assert "eu-shop" not in response.text and "paused" not in response.text
        assert client.post(path).status_code == 405


def test_without_a_token_the_probes_keep_the_host_rule(
    settings: Settings, engine: sa.Engine, serve: Callable[[Starlette], str]
) -> None:
    local = dataclasses.replace(settings, admin_token=None, broker_url="memory://")
    url = serve(create_app(local, engine=engine))
    assert httpx.get(url + "/healthz").json() == {"status": "ok"}
    assert httpx.get(url + "/readyz").status_code == 200
    for path in PROBES:  # DNS rebinding: a page elsewhere must not read even this
        assert httpx.get(url + path, headers={"Host": "evil.example"}).status_code == 401


def test_readiness_is_cached_and_checked_once_at_a_time() -> None:
    calls: list[float] = []
    now = [100.0]

    def check(database_url: str, broker_url: str) -> dict[str, str]:
        assert threading.current_thread() is not threading.main_thread(), "off the event loop"
        calls.append(now[0])
        time.sleep(0.2)  # a slow component
        return {"database": "ok", "schema": "ok", "broker": "unreachable" if now[0] > 101 else "ok"}

    readiness = Readiness("sqlite://", "memory://", clock=lambda: now[0], check=check)

    async def storm() -> list[dict[str, str]]:
        answers: list[dict[str, str]] = []

        async def one() -> None:
            answers.append(await readiness.components())

        async with anyio.create_task_group() as tg:
            for _ in range(50):
                tg.start_soon(one)
        return answers

    answers = anyio.run(storm)
    assert len(calls) == 1 and all(a["broker"] == "ok" for a in answers)
    now[0] += 1.9
    assert anyio.run(readiness.components)["broker"] == "ok" and len(calls) == 1
    now[0] += 0.2  # past the two seconds: checked again
    assert anyio.run(readiness.components)["broker"] == "unreachable" and len(calls) == 2
