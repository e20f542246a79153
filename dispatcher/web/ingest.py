"""``POST /api/events``: enqueue over HTTP, for producers that cannot reach the database.

``{"event": <the ECDP body>, "queue"?, "dedupe_key"?, "ordering_key"?, "deliver_at"?}`` answers
201 ``{"id": …}`` for a new job and 200 with the existing job's id when the dedupe key is taken;
``{"events": [ … ]}`` (at most :data:`MAX_BATCH`) enqueues a batch in one transaction (all or
nothing) and answers 200 ``{"results": [{"id": …, "status": 201|200}, …]}``. A bad field is a 400
that names it (``event.customerEmail``, ``events[3].queue``). The admin token and the ingestion
tokens (``DISPATCHER_INGEST_TOKENS``, which can do nothing else) are let in; the app's body limit
(413) and the wrong-token throttle apply as everywhere.

It calls :func:`dispatcher.producer.enqueue` with a Session, so a job is written and signalled
exactly as a Python producer's is.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from dispatcher import producer
from dispatcher.config import DEFAULT_QUEUE
from dispatcher.events import Event, ValidationError, event_from_body
from dispatcher.schema import jobs
from dispatcher.web.access import error, ingesting
from dispatcher.web.openapi import INGEST_MAX_BATCH
from dispatcher.web.site import site_of

__all__ = ["FIELDS", "MAX_BATCH", "ROUTES", "IngestError", "Item", "parse"]

MAX_BATCH = INGEST_MAX_BATCH
FIELDS = ("event", "queue", "dedupe_key", "ordering_key", "deliver_at")


class IngestError(ValueError):
    """A refused request: ``field`` names what (``event.customerEmail``, ``events[2].queue``)."""

    def __init__(self, field: str | None, message: str, *, text: str | None = None) -> None:
        self.field = field
        self.text = text or (f"{field}: {message}" if field else message)  # the whole answer
        super().__init__(self.text)


@dataclass(frozen=True, slots=True)
class Item:
    event: Event
    queue: str
    dedupe_key: str | None
    ordering_key: str | None
    deliver_at: datetime | None


def _field_of(line: str) -> str:
    name = line.split(":", 1)[0]
    return "event" if name == "body" else f"event.{name}"


def _text(item: dict[str, Any], key: str, prefix: str) -> str | None:
    value = item.get(key)
    if value is not None and not isinstance(value, str):
        raise IngestError(prefix + key, "expected a string or null")
    return value


def _item(item: object, prefix: str) -> Item:
    """One ``{"event": …, …}`` object, checked by the producer's own rules (pure)."""
    if not isinstance(item, dict):
        raise IngestError(prefix.rstrip(".") or None, "expected a JSON object")
    for key in item:
        if key not in FIELDS:
            raise IngestError(prefix + str(key)[:40], "unknown field")
    if "event" not in item:
        raise IngestError(prefix + "event", "required: the ECDP request body")
    try:
        event = event_from_body(item["event"])
    except ValidationError as exc:
        # "customerEmail: …" -> "event.customerEmail: …"; "body: …" (not an object) -> "event: …"
        lines = [prefix + _field_of(e) + ": " + e.split(": ", 1)[1] for e in exc.errors]
        field = prefix + _field_of(exc.errors[0])
        raise IngestError(field, "", text="; ".join(lines)) from None
    queue = _text(item, "queue", prefix) or DEFAULT_QUEUE
    if problems := producer.check_queue(queue):
        raise IngestError(prefix + "queue", problems[0].split(": ", 1)[1])
    keys = {}
    limits = {"dedupe_key": producer.MAX_DEDUPE_KEY, "ordering_key": producer.MAX_ORDERING_KEY}
    for key, limit in limits.items():
        keys[key] = _text(item, key, prefix)
        if problems := producer.check_key(keys[key], key, limit):
            raise IngestError(prefix + key, problems[0].split(": ", 1)[1])
    return Item(event, queue, keys["dedupe_key"], keys["ordering_key"], _when(item, prefix))


def _when(item: dict[str, Any], prefix: str) -> datetime | None:
    raw = _text(item, "deliver_at", prefix)
    if raw is None:
        return None
    field = prefix + "deliver_at"
    try:
        when = datetime.fromisoformat(raw) if len(raw) <= 64 and raw.isascii() else None
    except ValueError:
        when = None
    if when is None:
        raise IngestError(field, "expected an ISO 8601 date-time such as 2026-12-09T08:00:00Z")
    if when.utcoffset() is None:
        raise IngestError(field, "needs a UTC offset (Z or +01:00): a naive time is ambiguous")
    return when


def parse(body: object) -> tuple[list[Item], bool]:
    """The request's items, and whether it was the batch form; :class:`IngestError` if refused."""
    if isinstance(body, dict) and "events" in body:
        extra = sorted(set(body) - {"events"})
        if extra:
            raise IngestError(str(extra[0])[:40], "unknown field (a batch holds only events)")
        batch = body["events"]
        if not isinstance(batch, list) or not batch:
            raise IngestError("events", "expected a non-empty list of {event, …} objects")
        if len(batch) > MAX_BATCH:
            raise IngestError("events", f"at most {MAX_BATCH} per request (got {len(batch)})")
        return [_item(item, f"events[{i}].") for i, item in enumerate(batch)], True
    return [_item(body, "")], False


def write(engine: sa.Engine, items: list[Item]) -> list[tuple[str, bool]]:
    """Enqueue ``items`` in one transaction; each job's id and whether this call created it."""
    results: list[tuple[str, bool]] = []
    with Session(engine) as session, session.begin():
        conn = session.connection()
        postgres = conn.dialect.name == "postgresql"
        for item in items:
            existing = None
            if item.dedupe_key is not None and not postgres:  # SQLite: one writer at a time
                existing = conn.execute(
                    sa.select(jobs.c.id).where(
                        jobs.c.queue == item.queue, jobs.c.dedupe_key == item.dedupe_key
                    )
                ).scalar()
            job = producer.enqueue(
                item.event,
                session=session,
                queue=item.queue,
                dedupe_key=item.dedupe_key,
                ordering_key=item.ordering_key,
                deliver_at=item.deliver_at,
            )
            if item.dedupe_key is None:
                created = True
            elif postgres:  # written by this transaction, not found taken
                created = bool(
                    conn.execute(
                        sa.text(
                            "SELECT xmin = pg_current_xact_id()::xid FROM dispatcher_jobs "
                            "WHERE id = :id"
                        ),
                        {"id": int(job)},
                    ).scalar()
                )
            else:
                created = existing is None
            results.append((job, created))
    return results


@ingesting
async def events(request: Request) -> Response:
    try:
        body = json.loads(await request.body())
    except (ValueError, RecursionError):
        return error(400, 'expected a JSON object: {"event": <the ECDP body>, …}')
    try:
        items, batch = parse(body)
    except IngestError as exc:
        return error(400, exc.text, exc.field)
    results = await run_in_threadpool(write, site_of(request).engine, items)
    site_of(request).metrics.invalidate()
    if batch:
        return JSONResponse(
            {"results": [{"id": job, "status": 201 if new else 200} for job, new in results]}
        )
    job, new = results[0]
    return JSONResponse({"id": job}, 201 if new else 200)


ROUTES = [Route("/api/events", events, methods=["POST"])]
