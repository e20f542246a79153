"""The operator's view of the outbox: history, one job in full, stats, replay and purge.

The job and attempt tables *are* the delivery history, so these are plain queries over them. Every
function takes a ``Connection`` or an ``Engine`` (reads and ``replay`` run in the caller's
transaction when given a Connection; ``purge`` needs an Engine because it commits per batch) and
returns frozen dataclasses whose ``as_dict()`` is the JSON the CLI prints, so an application can
show the same history in its own pages. Every filter is a bound parameter; bad filter values raise
:class:`AdminError` naming the argument, before any SQL runs.

Time filters (``since``/``until``) apply to ``created_at`` (when the event was enqueued), as a
half-open range ``since <= created_at < until``. ``purge`` ages jobs by ``updated_at`` (when they
reached their final state).
"""

from __future__ import annotations

import re
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa

from dispatcher import outbox
from dispatcher.db import utcnow
from dispatcher.schema import DUE_STATUSES, FINISHED_STATUSES, STATUSES, attempts, jobs, queues

__all__ = [
    "MAX_JOB_IDS",
    "MAX_LIMIT",
    "AdminError",
    "Attempt",
    "JobDetail",
    "JobSummary",
    "PurgeResult",
    "QueueStats",
    "ReplayResult",
    "history",
    "parse_age",
    "parse_when",
    "purge",
    "replay",
    "show",
    "stats",
]

MAX_LIMIT = 100_000
MAX_JOB_IDS = 10_000  # one IN (...) list; SQLite allows 32766 bound parameters per statement
MAX_BATCH_SIZE = 10_000
_MAX_ID = 2**63 - 1  # BIGINT
_MIN_INT, _MAX_INT = -(2**31), 2**31 - 1  # INTEGER columns (custom_event_id, status codes)

Bind = sa.Connection | sa.Engine


class AdminError(ValueError):
    """A filter or argument we refuse; ``field`` names the argument (None: not one argument)."""

    def __init__(self, field: str | None, message: str) -> None:
        super().__init__(f"{field}: {message}" if field else message)
        self.field = field
        self.message = message


# --------------------------------------------------------------------------- times (pure)

_AGE = re.compile(r"([0-9]{1,12})([smhdw])")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
_AGE_FORMS = "30s, 15m, 2h, 7d or 4w"


def parse_age(text: str) -> timedelta:
    """``30s``, ``15m``, ``2h``, ``7d``, ``4w`` -> a duration. Lower-case units only, so ``M`` is
    never mistaken for months."""
    match = _AGE.fullmatch(text.strip()) if isinstance(text, str) else None
    if match is None:
        raise ValueError(f"expected an age like {_AGE_FORMS} (got {text!r:.80})")
    try:
        return timedelta(**{_UNITS[match[2]]: int(match[1])})
    except OverflowError:
        raise ValueError(f"age too large (got {text!r:.80})") from None


def parse_when(text: str, now: datetime) -> datetime:
    """An ISO 8601 date or time (naive means UTC), or an age meaning "that long before ``now``";
    returned as an aware UTC datetime."""
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    stripped = text.strip() if isinstance(text, str) else ""
    if _AGE.fullmatch(stripped):
        try:
            return now.astimezone(UTC) - parse_age(stripped)
        except OverflowError:
            raise ValueError(f"too far in the past (got {text!r:.80})") from None
    try:
        when = datetime.fromisoformat(stripped.upper())  # RFC 3339 allows "t" and "z"
    except ValueError:
        raise ValueError(
            "expected an ISO 8601 time (2026-11-27, 2026-11-27T10:00:00Z; naive means UTC) or "
            f"an age like {_AGE_FORMS} meaning that long ago (got {text!r:.80})"
        ) from None
    if when.tzinfo is None:
        return when.replace(tzinfo=UTC)
    try:
        return when.astimezone(UTC)
    except OverflowError:  # e.g. 0001-01-01T00:00:00+01:00 lies before datetime.min in UTC
        raise ValueError(f"time out of range (got {text!r:.80})") from None


def _iso(value: datetime | None) -> str | None:
    if value is None:
        return None
    return value.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


# --------------------------------------------------------------------------- results


