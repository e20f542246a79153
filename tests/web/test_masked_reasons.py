"""A pause's or an open circuit's reason holds the API's words, which may name a customer: every
output that shows it masks them (the pages, /api/queues, `dispatcher stats`, the alert's log line
and webhook body), and Prometheus gets a bounded cause, never the reason's text."""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from click.testing import CliRunner

from dispatcher.alerts import notify_circuit_open, notify_pause
from dispatcher.cli import main
from dispatcher.db import utcnow
from dispatcher.outbox import pause

from .conftest import AUTH, scrape, set_circuit

# What an API may echo: an email (one with an escaped '+'), a phone number, a customer id.
PERSONAL = (
    "401 Unauthorized: key revoked for anna\\u002b1@example.com, call +48 601 234 567 or "
    "customer 123456789; or anna%2Bshop%40example.com"
)
OUTAGE = "503 Service Unavailable: ask maria.garcia@example.com (20 of 20 answers were outages)"
IDENTIFIERS = ("anna", "maria", "601", "234 567", "123456789", "%40", "\\u002b")


def leaks(text: str) -> list[str]:
    return [s for s in IDENTIFIERS if s in text]


@pytest.fixture
def reasons(engine: sa.Engine) -> None:
    now = utcnow()
    with engine.begin() as conn:
        pause(conn, "eu-shop", PERSONAL, now)
    set_circuit(engine, "default", "open", since=now, reason=OUTAGE, retry_at=now + timedelta(1))


@pytest.mark.usefixtures("reasons")
def test_pages_and_the_api_mask_the_reasons(client: httpx.Client) -> None:
    queues = client.get("/api/queues", headers=AUTH).json()["queues"]
    assert queues["eu-shop"]["pause_reason"] == (
        "401 Unauthorized: key revoked for <email>, call <number> or customer <number>; or <email>"
    )
    assert queues["default"]["circuit_reason"].startswith("503 Service Unavailable: ask <email>")
    for page in ("/api/queues", "/", "/queues/eu-shop", "/queues/default"):
        answer = client.get(page, headers=AUTH)
        assert answer.status_code == 200, page
        assert "&lt;email&gt;" in answer.text or "<email>" in answer.text, page
        assert leaks(answer.text) == [], page


@pytest.mark.usefixtures("reasons")
def test_metrics_carry_a_cause_not_the_reason(client: httpx.Client) -> None:
    text = client.get("/metrics", headers=AUTH).text
    assert leaks(text) == [] and "reason=" not in text
    samples = scrape(text)
    labels = {
        name: dict(labels)
        for (name, labels), _ in samples.items()
        if name in ("dispatcher_queue_pause_info", "dispatcher_queue_circuit_info")
    }
    assert labels == {
        "dispatcher_queue_pause_info": {"queue": "eu-shop", "cause": "unauthorized"},
        "dispatcher_queue_circuit_info": {"queue": "default", "state": "open", "cause": "outage"},
    }


@pytest.mark.usefixtures("reasons")
def test_stats_masks_the_reasons(db_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DISPATCHER_DATABASE_URL", db_url)
    for args in (["stats"], ["stats", "--json"]):
        done = CliRunner().invoke(main, args)
        assert done.exit_code == 0, done.output
        assert "<email>" in done.output and leaks(done.output) == [], args


class Poster:
    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []

    def __call__(self, url: str, *, json: dict[str, Any], timeout: float) -> httpx.Response:
        self.bodies.append(json)
        return httpx.Response(200, request=httpx.Request("POST", url))


def test_alerts_mask_the_reasons(caplog: pytest.LogCaptureFixture) -> None:
    post = Poster()
    with caplog.at_level(logging.INFO, logger="dispatcher.alerts"):
        notify_pause("eu-shop", 401, PERSONAL, webhook_url="https://hook.example/x", post=post)
        notify_circuit_open("default", OUTAGE, webhook_url="https://hook.example/x", post=post)
    assert len(post.bodies) == 2
    lines = [f"{r.getMessage()} {r.detail}" for r in caplog.records]  # type: ignore[attr-defined]
    shown = [*lines, *map(str, post.bodies)]
    assert [leaks(text) for text in shown] == [[]] * len(shown)
    assert post.bodies[0]["detail"].startswith("401 Unauthorized: key revoked for <email>")
