"""The admin page's charts: a queue's attempts per bucket over the last hour or day, and the
overview's delivered-per-minute sparklines.

The only part of the operator's service that writes while it reads: a settled bucket (no attempt
can still arrive in it) is measured once and kept in ``dispatcher_activity``, by a page view
(:func:`activity` given an Engine) or by the sweeper (:func:`keep_activity`), so a view measures
only the newest buckets however busy the day was.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from dispatcher.admin.filters import AdminError, check_queue, check_time
from dispatcher.admin.reads import Bind, connected, id_split, queue_names
from dispatcher.db import utcnow
from dispatcher.policy import Outcome
from dispatcher.schema import activity_buckets, activity_marks, attempts, jobs
from dispatcher.times import iso as _iso

__all__ = [
    "ACTIVITY_WINDOWS",
    "ARRIVAL_MARGIN",
    "Activity",
    "ActivityBucket",
    "activity",
    "delivered_per_minute",
    "keep_activity",
]

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


def _id_floor(conn: sa.Connection, since: datetime) -> int:
    """An attempt id below that of every attempt started at or after ``since``, so that the
    chart queries read a range of the primary key instead of the whole table (there is no index
    on ``started_at``).

    Attempt ids follow insertion order and a row is inserted within ``ARRIVAL_MARGIN`` of its
    start, so every attempt started before ``since - ARRIVAL_MARGIN`` has a lower id than every
    attempt started at or after ``since``."""
    return id_split(conn, attempts, attempts.c.started_at, since - ARRIVAL_MARGIN)[0]


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
        names = queue_names(conn)
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
        names = queue_names(conn)
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