@dataclass(frozen=True, slots=True)
class JobSummary:
    """One row of the history."""

    id: str  # a string, like the ids enqueue() returns
    queue: str
    endpoint: str
    custom_event_id: int
    status: str
    attempts: int
    last_status_code: int | None
    last_error: str | None
    created_at: datetime
    delivered_at: datetime | None

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "queue": self.queue,
            "endpoint": self.endpoint,
            "custom_event_id": self.custom_event_id,
            "status": self.status,
            "attempts": self.attempts,
            "last_status_code": self.last_status_code,
            "last_error": self.last_error,
            "created_at": _iso(self.created_at),
            "delivered_at": _iso(self.delivered_at),
        }


@dataclass(frozen=True, slots=True)
class Attempt:
    """One HTTP request made for a job; ``number`` counts from 1 in the order they were made."""

    number: int
    started_at: datetime
    status_code: int | None  # None: no HTTP answer (timeout, connection error)
    duration_ms: int
    error: str | None
    response_body: str | None
    outcome: str  # delivered / retry / dead / pause

    def as_dict(self) -> dict[str, Any]:
        return {
            "number": self.number,
            "started_at": _iso(self.started_at),
            "status_code": self.status_code,
            "duration_ms": self.duration_ms,
            "error": self.error,
            "response_body": self.response_body,
            "outcome": self.outcome,
        }


@dataclass(frozen=True, slots=True)
class JobDetail(JobSummary):
    """A job in full: the exact body that is POSTed and every attempt made so far."""

    payload: str
    replays: int
    replayed_at: datetime | None
    next_attempt_at: datetime
    attempt_log: tuple[Attempt, ...]

    def as_dict(self) -> dict[str, Any]:
        return {
            **JobSummary.as_dict(self),
            "payload": self.payload,
            "replays": self.replays,
            "replayed_at": _iso(self.replayed_at),
            "next_attempt_at": _iso(self.next_attempt_at),
            "attempt_log": [a.as_dict() for a in self.attempt_log],
        }


@dataclass(frozen=True, slots=True)
class QueueStats:
    name: str
    paused: bool
    pause_reason: str | None
    paused_at: datetime | None
    counts: Mapping[str, int]  # every status in STATUSES, 0 if none
    # How long the most overdue job (pending/retrying, next_attempt_at <= now) has been waiting
    # for a worker: the delivery lag. None when nothing is due.
    oldest_due_age_seconds: float | None
    # The circuit breaker (dispatcher.breaker): closed, open or half_open; since when (None: it
    # never opened) and why it opened. While open, workers send nothing for the queue but one
    # probe at circuit_next_probe_at (None unless open), after circuit_failed_probes failed ones.
    circuit: str = "closed"
    circuit_since: datetime | None = None
    circuit_reason: str | None = None
    circuit_next_probe_at: datetime | None = None
    circuit_failed_probes: int = 0

    @property
    def circuit_open(self) -> bool:
        """Open or half_open: nothing but probes is sent for the queue."""
        return self.circuit != "closed"

    def as_dict(self) -> dict[str, Any]:
        return {
            "paused": self.paused,
            "pause_reason": self.pause_reason,
            "paused_at": _iso(self.paused_at),
            "counts": dict(self.counts),
            "oldest_due_age_seconds": self.oldest_due_age_seconds,
            "circuit": self.circuit,
            "circuit_since": _iso(self.circuit_since),
            "circuit_reason": self.circuit_reason,
            "circuit_next_probe_at": _iso(self.circuit_next_probe_at),
            "circuit_failed_probes": self.circuit_failed_probes,
        }


@dataclass(frozen=True, slots=True)
class ReplayResult:
    count: int
    queues: tuple[str, ...]  # sorted; signal these after commit
    dry_run: bool = False

    def as_dict(self) -> dict[str, Any]:
        return {"count": self.count, "queues": list(self.queues), "dry_run": self.dry_run}


@dataclass(frozen=True, slots=True)
class PurgeResult:
    jobs: int
    attempts: int
    dry_run: bool = False

    def as_dict(self) -> dict[str, Any]:
        return {"jobs": self.jobs, "attempts": self.attempts, "dry_run": self.dry_run}


