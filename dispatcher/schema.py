"""The outbox's tables.

``dispatcher_jobs`` is the source of truth for every job's state and schedule; the broker only
carries "work is due" hints. ``dispatcher_attempts`` keeps one row per HTTP request (the delivery
history), and ``dispatcher_queues`` holds the pause switch every worker reads. Partial indexes
keep "what is due?" as cheap with ten million delivered rows as with ten.

What an operator reads most (``dispatcher stats``, ``/metrics``, the overview) must not grow with
the history or the backlog, so nothing there counts rows: ``dispatcher_counts`` holds the number
of jobs per queue and status, every status, kept exact by the database itself. Triggers on the
jobs table (:func:`count_triggers`) see every statement that inserts, deletes or moves a job,
whoever runs it (the producers, workers, operators, a hand-written ``UPDATE``, the SQL enqueue
function). On PostgreSQL a statement-level trigger appends one row per (queue, status) it
changed to ``dispatcher_count_deltas`` (an append: concurrent producers never wait on a shared
counter row), which the sweeper folds into ``dispatcher_counts`` every pass
(``outbox.fold_counts``); a read adds the two. SQLite has one writer at a time, so its row
triggers update ``dispatcher_counts`` directly.
"""

from __future__ import annotations

from collections.abc import Iterable
from enum import StrEnum
from typing import Any

import sqlalchemy as sa

from dispatcher.breaker import Circuit
from dispatcher.db import UTCDateTime


class JobStatus(StrEnum):
    """A job's state (``dispatcher_jobs.status``). A str, so it binds, compares and prints as its
    value; the CHECK constraint ``ck_dispatcher_jobs_status`` holds the table to these."""

    PENDING = "pending"  # waiting for next_attempt_at (new, given back, or replayed)
    IN_FLIGHT = "in_flight"  # leased by a worker until lease_expires_at
    RETRYING = "retrying"  # failed, waiting for next_attempt_at
    DELIVERED = "delivered"  # the API answered 2xx (final)
    DEAD = "dead"  # rejected, or out of attempts (final; an operator may replay it)
    # Never sent, on an operator's word (``dispatcher cancel`` or ``forget``): final, counted in
    # dispatcher_counts like delivered and dead; an operator may replay it.
    CANCELLED = "cancelled"
    # Enqueued with a ``deliver_at`` still ahead: waiting for its time, apart from the due
    # backlog (a week of reminders is no outage). The sweeper makes it pending at its time
    # (outbox.promote_scheduled).
    SCHEDULED = "scheduled"


STATUSES: tuple[JobStatus, ...] = tuple(JobStatus)
CIRCUIT_STATES: tuple[Circuit, ...] = tuple(Circuit)  # see dispatcher.breaker
DUE_STATUSES = (JobStatus.PENDING, JobStatus.RETRYING)
# Not sent yet and not on the wire: what cancel and forget may stop.
WAITING_STATUSES = (JobStatus.SCHEDULED, JobStatus.PENDING, JobStatus.RETRYING)
FINISHED_STATUSES = (JobStatus.DELIVERED, JobStatus.DEAD, JobStatus.CANCELLED)

ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")  # SQLite: INTEGER PRIMARY KEY = rowid

# Partial-index predicates, written once as SQL text so the model and the migration agree.
DUE_WHERE = "status IN ('pending', 'retrying')"
LEASED_WHERE = "status = 'in_flight'"
DEDUPE_WHERE = "dedupe_key IS NOT NULL"
EMAIL_WHERE = "customer_email IS NOT NULL"
LIVE_WHERE = "status IN ('pending', 'in_flight', 'retrying', 'scheduled')"
SCHEDULED_WHERE = "status = 'scheduled'"
ORDERING_WHERE = f"ordering_key IS NOT NULL AND {LIVE_WHERE}"


def kinds_of(text: str | None) -> list[int]:
    """``"12,40"`` (a queue row's list of custom event ids: circuit_kinds, poison_kinds) as
    ``[12, 40]``."""
    return [int(k) for k in (text or "").split(",") if k.strip().lstrip("-").isdigit()]


def kinds_text(kinds: Iterable[int]) -> str | None:
    """The other way round; None for no kind."""
    return ",".join(str(k) for k in sorted(set(kinds))) or None


def _partial(where: str) -> dict[str, Any]:
    return {"postgresql_where": sa.text(where), "sqlite_where": sa.text(where)}


