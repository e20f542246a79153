"""``POST /api/events``: enqueue over HTTP with the admin token or an ingestion token, the answers
201/200/400/401/413, the batch form, and an ingestion token that can do nothing else."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta, timezone

import httpx
import pytest
import sqlalchemy as sa
from starlette.applications import Starlette

from dispatcher.config import ConfigError, Secret, Settings
from dispatcher.events import CustomEvent, DataField, SegmentEvent
from dispatcher.schema import jobs
from dispatcher.web import create_app
from dispatcher.web.ingest import MAX_BATCH

from .conftest import AUTH, TOKEN

INGEST = "ingest-token-0123456789abcdef"
PRODUCER = {"Authorization": f"Bearer {INGEST}"}
EVENT = CustomEvent(12, customer_email="Ann@Example.com", data_fields=[DataField("n", "Money", 5)])


@pytest.fixture
def url(
    settings: Settings,
    engine: sa.Engine,
    serve: Callable[[Starlette], str],
    signalled: list[tuple[str, ...]],
) -> str:
    changed = dataclasses.replace(
        settings,
        admin_token=Secret(TOKEN),
        ingest_tokens=(Secret("another-ingest-token-000"), Secret(INGEST)),
        broker_url="memory://",
    )
    return serve(create_app(changed, engine=engine))


@pytest.fixture
def http(url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=url, timeout=30) as c:
        yield c


def _rows(engine: sa.Engine) -> list[sa.Row[tuple[object, ...]]]:
    with engine.connect() as conn:
        return list(conn.execute(sa.select(jobs).order_by(jobs.c.id)))


@pytest.mark.parametrize("headers", [AUTH, PRODUCER], ids=["admin", "ingest"])
def test_a_new_event_is_201_and_written_as_the_producer_writes_it(
    http: httpx.Client,
    engine: sa.Engine,
    headers: dict[str, str],
    signalled: list[tuple[str, ...]],
) -> None:
    answer = http.post("/api/events", headers=headers, json={"event": EVENT.to_body()})
    assert answer.status_code == 201, answer.text
    (row,) = _rows(engine)
    assert answer.json() == {"id": str(row.id)}
    assert (row.queue, row.endpoint, row.payload) == ("default", EVENT.endpoint, EVENT.to_json())
    assert row.customer_email == "ann@example.com" and row.status == "pending"
    assert signalled == [("default",)]


def test_a_taken_dedupe_key_is_200_with_the_same_id(http: httpx.Client, engine: sa.Engine) -> None:
    body = {"event": EVENT.to_body(), "queue": "shop", "dedupe_key": "order-17"}
    first = http.post("/api/events", headers=PRODUCER, json=body)
    again = http.post("/api/events", headers=PRODUCER, json=body)
    other = http.post("/api/events", headers=PRODUCER, json={**body, "queue": "other"})
    assert (first.status_code, again.status_code, other.status_code) == (201, 200, 201)
    assert again.json() == first.json() != other.json()
    assert len(_rows(engine)) == 2


@pytest.mark.parametrize(
    ("body", "field", "says"),
    [
        ({"event": {"customEventId": 1, "customerEmail": "nope"}}, "event.customerEmail", "@"),
        ({"event": {"customEventId": 1}}, "event.customer", "at least one identifier"),
        ({"event": [1]}, "event", "expected a JSON object"),
        ({}, "event", "required"),
        ({"event": EVENT.to_body(), "queue": "Shop"}, "queue", "did you mean 'shop'"),
        ({"event": EVENT.to_body(), "dedupe_key": ""}, "dedupe_key", "1-255"),
        ({"event": EVENT.to_body(), "ordering_key": 5}, "ordering_key", "string"),
        ({"event": EVENT.to_body(), "deliver_at": "tomorrow"}, "deliver_at", "ISO 8601"),
        ({"event": EVENT.to_body(), "deliver_at": "2030-01-01T08:00"}, "deliver_at", "offset"),
        ({"event": EVENT.to_body(), "priority": 1}, "priority", "unknown field"),
        ({"events": []}, "events", "non-empty"),
        ({"events": [{"event": EVENT.to_body()}] * (MAX_BATCH + 1)}, "events", "at most"),
        (
            {"events": [{"event": EVENT.to_body()}, {"event": {"customEventId": 1.5}}]},
            "events[1].event.customEventId",
            "integer",
        ),
    ],
)
def test_a_bad_field_is_a_400_naming_it_and_nothing_is_written(
    http: httpx.Client, engine: sa.Engine, body: object, field: str, says: str
) -> None:
    answer = http.post("/api/events", headers=PRODUCER, json=body)
    assert answer.status_code == 400
    assert answer.json()["field"] == field
    assert answer.json()["error"].startswith(field) and says in answer.json()["error"]
    assert _rows(engine) == []


def test_not_json_is_a_400(http: httpx.Client) -> None:
    answer = http.post("/api/events", headers=PRODUCER, content=b"{not json")
    assert answer.status_code == 400 and "expected a JSON object" in answer.json()["error"]


def test_no_or_a_wrong_token_is_a_401(http: httpx.Client, engine: sa.Engine) -> None:
    body = {"event": EVENT.to_body()}
    assert http.post("/api/events", json=body).status_code == 401
    wrong = {"Authorization": "Bearer not-the-token-at-all-000"}
    assert http.post("/api/events", headers=wrong, json=body).status_code == 401
    assert _rows(engine) == []


def test_a_body_over_the_limit_is_a_413(http: httpx.Client, engine: sa.Engine) -> None:
    big = {"event": {"customEventId": 1, "customerCrmId": "x" * 70_000}}
    answer = http.post("/api/events", headers=PRODUCER, content=json.dumps(big).encode())
    assert answer.status_code == 413
    assert _rows(engine) == []


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("GET", "/api/jobs", None),
        ("GET", "/api/queues", None),
        ("GET", "/api/jobs/1", None),
        ("POST", "/api/dead/replay", {}),
        ("POST", "/api/jobs/cancel", {"status": "pending"}),
        ("POST", "/api/forget", {"email": "ann@example.com"}),
        ("POST", "/api/queues/default/pause", {"reason": "x", "create": True}),
        ("GET", "/metrics", None),
        ("GET", "/", None),
    ],
)
def test_an_ingest_token_can_only_enqueue(
    http: httpx.Client, engine: sa.Engine, method: str, path: str, body: object
) -> None:
    http.post("/api/events", headers=PRODUCER, json={"event": EVENT.to_body()})
    answer = http.request(method, path, headers=PRODUCER, json=body)
    assert answer.status_code == 403
    assert "only enqueue" in answer.json()["error"]
    (row,) = _rows(engine)  # nothing read out, replayed, cancelled or erased
    assert row.status == "pending" and row.payload == EVENT.to_json()
    assert http.get("/api/jobs", headers=AUTH).status_code == 200  # the admin token still can


def test_a_batch_answers_per_item(http: httpx.Client, engine: sa.Engine) -> None:
    segment = SegmentEvent(3, [7])
    http.post("/api/events", headers=PRODUCER, json={"event": EVENT.to_body(), "dedupe_key": "a"})
    items = [
        {"event": EVENT.to_body(), "dedupe_key": "a"},
        {"event": segment.to_body(), "queue": "segments", "ordering_key": "k"},
        {"event": EVENT.to_body(), "dedupe_key": "b"},
    ]
    answer = http.post("/api/events", headers=PRODUCER, json={"events": items})
    assert answer.status_code == 200
    results = answer.json()["results"]
    rows = _rows(engine)
    assert [r["status"] for r in results] == [200, 201, 201]
    assert [r["id"] for r in results] == [str(row.id) for row in rows]
    assert rows[1].endpoint == segment.endpoint and rows[1].ordering_key == "k"


def test_deliver_at_is_passed_to_the_producer(
    http: httpx.Client, engine: sa.Engine, signalled: list[tuple[str, ...]]
) -> None:
    when = (datetime.now(UTC) + timedelta(days=1)).replace(microsecond=0)
    offset = when.astimezone(timezone(timedelta(hours=2))).isoformat()  # any offset: one moment
    answer = http.post(
        "/api/events", headers=PRODUCER, json={"event": EVENT.to_body(), "deliver_at": offset}
    )
    assert answer.status_code == 201, answer.text
    (row,) = _rows(engine)
    assert row.next_attempt_at == when
    assert signalled == []  # not due: the sweeper signals it at its time


def test_ingest_tokens_from_the_environment() -> None:
    env = {"DISPATCHER_INGEST_TOKENS": f" {INGEST}, another-ingest-token-000 ,"}
    assert Settings.from_env(env).ingest_tokens == (
        Secret(INGEST),
        Secret("another-ingest-token-000"),
    )
    assert Settings.from_env({}).ingest_tokens == ()
    with pytest.raises(ConfigError, match="DISPATCHER_INGEST_TOKENS: token 2 is too short"):
        Settings.from_env({"DISPATCHER_INGEST_TOKENS": f"{INGEST},short"})
