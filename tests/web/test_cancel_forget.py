"""Issue 22 from the browser and the JSON API: an unknown queue is a 404 (never a phantom
pause), waiting jobs can be cancelled, a customer can be forgotten; ``/metrics`` and the pages
show the new status ``cancelled``."""

from __future__ import annotations

import json

import httpx
import pytest
import sqlalchemy as sa

from dispatcher import admin
from dispatcher.db import utcnow
from dispatcher.schema import erasures, jobs, queues
from tests.support import status_of

from .conftest import AUTH, Outbox, log_in


@pytest.fixture(autouse=True)
def quick_pause(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("dispatcher.admin.actions.outbox.PAUSE_SETTLE_SECONDS", 0)


def test_an_unknown_queue_is_a_404_everywhere(
    client: httpx.Client, outbox: Outbox, engine: sa.Engine, signalled: list[object]
) -> None:
    for path in ("/api/queues/eu_shop/pause", "/api/queues/eu_shop/resume"):
        answer = client.post(path, json={"reason": "typo"} if "pause" in path else None,
                             headers=AUTH)  # fmt: skip
        assert answer.status_code == 404, path
        assert (
            answer.json()["field"] == "queue" and "did you mean eu-shop?" in answer.json()["error"]
        )
    for body in ({"queue": "eu_shop"}, {"queue": "eu_shop", "dry_run": True}):
        assert client.post("/api/dead/replay", json=body, headers=AUTH).status_code == 404
        assert client.post("/api/jobs/cancel", json=body, headers=AUTH).status_code == 404
    with engine.connect() as conn:
        assert "eu_shop" not in conn.execute(sa.select(queues.c.name)).scalars().all()
    ahead = client.post(
        "/api/queues/new-shop/pause", json={"reason": "before launch", "create": True}, headers=AUTH
    )
    assert ahead.json() == {"queue": "new-shop", "paused": True}
    csrf = log_in(client)
    assert client.get("/queues/eu_shop/pause", params={"reason": "x"}).status_code == 404
    assert (
        client.post("/queues/eu_shop/pause", data={"reason": "x", "csrf": csrf}).status_code == 404
    )
    assert client.post("/queues/eu_shop/resume", data={"csrf": csrf}).status_code == 404
    assert client.get("/queues/eu_shop").status_code == 404


def test_cancel_through_the_api(client: httpx.Client, outbox: Outbox, engine: sa.Engine) -> None:
    def cancel(**body: object) -> httpx.Response:
        return client.post("/api/jobs/cancel", json=body, headers=AUTH)

    dry = cancel(queue="eu-shop", dry_run=True)
    assert dry.json() == {"count": 3, "queues": ["eu-shop"], "dry_run": True, "in_flight": 0}
    assert cancel(queue="eu-shop", expected_count=2).status_code == 409
    assert cancel().status_code == 400  # nothing selected: never "everything"
    for body, field in (
        ({"status": "in_flight", "queue": "eu-shop"}, "status"),
        ({"status": "dead"}, "status"),
        ({"job_ids": "7"}, "job_ids"),
        ({"job_ids": [-1]}, "job_id"),
        ({"job_ids": list(range(1, 1002))}, "job_ids"),  # at most 1,000 per call
        ({"queue": "eu-shop", "nope": 1}, "nope"),
    ):
        answer = cancel(**body)
        assert answer.status_code == 400 and answer.json()["field"] == field, body
    refused = cancel(job_ids=[outbox.anna])  # delivered: nothing cancelled
    assert refused.status_code == 400 and "is delivered" in refused.json()["error"]
    done = cancel(queue="eu-shop", expected_count=3)
    assert done.json() == {"count": 3, "queues": ["eu-shop"], "dry_run": False, "in_flight": 0}
    assert {status_of(engine, i) for i in outbox.eu} == {"cancelled"}
    queues_now = client.get("/api/queues", headers=AUTH).json()["queues"]
    assert queues_now["eu-shop"]["counts"]["cancelled"] == 3
    scraped = client.get("/metrics", headers=AUTH).text
    assert 'dispatcher_jobs{queue="eu-shop",status="cancelled"} 3.0' in scraped
    listed = client.get("/api/jobs", params={"status": "cancelled"}, headers=AUTH).json()["jobs"]
    assert sorted(j["id"] for j in listed) == sorted(outbox.eu)


def test_cancel_a_job_from_its_page(
    client: httpx.Client, outbox: Outbox, engine: sa.Engine
) -> None:
    csrf = log_in(client)
    waiting = outbox.eu[0]
    page = client.get(f"/jobs/{waiting}").text
    assert 'id="cancel-job"' in page
    assert 'id="cancel-job"' not in client.get(f"/jobs/{outbox.anna}").text  # delivered
    assert client.post(f"/jobs/{waiting}/cancel").status_code == 403  # no CSRF token
    done = client.post(f"/jobs/{waiting}/cancel", data={"csrf": csrf})
    assert done.status_code == 303 and done.headers["location"] == f"/jobs/{waiting}?cancelled=1"
    assert status_of(engine, waiting) == "cancelled"
    shown = client.get(done.headers["location"]).text
    assert 'id="cancelled"' in shown and "cancelled" in shown and 'id="cancel-job"' not in shown
    again = client.post(f"/jobs/{waiting}/cancel", data={"csrf": csrf})
    assert again.status_code == 409 and "only scheduled, pending or retrying" in again.text
    assert client.post("/jobs/999999/cancel", data={"csrf": csrf}).status_code == 404
    history = client.get("/jobs", params={"status": "cancelled"}).text
    assert f"/jobs/{waiting}" in history


def test_a_scheduled_job_shows_its_time_and_can_be_cancelled_from_its_page(
    client: httpx.Client, outbox: Outbox, engine: sa.Engine, signalled: list[object]
) -> None:
    from datetime import timedelta

    from dispatcher import CustomEvent, enqueue

    csrf = log_in(client)
    later = enqueue(CustomEvent(801, customer_id=8), deliver_at=utcnow() + timedelta(days=1))
    page = client.get(f"/jobs/{later}").text
    assert "scheduled" in page and "Scheduled for" in page and 'id="cancel-job"' in page
    listed = client.get("/jobs", params={"status": "scheduled"}).text
    assert f"/jobs/{later}" in listed
    counts = client.get("/api/queues", headers=AUTH).json()["queues"]["default"]["counts"]
    assert counts["scheduled"] == 1
    assert (
        'dispatcher_jobs{queue="default",status="scheduled"} 1.0'
        in client.get("/metrics", headers=AUTH).text
    )
    done = client.post(f"/jobs/{later}/cancel", data={"csrf": csrf})
    assert done.status_code == 303 and status_of(engine, later) == "cancelled"


def test_forget_through_the_api_and_the_page(
    client: httpx.Client, outbox: Outbox, engine: sa.Engine
) -> None:
    def forget(**body: object) -> httpx.Response:
        return client.post("/api/forget", json=body, headers=AUTH)

    for body, field in (
        ({"email": "no-at-sign"}, "email"),
        ({"customer_id": "7"}, "customer_id"),
        ({"email_md5": "zz"}, "email_md5"),
        ({"name": "Anna"}, "name"),
    ):
        answer = forget(**body)
        assert answer.status_code == 400 and answer.json()["field"] == field, body
    assert forget().status_code == 400
    assert forget(email="a@example.com", phone="123").status_code == 400
    planned = forget(email="ANNA.SMITH@example.com", dry_run=True).json()
    assert planned["jobs"] == 1 and planned["dry_run"] is True
    done = forget(email="anna.smith@example.com").json()
    assert {**done, "dry_run": True} == planned
    with engine.connect() as conn:
        text = " ".join(str(v) for r in conn.execute(sa.select(jobs)) for v in r).lower()
        assert "anna.smith@example.com" not in text and "maria.garcia@example.com" in text
        assert conn.execute(sa.select(erasures.c.identifier_kind)).scalars().all() == ["email"]

    # The page: the form, what it would erase, then the erasure (CSRF-protected).
    csrf = log_in(client)
    assert 'id="forget-form"' in client.get("/forget").text
    form = {"kind": "email", "value": "maria.garcia@example.com", "csrf": csrf}
    preview = client.post("/forget", data=form)
    assert preview.status_code == 200 and 'id="planned"' in preview.text
    assert "This erases 1 job(s) of this customer" in preview.text
    assert "maria.garcia" in str(admin.show(engine, outbox.flaky).payload)  # not yet
    assert (
        client.post("/forget", data={**form, "confirm": "1", "csrf": "0" * 64}).status_code == 403
    )
    erased = client.post("/forget", data={**form, "confirm": "1"})
    assert erased.status_code == 200 and 'id="done"' in erased.text
    assert "maria.garcia" not in str(admin.show(engine, outbox.flaky).payload)
    bad = client.post("/forget", data={**form, "value": "nope"})
    assert bad.status_code == 400 and 'data-field="email"' in bad.text
    assert client.post("/forget", data={**form, "kind": "name"}).status_code == 400


def test_forget_leaves_counts_exact(
    client: httpx.Client, outbox: Outbox, engine: sa.Engine
) -> None:
    before = admin.stats(engine, utcnow())
    answer = client.post("/api/forget", json={"email": "eu1@example.com"}, headers=AUTH).json()
    assert (answer["jobs"], answer["cancelled"]) == (1, 1)
    after = admin.stats(engine, utcnow())
    assert after["eu-shop"].counts["pending"] == before["eu-shop"].counts["pending"] - 1
    assert after["eu-shop"].counts["cancelled"] == 1
    assert json.dumps(answer).find("eu1@") == -1  # the answer names no identifier