metadata = sa.MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s",
        "pk": "pk_%(table_name)s",
    }
)

jobs = sa.Table(
    "dispatcher_jobs",
    metadata,
    sa.Column("id", ID, primary_key=True, autoincrement=True),
    sa.Column("queue", sa.String(64), nullable=False),
    sa.Column("endpoint", sa.String(64), nullable=False),
    sa.Column("custom_event_id", sa.Integer, nullable=False),
    # Lower-cased copy of the body's customerEmail, for the admin lookup. Personal data: purged
    # together with the job.
    sa.Column("customer_email", sa.String(320)),
    sa.Column("payload", sa.Text, nullable=False),  # the exact JSON body that is POSTed
    sa.Column("status", sa.String(16), nullable=False, server_default=JobStatus.PENDING.value),
    sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),  # counted attempts
    sa.Column("next_attempt_at", UTCDateTime, nullable=False),
    sa.Column("lease_token", sa.String(32)),
    sa.Column("lease_expires_at", UTCDateTime),
    sa.Column("dedupe_key", sa.String(255)),
    sa.Column("last_status_code", sa.Integer),
    sa.Column("last_error", sa.Text),  # the last answer's reason (policy.Decision.reason)
    # Dead because its last counted attempt was the last one allowed (policy.Decision.exhausted):
    # shown as "max attempts exceeded: <last_error>"; a circuit that opens on the outage that
    # killed it brings it back (outbox.open_circuit).
    sa.Column("exhausted", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("replays", sa.Integer, nullable=False, server_default="0"),
    sa.Column("replayed_at", UTCDateTime),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("updated_at", UTCDateTime, nullable=False),
    sa.Column("delivered_at", UTCDateTime),
    # The producer's W3C trace context (JSON), when it runs under OpenTelemetry: see tracing.py.
    sa.Column("trace_context", sa.Text),
    # Jobs of one queue that share an ordering key are sent one at a time, in commit order
    # (outbox._lease; the producer serialises a key's writers: see outbox.lock_ordering_keys).
    sa.Column("ordering_key", sa.String(255)),
    sa.CheckConstraint(f"status IN ({', '.join(repr(s.value) for s in JobStatus)})", name="status"),
    sa.Index("ix_dispatcher_jobs_due", "queue", "next_attempt_at", "id", **_partial(DUE_WHERE)),
    sa.Index("ix_dispatcher_jobs_leased", "lease_expires_at", **_partial(LEASED_WHERE)),
    sa.Index("ix_dispatcher_jobs_scheduled", "next_attempt_at", **_partial(SCHEDULED_WHERE)),
    sa.Index(
        "uq_dispatcher_jobs_dedupe", "queue", "dedupe_key", unique=True, **_partial(DEDUPE_WHERE)
    ),
    sa.Index("ix_dispatcher_jobs_email", "customer_email", **_partial(EMAIL_WHERE)),
    sa.Index("ix_dispatcher_jobs_status_created", "status", "created_at"),
    sa.Index("ix_dispatcher_jobs_event", "custom_event_id"),
    # A key's live jobs, for the claim's "is an earlier job of this key still live?" probe.
    sa.Index(
        "ix_dispatcher_jobs_ordering", "queue", "ordering_key", "id", **_partial(ORDERING_WHERE)
    ),
)

attempts = sa.Table(
    "dispatcher_attempts",
    metadata,
    sa.Column("id", ID, primary_key=True, autoincrement=True),
    sa.Column(
        "job_id",
        sa.BigInteger,
        sa.ForeignKey("dispatcher_jobs.id", ondelete="CASCADE"),
        nullable=False,
    ),
    sa.Column("started_at", UTCDateTime, nullable=False),
    sa.Column("duration_ms", sa.Integer, nullable=False),
    sa.Column("status_code", sa.Integer),  # NULL: no HTTP answer (timeout, connection error)
    sa.Column("error", sa.Text),
    sa.Column("response_body", sa.Text),  # truncated
    sa.Column("outcome", sa.String(16), nullable=False),  # delivered / retry / dead / pause
    sa.Column("counted", sa.Boolean, nullable=False),  # toward the attempt limit (not for 401/403)
    # Was the request's body completely written? False: it cannot have reached the API (a
    # timeout while connecting or waiting for a connection). NULL: recorded before 0006.
    sa.Column("sent", sa.Boolean),
    sa.Index("ix_dispatcher_attempts_job_id", "job_id", "id"),
)

