"""The overview page without a browser: each queue's state cell shows a pause and the circuit
breaker's state (since when, the next probe, why), as served over HTTP on loopback."""

from __future__ import annotations

import html
import re
from datetime import timedelta

import httpx
import sqlalchemy as sa

from dispatcher.db import utcnow
from dispatcher.outbox import pause

from .conftest import AUTH, OUTAGE, Outbox, set_circuit


def state_cells(client: httpx.Client) -> dict[str, str]:
    """Queue name -> the text of its row's last cell (tags and the Pause form dropped,
    whitespace collapsed)."""
    page = client.get("/", headers=AUTH)
    assert page.status_code == 200
    rows = re.findall(r'<tr id="queue-([^"]+)">(.*?)</tr>', page.text, re.DOTALL)
    cells = {}
    for name, row in rows:
        last = row.rsplit('<td class="text">', 1)[1]
        last = re.sub(r'<form [^>]*class="inline pause".*?</form>', "", last, flags=re.DOTALL)
        cells[name] = " ".join(html.unescape(re.sub(r"<[^>]+>", " ", last)).split())
    return cells


def test_a_closed_circuit_shows_nothing_new(client: httpx.Client, outbox: Outbox) -> None:
    cells = state_cells(client)
    assert cells["default"] == "running"
    assert cells["eu-shop"].startswith("paused since ") and "circuit" not in cells["eu-shop"]
    page = client.get("/", headers=AUTH).text
    assert 'id="circuit-' not in page and 'id="circuit-help"' not in page


def test_open_and_half_open_circuits(
    client: httpx.Client, outbox: Outbox, engine: sa.Engine
) -> None:
    now = utcnow().replace(microsecond=0)
    set_circuit(
        engine,
        "default",
        "open",
        since=now - timedelta(minutes=3),
        retry_at=now + timedelta(seconds=15),
        probes=3,
    )
    set_circuit(engine, "eu-shop", "half_open", since=now, reason="Timeout: no answer in 10 s")
    set_circuit(engine, "idle", "open", since=now, reason=None, retry_at=None)
    with engine.begin() as conn:
        pause(conn, "idle", "key rotation", now)  # paused by an operator too: both are shown

    stamp = lambda t: t.strftime("%Y-%m-%d %H:%M:%S UTC")  # noqa: E731
    cells = state_cells(client)
    assert cells["default"] == (
        f"circuit open since {stamp(now - timedelta(minutes=3))}, next probe "
        f"{stamp(now + timedelta(seconds=15))} (3 failed probes): {OUTAGE}"
    )
    assert "running" not in cells["default"], "an open circuit sends nothing but probes"
    assert cells["eu-shop"].startswith("paused since ")
    assert cells["eu-shop"].endswith(
        f"Resume circuit half-open since {stamp(now)}, a probe is in flight: "
        "Timeout: no answer in 10 s"
    )
    assert cells["idle"].startswith(f"paused since {stamp(now)}: key rotation Resume")
    assert cells["idle"].endswith(f"circuit open since {stamp(now)}: no reason recorded")

    page = client.get("/", headers=AUTH).text
    assert 'id="circuit-default"' in page and 'class="circuit-open"' in page
    assert 'class="circuit-half_open"' in page
    assert 'id="circuit-help"' in page and "dead-letters none of them" in page

    # A good probe closes it again: back to running.
    set_circuit(engine, "default", "closed", since=utcnow(), reason=None)
    assert state_cells(client)["default"] == "running"


def test_the_reason_is_escaped(client: httpx.Client, outbox: Outbox, engine: sa.Engine) -> None:
    set_circuit(engine, "default", "open", since=utcnow(), reason="<script>alert(1)</script>")
    page = client.get("/", headers=AUTH).text
    assert "<script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