# --------------------------------------------------------------------------- validation


def _check_status(status: object, allowed: Iterable[str] = STATUSES) -> str:
    allowed = tuple(allowed)
    if not isinstance(status, str) or status not in allowed:
        raise AdminError("status", f"expected one of {', '.join(allowed)} (got {status!r:.80})")
    return status


def _check_int(field: str, value: object, low: int = _MIN_INT, high: int = _MAX_INT) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise AdminError(field, f"expected an integer (got {value!r:.80})")
    if not low <= value <= high:
        raise AdminError(field, f"must be between {low} and {high} (got {value})")
    return value


def _check_time(field: str, value: object) -> datetime:
    if not isinstance(value, datetime) or value.tzinfo is None:
        raise AdminError(field, f"expected a timezone-aware datetime (got {value!r:.80})")
    return value


def _job_id(value: object) -> int | None:
    """A job id as int, or None if it cannot name a job (out of BIGINT range)."""
    if isinstance(value, str) and value.strip().isascii() and value.strip().isdigit():
        value = int(value.strip())
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise AdminError("job_id", f"expected a job id, a positive integer (got {value!r:.80})")
    return value if 1 <= value <= _MAX_ID else None


def _job_filters(
    *,
    status: str | None = None,
    queue: str | None = None,
    event_id: int | None = None,
    customer_email: str | None = None,
    status_code: int | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
) -> list[sa.ColumnElement[bool]]:
    where: list[sa.ColumnElement[bool]] = []
    if status is not None:
        where.append(jobs.c.status == _check_status(status))
    if queue is not None:
        if not isinstance(queue, str):
            raise AdminError("queue", f"expected a queue name (got {queue!r:.80})")
        where.append(jobs.c.queue == queue)
    if event_id is not None:
        where.append(jobs.c.custom_event_id == _check_int("event_id", event_id))
    if customer_email is not None:
        if not isinstance(customer_email, str):
            raise AdminError("customer_email", f"expected a string (got {customer_email!r:.80})")
        # Stored lower-cased (the producer does the same), so the index answers exact matches.
        where.append(jobs.c.customer_email == customer_email.lower())
    if status_code is not None:
        where.append(jobs.c.last_status_code == _check_int("status_code", status_code, 0, 999))
    if since is not None:
        where.append(jobs.c.created_at >= _check_time("since", since))
    if until is not None:
        where.append(jobs.c.created_at < _check_time("until", until))
    if since is not None and until is not None and since >= until:
        raise AdminError("since", "must be before until")
    return where


def pause_queue(engine: sa.Engine, queue: str, reason: str) -> bool:
    """Pause ``queue`` and return once no worker will start another request for it (requests
    already in flight may still be answered; jobs claimed but not sent go back to pending).
    True if it was not paused before."""
    with engine.begin() as conn:
        changed = outbox.pause(conn, queue, reason, utcnow())
    time.sleep(outbox.PAUSE_SETTLE_SECONDS)  # every sending worker re-reads the row by then
    return changed


@contextmanager
def _connected(bind: Bind, *, write: bool = False) -> Iterator[sa.Connection]:
    if isinstance(bind, sa.Engine):
        with bind.begin() if write else bind.connect() as conn:
            yield conn
    else:
        yield bind


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
        "status": row.status,
        "attempts": row.attempts,
        "last_status_code": row.last_status_code,
        "last_error": row.last_error,
        "created_at": row.created_at,
        "delivered_at": row.delivered_at,
    }


# --------------------------------------------------------------------------- reading


def history(
    bind: Bind,
    *,
    status: str | None = None,
    queue: str | None = None,
    event_id: int | None = None,
    customer_email: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    limit: int = 50,
) -> list[JobSummary]:
    """Jobs matching every given filter, newest first. ``customer_email`` ignores case."""
    where = _job_filters(
        status=status,
        queue=queue,
        event_id=event_id,
        customer_email=customer_email,
        since=since,
        until=until,
    )
    limit = _check_int("limit", limit, 1, MAX_LIMIT)
    query = (
        sa.select(*_SUMMARY_COLUMNS)
        .where(*where)
        .order_by(jobs.c.created_at.desc(), jobs.c.id.desc())
        .limit(limit)
    )
    with _connected(bind) as conn:
        return [JobSummary(**_summary_fields(row)) for row in conn.execute(query)]