queues = sa.Table(
    "dispatcher_queues",
    metadata,
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("paused", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("pause_reason", sa.Text),
    sa.Column("paused_at", UTCDateTime),
    sa.Column("updated_at", UTCDateTime, nullable=False),
    # Throttling shared by all workers (DISPATCHER_RATE_LIMIT): a token bucket ...
    sa.Column("tokens", sa.Float),
    sa.Column("tokens_at", UTCDateTime),
    # ... and a pause of the whole queue after a 429 (its Retry-After or the backoff).
    sa.Column("cooldown_until", UTCDateTime),
    # The circuit breaker (dispatcher.breaker): while not closed, workers send nothing for the
    # queue but one probe at circuit_retry_at; circuit_probes failed probes grow that interval.
    sa.Column("circuit", sa.String(16), nullable=False, server_default=Circuit.CLOSED.value),
    sa.Column("circuit_since", UTCDateTime),
    sa.Column("circuit_reason", sa.Text),
    sa.Column("circuit_retry_at", UTCDateTime),
    sa.Column("circuit_probes", sa.Integer, nullable=False, server_default="0"),
    # The custom event ids whose failures opened the circuit ("12,40"): a probe prefers
    # another kind, and one that succeeds tells a bad payload from an outage (breaker.py).
    sa.Column("circuit_kinds", sa.Text),
    # Kinds that failed while another kind got through: bad payloads, not an outage. Their
    # failures count toward their jobs' attempts and never open the circuit, until one of them
    # is delivered or poison_until passes.
    sa.Column("poison_kinds", sa.Text),
    sa.Column("poison_until", UTCDateTime),
    # The in-flight window a worker last reported for the queue (dispatcher.window).
    sa.Column("send_window", sa.Integer),
    # Re-sends after a timeout that came after the body was written: each may have reached the
    # API twice (ECDP has no idempotency key).
    sa.Column("resent", sa.BigInteger, nullable=False, server_default="0"),
    # Signals travel on a Celery queue of the queue's own, "dispatcher.<name>": set by
    # `dispatcher worker --queues`, read by every process that signals (dispatcher.routing).
    sa.Column("dedicated", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.CheckConstraint(f"circuit IN ({', '.join(repr(c.value) for c in Circuit)})", name="circuit"),
)

# Jobs per queue and status, exact, kept by the jobs table's triggers (see the module's docstring
# and count_triggers). PostgreSQL's triggers append to dispatcher_count_deltas, folded in here by
# the sweeper; SQLite's write here directly. Reads add the two (outbox.job_counts).
counts = sa.Table(
    "dispatcher_counts",
    metadata,
    sa.Column("queue", sa.String(64), primary_key=True),
    sa.Column("status", sa.String(16), primary_key=True),
    sa.Column("jobs", sa.BigInteger, nullable=False, server_default="0"),
)

count_deltas = sa.Table(
    "dispatcher_count_deltas",
    metadata,
    sa.Column("queue", sa.String(64), nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("jobs", sa.BigInteger, nullable=False),
)

COUNT_TRIGGERS = ("insert", "update", "delete")  # dispatcher_jobs_count_<operation>


def count_triggers(dialect: str, table: str = "dispatcher_jobs") -> list[str]:
    """The statements that make ``table`` (the jobs table, or a partitioned layout's new parent)
    keep ``dispatcher_counts`` exact. Migration 0008 holds a frozen copy; a test holds the two
    equal, so a change here comes with a migration."""
    if dialect == "postgresql":
        return [
            _COUNT_FUNCTION_PG,
            *(
                f"CREATE TRIGGER dispatcher_jobs_count_{op} AFTER {op.upper()} ON {table} "
                f"REFERENCING {refs} FOR EACH STATEMENT EXECUTE FUNCTION dispatcher_count_jobs()"
                for op, refs in (
                    ("insert", "NEW TABLE AS new_rows"),
                    ("update", "OLD TABLE AS old_rows NEW TABLE AS new_rows"),
                    ("delete", "OLD TABLE AS old_rows"),
                )
            ),
        ]
    return [
        f"CREATE TRIGGER dispatcher_jobs_count_insert AFTER INSERT ON {table} "
        f"BEGIN {_bump_sqlite('NEW', '+')} END",
        f"CREATE TRIGGER dispatcher_jobs_count_update AFTER UPDATE OF queue, status ON {table} "
        "WHEN OLD.queue IS NOT NEW.queue OR OLD.status IS NOT NEW.status "
        f"BEGIN {_bump_sqlite('OLD', '-')} {_bump_sqlite('NEW', '+')} END",
        f"CREATE TRIGGER dispatcher_jobs_count_delete AFTER DELETE ON {table} "
        f"BEGIN {_bump_sqlite('OLD', '-')} END",
    ]


def _bump_sqlite(row: str, sign: str) -> str:
    return (
        f"INSERT INTO dispatcher_counts (queue, status, jobs) "
        f"VALUES ({row}.queue, {row}.status, {sign}1) "
        f"ON CONFLICT (queue, status) DO UPDATE SET jobs = jobs {sign} 1;"
    )


# One function for the three triggers: each statement's rows, netted per (queue, status), so a
# statement that changes no job's queue or status (a lease renewal, an erasure) appends nothing.
# (PL/pgSQL plans each branch when it first runs it, so a branch may name a transition table
# only the other triggers have.)
_COUNT_FUNCTION_PG = """CREATE OR REPLACE FUNCTION dispatcher_count_jobs() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO dispatcher_count_deltas (queue, status, jobs)
        SELECT queue, status, count(*) FROM new_rows GROUP BY queue, status;
    ELSIF TG_OP = 'DELETE' THEN
        INSERT INTO dispatcher_count_deltas (queue, status, jobs)
        SELECT queue, status, -count(*) FROM old_rows GROUP BY queue, status;
    ELSE
        INSERT INTO dispatcher_count_deltas (queue, status, jobs)
        SELECT queue, status, sum(n) FROM (
            SELECT queue, status, 1 AS n FROM new_rows
            UNION ALL
            SELECT queue, status, -1 AS n FROM old_rows
        ) AS moved
        GROUP BY queue, status HAVING sum(n) <> 0;
    END IF;
    RETURN NULL;
END
$$"""

# The admin page's charts (dispatcher.admin.activity) keep each bucket of a queue's attempts once
# it has settled (no attempt can still arrive in it): a page view then reads the window's settled
# buckets here and measures only the newest from the attempts table, so its cost no longer grows
# with a day's traffic. ``dispatcher_activity_marks`` says which range of buckets is kept
# ([since, through), per queue and bucket width); a bucket in it without a row had no attempt.
activity_buckets = sa.Table(
    "dispatcher_activity",
    metadata,
    sa.Column("queue", sa.String(64), primary_key=True),
    sa.Column("step_seconds", sa.Integer, primary_key=True),
    sa.Column("start", UTCDateTime, primary_key=True),
    sa.Column("delivered", sa.Integer, nullable=False),
    sa.Column("retried", sa.Integer, nullable=False),
    sa.Column("dead", sa.Integer, nullable=False),
    sa.Column("paused", sa.Integer, nullable=False),
    sa.Column("p50_ms", sa.Float),
    sa.Column("p99_ms", sa.Float),
)

activity_marks = sa.Table(
    "dispatcher_activity_marks",
    metadata,
    sa.Column("queue", sa.String(64), primary_key=True),
    sa.Column("step_seconds", sa.Integer, primary_key=True),
    sa.Column("since", UTCDateTime, nullable=False),
    sa.Column("through", UTCDateTime, nullable=False),
)

# What ``dispatcher forget`` erased, and when (GDPR art. 17 asks to show that a request was
# answered): which kind of identifier it was given, never its value, and how many rows changed.
erasures = sa.Table(
    "dispatcher_erasures",
    metadata,
    sa.Column("id", ID, primary_key=True, autoincrement=True),
    sa.Column("at", UTCDateTime, nullable=False),
    sa.Column("identifier_kind", sa.String(32), nullable=False),  # email, phone, customer_id …
    sa.Column("jobs", sa.Integer, nullable=False),  # jobs of the customer, their data erased
    sa.Column("cancelled", sa.Integer, nullable=False),  # of those, waiting ones now cancelled
    sa.Column("in_flight", sa.Integer, nullable=False),  # of those, on the wire at the time
    sa.Column("attempts", sa.Integer, nullable=False),  # attempt rows whose texts were erased
    sa.Column("mentions", sa.Integer, nullable=False),  # other texts the identifier was cut from
)
