"""Reading the outbox as an operator: history, one job in full, and per-queue stats.

The job and attempt tables *are* the delivery history, so these are plain queries over them, run
in the caller's transaction when given a Connection. Every filter value is a bound parameter.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from dispatcher import outbox
from dispatcher.admin.filters import (
    MAX_ID,
    MAX_LIMIT,
    AdminError,
    Filter,
    Page,
    check_int,
    check_queue,
    check_time,
)
from dispatcher.admin.results import Attempt, JobDetail, JobSummary, QueueStats
from dispatcher.admin.times import iso as _iso
from dispatcher.db import utcnow
from dispatcher.masking import redact
from dispatcher.policy import Outcome
from dispatcher.schema import (
    DUE_STATUSES,
    DUE_WHERE,
    STATUSES,
    JobStatus,
    activity_buckets,
    activity_marks,
    attempts,
    jobs,
    kinds_of,
    queues,
)

__all__ = [
    "ACTIVITY_WINDOWS",
    "Activity",
    "ActivityBucket",
    "activity",
    "delivered_per_minute",
    "history",
    "history_page",
    "keep_activity",
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
    """The id range that holds ``f``'s time window (see :func:`_id_split`), so that the newest
    first scan of the primary key starts a margin above the window and stops a margin below it
    instead of walking every newer job (there is no index on ``created_at`` alone). The exact
    ``created_at`` conditions stay. None for a lookup by email or event id: their own indexes
    find the few rows, and the window only filters those."""
    if f.customer_email is not None or f.event_id is not None:
        return []
    found: list[sa.ColumnElement[bool]] = []
    if f.since is not None:
        early, _ = _id_split(conn, jobs, jobs.c.created_at, f.since - CREATED_MARGIN)
        found.append(jobs.c.id > early)
    if f.until is not None:
        _, late = _id_split(conn, jobs, jobs.c.created_at, f.until + CREATED_MARGIN)
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
        circuit = (switch.circuit if switch is not None else None) or "closed"
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
                switch.circuit_retry_at if switch is not None and circuit == "open" else None
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


# --------------------------------------------------------------------------- activity (charts)

# The windows the admin page charts: name -> (bucket seconds, buckets).
ACTIVITY_WINDOWS: dict[str, tuple[int, int]] = {"1h": (60, 60), "24h": (900, 96)}
# An attempt row is written when its batch ends, within seconds of its request's start (the HTTP
# deadline, 10 s by default; a task drains for at most 10 s): 15 minutes is a generous bound. A row
# written later than that would only be missing from a chart.
ARRIVAL_MARGIN = timedelta(minutes=15)


@dataclass(frozen=True, slots=True)
class ActivityBucket:
    """One bucket of a queue's attempts: how many had each outcome, and the answer time (ms) of
    all of them at the 50th and 99th percentile (None: no attempt in the bucket)."""

    start: datetime
    delivered: int
    retried: int
    dead: int
    paused: int
    p50_ms: float | None
    p99_ms: float | None

    @property
    def attempts(self) -> int:
        return self.delivered + self.retried + self.dead + self.paused

    def as_dict(self) -> dict[str, Any]:
        return {
            "start": _iso(self.start),
            "delivered": self.delivered,
            "retried": self.retried,
            "dead": self.dead,
            "paused": self.paused,
            "p50_ms": self.p50_ms,
            "p99_ms": self.p99_ms,
        }


@dataclass(frozen=True, slots=True)
class Activity:
    """A queue's attempts over a window ``[start, end)`` in equal buckets, oldest first."""

    queue: str
    window: str
    step_seconds: int
    start: datetime
    end: datetime
    buckets: tuple[ActivityBucket, ...]

    def as_dict(self) -> dict[str, Any]:
        return {
            "queue": self.queue,
            "window": self.window,
            "step_seconds": self.step_seconds,
            "start": _iso(self.start),
            "end": _iso(self.end),
            "buckets": [b.as_dict() for b in self.buckets],
        }


def _window(window: str, now: datetime) -> tuple[int, int, datetime, datetime]:
    """``(step, count, start, end)``: buckets aligned to whole steps, the last one holding now."""
    if window not in ACTIVITY_WINDOWS:
        raise AdminError("window", f"expected one of {', '.join(ACTIVITY_WINDOWS)}")
    now = check_time("now", now)
    step, count = ACTIVITY_WINDOWS[window]
    epoch = int(now.timestamp()) // step * step + step
    end = datetime.fromtimestamp(epoch, UTC)
    return step, count, end - timedelta(seconds=step * count), end