def show(bind: Bind, job_id: int | str) -> JobDetail | None:
    """One job with its exact body and every attempt, or None if there is no such job."""
    number = _job_id(job_id)
    if number is None:
        return None
    with _connected(bind) as conn:
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
                outcome=a.outcome,
            )
            for n, a in enumerate(tries, start=1)
        ),
    )


def stats(bind: Bind, now: datetime) -> dict[str, QueueStats]:
    """Per queue (those with jobs or a queue row), sorted by name: counts by status, delivery lag,
    the pause switch and the circuit breaker's state. The counts and the lag come from one grouped
    scan of the jobs table; the rest from the queues table."""
    now = _check_time("now", now)
    due_since = sa.case(
        (
            sa.and_(jobs.c.status.in_(DUE_STATUSES), jobs.c.next_attempt_at <= now),
            jobs.c.next_attempt_at,
        ),
    )
    grouped = sa.select(
        jobs.c.queue, jobs.c.status, sa.func.count().label("n"), sa.func.min(due_since).label("due")
    ).group_by(jobs.c.queue, jobs.c.status)
    with _connected(bind) as conn:
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


# --------------------------------------------------------------------------- replay


def replay(
    bind: Bind,
    *,
    job_ids: Iterable[int | str] | None = None,
    status: str | None = None,
    queue: str | None = None,
    event_id: int | None = None,
    status_code: int | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    include_delivered: bool = False,
    dry_run: bool = False,
    now: datetime,
) -> ReplayResult:
    """Send finished jobs again: back to ``pending`` with a fresh attempt budget, in one UPDATE.

    Choose them by ``job_ids`` or by ``status`` ("dead"; "delivered" needs
    ``include_delivered``) plus filters; filters narrow ids when both are given, and a filter
    without ids or status is refused so a typo cannot replay everything. Only dead jobs (and,
    with ``include_delivered``, delivered ones) ever change; a named id that is unknown or not
    replayable makes the whole call fail before anything changes. Attempt rows stay (they are
    the history); ``replays``/``replayed_at`` record the replay, ``last_status_code`` and
    ``last_error`` are kept until the next attempt. With a Connection this runs in the caller's
    transaction: commit it, then ``signal_workers(result.queues)`` (or let the sweeper find them).
    """
    now = _check_time("now", now)
    targets: tuple[str, ...] = ("dead", "delivered") if include_delivered else ("dead",)
    if status is not None:
        _check_status(status)
        if status not in FINISHED_STATUSES:
            raise AdminError(
                "status", f"only dead or delivered jobs can be replayed ({status} jobs are live)"
            )
        if status == "delivered" and not include_delivered:
            raise AdminError(
                "status",
                "replaying delivered jobs sends them again: needs include_delivered "
                "(--include-delivered)",
            )
        targets = ("dead", "delivered") if include_delivered and status == "dead" else (status,)

    ids: list[int] | None = None
    if job_ids is not None:
        given = list(job_ids)
        if not given:  # an empty selection replays nothing, never "everything"
            return ReplayResult(0, (), dry_run)
        if len(given) > MAX_JOB_IDS:
            raise AdminError(
                "job_ids", f"at most {MAX_JOB_IDS} ids per call (use filters for more)"
            )
        parsed = [(g, _job_id(g)) for g in given]
        ids = [i for _, i in parsed if i is not None]
        missing = [str(g).strip() for g, i in parsed if i is None]
    elif status is None:
        raise AdminError(None, "give job ids or status='dead' (--status dead)")

    where = _job_filters(
        queue=queue, event_id=event_id, status_code=status_code, since=since, until=until
    )
    where.append(jobs.c.status.in_(targets))
    with _connected(bind, write=not dry_run) as conn:
        if ids is not None:
            _check_replayable(conn, ids, missing, targets)
            where.append(jobs.c.id.in_(ids))
        if dry_run:
            per_queue = {
                r.queue: int(r.n)
                for r in conn.execute(
                    sa.select(jobs.c.queue, sa.func.count().label("n"))
                    .where(*where)
                    .group_by(jobs.c.queue)
                )
            }
        else:
            per_queue = Counter(
                conn.execute(
                    sa.update(jobs)
                    .where(*where)
                    .values(
                        status="pending",
                        attempts=0,
                        next_attempt_at=now,
                        lease_token=None,
                        lease_expires_at=None,
                        delivered_at=None,
                        replays=jobs.c.replays + 1,
                        replayed_at=now,
                        updated_at=now,
                    )
                    .returning(jobs.c.queue)
                ).scalars()
            )
    return ReplayResult(sum(per_queue.values()), tuple(sorted(per_queue)), dry_run)


