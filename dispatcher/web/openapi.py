"""The admin API's OpenAPI description, served at ``/api/openapi.json``.

Written by hand (the API is a few routes, plus the health probes); the property-based test in
``tests/web`` checks the server against it, so the two cannot drift apart unnoticed. The limits
it states are the operator service's (:mod:`dispatcher.admin.filters`), which enforces them for
every surface.
"""

from __future__ import annotations

from typing import Any

from dispatcher.admin.actions import REASON_MAX
from dispatcher.admin.filters import (
    EMAIL_MAX,
    INT32,
    MAX_EXPECTED,
    MAX_PER_PAGE,
    PER_PAGE,
    STATUS_CODES,
)
from dispatcher.config import QUEUE_NAME
from dispatcher.policy import Outcome
from dispatcher.producer import MAX_DEDUPE_KEY, MAX_ORDERING_KEY
from dispatcher.schema import CIRCUIT_STATES, STATUSES, WAITING_STATUSES

_STATUS_NAMES = [s.value for s in STATUSES]
# Job ids per cancel request: the body stays far below the server's 64 KiB limit.
API_MAX_JOB_IDS = 1000
INGEST_MAX_BATCH = 100  # items per POST /api/events batch (dispatcher.web.ingest.MAX_BATCH)

__all__ = ["OPENAPI"]


def _nullable(kind: str, **extra: Any) -> dict[str, Any]:
    return {"type": [kind, "null"], **extra}


def _object(*, required: bool = True, **properties: Any) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": properties,
        "required": list(properties) if required else [],
    }


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _query(name: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {
        "name": name,
        "in": "query",
        "required": False,
        "schema": schema,
        "description": description,
    }


def _move_body(verb: str) -> dict[str, Any]:
    """The filter, ``dry_run`` and ``expected_count`` of a replay's or a cancel's body."""
    return {
        "queue": {"type": "string", "pattern": QUEUE_NAME.pattern},
        "event_id": {"type": "integer", "minimum": INT32[0], "maximum": INT32[1]},
        "status_code": {
            "type": "integer",
            "minimum": STATUS_CODES[0],
            "maximum": STATUS_CODES[1],
            "description": "The last HTTP status the job got.",
        },
        "since": {"type": "string", "description": _TIME},
        "until": {"type": "string", "description": _TIME},
        "dry_run": {"type": "boolean", "description": "Only count."},
        "expected_count": {
            "type": "integer",
            "minimum": 0,
            "maximum": MAX_EXPECTED,
            "description": f"{verb} only if the filter matches exactly this many (409 otherwise).",
        },
    }


_TIME = "ISO 8601 (naive means UTC) or an age like 2h or 7d meaning that long ago; on created_at"
_ERRORS = {
    "400": _json(_ref("Error"), "A parameter was refused; `field` names it."),
    "401": _json(_ref("Error"), "No or a wrong admin token."),
}
_NO_QUEUE = _json(_ref("Error"), "No such queue: no job used it and the settings do not name it.")
_FILTERS = [
    _query("queue", {"type": "string", "pattern": QUEUE_NAME.pattern}, "Queue name."),
    _query(
        "event_id",
        {"type": "integer", "minimum": INT32[0], "maximum": INT32[1]},
        "customEventId.",
    ),
    _query(
        "status_code",
        {"type": "integer", "minimum": STATUS_CODES[0], "maximum": STATUS_CODES[1]},
        "The last HTTP status the job got.",
    ),
    _query("since", {"type": "string"}, f"Created at or after: {_TIME}."),
    _query("until", {"type": "string"}, f"Created before: {_TIME}."),
]
_QUEUE_PATH = {
    "name": "queue",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "pattern": QUEUE_NAME.pattern},
}
_SUMMARY: dict[str, Any] = {
    "id": {"type": "string"},
    "queue": {"type": "string"},
    "endpoint": {"type": "string"},
    "custom_event_id": {"type": "integer"},
    "status": {"type": "string", "enum": _STATUS_NAMES},
    "attempts": {"type": "integer"},
    "last_status_code": _nullable("integer"),
    "last_error": _nullable("string", description="Customer emails masked."),
    "created_at": {"type": "string", "format": "date-time"},
    "delivered_at": _nullable("string", format="date-time"),
}

