"""Reading the outbox as an operator: history, one job in full, and per-queue stats (the charts,
which keep what they measured, are :mod:`dispatcher.admin.activity`).

The job and attempt tables *are* the delivery history, so these are plain queries over them, run
in the caller's transaction when given a Connection. Every filter value is a bound parameter.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa

from dispatcher import outbox
from dispatcher.admin.filters import (
    MAX_ID,
    MAX_LIMIT,
    AdminError,
    Filter,
    Page,
    check_int,
    check_time,
)
from dispatcher.admin.results import Attempt, JobDetail, JobSummary, QueueStats
from dispatcher.breaker import Circuit
from dispatcher.masking import redact
from dispatcher.policy import Outcome, shown_reason
from dispatcher.schema import (
    DUE_STATUSES,
    DUE_WHERE,
    STATUSES,
    JobStatus,
    attempts,
    jobs,
    kinds_of,
    queues,
)

__all__ = [
    "history",
    "history_page",
    "show",
    "stats",
]

Bind = sa.Connection | sa.Engine
_DUE = sa.text(DUE_WHERE)  # literal, so PostgreSQL matches the partial index


@contextmanager
def connected(bind: Bind, *, write: bool = False) -> Iterator[sa.Connection]:
    """The caller's Connection, or one of ``bind``'s (in a transaction of its own if ``write``)."""
    if isinstance(bind, sa.Engine):
        with bind.begin() if write else bind.connect() as conn:
            yield conn
    else:
        yield bind


def where(f: Filter) -> list[sa.ColumnElement[bool]]:
    """``f`` as SQL conditions on the jobs table."""
    if not isinstance(f, Filter):
        raise AdminError(None, f"expected a Filter (got {type(f).__name__})")
    found: list[sa.ColumnElement[bool]] = []
    if f.status is not None:
        found.append(jobs.c.status == f.status)
    if f.queue is not None:
        found.append(jobs.c.queue == f.queue)
    if f.event_id is not None:
        found.append(jobs.c.custom_event_id == f.event_id)
    if f.customer_email is not None:
        # Stored lower-cased (the producer does the same), so the index answers exact matches.
        found.append(jobs.c.customer_email == f.customer_email.lower())
    if f.status_code is not None:
        found.append(jobs.c.last_status_code == f.status_code)
    if f.since is not None:
        found.append(jobs.c.created_at >= f.since)
    if f.until is not None:
        found.append(jobs.c.created_at < f.until)
    return found


def job_id(value: object) -> int | None:
    """A job id as int, or None if it cannot name a job (out of BIGINT range)."""
    if isinstance(value, str) and value.strip().isascii() and value.strip().isdigit():
        value = int(value.strip())
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise AdminError("job_id", f"expected a job id, a positive integer (got {value!r:.80})")
    return value if 1 <= value <= MAX_ID else None


_SUMMARY_COLUMNS = (
    jobs.c.id,
    jobs.c.queue,
    jobs.c.endpoint,
    jobs.c.custom_event_id,
    jobs.c.status,
    jobs.c.attempts,
    jobs.c.last_status_code,
    jobs.c.last_error,
    jobs.c.exhausted,
    jobs.c.created_at,
    jobs.c.delivered_at,
)


def _summary_fields(row: Any) -> dict[str, Any]:
    return {
        "id": str(row.id),
        "queue": row.queue,
        "endpoint": row.endpoint,
        "custom_event_id": row.custom_event_id,
        "status": JobStatus(row.status),
        "attempts": row.attempts,
        "last_status_code": row.last_status_code,
        "last_error": shown_reason(row.last_error, exhausted=bool(row.exhausted)),
        "created_at": row.created_at,
        "delivered_at": row.delivered_at,
    }


def history(
    bind: Bind, f: Filter | None = None, *, limit: int = 50, before: int | None = None
) -> list[JobSummary]:
    """Jobs matching ``f`` (every job without one), newest first, at most ``limit``; with
    ``before`` (a job id, the cursor), only older ones."""
    f = f or Filter()
    conditions = where(f)
    limit = check_int("limit", limit, 1, MAX_LIMIT)
    if before is not None:
        conditions.append(jobs.c.id < check_int("before", before, 1, MAX_ID))
    with connected(bind) as conn:
        conditions += _window_ids(conn, f)
        # Newest first by id (the order they were enqueued in): the primary key serves both the
        # order and the cursor, so a deep page is an index range scan, as cheap as the first.
        query = (
            sa.select(*_SUMMARY_COLUMNS).where(*conditions).order_by(jobs.c.id.desc()).limit(limit)
        )
        return [JobSummary(**_summary_fields(row)) for row in conn.execute(query)]


# Jobs' ids follow their created_at within this: created_at is the producer's clock, taken just
# before its INSERT (which may wait for a pooled connection, 30 s at most, and retry once), and
# producers on different machines differ by their clocks' skew (NTP keeps it far below a second).
# An hour allows for a clock set minutes wrong; a wider skew would only hide jobs from a window.
CREATED_MARGIN = timedelta(hours=1)


def _window_ids(conn: sa.Connection, f: Filter) -> list[sa.ColumnElement[bool]]:
    """The id range that holds ``f``'s time window (see :func:`id_split`), so that the newest
    first scan of the primary key starts a margin above the window and stops a margin below it
    instead of walking every newer job (there is no index on ``created_at`` alone). The exact
    ``created_at`` conditions stay. None for a lookup by email or event id: their own indexes
    find the few rows, and the window only filters those."""
    if f.customer_email is not None or f.event_id is not None:
        return []
    found: list[sa.ColumnElement[bool]] = []
    if f.since is not None:
        early, _ = id_split(conn, jobs, jobs.c.created_at, f.since - CREATED_MARGIN)
        found.append(jobs.c.id > early)
    if f.until is not None:
        _, late = id_split(conn, jobs, jobs.c.created_at, f.until + CREATED_MARGIN)
        if late is not None:
            found.append(jobs.c.id < late)
    return found


def history_page(bind: Bind, f: Filter, page: Page) -> tuple[list[JobSummary], bool]:
    """One page of :func:`history` (keyset paging: the jobs below ``page.before``), and whether
    there is an older one (``Page(before=int(found[-1].id))``)."""
    if not isinstance(page, Page):
        raise AdminError(None, f"expected a Page (got {type(page).__name__})")
    found = history(bind, f, limit=page.size + 1, before=page.before)
    return found[: page.size], len(found) > page.size


def show(bind: Bind, job: int | str) -> JobDetail | None:
    """One job with its exact body and every attempt, or None if there is no such job."""
    number = job_id(job)
    if number is None:
        return None
    with connected(bind) as conn:
        row = conn.execute(
            sa.select(
                *_SUMMARY_COLUMNS,
                jobs.c.payload,
                jobs.c.replays,
                jobs.c.replayed_at,
                jobs.c.next_attempt_at,
            ).where(jobs.c.id == number)
        ).one_or_none()
        if row is None:
            return None
        tries = conn.execute(
            sa.select(attempts).where(attempts.c.job_id == number).order_by(attempts.c.id)
        ).all()
    return JobDetail(
        **_summary_fields(row),
        payload=row.payload,
        replays=row.replays,
        replayed_at=row.replayed_at,
        next_attempt_at=row.next_attempt_at,
        attempt_log=tuple(
            Attempt(
                number=n,
                started_at=a.started_at,
                status_code=a.status_code,
                duration_ms=a.duration_ms,
                error=a.error,
                response_body=a.response_body,
                outcome=Outcome(a.outcome),
                sent=a.sent,
            )
            for n, a in enumerate(tries, start=1)
        ),
    )


def stats(bind: Bind, now: datetime) -> dict[str, QueueStats]:
    """Per queue (those with jobs or a queue row), sorted by name: counts by status, delivery lag,
    the pause switch and the circuit breaker's state. Their reasons hold the API's words, so they
    are masked (:func:`dispatcher.masking.redact`) for every output that shows them.

    Nothing here counts rows, so it costs the same with ten million jobs waiting or delivered as
    with ten: the counts are read from ``dispatcher_counts`` and the triggers' unfolded deltas
    (:func:`dispatcher.outbox.job_counts`), and the lag of each queue with due jobs is the first
    entry of its part of ``ix_dispatcher_jobs_due`` (one index probe a queue)."""
    now = check_time("now", now)
    with connected(bind) as conn:
        counted = outbox.job_counts(conn)
        waiting = sorted({q for (q, s), n in counted.items() if s in DUE_STATUSES and n > 0})
        first_due = sa.select(sa.func.min(jobs.c.next_attempt_at)).where(
            jobs.c.queue == sa.bindparam("q"), _DUE
        )
        oldest: dict[str, datetime] = {}
        for name in waiting:
            due = conn.execute(first_due, {"q": name}).scalar()
            if due is not None and due <= now:
                oldest[name] = due
        switches = {r.name: r for r in conn.execute(sa.select(queues))}
    counts: dict[str, dict[str, int]] = {}
    for (name, status), n in counted.items():
        counts.setdefault(name, dict.fromkeys(STATUSES, 0))[status] = n
    result: dict[str, QueueStats] = {}
    for name in sorted(counts.keys() | switches.keys()):
        switch = switches.get(name)
        due = oldest.get(name)
        circuit = Circuit((switch.circuit if switch is not None else None) or Circuit.CLOSED)
        result[name] = QueueStats(
            name=name,
            paused=bool(switch is not None and switch.paused),
            pause_reason=redact(switch.pause_reason) if switch is not None else None,
            paused_at=switch.paused_at if switch is not None else None,
            counts=counts.get(name, dict.fromkeys(STATUSES, 0)),
            oldest_due_age_seconds=(
                None if due is None else round(max(0.0, (now - due).total_seconds()), 3)
            ),
            circuit=circuit,
            circuit_since=switch.circuit_since if switch is not None else None,
            circuit_reason=redact(switch.circuit_reason) if switch is not None else None,
            circuit_next_probe_at=(
                switch.circuit_retry_at if switch is not None and circuit is Circuit.OPEN else None
            ),
            circuit_failed_probes=int(switch.circuit_probes or 0) if switch is not None else 0,
            window=switch.send_window if switch is not None else None,
            maybe_twice=int(switch.resent or 0) if switch is not None else 0,
            poison_kinds=tuple(_poison(switch, now)),
        )
    return result


def _poison(switch: sa.Row[Any] | None, now: datetime) -> list[int]:
    if switch is None or switch.poison_until is None or switch.poison_until <= now:
        return []
    return kinds_of(switch.poison_kinds)


def id_split(
    conn: sa.Connection, table: sa.Table, at: sa.Column[datetime], cutoff: datetime
) -> tuple[int, int | None]:
    """``(early, late)``: the id of a row of ``table`` whose ``at`` is before ``cutoff`` (0: the
    first row's is not) and that of the next row by id, whose ``at`` is not (None: there is no
    such row), found with a few primary-key lookups (a binary search) instead of an index on
    ``at``.

    Meant for columns that ids follow within a margin (two rows whose ``at`` differ by more than
    it are numbered in that order; see the callers): then every row whose ``at`` is at least
    ``cutoff`` plus the margin has an id above ``early``, and every row whose ``at`` is before
    ``cutoff`` minus the margin an id below ``late``. Both bounds are rows seen (or 0), so this
    holds for rows not yet committed too."""
    first_at = sa.select(at).where(table.c.id == sa.func.min(table.c.id).select().scalar_subquery())
    first, last, started = conn.execute(
        sa.select(sa.func.min(table.c.id), sa.func.max(table.c.id), first_at.scalar_subquery())
    ).one()
    if first is None or last is None:
        return 0, None
    if started >= cutoff:
        return 0, int(first)
    # The search in one statement (one round trip instead of one per step), each step as in
    #     middle = (low + high) // 2; found = the first id >= middle
    #     if found < high and found's at < cutoff: low = found
    #     else: high, late = middle, found
    # Invariant: the row at `low` is early; the first row at or after `high` is `late` (None:
    # there is none), and it is late.
    step = sa.select(
        sa.literal(int(first), sa.BigInteger).label("low"),
        sa.literal(int(last) + 1, sa.BigInteger).label("high"),
        sa.null().cast(sa.BigInteger).label("late"),
    ).cte("search", recursive=True)
    middle = (step.c.low + step.c.high) // 2
    found = (  # the table's own FROM, also inside found_at (where it would correlate)
        sa.select(sa.func.min(table.c.id))
        .where(table.c.id >= middle)
        .correlate_except(table)
        .scalar_subquery()
    )
    found_at = sa.select(at).where(table.c.id == found).scalar_subquery()
    early = sa.and_(found < step.c.high, found_at < cutoff)
    step = step.union_all(
        sa.select(
            sa.case((early, found), else_=step.c.low),
            sa.case((early, step.c.high), else_=middle),
            sa.case((early, step.c.late), else_=found),
        ).where(step.c.high - step.c.low > 1)
    )
    low, late = conn.execute(
        sa.select(step.c.low, step.c.late).where(step.c.high - step.c.low <= 1)
    ).one()
    return int(low), None if late is None else int(late)


def queue_names(conn: sa.Connection) -> set[str]:
    """Every queue with a job (from the counts) or a row in the queues table: every queue a
    page can show."""
    return {q for q, _ in outbox.job_counts(conn)} | set(
        conn.execute(sa.select(queues.c.name)).scalars()
    )