def _check_replayable(
    conn: sa.Connection, ids: list[int], missing: list[str], targets: tuple[str, ...]
) -> None:
    found = {
        r.id: r.status
        for r in conn.execute(sa.select(jobs.c.id, jobs.c.status).where(jobs.c.id.in_(ids)))
    }
    problems = [f"no job {m}" for m in missing]
    for i in dict.fromkeys(ids):
        state = found.get(i)
        if state is None:
            problems.append(f"no job {i}")
        elif state in targets:
            continue
        elif state == "delivered":
            problems.append(
                f"job {i} is delivered: replaying sends it again, which needs include_delivered "
                "(--include-delivered)"
            )
        elif state == "dead":
            problems.append(f"job {i} is dead, not {' or '.join(targets)}")
        else:
            problems.append(f"job {i} is {state}: only dead or delivered jobs can be replayed")
    if problems:
        shown = "; ".join(problems[:10])
        more = f"; and {len(problems) - 10} more" if len(problems) > 10 else ""
        raise AdminError(None, f"nothing replayed: {shown}{more}")


# --------------------------------------------------------------------------- purge


def purge(
    engine: sa.Engine,
    *,
    older_than: timedelta,
    status: str | None = None,
    batch_size: int = 1000,
    dry_run: bool = False,
    now: datetime,
) -> PurgeResult:
    """Delete finished jobs (delivered and dead, or only ``status``) last changed more than
    ``older_than`` before ``now``, with their attempts.

    Batches of ``batch_size`` jobs, each its own short transaction (select ids, delete their
    attempts, delete the jobs, commit), so a purge of millions neither holds locks for long nor
    needs one huge transaction. Pending, in-flight and retrying jobs are never touched.
    """
    now = _check_time("now", now)
    if not isinstance(older_than, timedelta) or older_than < timedelta(0):
        raise AdminError("older_than", f"expected a duration >= 0 (got {older_than!r:.80})")
    targets = FINISHED_STATUSES if status is None else (_check_status(status, FINISHED_STATUSES),)
    batch_size = _check_int("batch_size", batch_size, 1, MAX_BATCH_SIZE)
    try:
        cutoff = now - older_than
    except OverflowError:
        return PurgeResult(0, 0, dry_run)  # before the year 1: nothing is that old
    where = (jobs.c.status.in_(targets), jobs.c.updated_at < cutoff)

    if dry_run:
        with engine.connect() as conn:
            n_jobs = conn.execute(
                sa.select(sa.func.count()).select_from(jobs).where(*where)
            ).scalar_one()
            n_attempts = conn.execute(
                sa.select(sa.func.count())
                .select_from(attempts.join(jobs, attempts.c.job_id == jobs.c.id))
                .where(*where)
            ).scalar_one()
            conn.rollback()
        return PurgeResult(int(n_jobs), int(n_attempts), dry_run=True)

    total_jobs = total_attempts = 0
    while True:
        with engine.begin() as conn:
            ids = list(
                conn.execute(
                    sa.select(jobs.c.id)
                    .where(*where)
                    .limit(batch_size)
                    .with_for_update(skip_locked=True)
                ).scalars()
            )
            if not ids:
                break
            total_attempts += conn.execute(
                sa.delete(attempts).where(attempts.c.job_id.in_(ids))
            ).rowcount
            total_jobs += conn.execute(sa.delete(jobs).where(jobs.c.id.in_(ids))).rowcount
        if len(ids) < batch_size:
            break
    return PurgeResult(total_jobs, total_attempts)