def _id_split(
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


def _id_floor(conn: sa.Connection, since: datetime) -> int:
    """An attempt id below that of every attempt started at or after ``since``, so that the
    chart queries read a range of the primary key instead of the whole table (there is no index
    on ``started_at``).

    Attempt ids follow insertion order and a row is inserted within ``ARRIVAL_MARGIN`` of its
    start, so every attempt started before ``since - ARRIVAL_MARGIN`` has a lower id than every
    attempt started at or after ``since``."""
    return _id_split(conn, attempts, attempts.c.started_at, since - ARRIVAL_MARGIN)[0]


def _bucket_of(conn: sa.Connection, start: datetime, step: int) -> sa.ColumnElement[int]:
    """The bucket number of an attempt's ``started_at`` (0 = the window's first)."""
    origin = int(start.timestamp())
    if conn.dialect.name == "postgresql":
        seconds: sa.ColumnElement[Any] = sa.extract("epoch", attempts.c.started_at)
        return sa.cast(sa.func.floor((seconds - origin) / step), sa.Integer)
    # SQLite keeps naive UTC text; strftime('%s') reads it as whole seconds (buckets are whole).
    seconds = sa.cast(sa.func.strftime("%s", attempts.c.started_at), sa.Integer)
    return sa.cast((seconds - origin) / step, sa.Integer)


def _percentile(counts: list[tuple[int, int]], fraction: float) -> float:
    """PostgreSQL's ``percentile_cont`` (linear interpolation) over ``(value, how many)`` sorted
    by value: exact, from a frequency table instead of every row."""
    total = sum(n for _, n in counts)
    position = fraction * (total - 1)
    below, seen = int(position), 0
    for i, (value, n) in enumerate(counts):
        if below < seen + n:
            if below + 1 < seen + n or position == below:
                return float(value)
            following = counts[i + 1][0]
            return value + (following - value) * (position - below)
        seen += n
    raise AssertionError("unreachable: position is within the counts")


def activity(bind: Bind, queue: str, now: datetime, window: str = "1h") -> Activity:
    """``queue``'s attempts over the last hour (``1h``: per minute) or day (``24h``: per 15
    minutes): delivered, retried, dead-lettered and paused (401/403) per bucket, and the answer
    time's p50 and p99 (every attempt, timeouts included: ``duration_ms``).

    A bucket that has settled (it ended ``ARRIVAL_MARGIN`` ago: no attempt can still arrive in
    it) is measured once and kept in ``dispatcher_activity``; a view reads the window's kept
    buckets and measures only the newer ones, so a page costs about a margin's worth of attempts
    however busy the day was (issue 16: 0.26 s for the day's chart at 333k attempts a day without
    this). Kept only when ``bind`` is an Engine (the call's own transaction); a Connection's
    caller gets the same figures, measured. See :func:`_measure` for the query."""
    check_queue(queue)
    step, count, start, end = _window(window, now)
    # By the caller's clock and the real one: a view of the past never keeps a bucket early.
    settled = min(now, utcnow()) - ARRIVAL_MARGIN
    with connected(bind) as conn:
        mark = conn.execute(
            sa.select(activity_marks.c.since, activity_marks.c.through).where(
                activity_marks.c.queue == queue, activity_marks.c.step_seconds == step
            )
        ).first()
        since = _kept_until(mark, start, end)  # measured from here on; before: kept buckets
        kept: dict[datetime, ActivityBucket] = {}
        if since > start:
            for r in conn.execute(
                sa.select(activity_buckets).where(
                    activity_buckets.c.queue == queue,
                    activity_buckets.c.step_seconds == step,
                    activity_buckets.c.start >= start,
                    activity_buckets.c.start < since,
                )
            ):
                kept[r.start] = ActivityBucket(
                    r.start, r.delivered, r.retried, r.dead, r.paused, r.p50_ms, r.p99_ms
                )
        measured = _measure(conn, queue, start, end, step, since).get(queue, {})
        buckets = []
        for number in range(count):
            at = start + timedelta(seconds=step * number)
            found = kept.get(at) if at < since else measured.get(number)
            buckets.append(found or ActivityBucket(at, 0, 0, 0, 0, None, None))
        if isinstance(bind, sa.Engine):
            _keep(conn, queue, step, start, since, buckets, settled)
    return Activity(queue, window, step, start, end, tuple(buckets))


def _kept_until(mark: Any, start: datetime, end: datetime) -> datetime:
    """Where a window ``[start, end)`` is measured from: the end of what ``mark`` (a row of
    ``dispatcher_activity_marks``, or None) says is kept, if it covers the window's start."""
    if mark is not None and mark.since <= start < mark.through:
        through: datetime = mark.through
        return min(through, end)
    return start


def keep_activity(engine: sa.Engine, now: datetime) -> int:
    """Measure and keep the settled chart buckets of both windows for every queue (that has a
    job or a queue row), as a view of each would, in one grouped query per window over the
    attempts not kept yet; how many queues' buckets it kept. The sweeper calls this every few
    minutes, so that a page's first view of the day measures only about the newest half hour
    instead of the day (issue 16: 0.4 s at 333k attempts a day)."""
    now = check_time("now", now)
    settled = min(now, utcnow()) - ARRIVAL_MARGIN
    done = 0
    with engine.connect() as conn:
        names = _queue_names(conn)
        conn.rollback()
        for window, (step, count) in ACTIVITY_WINDOWS.items():
            _, _, start, end = _window(window, now)
            whole = int((settled - start).total_seconds()) // step
            through = start + timedelta(seconds=step * min(count, whole))
            marks = {
                r.queue: r
                for r in conn.execute(
                    sa.select(activity_marks).where(activity_marks.c.step_seconds == step)
                )
            }
            since = {name: _kept_until(marks.get(name), start, end) for name in names}
            due = {name: at for name, at in since.items() if at < through}
            if not due:
                conn.rollback()
                continue
            measured = _measure(conn, None, start, through, step, min(due.values()))
            for name, at in sorted(due.items()):
                found = measured.get(name, {})
                buckets = []
                for number in range(count):
                    at_n = start + timedelta(seconds=step * number)
                    if at <= at_n < through:
                        empty = ActivityBucket(at_n, 0, 0, 0, 0, None, None)
                        buckets.append(found.get(number) or empty)
                _keep(conn, name, step, start, at, buckets, settled)
                done += 1
    return done


def _queue_names(conn: sa.Connection) -> set[str]:
    """Every queue with a job (from the counts) or a row in the queues table: every queue a
    page can show."""
    return {q for q, _ in outbox.job_counts(conn)} | set(
        conn.execute(sa.select(queues.c.name)).scalars()
    )


def _keep(
    conn: sa.Connection,
    queue: str,
    step: int,
    first: datetime,
    since: datetime,
    buckets: list[ActivityBucket],
    settled: datetime,
) -> None:
    """Keep the buckets measured from ``since`` that have settled, mark ``[first, through)`` as
    kept, and forget the buckets before ``first`` (so the table holds about a window per queue).
    Two pages keeping the same bucket at once: the first row stays (they are equal)."""
    width = timedelta(seconds=step)
    final = [b for b in buckets if b.start >= since and b.start + width <= settled]
    if not final:
        conn.rollback()
        return
    through = final[-1].start + width
    insert = (postgresql if conn.dialect.name == "postgresql" else sqlite).insert
    rows = [
        {
            "queue": queue,
            "step_seconds": step,
            "start": b.start,
            "delivered": b.delivered,
            "retried": b.retried,
            "dead": b.dead,
            "paused": b.paused,
            "p50_ms": b.p50_ms,
            "p99_ms": b.p99_ms,
        }
        for b in final
        if b.attempts
    ]
    mine = (activity_buckets.c.queue == queue, activity_buckets.c.step_seconds == step)
    conn.execute(sa.delete(activity_buckets).where(*mine, activity_buckets.c.start < first))
    if rows:
        conn.execute(insert(activity_buckets).values(rows).on_conflict_do_nothing())
    marked = insert(activity_marks).values(
        queue=queue, step_seconds=step, since=first, through=through
    )
    conn.execute(
        marked.on_conflict_do_update(
            index_elements=["queue", "step_seconds"],
            set_={"since": marked.excluded.since, "through": marked.excluded.through},
        )
    )
    conn.commit()


def _measure(
    conn: sa.Connection,
    queue: str | None,
    start: datetime,
    end: datetime,
    step: int,
    since: datetime,
) -> dict[str, dict[int, ActivityBucket]]:
    """The buckets of ``[start, end)`` from ``since`` on, by queue (``queue``'s only, unless
    None) and number, measured from the attempts: one grouped query over a primary-key range
    (see :func:`_id_floor`) joined to the jobs. Percentiles are exact on both databases:
    PostgreSQL's ``percentile_cont``; on SQLite the query groups by (bucket, duration in ms) and
    they are interpolated the same way from that frequency table."""
    if since >= end:
        return {}
    bucket = _bucket_of(conn, start, step).label("b")
    chosen = [] if queue is None else [jobs.c.queue == queue]
    rows = (
        sa.select(jobs.c.queue.label("q"), bucket, attempts.c.outcome, attempts.c.duration_ms)
        .join_from(attempts, jobs, jobs.c.id == attempts.c.job_id)
        .where(
            attempts.c.id > _id_floor(conn, since),
            attempts.c.started_at >= since,
            attempts.c.started_at < end,
            *chosen,
        )
        .subquery()
    )
    tallies = {
        name: sa.func.sum(sa.case((rows.c.outcome == outcome, 1), else_=0)).label(name)
        for name, outcome in _TALLIED.items()
    }
    times: dict[tuple[str, int], tuple[float | None, float | None]] = {}
    if conn.dialect.name == "postgresql":
        found = conn.execute(
            sa.select(
                rows.c.q,
                rows.c.b,
                *tallies.values(),
                sa.func.percentile_cont(0.5).within_group(rows.c.duration_ms).label("p50"),
                sa.func.percentile_cont(0.99).within_group(rows.c.duration_ms).label("p99"),
            ).group_by(rows.c.q, rows.c.b)
        ).all()
        times = {(r.q, r.b): (r.p50, r.p99) for r in found}
    else:
        found = conn.execute(
            sa.select(rows.c.q, rows.c.b, *tallies.values()).group_by(rows.c.q, rows.c.b)
        ).all()
        spread: dict[tuple[str, int], list[tuple[int, int]]] = {}
        for r in conn.execute(
            sa.select(rows.c.q, rows.c.b, rows.c.duration_ms, sa.func.count().label("n"))
            .group_by(rows.c.q, rows.c.b, rows.c.duration_ms)
            .order_by(rows.c.q, rows.c.b, rows.c.duration_ms)
        ):
            spread.setdefault((r.q, r.b), []).append((int(r.duration_ms), int(r.n)))
        times = {k: (_percentile(c, 0.5), _percentile(c, 0.99)) for k, c in spread.items()}
    measured: dict[str, dict[int, ActivityBucket]] = {}
    for r in found:
        p50, p99 = times.get((r.q, r.b), (None, None))
        measured.setdefault(r.q, {})[int(r.b)] = ActivityBucket(
            start=start + timedelta(seconds=step * int(r.b)),
            **{name: int(getattr(r, name, 0) or 0) for name in _TALLIED},
            p50_ms=None if p50 is None else round(float(p50), 1),
            p99_ms=None if p99 is None else round(float(p99), 1),
        )
    return measured


_TALLIED = {
    "delivered": Outcome.DELIVERED.value,
    "retried": Outcome.RETRY.value,
    "dead": Outcome.DEAD.value,
    "paused": Outcome.PAUSE.value,
}


def delivered_per_minute(bind: Bind, now: datetime) -> dict[str, tuple[int, ...]]:
    """Per queue with any attempt in the last hour: jobs delivered in each of its 60 minutes
    (oldest first), for the overview's sparklines. The minutes every queue has kept (see
    :func:`keep_activity`) are read back; the newer ones are measured in one grouped query,
    bounded like :func:`activity`."""
    step, count, start, end = _window("1h", now)
    with connected(bind) as conn:
        names = _queue_names(conn)
        marks = conn.execute(
            sa.select(activity_marks).where(activity_marks.c.step_seconds == step)
        ).all()
        covered = {m.queue: m.through for m in marks if m.since <= start < m.through}
        since = min([end, *covered.values()]) if names and names <= covered.keys() else start
        result: dict[str, list[int]] = {}
        for r in conn.execute(
            sa.select(
                activity_buckets.c.queue, activity_buckets.c.start, activity_buckets.c.delivered
            ).where(
                activity_buckets.c.step_seconds == step,
                activity_buckets.c.start >= start,
                activity_buckets.c.start < since,
            )
        ):
            number = int((r.start - start).total_seconds()) // step
            result.setdefault(r.queue, [0] * count)[number] = int(r.delivered)
        bucket = _bucket_of(conn, start, step).label("b")
        rows = (
            sa.select(jobs.c.queue, bucket, attempts.c.outcome)
            .join_from(attempts, jobs, jobs.c.id == attempts.c.job_id)
            .where(
                attempts.c.id > _id_floor(conn, since),
                attempts.c.started_at >= since,
                attempts.c.started_at < end,
            )
            .subquery()
        )
        delivered = sa.func.sum(sa.case((rows.c.outcome == Outcome.DELIVERED.value, 1), else_=0))
        found = conn.execute(
            sa.select(rows.c.queue, rows.c.b, delivered.label("n")).group_by(rows.c.queue, rows.c.b)
        ).all()
    for r in found:
        if 0 <= r.b < count:
            result.setdefault(r.queue, [0] * count)[r.b] = int(r.n or 0)
    return {name: tuple(result[name]) for name in sorted(result)}