OPENAPI: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {
        "title": "ecdp-dispatcher admin API",
        "version": "1",
        "description": "The outbox as the admin page shows it. Every call needs "
        "`Authorization: Bearer <DISPATCHER_ADMIN_TOKEN>`, except the health probes "
        "`/healthz` and `/readyz`, which say nothing but each component's state, and "
        "`POST /api/events`, which an ingestion token (`DISPATCHER_INGEST_TOKENS`) may call "
        "too (a 403 everywhere else).",
    },
    "security": [{"bearer": []}],
    "paths": {
        "/healthz": {
            "get": {
                "summary": "Liveness: the process serves (no token needed)",
                "operationId": "healthz",
                "security": [],
                "responses": {
                    "200": _json(_object(status={"type": "string", "const": "ok"}), "It serves.")
                },
            }
        },
        "/readyz": {
            "get": {
                "summary": "Readiness: database, schema and broker (no token needed; cached 2 s)",
                "operationId": "readyz",
                "security": [],
                "responses": {
                    "200": _json(_ref("Readiness"), "Every component is ok."),
                    "503": _json(_ref("Readiness"), "Some component is not ok."),
                },
            }
        },
        "/api/queues": {
            "get": {
                "summary": "Per queue: jobs by status, oldest due age, pause and circuit state",
                "operationId": "queues",
                "responses": {"200": _json(_ref("Queues"), "Queues by name."), **_ERRORS},
            }
        },
        "/api/queues/{queue}/pause": {
            "post": {
                "summary": "Pause a queue: answers once no worker sends a request for it",
                "operationId": "pause",
                "parameters": [_QUEUE_PATH],
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {
                            "schema": {
                                **_object(
                                    reason={
                                        "type": "string",
                                        "minLength": 1,
                                        "maxLength": REASON_MAX,
                                        "description": "Why; shown wherever the pause is.",
                                    },
                                    create={
                                        "type": "boolean",
                                        "description": "Pause a queue no job has used yet "
                                        "(without it, an unknown queue is a 404).",
                                    },
                                ),
                                "required": ["reason"],
                                "additionalProperties": False,
                            }
                        }
                    },
                },
                "responses": {
                    "200": _json(
                        _object(queue={"type": "string"}, paused={"type": "boolean"}),
                        "`paused` is false if the queue was paused already (its first reason "
                        "is kept).",
                    ),
                    **_ERRORS,
                    "404": _NO_QUEUE,
                    "403": _json(_ref("Error"), "Cookie sessions: missing CSRF token."),
                },
            }
        },
        "/api/queues/{queue}/resume": {
            "post": {
                "summary": "Resume a paused queue (its backlog goes out)",
                "operationId": "resume",
                "parameters": [_QUEUE_PATH],
                "responses": {
                    "200": _json(
                        _object(queue={"type": "string"}, resumed={"type": "boolean"}),
                        "`resumed` is false if the queue was not paused.",
                    ),
                    **_ERRORS,
                    "404": _NO_QUEUE,
                    "403": _json(_ref("Error"), "Cookie sessions: missing CSRF token."),
                },
            }
        },
        "/api/jobs": {
            "get": {
                "summary": "History: jobs matching every filter, newest first, paginated",
                "operationId": "jobs",
                "parameters": [
                    _query("status", {"type": "string", "enum": _STATUS_NAMES}, "Job status."),
                    *_FILTERS,
                    _query(
                        "customer_email",
                        {"type": "string", "maxLength": EMAIL_MAX},
                        "Exact, any case.",
                    ),
                    _query(
                        "before",
                        {"type": "integer", "minimum": 1},
                        "The cursor: only jobs with a smaller id (the previous answer's "
                        "next_before). Without it, the newest.",
                    ),
                    _query(
                        "per_page",
                        {"type": "integer", "minimum": 1, "maximum": MAX_PER_PAGE},
                        f"Default {PER_PAGE}.",
                    ),
                ],
                "responses": {
                    "200": _json(
                        _object(
                            jobs={"type": "array", "items": _ref("JobSummary")},
                            per_page={"type": "integer"},
                            has_more={"type": "boolean"},
                            next_before=_nullable(
                                "integer", description="Pass as before for the next (older) page."
                            ),
                        ),
                        "One page of jobs.",
                    ),
                    **_ERRORS,
                },
            }
        },
        "/api/jobs/{job_id}": {
            "get": {
                "summary": "One job: the exact request body and every attempt",
                "operationId": "job",
                "parameters": [
                    {
                        "name": "job_id",
                        "in": "path",
                        "required": True,
                        "schema": {"type": "integer", "minimum": 1},
                    },
                    _query("reveal", {"type": "boolean"}, "Show customer emails unmasked."),
                ],
                "responses": {
                    "200": _json(_ref("JobDetail"), "The job."),
                    **_ERRORS,
                    "404": _json(_ref("Error"), "No such job."),
                },
            }
        },
        "/api/dead/replay": {
            "post": {
                "summary": "Replay the dead jobs a filter matches (all dead jobs without one)",
                "operationId": "replay",
                "requestBody": {
                    "required": False,
                    "content": {"application/json": {"schema": _ref("ReplayRequest")}},
                },
                "responses": {
                    "200": _json(_ref("ReplayResult"), "Replayed (or counted, with dry_run)."),
                    **_ERRORS,
                    "403": _json(_ref("Error"), "Cookie sessions: missing CSRF token."),
                    "404": _NO_QUEUE,
                    "409": _json(_ref("Error"), "expected_count differs: nothing was replayed."),
                },
            }
        },
        "/api/jobs/cancel": {
            "post": {
                "summary": "Cancel waiting jobs (by id and/or filter): they are never sent",
                "description": "Pending and retrying jobs become cancelled. Jobs in flight cannot "
                "be recalled (their request may be on the wire): they are left alone and "
                "counted in `in_flight`.",
                "operationId": "cancel",
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": _ref("CancelRequest")}},
                },
                "responses": {
                    "200": _json(_ref("CancelResult"), "Cancelled (or counted, with dry_run)."),
                    **_ERRORS,
                    "403": _json(_ref("Error"), "Cookie sessions: missing CSRF token."),
                    "404": _NO_QUEUE,
                    "409": _json(_ref("Error"), "expected_count differs: nothing was cancelled."),
                },
            }
        },
        "/api/events": {
            "post": {
                "summary": "Enqueue an ECDP event (or a batch) as a Python producer would",
                "description": "The admin token or an ingestion token (`DISPATCHER_INGEST_TOKENS`, "
                "which can do nothing else). `event` is the ECDP request body as the API documents "
                "it, checked by the same rules as `dispatcher.events`. A dedupe key already taken "
                "in the queue answers 200 with the existing job's id. A batch (`events`) is "
                f"written in one transaction, all or nothing, at most {INGEST_MAX_BATCH} items.",
                "operationId": "enqueue",
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {
                            "schema": {"oneOf": [_ref("EnqueueRequest"), _ref("EnqueueBatch")]}
                        }
                    },
                },
                "responses": {
                    "201": _json(_ref("Enqueued"), "A new job."),
                    "200": _json(
                        {"oneOf": [_ref("Enqueued"), _ref("EnqueuedBatch")]},
                        "The dedupe key was taken: the existing job's id; or a batch's results.",
                    ),
                    **_ERRORS,
                    "403": _json(_ref("Error"), "Cookie sessions: missing CSRF token."),
                    "413": {"description": "The body is larger than 64 KiB."},
                },
            }
        },
        "/api/forget": {
            "post": {
                "summary": "Erase one customer's personal data (GDPR art. 17)",
                "description": "Name the customer by exactly one identifier. Their jobs lose "
                "body, email, dedupe key and error texts (waiting ones are cancelled); other "
                "texts lose any mention. An audit row keeps the counts, never the identifier.",
                "operationId": "forget",
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": _ref("ForgetRequest")}},
                },
                "responses": {
                    "200": _json(_ref("ForgetResult"), "Erased (or counted, with dry_run)."),
                    **_ERRORS,
                    "403": _json(_ref("Error"), "Cookie sessions: missing CSRF token."),
                },
            }
        },
    },
    "components": {
        "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        "schemas": {
            "Readiness": {
                "type": "object",
                "properties": {
                    "ready": {"type": "boolean"},
                    **{
                        name: {"type": "string", "description": "ok, or what is wrong."}
                        for name in ("database", "schema", "broker")
                    },
                },
                "required": ["ready", "database", "schema", "broker"],
                "additionalProperties": False,
            },
            "Error": {
                "type": "object",
                "properties": {"error": {"type": "string"}, "field": _nullable("string")},
                "required": ["error"],
            },
            "QueueStats": _object(
                paused={"type": "boolean"},
                pause_reason=_nullable("string"),
                paused_at=_nullable("string", format="date-time"),
                counts={
                    "type": "object",
                    "properties": {s: {"type": "integer"} for s in _STATUS_NAMES},
                    "required": _STATUS_NAMES,
                },
                oldest_due_age_seconds=_nullable("number"),
                circuit={
                    "type": "string",
                    "enum": [c.value for c in CIRCUIT_STATES],
                    "description": "The circuit breaker: while open or half_open nothing is sent "
                    "for the queue but one probe at a time; it closes by itself.",
                },
                circuit_since=_nullable(
                    "string",
                    format="date-time",
                    description="When the circuit took its current state (null: never opened).",
                ),
                circuit_reason=_nullable("string", description="Why it opened."),
                circuit_next_probe_at=_nullable(
                    "string", format="date-time", description="While open: the next probe."
                ),
                circuit_failed_probes={
                    "type": "integer",
                    "minimum": 0,
                    "description": "Failed probes since it opened.",
                },
                window=_nullable(
                    "integer",
                    description="Requests a worker process keeps in flight for the queue, as "
                    "last reported (closed loop: it shrinks when the API slows down or fails); "
                    "null until a worker has sent for it.",
                ),
                maybe_twice={
                    "type": "integer",
                    "minimum": 0,
                    "description": "Re-sends after a timeout that came after the request was "
                    "sent: each may have reached the API twice.",
                },
                poison_kinds={
                    "type": "array",
                    "items": {"type": "integer"},
                    "description": "Custom event ids taken for bad payloads (they failed while "
                    "others got through): they go dead after their attempts and never open the "
                    "circuit.",
                },
            ),
            "Queues": _object(
                queues={"type": "object", "additionalProperties": _ref("QueueStats")}
            ),
            "JobSummary": _object(**_SUMMARY),
            "Attempt": _object(
                number={"type": "integer"},
                started_at={"type": "string", "format": "date-time"},
                status_code=_nullable("integer"),
                duration_ms={"type": "integer"},
                error=_nullable("string"),
                response_body=_nullable("string"),
                outcome={"type": "string", "enum": [o.value for o in Outcome]},
                sent=_nullable(
                    "boolean",
                    description="Was the request's body completely written? false: it cannot "
                    "have reached the API; null: recorded before version 0006.",
                ),
            ),
            "JobDetail": _object(
                **_SUMMARY,
                payload={"type": "string", "description": "The exact body POSTed."},
                replays={"type": "integer"},
                replayed_at=_nullable("string", format="date-time"),
                next_attempt_at={"type": "string", "format": "date-time"},
                attempt_log={"type": "array", "items": _ref("Attempt")},
            ),
            "ReplayRequest": {
                **_object(required=False, **_move_body("Replay")),
                "additionalProperties": False,
            },
            "ReplayResult": _object(
                count={"type": "integer"},
                queues={"type": "array", "items": {"type": "string"}},
                dry_run={"type": "boolean"},
            ),
            "CancelRequest": {
                **_object(
                    required=False,
                    job_ids={
                        "type": "array",
                        "items": {
                            "type": ["integer", "string"],
                            "minimum": 1,
                            "pattern": "^[0-9]{1,20}$",
                        },
                        "maxItems": API_MAX_JOB_IDS,
                        "description": f"At most {API_MAX_JOB_IDS} per call (the body's limit); "
                        "a filter for more.",
                    },
                    status={"type": "string", "enum": [s.value for s in WAITING_STATUSES]},
                    customer_email={"type": "string", "maxLength": EMAIL_MAX},
                    **_move_body("Cancel"),
                ),
                "additionalProperties": False,
            },
            "CancelResult": _object(
                count={"type": "integer"},
                queues={"type": "array", "items": {"type": "string"}},
                dry_run={"type": "boolean"},
                in_flight={
                    "type": "integer",
                    "description": "Matching jobs in flight, left alone (may be on the wire).",
                },
            ),
            "ForgetRequest": {
                **_object(
                    required=False,
                    email={"type": "string", "maxLength": EMAIL_MAX},
                    customer_id={"type": "integer"},
                    phone={"type": "string", "maxLength": 20},
                    crm_id={"type": "string", "maxLength": 128},
                    email_md5={"type": "string", "pattern": "^[0-9a-fA-F]{32}$"},
                    email_sha256={"type": "string", "pattern": "^[0-9a-fA-F]{64}$"},
                    dry_run={"type": "boolean", "description": "Only count."},
                ),
                "minProperties": 1,
                "additionalProperties": False,
            },
            "EnqueueRequest": {
                **_object(
                    required=False,
                    event={
                        "type": "object",
                        "description": "The ECDP request body (customEventId, a customer "
                        "identifier or segments, dataFields).",
                    },
                    queue={"type": "string", "pattern": QUEUE_NAME.pattern, "default": "default"},
                    dedupe_key=_nullable("string", minLength=1, maxLength=MAX_DEDUPE_KEY),
                    ordering_key=_nullable("string", minLength=1, maxLength=MAX_ORDERING_KEY),
                    deliver_at=_nullable(
                        "string",
                        format="date-time",
                        description="Not sent before this time (with a UTC offset).",
                    ),
                ),
                "required": ["event"],
                "additionalProperties": False,
            },
            "EnqueueBatch": {
                **_object(
                    events={
                        "type": "array",
                        "items": _ref("EnqueueRequest"),
                        "minItems": 1,
                        "maxItems": INGEST_MAX_BATCH,
                    }
                ),
                "additionalProperties": False,
            },
            "Enqueued": _object(id={"type": "string"}),
            "EnqueuedBatch": _object(
                results={
                    "type": "array",
                    "items": _object(
                        id={"type": "string"}, status={"type": "integer", "enum": [200, 201]}
                    ),
                }
            ),
            "ForgetResult": _object(
                identifier_kind={"type": "string"},
                jobs={"type": "integer"},
                cancelled={"type": "integer"},
                in_flight={"type": "integer"},
                attempts={"type": "integer"},
                mentions={"type": "integer"},
                dry_run={"type": "boolean"},
            ),
        },
    },
}
