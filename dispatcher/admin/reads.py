"""Reading the outbox as an operator: history, one job in full, and per-queue stats.

The job and attempt tables *are* the delivery history, so these are plain queries over them, run
in the caller's transaction when given a Connection. Every filter value is a bound parameter.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any

import sqlalchemy as sa

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
from dispatcher.policy import Outcome
from dispatcher.schema import DUE_STATUSES, STATUSES, JobStatus, attempts, jobs, queues

__all__ = ["history", "history_page", "show", "stats"]

Bind = sa.Connection | sa.Engine


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
        "last_error": row.last_error,
        "created_at": row.created_at,
        "delivered_at": row.delivered_at,
    }


def history(bind: Bind, f: Filter | None = None, *, limit: int = 50) -> list[JobSummary]:
    """Jobs matching ``f`` (every job without one), newest first, at most ``limit``."""
    conditions = where(f or Filter())
    limit = check_int("limit", limit, 1, MAX_LIMIT)
    query = (
        sa.select(*_SUMMARY_COLUMNS)
        .where(*conditions)
        .order_by(jobs.c.created_at.desc(), jobs.c.id.desc())
        .limit(limit)
    )
    with connected(bind) as conn:
        return [JobSummary(**_summary_fields(row)) for row in conn.execute(query)]


def history_page(bind: Bind, f: Filter, page: Page) -> tuple[list[JobSummary], bool]:
    """One page of :func:`history`, and whether there is a next one."""
    end = page.number * page.size
    found = history(bind, f, limit=end + 1)
    return found[end - page.size : end], len(found) > end


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
            )
            for n, a in enumerate(tries, start=1)
        ),
    )


def stats(bind: Bind, now: datetime) -> dict[str, QueueStats]:
    """Per queue (those with jobs or a queue row), sorted by name: counts by status, delivery lag,
    the pause switch and the circuit breaker's state. The counts and the lag come from one grouped
    scan of the jobs table; the rest from the queues table."""
    now = check_time("now", now)
    due_since = sa.case(
        (
            sa.and_(jobs.c.status.in_(DUE_STATUSES), jobs.c.next_attempt_at <= now),
            jobs.c.next_attempt_at,
        ),
    )
    grouped = sa.select(
        jobs.c.queue, jobs.c.status, sa.func.count().label("n"), sa.func.min(due_since).label("due")
    ).group_by(jobs.c.queue, jobs.c.status)
    with connected(bind) as conn:
        rows = conn.execute(grouped).all()
        switches = {r.name: r for r in conn.execute(sa.select(queues))}
    counts: dict[str, dict[str, int]] = {}
    oldest: dict[str, datetime] = {}
    for row in rows:
        counts.setdefault(row.queue, dict.fromkeys(STATUSES, 0))[row.status] = int(row.n)
        if row.due is not None and (row.queue not in oldest or row.due < oldest[row.queue]):
            oldest[row.queue] = row.due
    result: dict[str, QueueStats] = {}
    for name in sorted(counts.keys() | switches.keys()):
        switch = switches.get(name)
        due = oldest.get(name)
        circuit = (switch.circuit if switch is not None else None) or "closed"
        result[name] = QueueStats(
            name=name,
            paused=bool(switch is not None and switch.paused),
            pause_reason=switch.pause_reason if switch is not None else None,
            paused_at=switch.paused_at if switch is not None else None,
            counts=counts.get(name, dict.fromkeys(STATUSES, 0)),
            oldest_due_age_seconds=(
                None if due is None else round(max(0.0, (now - due).total_seconds()), 3)
            ),
            circuit=circuit,
            circuit_since=switch.circuit_since if switch is not None else None,
            circuit_reason=switch.circuit_reason if switch is not None else None,
            circuit_next_probe_at=(
                switch.circuit_retry_at if switch is not None and circuit == "open" else None
            ),
            circuit_failed_probes=int(switch.circuit_probes or 0) if switch is not None else 0,
        )
    return result
