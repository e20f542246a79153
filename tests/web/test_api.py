"""The JSON API under /api: what it returns, and a property-based run of Schemathesis against its
OpenAPI description (no 5xx, every answer as described)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, assume, given, settings
from starlette.applications import Starlette

from dispatcher import admin
from dispatcher.config import Secret, Settings
from dispatcher.db import create_engine, utcnow
from dispatcher.web import create_app
from dispatcher.web.openapi import OPENAPI

from .conftest import AUTH, OUTAGE, TOKEN, Outbox, set_circuit

HOP_BY_HOP = {
    "connection", "content-length", "expect", "host", "keep-alive", "proxy-connection", "te",
    "trailer", "transfer-encoding", "upgrade",
}  # fmt: skip


def test_queues(client: httpx.Client, outbox: Outbox) -> None:
    queues = client.get("/api/queues", headers=AUTH).json()["queues"]
    assert set(queues) == {"default", "eu-shop"}
    assert queues["default"]["counts"] == {
        "pending": 0, "in_flight": 0, "retrying": 0, "delivered": 3, "dead": 5, "cancelled": 0,
        "scheduled": 0,
    }  # fmt: skip
    eu = queues["eu-shop"]
    assert eu["paused"] is True and eu["counts"]["pending"] == 3
    assert eu["pause_reason"] == "401 Unauthorized: The API key is missing or invalid."
    assert eu["oldest_due_age_seconds"] > 0


def _iso(value: datetime) -> str:
    return value.isoformat(timespec="microseconds").replace("+00:00", "Z")


def test_queues_show_the_circuit_breaker(
    client: httpx.Client, outbox: Outbox, engine: sa.Engine
) -> None:
    queues = client.get("/api/queues", headers=AUTH).json()["queues"]
    closed = {
        "circuit": "closed",
        "circuit_since": None,
        "circuit_reason": None,
        "circuit_next_probe_at": None,
        "circuit_failed_probes": 0,
    }
    for name in ("default", "eu-shop"):
        assert {k: v for k, v in queues[name].items() if k.startswith("circuit")} == closed

    now = utcnow()
    since, probe = now - timedelta(minutes=2), now + timedelta(seconds=8)
    set_circuit(engine, "default", "open", since=since, retry_at=probe, probes=2)
    set_circuit(engine, "idle", "half_open", since=now, retry_at=now, probes=4)
    response = client.get("/api/queues", headers=AUTH)
    queues = response.json()["queues"]
    assert {k: v for k, v in queues["default"].items() if k.startswith("circuit")} == {
        "circuit": "open",
        "circuit_since": _iso(since),
        "circuit_reason": OUTAGE,
        "circuit_next_probe_at": _iso(probe),
        "circuit_failed_probes": 2,
    }
    assert queues["default"]["paused"] is False and queues["default"]["counts"]["dead"] == 5
    idle = queues["idle"]  # a queue with a row and no jobs
    assert idle["circuit"] == "half_open" and idle["circuit_next_probe_at"] is None
    assert idle["circuit_failed_probes"] == 4 and idle["counts"] == dict.fromkeys(idle["counts"], 0)
    assert queues["eu-shop"]["circuit"] == "closed" and queues["eu-shop"]["paused"] is True

    # The answer is one the OpenAPI description allows.
    import schemathesis
    from schemathesis.specs.openapi.checks import response_schema_conformance

    schema = schemathesis.openapi.from_dict(client.get("/api/openapi.json", headers=AUTH).json())
    case = schema["/api/queues"]["GET"].Case()
    case.call_and_validate(
        base_url=str(client.base_url), headers=AUTH, checks=[response_schema_conformance]
    )
    # And the description says what the circuit states are.
    described = OPENAPI["components"]["schemas"]["QueueStats"]
    assert described["properties"]["circuit"]["enum"] == ["closed", "open", "half_open"]
    assert set(described["required"]) == set(queues["default"])


def test_history_filters_and_pages(client: httpx.Client, outbox: Outbox) -> None:
    def ids(**params: str | int) -> list[str]:
        response = client.get("/api/jobs", params=params, headers=AUTH)
        assert response.status_code == 200, response.text
        return [j["id"] for j in response.json()["jobs"]]

    everything = ids(per_page=100)
    assert len(everything) == 11 and everything == sorted(everything, key=int, reverse=True)
    assert ids(customer_email="ANNA.SMITH@example.com") == [outbox.anna]
    assert set(ids(status="dead")) == {outbox.ghost, outbox.other_dead, *outbox.outage}
    assert set(ids(queue="eu-shop")) == set(outbox.eu)
    assert ids(event_id=105) == [outbox.flaky]
    assert ids(since="1h", until="2999-01-01") == everything[:50]
    assert ids(until="2000-01-01") == []
    # Keyset paging: each answer names the cursor of the next (older) page.
    pages, cursor = [], None
    while True:
        params = {"per_page": 4, **({"before": cursor} if cursor else {})}
        body = client.get("/api/jobs", params=params, headers=AUTH).json()
        pages.append([j["id"] for j in body["jobs"]])
        assert body["per_page"] == 4 and body["has_more"] is (body["next_before"] is not None)
        cursor = body["next_before"]
        if cursor is None:
            break
        assert cursor == int(pages[-1][-1])
    assert [i for page in pages for i in page] == everything and len(pages) == 3
    assert ids(before=everything[5]) == everything[6:]
    assert ids(before=everything[5], status="dead") == [
        i for i in ids(status="dead") if int(i) < int(everything[5])
    ]

    for params, field in (
        ({"status": "lost"}, "status"),
        ({"queue": "EU shop"}, "queue"),
        ({"event_id": "x"}, "event_id"),
        ({"event_id": str(2**31)}, "event_id"),
        ({"since": "yesterday"}, "since"),
        ({"since": "1h", "until": "2h"}, "since"),
        ({"page": "2"}, "page"),  # no offsets: a cursor (before) pages
        ({"before": "0"}, "before"),
        ({"before": "x"}, "before"),
        ({"per_page": "101"}, "per_page"),
        ({"customer_email": "a\x00b@example.com"}, "customer_email"),
        ({"queue": ""}, "queue"),
    ):
        response = client.get("/api/jobs", params=params, headers=AUTH)
        assert response.status_code == 400, params
        assert response.json()["field"] == field


def test_job_detail(client: httpx.Client, outbox: Outbox) -> None:
    job = client.get(f"/api/jobs/{outbox.outage[0]}", headers=AUTH).json()
    assert job["status"] == "dead" and job["payload"] == '{"customEventId":103,"customerId":0}'
    assert [(a["status_code"], a["outcome"]) for a in job["attempt_log"]] == [
        (503, "retry"),
        (503, "dead"),
    ]
    assert all(a["duration_ms"] >= 0 and a["response_body"] for a in job["attempt_log"])
    assert client.get("/api/jobs/0", headers=AUTH).status_code == 404
    assert client.get("/api/jobs/abc", headers=AUTH).status_code == 400
    assert client.get("/api/jobs/1", params={"reveal": "yes"}, headers=AUTH).status_code == 400


def test_resume(client: httpx.Client, outbox: Outbox, signalled: list[tuple[str, ...]]) -> None:
    response = client.post("/api/queues/eu-shop/resume", headers=AUTH)
    assert response.json() == {"queue": "eu-shop", "resumed": True}
    assert signalled == [("eu-shop",)]
    assert client.post("/api/queues/eu-shop/resume", headers=AUTH).json()["resumed"] is False
    assert client.post("/api/queues/Not%20a%20queue/resume", headers=AUTH).status_code == 400
    assert signalled == [("eu-shop",)]


def test_replay_acts_on_exactly_what_the_filter_matched(
    client: httpx.Client, outbox: Outbox, engine: sa.Engine, signalled: list[tuple[str, ...]]
) -> None:
    def replay(**body: object) -> httpx.Response:
        return client.post("/api/dead/replay", json=body, headers=AUTH)

    assert replay(event_id=103, dry_run=True).json() == {
        "count": 3, "queues": ["default"], "dry_run": True,
    }  # fmt: skip
    conflict = replay(event_id=103, expected_count=2)
    assert conflict.status_code == 409 and "matches 3 jobs, not 2" in conflict.json()["error"]
    assert signalled == [] and len(admin.history(engine, admin.Filter(status="dead"))) == 5
    assert replay(event_id=103, expected_count=3).json() == {
        "count": 3, "queues": ["default"], "dry_run": False,
    }  # fmt: skip
    assert signalled == [("default",)]
    assert {
        j.id for j in admin.history(engine, admin.Filter(status="pending", queue="default"))
    } == set(outbox.outage)
    for body, field in (
        ({"queue": 7}, "queue"),
        ({"dry_run": "yes"}, "dry_run"),
        ({"expected_count": True}, "expected_count"),
        ({"status": "delivered"}, "status"),
        ({"since": "tomorrow"}, "since"),
    ):
        response = replay(**body)
        assert response.status_code == 400 and response.json()["field"] == field, body
    for raw in (b"[]", b"{", b'"x"'):
        response = client.post("/api/dead/replay", content=raw, headers=AUTH)
        assert response.status_code == 400


def test_openapi_is_served(client: httpx.Client) -> None:
    assert client.get("/api/openapi.json", headers=AUTH).json() == OPENAPI


@pytest.mark.slow
def test_schemathesis_finds_no_server_error(client: httpx.Client, outbox: Outbox) -> None:
    """Every operation, with valid and with invalid inputs: never a 5xx, and every answer
    (status, content type, body) is one the description allows."""
    import schemathesis
    from schemathesis.checks import not_a_server_error
    from schemathesis.generation import GenerationMode
    from schemathesis.specs.openapi.checks import (
        content_type_conformance,
        response_schema_conformance,
        status_code_conformance,
    )

    schema = schemathesis.openapi.from_dict(client.get("/api/openapi.json", headers=AUTH).json())
    base_url = str(client.base_url)
    checks = [
        not_a_server_error,
        status_code_conformance,
        content_type_conformance,
        response_schema_conformance,
    ]  # not negative_data_rejection: it flags e.g. queue=0, an integer that is a valid name
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) == 11  # eight of the API, pause, and the two probes
    for operation in operations:
        # The probes take no input at all: nothing to make invalid.
        probe = operation.path in ("/healthz", "/readyz")
        for mode in (GenerationMode.POSITIVE,) if probe else tuple(GenerationMode):

            @given(case=operation.as_strategy(mode))
            @settings(
                max_examples=25,
                deadline=None,
                database=None,
                suppress_health_check=list(HealthCheck),
            )
            def run(case: schemathesis.Case) -> None:
                # A random Transfer-Encoding (say) is refused by the HTTP server before the app
                # sees it; that layer is uvicorn's, not this API's.
                assume(not HOP_BY_HOP & {name.lower() for name in case.headers or {}})
                case.call_and_validate(base_url=base_url, headers=AUTH, checks=checks)

            run()


def test_an_unreachable_database_is_a_503_not_a_crash(
    tmp_path: Path, serve: Callable[[Starlette], str]
) -> None:
    engine = create_engine(f"sqlite:///{tmp_path}/no/such/folder/outbox.db")
    url = serve(create_app(Settings(admin_token=Secret(TOKEN)), engine=engine))
    with httpx.Client(base_url=url, headers=AUTH) as c:
        response = c.get("/api/queues")
        assert response.status_code == 503 and response.headers["retry-after"] == "5"
        assert response.json()["error"].startswith("the outbox database is unavailable")
        assert c.get("/").status_code == 503
        # /metrics answers, and says so: a 503 would silence every alert (test_metrics.py).
        metrics = c.get("/metrics")
        assert metrics.status_code == 200 and "dispatcher_database_up 0.0" in metrics.text
