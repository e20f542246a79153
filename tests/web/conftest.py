"""Fixtures for the admin page, its API and the metrics: an outbox that has really been through
delivery, an app over it, a live server on loopback and (where installed) headless Chromium."""

from __future__ import annotations

import dataclasses
import os
import shutil
import threading
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa
import uvicorn
from starlette.applications import Starlette

from dispatcher import CustomEvent, DataField, SegmentEvent, enqueue, enqueue_many
from dispatcher.config import Secret, Settings
from dispatcher.delivery import Deliverer
from dispatcher.policy import RetryPolicy
from dispatcher.sandbox import Reply, Sandbox
from dispatcher.schema import queues
from dispatcher.web import create_app
from dispatcher.web.metrics import Metrics
from tests.conftest import require
from tests.support import settle

TOKEN = "web-test-token-0123456789"
PROBLEM_400 = {
    "title": "One or more validation errors occurred.",
    "status": 400,
    "detail": "Customer not found",
    "errors": ["customerEmail: no such customer ghost@example.com"],
}


@dataclasses.dataclass
class Outbox:
    """Job ids by what happened to them."""

    anna: str  # event 101, delivered
    ghost: str  # event 102, 400 -> dead
    outage: list[str]  # event 103, 503 twice -> dead (max attempts 2)
    other_dead: str  # event 104, 400 -> dead
    flaky: str  # event 105 (maria.garcia@…, data fields), 500 then 201 -> delivered
    segment: str  # event 106, delivered
    eu: list[str]  # queue eu-shop: its key was revoked (401), so the queue paused; pending


@pytest.fixture
def signalled(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, ...]]:
    """Queues the site signalled to workers (instead of publishing to the broker)."""
    calls: list[tuple[str, ...]] = []
    monkeypatch.setattr(
        "dispatcher.producer.signal_workers", lambda qs: calls.append(tuple(sorted(qs)))
    )
    return calls


@pytest.fixture
def deliverer(settings: Settings, sandbox: Sandbox) -> Iterator[Deliverer]:
    """Delivers to the sandbox, quick retries (2 attempts); queue eu-shop has a revoked key."""
    d = Deliverer(
        dataclasses.replace(
            settings,
            api_keys={**settings.api_keys, "EU_SHOP": Secret("revoked-key")},
            base_url=sandbox.url,
            retry=RetryPolicy(base_seconds=0.01, max_seconds=0.05, max_attempts=2),
            http_timeout_seconds=5.0,
        )
    )
    yield d
    d.close()


@pytest.fixture
def outbox(engine: sa.Engine, sandbox: Sandbox, deliverer: Deliverer) -> Outbox:
    sandbox.script(102, Reply(400, PROBLEM_400))
    sandbox.script(103, *[Reply(503)] * 6)
    sandbox.script(104, Reply(400, PROBLEM_400))
    sandbox.script(105, Reply(500))
    order = [DataField("total", "Money", "129.90"), DataField("vip", "Boolean", True)]
    ids = [
        enqueue(CustomEvent(101, customer_email="Anna.Smith@Example.com")),
        enqueue(CustomEvent(102, customer_email="ghost@example.com")),
        *enqueue_many([CustomEvent(103, customer_id=n) for n in range(3)]),
        enqueue(CustomEvent(104, customer_id=9)),
        enqueue(CustomEvent(105, customer_email="maria.garcia@example.com", data_fields=order)),
        enqueue(SegmentEvent(106, [1, 5, 15])),
    ]
    settle(deliverer, engine)
    eu = enqueue_many(
        [CustomEvent(201, customer_email=f"eu{n}@example.com") for n in range(3)], queue="eu-shop"
    )
    deliverer.drain("eu-shop")  # 401: the queue pauses
    return Outbox(ids[0], ids[1], ids[2:5], ids[5], ids[6], ids[7], eu)


OUTAGE = "503 Service Unavailable: upstream down (17 of 20 recent answers were outages)"


def set_circuit(
    engine: sa.Engine,
    queue: str,
    circuit: str,
    *,
    since: datetime,
    reason: str | None = OUTAGE,
    retry_at: datetime | None = None,
    probes: int = 0,
) -> None:
    """Write a queue's circuit breaker columns as a worker would (the row is made if need be)."""
    values = {
        "circuit": circuit,
        "circuit_since": since,
        "circuit_reason": reason,
        "circuit_retry_at": retry_at,
        "circuit_probes": probes,
        "updated_at": since,
    }
    with engine.begin() as conn:
        if not conn.execute(queues.update().where(queues.c.name == queue).values(values)).rowcount:
            conn.execute(queues.insert().values(name=queue, **values))


@pytest.fixture
def app(settings: Settings, engine: sa.Engine) -> Starlette:
    # A broker /readyz can check without creating anything (the default is a SQLite file here).
    changed = dataclasses.replace(settings, admin_token=Secret(TOKEN), broker_url="memory://")
    return create_app(changed, engine=engine)


AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def serve() -> Iterator[Callable[[Starlette], str]]:
    """Serve an app with uvicorn on a free loopback port, in a thread; returns its URL."""
    running: list[tuple[uvicorn.Server, threading.Thread]] = []

    def start(app: Starlette) -> str:
        config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="off")
        server = uvicorn.Server(config)
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        running.append((server, thread))
        for _ in range(200):
            if server.started:
                port = server.servers[0].sockets[0].getsockname()[1]
                return f"http://127.0.0.1:{port}"
            threading.Event().wait(0.05)
        raise AssertionError("uvicorn did not start")

    yield start
    for server, thread in running:
        server.should_exit = True
        thread.join(10)


@pytest.fixture
def site(app: Starlette, serve: Callable[[Starlette], str]) -> str:
    """The URL of ``app`` (token ``TOKEN``) served on loopback."""
    return serve(app)


@pytest.fixture
def client(site: str) -> Iterator[httpx.Client]:
    """Not logged in: pass ``headers=AUTH``, or log in through the form."""
    with httpx.Client(base_url=site, follow_redirects=False, timeout=30) as c:
        yield c


@pytest.fixture(scope="session")
def chromium(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    """Headless Chromium from Debian's packages (``chromium``, ``chromium-driver``), driven by
    Selenium; never a downloaded browser. Skipped when absent, except under CI."""
    browser = shutil.which("chromium")
    driver_path = shutil.which("chromedriver")
    found = "yes" if browser and driver_path else None
    require(found, "Chromium (apt-get install chromium chromium-driver)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(browser)
    for arg in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--window-size=1280,860",
        f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}",
    ):
        options.add_argument(arg)
    driver = webdriver.Chrome(options=options, service=Service(executable_path=str(driver_path)))
    driver.implicitly_wait(0)
    yield driver
    driver.quit()


def screenshot_dir() -> Path | None:
    """Where to (re)write the screenshots of docs/operations/admin.md: ``SCREENSHOTS_DIR=docs``."""
    value = os.environ.get("SCREENSHOTS_DIR")
    return Path(value) if value else None


def log_in(client: httpx.Client) -> str:
    response = client.post("/login", data={"token": TOKEN, "next": "/"})
    assert response.status_code == 303
    return client.get("/").text.split('name="csrf" value="', 1)[1].split('"', 1)[0]


Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(source: Metrics | bytes | str) -> Samples:
    from prometheus_client.parser import text_string_to_metric_families

    text = source.render() if isinstance(source, Metrics) else source
    if isinstance(text, bytes):
        text = text.decode()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
