"""The job manager: every SQL statement that moves a job through its life lives here.

A job's life: ``insert_jobs`` (in the producer's transaction) -> ``claim`` (a worker leases a
batch) -> ``record`` (attempt rows and the new state, one transaction per batch), and maybe
``release_expired`` (the sweeper returns the leases of workers that died). Each is one or two
statements; the database does the locking (``FOR UPDATE SKIP LOCKED`` on PostgreSQL,
``BEGIN IMMEDIATE`` on SQLite).
"""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from dispatcher.breaker import BreakerPolicy, Circuit, probe_interval
from dispatcher.config import QueueLimits
from dispatcher.policy import Decision, Outcome, QueueEffect, during_outage, is_outage
from dispatcher.schema import (
    DUE_WHERE,
    FINISHED_STATUSES,
    LEASED_WHERE,
    SCHEDULED_WHERE,
    WAITING_STATUSES,
    JobStatus,
    attempts,
    count_deltas,
    counts,
    jobs,
    kinds_of,
    kinds_text,
    queues,
)

_DUE = sa.text(DUE_WHERE)  # literal, so PostgreSQL matches the partial index
_EARLIER_LIVE = sa.text(
    "earlier.ordering_key IS NOT NULL AND earlier.status IN "
    "('pending', 'in_flight', 'retrying', 'scheduled')"
)  # = ORDERING_WHERE on the alias "earlier" (see _first_of_its_key)

# The contract between a pause and the workers: a sending worker re-reads its queue's row
# (queue_state) whenever its last reading began more than STATE_CHECK_SECONDS ago, and an
# operator's pause returns PAUSE_SETTLE_SECONDS after its commit, so once it has returned no
# worker starts another request for the queue (unless one reading took longer than the settle).
STATE_CHECK_SECONDS = 0.05
PAUSE_SETTLE_SECONDS = 0.25
PROBES = 3  # jobs sent at once to test an open circuit (see claim_probe)
PREFERENCE_CANDIDATES = 1000  # a probe is chosen among this many of the oldest due jobs
REFUND_SCAN = 50_000  # open_circuit looks for an outage's failures among this many last attempts


@dataclass(frozen=True, slots=True)
class NewJob:
    """One row to insert: what ``enqueue`` derived from a validated event."""

    queue: str
    endpoint: str
    custom_event_id: int
    customer_email: str | None
    payload: str
    dedupe_key: str | None = None
    trace_context: str | None = None  # the producer's, under OpenTelemetry (see tracing.py)
    ordering_key: str | None = None  # sent one at a time, in commit order, per queue and key
    deliver_at: datetime | None = None  # not sent before this (aware); None or past: at once

    def due(self, now: datetime) -> datetime:
        """The row's first ``next_attempt_at``: its ``deliver_at``, or ``now`` if that is sooner."""
        return self.deliver_at if self.deliver_at is not None and self.deliver_at > now else now

    def status(self, now: datetime) -> JobStatus:
        """``scheduled`` while its ``deliver_at`` is ahead, else ``pending``."""
        if self.deliver_at is not None and self.deliver_at > now:
            return JobStatus.SCHEDULED
        return JobStatus.PENDING


@dataclass(frozen=True, slots=True)
class Claimed:
    """A job leased to this worker; only the holder of ``lease_token`` may record its outcome."""

    id: int
    queue: str
    endpoint: str
    payload: str
    attempts: int
    lease_token: str
    probe: bool = False  # the one request that tests an open circuit (see claim_probe)
    custom_event_id: int | None = None
    trace_context: str | None = None
    ordering_key: str | None = None


@dataclass(frozen=True, slots=True)
class QueueState:
    """What a worker re-reads while it sends: may it go on sending for this queue?"""

    paused: bool
    cooling: bool  # a 429 cool-down is running
    circuit: Circuit
    circuit_since: datetime | None = None  # when the circuit last opened or closed
    poison: frozenset[int] = frozenset()  # kinds failing as bad payloads, not as an outage

    @property
    def held(self) -> bool:
        return self.paused or self.cooling or self.circuit is not Circuit.CLOSED


@dataclass(frozen=True, slots=True)
class AttemptResult:
    """What one HTTP attempt for a claimed job produced, and what the policy decided."""

    job: Claimed
    started_at: datetime
    duration_ms: int
    status_code: int | None
    error: str | None
    response_body: str | None
    decision: Decision
    sent: bool = True  # the body was completely written (False: it cannot have reached the API)

    @property
    def maybe_twice(self) -> bool:
        """No answer after the body was sent, and the job goes out again: the API may have
        acted on both (ECDP has no idempotency key)."""
        return self.status_code is None and self.sent and self.decision.outcome is Outcome.RETRY


_CLAIMED = (
    jobs.c.id,
    jobs.c.endpoint,
    jobs.c.payload,
    jobs.c.attempts,
    jobs.c.custom_event_id,
    jobs.c.trace_context,
    jobs.c.ordering_key,
)


def _claimed(row: Any, queue: str, token: str, *, probe: bool = False) -> Claimed:
    return Claimed(
        row.id,
        queue,
        row.endpoint,
        row.payload,
        row.attempts,
        token,
        probe=probe,
        custom_event_id=row.custom_event_id,
        trace_context=row.trace_context,
        ordering_key=row.ordering_key,
    )


def _insert_for(dialect_name: str) -> Any:
    return (postgresql if dialect_name == "postgresql" else sqlite).insert


# --------------------------------------------------------------------------- producing


def _values(rows: Sequence[NewJob], now: datetime) -> list[dict[str, Any]]:
    return [
        {
            "queue": r.queue,
            "endpoint": r.endpoint,
            "custom_event_id": r.custom_event_id,
            "customer_email": r.customer_email,
            "payload": r.payload,
            "dedupe_key": r.dedupe_key,
            "trace_context": r.trace_context,
            "ordering_key": r.ordering_key,
            "status": r.status(now),
            "attempts": 0,
            "next_attempt_at": r.due(now),
            "created_at": now,
            "updated_at": now,
        }
        for r in rows
    ]


# Ordering keys: a key's jobs are sent in id order (see _lease), and id order must be commit
# order. Two transactions that insert jobs of one key at once could commit in the other order
# than their ids were given out. So on PostgreSQL a producer takes a transaction-scoped advisory
# lock on (queue, key) before its INSERT: the second writer of a key waits for the first one's
# commit (or rollback), then takes its id, a larger one. Different keys never wait for each
# other (a hash collision only makes two keys wait like one). SQLite has one writer at a time:
# id order is commit order there already. Keys are locked in sorted order: no deadlock between
# two producers that write several keys.
# One statement for a batch's keys, over ORDERING_SLOTS slots in the two-integer key space (apart
# from the one-bigint space an application's own advisory locks most often use): a batch with
# thousands of keys takes at most that many locks (PostgreSQL's lock table holds about 64 per
# connection), and two keys that share a slot only wait like one. The slots are locked in order.
ORDERING_LOCK_CLASS = 0x0ECD  # the first key of the two: "ecd(p)"
ORDERING_SLOTS = 1024  # a power of two: a slot is the hash's low bits
_ORDERING_LOCK = (
    f"SELECT count(pg_advisory_xact_lock({ORDERING_LOCK_CLASS}, slot)) FROM ("
    f"SELECT DISTINCT (hashtextextended(k, 0) & {ORDERING_SLOTS - 1})::int AS slot "
    "FROM unnest(CAST(%s AS text[])) AS k ORDER BY slot) AS slots"
)


_ORDERING_LOCK_SA = sa.text(_ORDERING_LOCK.replace("%s", ":names")).bindparams(
    sa.bindparam("names", type_=postgresql.ARRAY(sa.Text))
)


def ordering_locks(rows: Sequence[NewJob]) -> list[str]:
    """The advisory lock names (sorted, distinct) that ``rows`` need before their INSERT."""
    return sorted({f"dispatcher:{r.queue}:{r.ordering_key}" for r in rows if r.ordering_key})


def insert_jobs(conn: sa.Connection, rows: Sequence[NewJob], now: datetime) -> list[int]:
    """Insert ``rows`` in one statement; return their ids in order.

    A row whose ``(queue, dedupe_key)`` already exists is not written again: its existing id is
    returned instead (also when the same key appears twice in ``rows``).
    """
    if not rows:
        return []
    if conn.dialect.driver == "psycopg" and not conn.dialect.is_async:
        # Straight to psycopg on the caller's connection, so in the caller's transaction.
        return insert_jobs_psycopg(conn.connection.driver_connection, rows, now)
    if conn.dialect.name == "postgresql" and (names := ordering_locks(rows)):
        conn.execute(_ORDERING_LOCK_SA, {"names": names})
    values = _values(rows, now)
    if all(r.dedupe_key is None for r in rows):
        if len(values) == 1:
            return [conn.execute(jobs.insert().returning(jobs.c.id), values[0]).scalar_one()]
        result = conn.execute(
            jobs.insert().returning(jobs.c.id, sort_by_parameter_order=True), values
        )
        return list(result.scalars())

    # Keyed rows go one by one: ON CONFLICT DO NOTHING ... RETURNING yields no row for a skipped
    # insert, so a batch could not tell which id belongs to which row. Keyed enqueues are the
    # producer-retry path, not the bulk path.
    # ON CONFLICT without a target: the same statement serves both layouts (a partitioned table
    # has no unique index on the key; its trigger skips a taken key: see dispatcher.partitions).
    keyed = _insert_for(conn.dialect.name)(jobs).on_conflict_do_nothing().returning(jobs.c.id)
    plain = jobs.insert().returning(jobs.c.id)
    seen: dict[tuple[object, object], int] = {}
    ids: list[int] = []
    for value in values:
        queue, dedupe_key = value["queue"], value["dedupe_key"]
        if dedupe_key is None:
            ids.append(conn.execute(plain, value).scalar_one())
            continue
        if (queue, dedupe_key) not in seen:
            seen[(queue, dedupe_key)] = (
                conn.execute(keyed, value).scalar()
                or conn.execute(
                    sa.select(jobs.c.id).where(
                        jobs.c.queue == queue, jobs.c.dedupe_key == dedupe_key
                    )
                ).scalar_one()
            )
        ids.append(seen[(queue, dedupe_key)])
    return ids


# The same inserts as plain SQL for PostgreSQL drivers used without SQLAlchemy's statement
# machinery: psycopg 3 (sync and async, also under SQLAlchemy) and asyncpg (its hot path).
_COLUMNS = (
    "queue",
    "endpoint",
    "custom_event_id",
    "customer_email",
    "payload",
    "dedupe_key",
    "trace_context",
    "ordering_key",
    "status",
    "attempts",
    "next_attempt_at",
    "created_at",
    "updated_at",
)
_PG_INSERT = (
    f"INSERT INTO dispatcher_jobs ({', '.join(_COLUMNS)}) "
    f"VALUES ({', '.join(['%s'] * len(_COLUMNS))}) RETURNING id"
)
_PG_INSERT_KEYED = _PG_INSERT.removesuffix(" RETURNING id") + " ON CONFLICT DO NOTHING RETURNING id"
_PG_SELECT_KEYED = "SELECT id FROM dispatcher_jobs WHERE queue = %s AND dedupe_key = %s"
ASYNCPG_INSERT = _PG_INSERT.replace("%s", "{}").format(
    *(f"${i}" for i in range(1, len(_COLUMNS) + 1))
)


def pg_params(rows: Sequence[NewJob], now: datetime) -> list[tuple[Any, ...]]:
    """``rows`` as parameter tuples for ``_PG_INSERT`` (in ``_COLUMNS`` order)."""
    return [
        (
            r.queue,
            r.endpoint,
            r.custom_event_id,
            r.customer_email,
            r.payload,
            r.dedupe_key,
            r.trace_context,
            r.ordering_key,
            r.status(now).value,  # a plain str for the drivers' own adapters
            0,
            r.due(now),
            now,
            now,
        )
        for r in rows
    ]


def insert_jobs_psycopg(pg: Any, rows: Sequence[NewJob], now: datetime) -> list[int]:
    """:func:`insert_jobs` on a psycopg 3 ``Connection``, in its current transaction: one row
    with a plain execute, many with the pipelined ``executemany``, about three times faster than
    one huge multi-VALUES statement, whose placeholders psycopg would parse in Python."""
    params = pg_params(rows, now)
    with pg.cursor() as cur:
        if names := ordering_locks(rows):
            cur.execute(_ORDERING_LOCK, (names,))
        if any(r.dedupe_key is not None for r in rows):
            seen: dict[tuple[object, object], int] = {}
            ids: list[int] = []
            for p in params:
                key = (p[0], p[5])
                if p[5] is None:
                    ids.append(cur.execute(_PG_INSERT, p).fetchone()[0])
                    continue
                if key not in seen:
                    got = cur.execute(_PG_INSERT_KEYED, p).fetchone()
                    seen[key] = (got or cur.execute(_PG_SELECT_KEYED, key).fetchone())[0]
                ids.append(seen[key])
            return ids
        if len(params) == 1:  # the hot path of enqueue(): one round trip
            cur.execute(_PG_INSERT, params[0])
            return [cur.fetchone()[0]]
        cur.executemany(_PG_INSERT, params, returning=True)
        ids = []
        while True:
            ids.append(cur.fetchone()[0])
            if not cur.nextset():
                return ids


def insert_jobs_dbapi(
    cur: Any, rows: Sequence[NewJob], now: datetime, *, sqlite: bool
) -> list[int]:
    """:func:`insert_jobs` through any DB-API cursor that takes ``%s`` placeholders (Django's,
    on PostgreSQL or SQLite 3.35+), in the cursor's current transaction; one statement per row.
    On SQLite the times are written as SQLAlchemy writes them there (naive UTC text)."""
    params = pg_params(rows, now)
    if sqlite:

        def text(at: datetime) -> str:
            return (
                at.astimezone(UTC).replace(tzinfo=None).isoformat(sep=" ", timespec="microseconds")
            )

        params = [(*p[:-3], text(p[-3]), text(now), text(now)) for p in params]
    elif names := ordering_locks(rows):
        cur.execute(_ORDERING_LOCK, (names,))
    seen: dict[tuple[object, object], int] = {}
    ids: list[int] = []
    for p in params:
        key = (p[0], p[5])
        if p[5] is None:
            cur.execute(_PG_INSERT, p)
            ids.append(cur.fetchone()[0])
            continue
        if key not in seen:
            cur.execute(_PG_INSERT_KEYED, p)
            got = cur.fetchone()
            if got is None:
                cur.execute(_PG_SELECT_KEYED, key)
                got = cur.fetchone()
            seen[key] = got[0]
        ids.append(seen[key])
    return ids


async def insert_jobs_psycopg_async(pg: Any, rows: Sequence[NewJob], now: datetime) -> list[int]:
    """:func:`insert_jobs_psycopg` on a psycopg 3 ``AsyncConnection``."""
    params = pg_params(rows, now)
    async with pg.cursor() as cur:
        if names := ordering_locks(rows):
            await cur.execute(_ORDERING_LOCK, (names,))
        if any(r.dedupe_key is not None for r in rows):
            seen: dict[tuple[object, object], int] = {}
            ids: list[int] = []
            for p in params:
                key = (p[0], p[5])
                if p[5] is None:
                    await cur.execute(_PG_INSERT, p)
                    ids.append((await cur.fetchone())[0])
                    continue
                if key not in seen:
                    await cur.execute(_PG_INSERT_KEYED, p)
                    got = await cur.fetchone()
                    if got is None:
                        await cur.execute(_PG_SELECT_KEYED, key)
                        got = await cur.fetchone()
                    seen[key] = got[0]
                ids.append(seen[key])
            return ids
        if len(params) == 1:
            await cur.execute(_PG_INSERT, params[0])
            return [(await cur.fetchone())[0]]
        await cur.executemany(_PG_INSERT, params, returning=True)
        ids = []
        while True:
            ids.append((await cur.fetchone())[0])
            if not cur.nextset():
                return ids


# --------------------------------------------------------------------------- delivering


def _paused(queue: str) -> sa.Exists:
    return sa.exists().where(queues.c.name == queue, queues.c.paused.is_(True))


def _holding(now: datetime) -> sa.ColumnElement[bool]:
    """Paused by an operator or a 401, cooling down after a 429, or its circuit not closed."""
    return sa.or_(
        queues.c.paused.is_(True),
        queues.c.cooldown_until > now,
        queues.c.circuit != Circuit.CLOSED.value,
    )


def _held(queue: str, now: datetime) -> sa.Exists:
    return sa.exists().where(queues.c.name == queue, _holding(now))


def queue_state(conn: sa.Connection, queue: str, now: datetime) -> QueueState:
    """One primary-key read: what a sending worker checks every few tens of milliseconds."""
    row = conn.execute(
        sa.select(
            queues.c.paused,
            queues.c.cooldown_until,
            queues.c.circuit,
            queues.c.circuit_since,
            queues.c.poison_kinds,
            queues.c.poison_until,
        ).where(queues.c.name == queue)
    ).first()
    if row is None:
        return QueueState(paused=False, cooling=False, circuit=Circuit.CLOSED)
    cooling = row.cooldown_until is not None and row.cooldown_until > now
    poison = kinds_of(row.poison_kinds) if row.poison_until and row.poison_until > now else ()
    return QueueState(
        bool(row.paused), cooling, Circuit(row.circuit), row.circuit_since, frozenset(poison)
    )


def admit(
    conn: sa.Connection, queue: str, want: int, now: datetime, limits: QueueLimits
) -> tuple[int, float]:
    """How many requests of ``queue`` this worker may start now, at most ``want``, and if none,
    how many seconds to wait before asking again.

    The ceilings hold across every worker on every machine because the state lives in the
    queue's row and the check runs under a per-queue lock (an advisory lock on PostgreSQL; the
    write lock on SQLite). Tokens granted but not used are given back with :func:`refund`.
    """
    if not limits.any:
        return want, 0.0
    if conn.dialect.name == "postgresql":
        conn.execute(sa.select(sa.func.pg_advisory_xact_lock(sa.func.hashtext(f"dq:{queue}"))))
    if limits.concurrency is not None:
        busy = conn.execute(
            sa.select(sa.func.count()).where(sa.text(LEASED_WHERE), jobs.c.queue == queue)
        ).scalar_one()
        want = min(want, limits.concurrency - busy)
        if want <= 0:
            return 0, 0.02
    if limits.rate is None:
        return want, 0.0
    _ensure_queue_row(conn, queue, now)
    row = conn.execute(
        sa.select(queues.c.tokens, queues.c.tokens_at).where(queues.c.name == queue)
    ).one()
    burst = max(1.0, limits.rate)  # at most one second's worth at once
    tokens = burst
    if row.tokens is not None and row.tokens_at is not None:
        elapsed = max(0.0, (now - row.tokens_at).total_seconds())
        tokens = min(burst, row.tokens + elapsed * limits.rate)
    grant = max(0, min(want, int(tokens)))
    conn.execute(
        sa.update(queues).where(queues.c.name == queue).values(tokens=tokens - grant, tokens_at=now)
    )
    return grant, (0.0 if grant else (1.0 - tokens) / limits.rate)


def has_due(conn: sa.Connection, queue: str, now: datetime) -> bool:
    due = sa.select(jobs.c.id).where(jobs.c.queue == queue, _DUE, jobs.c.next_attempt_at <= now)
    return bool(conn.execute(sa.select(due.exists())).scalar())


def refund(conn: sa.Connection, queue: str, unused: int, limits: QueueLimits) -> None:
    """Give back rate tokens that :func:`admit` granted but no due job used."""
    if unused > 0 and limits.rate is not None:
        conn.execute(
            sa.update(queues).where(queues.c.name == queue).values(tokens=queues.c.tokens + unused)
        )


def _ensure_queue_row(conn: sa.Connection, queue: str, now: datetime) -> None:
    conn.execute(
        _insert_for(conn.dialect.name)(queues)
        .values(name=queue, paused=False, updated_at=now)
        .on_conflict_do_nothing(index_elements=["name"])
    )


def cool_down(conn: sa.Connection, queue: str, until: datetime, now: datetime) -> None:
    """After a 429, no worker claims from ``queue`` before ``until``: the whole queue slows down,
    not only the job that was refused."""
    _ensure_queue_row(conn, queue, now)
    conn.execute(
        sa.update(queues)
        .where(
            queues.c.name == queue,
            sa.or_(queues.c.cooldown_until.is_(None), queues.c.cooldown_until < until),
        )
        .values(cooldown_until=until, updated_at=now)
    )


def claim(
    conn: sa.Connection, queue: str, limit: int, now: datetime, lease_seconds: float
) -> list[Claimed]:
    """Lease up to ``limit`` due jobs of ``queue`` in one statement; none while the queue is paused.

    PostgreSQL: the inner SELECT takes row locks with SKIP LOCKED, so concurrent workers get
    disjoint batches without waiting. SQLite: the connection began with BEGIN IMMEDIATE, so the
    whole UPDATE runs under the write lock and two workers cannot both win a row.
    """
    token = uuid.uuid4().hex
    lease = _lease(conn, queue, limit, now, lease_seconds, token, ~_held(queue, now))
    rows = conn.execute(lease).all()
    claimed = [_claimed(r, queue, token) for r in rows]
    claimed.sort(key=lambda c: c.id)
    return claimed


def _lease(
    conn: sa.Connection,
    queue: str,
    limit: int,
    now: datetime,
    lease_seconds: float,
    token: str,
    *where: sa.ColumnElement[bool],
    order: Sequence[sa.ColumnElement[Any]] = (),
) -> sa.UpdateBase:
    """``UPDATE … RETURNING`` that leases up to ``limit`` of ``queue``'s due jobs, oldest first,
    under ``token`` (``where``: what else must hold).

    PostgreSQL: ``id = ANY(ARRAY(SELECT …))``, not ``id IN (SELECT …)``. The IN is a join, and
    planning a join looks up the primary key's real lowest id through its index (for a merge
    join's estimate): after a purge or the retention deleted millions of the oldest rows, until
    a VACUUM, that walk over their dead entries cost every claim 4-5 ms of planning (2,600
    buffers at 1.5M deleted rows) and drains half their pace. The array is planned as a list of
    ids: no join, no walk.

    Ordering keys: a job with a key is due only while no other job of its queue and key is in
    flight or has a smaller id and is still live (scheduled, pending, retrying). So a key's jobs
    go one at a time, in id order (= commit order: see ``ordering_locks``); a retrying job holds its
    successors, a finished one (delivered, dead) lets them go. Any snapshot that sees a job sees
    its key's earlier jobs (they committed first), still live unless they finished, so two
    workers never hold two jobs of one key, and neither does one claim (the second has the
    first as a live predecessor).
    """
    due_now: tuple[sa.ColumnElement[bool] | sa.TextClause, ...] = (
        jobs.c.queue == queue,
        _DUE,
        jobs.c.next_attempt_at <= now,
        _first_of_its_key(),
    )
    if order:  # a preference (the probe's) among the oldest due jobs, not a sort of them all
        oldest = (
            sa.select(jobs.c.id)
            .where(*due_now)
            .order_by(jobs.c.next_attempt_at, jobs.c.id)
            .limit(PREFERENCE_CANDIDATES)
            .scalar_subquery()
        )
        due_now = (jobs.c.id.in_(oldest), _DUE)
    due = (
        sa.select(jobs.c.id)
        .where(*due_now)
        .order_by(*order, jobs.c.next_attempt_at, jobs.c.id)
        .limit(limit)
        .with_for_update(skip_locked=True)
        .scalar_subquery()
    )
    if conn.dialect.name == "postgresql":
        chosen = jobs.c.id == sa.any_(sa.func.array(due))
    else:
        chosen = jobs.c.id.in_(due)
    return (
        sa.update(jobs)
        .where(chosen, *where)
        .values(
            status=JobStatus.IN_FLIGHT,
            lease_token=token,
            lease_expires_at=now + timedelta(seconds=lease_seconds),
            updated_at=now,
        )
        .returning(*_CLAIMED)
    )


def _same_key(other: sa.FromClause) -> tuple[sa.ColumnElement[bool], ...]:
    """``other`` (an alias of the jobs table) is a job of the same queue and ordering key."""
    return (other.c.queue == jobs.c.queue, other.c.ordering_key == jobs.c.ordering_key)


def _overtaken() -> sa.Exists:
    """A later job of this job's key has gone out (in flight, finished, or tried): sending this
    one now would reach the API after it."""
    later = jobs.alias("later")
    return (
        sa.select(sa.literal(1))
        .where(
            *_same_key(later),
            later.c.id > jobs.c.id,
            sa.or_(later.c.status.not_in(WAITING_STATUSES), later.c.attempts > 0),
        )
        .exists()
    )


def _first_of_its_key() -> sa.ColumnElement[bool]:
    """No ordering key, or no other live job of the key before it (or in flight): see _lease.
    One probe of ``ix_dispatcher_jobs_ordering`` per keyed candidate, none for the others."""
    other = jobs.alias("earlier")
    blocking = (
        sa.select(sa.literal(1))
        .where(
            *_same_key(other),
            _EARLIER_LIVE,  # literal, so PostgreSQL matches the partial index
            sa.or_(other.c.id < jobs.c.id, sa.text("earlier.status = 'in_flight'")),
            other.c.id != jobs.c.id,
        )
        .exists()
    )
    return sa.or_(jobs.c.ordering_key.is_(None), ~blocking)


def renew(conn: sa.Connection, tokens: Iterable[str], now: datetime, lease_seconds: float) -> int:
    """Extend the leases of the batches a worker still holds, so that no other worker is handed
    a job while its request is still on its way (a slow API, a small window, a trickling
    answer). Only jobs still leased under these tokens are touched."""
    tokens = list(tokens)
    if not tokens:
        return 0
    result = conn.execute(
        sa.update(jobs)
        .where(sa.text(LEASED_WHERE), jobs.c.lease_token.in_(tokens))
        .values(lease_expires_at=now + timedelta(seconds=lease_seconds))
    )
    return int(result.rowcount)


def claim_probe(
    conn: sa.Connection,
    queue: str,
    now: datetime,
    lease_seconds: float,
    probe_seconds: float,
) -> list[Claimed]:
    """While ``queue``'s circuit is open, lease the jobs that test the API (``PROBES`` at most),
    when their time has come: the circuit turns half-open, and no other probe starts for
    ``probe_seconds`` (so a worker that dies mid-probe only delays the next one). ``[]`` if the
    circuit is closed, the queue is paused, or the next probe is not due yet.

    A few at once, not one: any of them answered closes the circuit, so the few jobs that keep
    failing for reasons of their own (a transient error that meets a job twice, a bad payload)
    cannot hold the queue probe after probe, while a dead API gets three requests per interval."""
    won = conn.execute(
        sa.update(queues)
        .where(
            queues.c.name == queue,
            queues.c.circuit != Circuit.CLOSED.value,
            queues.c.circuit_retry_at <= now,
            queues.c.paused.is_(False),
        )
        .values(
            circuit=Circuit.HALF_OPEN.value,
            circuit_retry_at=now + timedelta(seconds=probe_seconds),
            updated_at=now,
        )
    ).rowcount
    if not won:
        return []
    tripped = kinds_of(
        conn.execute(sa.select(queues.c.circuit_kinds).where(queues.c.name == queue)).scalar()
    )
    token = uuid.uuid4().hex
    # The probe is the job least like the failures that opened the circuit: of another kind if
    # one is due, else one that has never failed. Then a bad payload (a kind that always fails)
    # cannot hold the queue's other jobs: see end_probe.
    unlike = (
        sa.case((jobs.c.custom_event_id.in_(tripped), 1), else_=0) if tripped else sa.literal(0),
        sa.case((jobs.c.last_status_code.is_(None) & jobs.c.last_error.is_(None), 0), else_=1),
    )
    rows = conn.execute(_lease(conn, queue, PROBES, now, lease_seconds, token, order=unlike)).all()
    if not rows:  # nothing to probe with: stay open, try again when work arrives
        conn.execute(
            sa.update(queues)
            .where(queues.c.name == queue)
            .values(circuit=Circuit.OPEN.value, circuit_retry_at=now)
        )
        return []
    return sorted((_claimed(r, queue, token, probe=True) for r in rows), key=lambda c: c.id)


def open_circuit(
    conn: sa.Connection,
    queue: str,
    reason: str,
    now: datetime,
    policy: BreakerPolicy,
    refund: Sequence[tuple[int, datetime]] = (),
    kinds: Iterable[int] = (),
) -> bool:
    """Open ``queue``'s circuit (if it was closed): no worker sends for it but probes.

    ``refund`` names the counted attempts (job id, started at) whose failures tripped it, and
    ``kinds`` their custom event ids (the probe prefers another kind: see claim_probe). Those
    attempts, and every other counted outage failure of the queue that any worker recorded in
    the breaker's window, stop counting toward the attempt limit, and a job that one of them
    dead-lettered for running out of attempts (``exhausted``) is waiting again (also when
    another worker opened it first). True if this call opened it."""
    _ensure_queue_row(conn, queue, now)
    opened = conn.execute(
        sa.update(queues)
        .where(queues.c.name == queue, queues.c.circuit == Circuit.CLOSED.value)
        .values(
            circuit=Circuit.OPEN.value,
            circuit_since=now,
            circuit_reason=reason,
            circuit_retry_at=now + timedelta(seconds=probe_interval(0, policy)),
            circuit_probes=0,
            circuit_kinds=kinds_text(kinds),
            updated_at=now,
        )
    ).rowcount
    since = now - timedelta(seconds=policy.window_seconds)
    found = set(refund) | set(_outage_failures(conn, queue, since, now))
    # Rare (once per opening) and small (a window's worth): one attempt at a time, so that
    # only attempts that really counted are taken off their job's count.
    for job_id, started_at in sorted(found):
        flipped = conn.execute(
            sa.update(attempts)
            .where(
                attempts.c.job_id == job_id,
                attempts.c.started_at == started_at,
                attempts.c.counted.is_(True),
            )
            .values(counted=False)
        ).rowcount
        if not flipped:
            continue
        # A dead job of an ordering key whose later jobs have gone out since stays dead: sent
        # again now, it would reach the API after them (an operator's replay is the way back).
        dead_of_max = sa.and_(
            jobs.c.status == JobStatus.DEAD,
            jobs.c.exhausted.is_(True),
            sa.or_(jobs.c.ordering_key.is_(None), ~_overtaken()),
        )
        # A dead job of "max attempts" is waiting again; any other just gets its attempt back.
        revived = conn.execute(
            sa.update(jobs)
            .where(jobs.c.id == job_id, jobs.c.attempts > 0, dead_of_max)
            .values(
                attempts=jobs.c.attempts - 1,
                status=JobStatus.RETRYING,
                next_attempt_at=now,
                exhausted=False,  # waiting again, not out of attempts
                updated_at=now,
            )
        ).rowcount
        if revived:
            continue
        conn.execute(
            sa.update(jobs)
            .where(jobs.c.id == job_id, jobs.c.attempts > 0)
            .values(attempts=jobs.c.attempts - 1, updated_at=now)
        )
    return bool(opened)


def _outage_failures(
    conn: sa.Connection, queue: str, since: datetime, now: datetime
) -> list[tuple[int, datetime]]:
    """The counted outage failures (5xx, 408, no answer) of ``queue`` since ``since``, whichever
    worker recorded them, but those of kinds known as bad payloads: (job id, started at). Looks
    at the last ``REFUND_SCAN`` attempts only (by id, the newest), so its cost never grows with
    history."""
    newest = conn.execute(sa.select(sa.func.max(attempts.c.id))).scalar()
    if newest is None:
        return []
    poison = set(queue_state(conn, queue, now).poison)
    rows = conn.execute(
        sa.select(attempts.c.job_id, attempts.c.started_at, jobs.c.custom_event_id)
        .join(jobs, jobs.c.id == attempts.c.job_id)
        .where(
            attempts.c.id > newest - REFUND_SCAN,
            attempts.c.started_at >= since,
            attempts.c.counted.is_(True),
            attempts.c.outcome.in_((Outcome.RETRY.value, Outcome.DEAD.value)),
            sa.or_(
                attempts.c.status_code.is_(None),
                attempts.c.status_code == 408,
                attempts.c.status_code.between(500, 599),
            ),
            jobs.c.queue == queue,
        )
    ).all()
    return [(r.job_id, r.started_at) for r in rows if r.custom_event_id not in poison]


def end_probe(
    conn: sa.Connection,
    queue: str,
    ok: bool,
    reason: str | None,
    now: datetime,
    policy: BreakerPolicy,
    kinds: Iterable[int | None] = (),
) -> tuple[bool, list[int]]:
    """A probe's answer: any answer but an outage closes the circuit; an outage opens it again,
    the next probe further off. Returns (closed, the kinds now taken for bad payloads).
    ``kinds``: the custom event ids of the probes that got an answer (``ok``), or of those that
    failed.

    A probe of another kind than the failures that opened the circuit, answered, says those
    kinds fail whatever the API's health: bad payloads, not an outage. They are remembered for
    ``policy.poison_seconds`` (or until one of them is delivered): their failures count toward
    their jobs' attempts and never open the circuit again, so they go dead after their attempts
    and the rest of the queue flows."""
    row = conn.execute(
        sa.select(
            queues.c.circuit,
            queues.c.circuit_probes,
            queues.c.circuit_kinds,
            queues.c.poison_kinds,
            queues.c.poison_until,
        )
        .where(queues.c.name == queue)
        .with_for_update()
    ).first()
    if row is None:
        return False, []
    tripped = kinds_of(row.circuit_kinds)
    probed = {k for k in kinds if k is not None}
    if ok:
        poisoned = tripped if probed - set(tripped) else []
        values: dict[str, Any] = {}
        if poisoned:
            still = (
                kinds_of(row.poison_kinds) if row.poison_until and row.poison_until > now else []
            )
            values = {
                "poison_kinds": kinds_text([*still, *poisoned]),
                "poison_until": now + timedelta(seconds=policy.poison_seconds),
            }
        closed = conn.execute(
            sa.update(queues)
            .where(queues.c.name == queue, queues.c.circuit != Circuit.CLOSED.value)
            .values(
                circuit=Circuit.CLOSED.value,
                circuit_since=now,
                circuit_reason=None,
                circuit_retry_at=None,
                circuit_probes=0,
                circuit_kinds=None,
                updated_at=now,
                **values,
            )
        ).rowcount
        return bool(closed), poisoned if closed else []
    if row.circuit != Circuit.HALF_OPEN.value:  # another probe of this round failed first
        conn.execute(
            sa.update(queues)
            .where(queues.c.name == queue)
            .values(circuit_kinds=kinds_text([*tripped, *probed]))
        )
        return False, []
    failed = (row.circuit_probes or 0) + 1
    conn.execute(
        sa.update(queues)
        .where(queues.c.name == queue, queues.c.circuit != Circuit.CLOSED.value)
        .values(
            circuit=Circuit.OPEN.value,
            circuit_retry_at=now + timedelta(seconds=probe_interval(failed, policy)),
            circuit_probes=failed,
            circuit_reason=reason,
            circuit_kinds=kinds_text([*tripped, *probed]),
            updated_at=now,
        )
    )
    return False, []


def clear_poison(conn: sa.Connection, queue: str, delivered: Iterable[int], now: datetime) -> None:
    """Kinds taken for bad payloads that were just delivered: they are not, after all."""
    row = conn.execute(
        sa.select(queues.c.poison_kinds).where(queues.c.name == queue).with_for_update()
    ).first()
    if row is None or not row.poison_kinds:
        return
    left = [k for k in kinds_of(row.poison_kinds) if k not in set(delivered)]
    conn.execute(
        sa.update(queues)
        .where(queues.c.name == queue)
        .values(poison_kinds=kinds_text(left), updated_at=now)
    )


def _outage_counted(results: Sequence[AttemptResult]) -> list[AttemptResult]:
    return [
        r
        for r in results
        if r.decision.counts
        and r.decision.outcome in (Outcome.RETRY, Outcome.DEAD)
        and is_outage(r.status_code)
    ]


def touches_queue(results: Sequence[AttemptResult]) -> bool:
    """Will recording ``results`` write their queue's row (a pause, a cool-down, a re-send that
    may be a duplicate, an outage failure to judge against the circuit)?"""
    return any(r.decision.effect is not None or r.maybe_twice for r in results) or bool(
        _outage_counted(results)
    )


def lock_queue(conn: sa.Connection, queue: str, now: datetime) -> Circuit:
    """Lock ``queue``'s row (made if need be) until the commit, and return its circuit.

    A transaction that records answers and writes the queue's row takes this lock first: one
    order for every writer (the queue's row before its jobs), and never an upgrade of a weaker
    lock (FOR NO KEY UPDATE, as an UPDATE of the row would take it)."""
    _ensure_queue_row(conn, queue, now)
    circuit = conn.execute(
        sa.select(queues.c.circuit).where(queues.c.name == queue).with_for_update(key_share=True)
    ).scalar()
    return Circuit(circuit or Circuit.CLOSED.value)


def uncount_open(
    conn: sa.Connection, results: Sequence[AttemptResult], now: datetime
) -> Sequence[AttemptResult]:
    """Counted outage failures of a queue whose circuit another worker opened meanwhile are
    judged as the outage's: uncounted, waiting for the circuit to close. The queue's row is
    locked (:func:`lock_queue`): an open_circuit running now either committed before (seen
    here) or waits for this commit and then finds these attempts (see _outage_failures). Call
    it first in the transaction that records ``results``."""
    suspects = _outage_counted(results)
    if not suspects:
        return results
    circuits = {q: lock_queue(conn, q, now) for q in sorted({r.job.queue for r in suspects})}
    tripped = {q for q, circuit in circuits.items() if circuit is not Circuit.CLOSED}
    if not tripped:
        return results
    poison = {q: queue_state(conn, q, now).poison for q in tripped}
    chosen = {
        id(r)
        for r in suspects
        if r.job.queue in tripped and r.job.custom_event_id not in poison[r.job.queue]
    }
    out = []
    for r in results:
        if id(r) in chosen:
            decision = during_outage(r.decision)
            r = replace(r, decision=decision, error=decision.message)
        out.append(r)
    return out


_RECORD_JOB = (
    sa.update(jobs)
    .where(
        jobs.c.id == sa.bindparam("b_id"),
        jobs.c.lease_token == sa.bindparam("b_token"),
        jobs.c.status == JobStatus.IN_FLIGHT,
    )
    .values(
        status=sa.bindparam("b_status"),
        attempts=jobs.c.attempts + sa.bindparam("b_inc", type_=sa.Integer),
        next_attempt_at=sa.bindparam("b_next", type_=jobs.c.next_attempt_at.type),
        last_status_code=sa.bindparam("b_code", type_=sa.Integer),
        last_error=sa.bindparam("b_error", type_=sa.Text),
        exhausted=sa.bindparam("b_exhausted", type_=sa.Boolean),
        delivered_at=sa.bindparam("b_delivered", type_=jobs.c.delivered_at.type),
        lease_token=None,
        lease_expires_at=None,
    )
)

# PostgreSQL: the whole batch in one statement, its rows passed as arrays (16 parameters however
# large the batch), so neither a round trip per row nor a statement with thousands of
# placeholders for the driver to parse.
_RECORD_PG = sa.text(
    """
    WITH inserted AS (
        INSERT INTO dispatcher_attempts
            (job_id, started_at, duration_ms, status_code, error, response_body, outcome, counted,
             sent)
        SELECT * FROM unnest(
            CAST(:a_job AS bigint[]), CAST(:a_started AS timestamptz[]), CAST(:a_dur AS int[]),
            CAST(:a_code AS int[]), CAST(:a_error AS text[]), CAST(:a_body AS text[]),
            CAST(:a_outcome AS text[]), CAST(:a_counted AS boolean[]), CAST(:a_sent AS boolean[]))
    ), r AS (
        SELECT * FROM unnest(
            CAST(:b_id AS bigint[]), CAST(:b_token AS text[]), CAST(:b_status AS text[]),
            CAST(:b_inc AS int[]), CAST(:b_next AS timestamptz[]), CAST(:b_code AS int[]),
            CAST(:b_error AS text[]), CAST(:b_delivered AS timestamptz[]),
            CAST(:b_exhausted AS boolean[]))
            AS r(id, token, status, inc, next_at, code, error, delivered_at, exhausted)
    ), updated AS (
        UPDATE dispatcher_jobs AS j
        SET status = r.status, attempts = j.attempts + r.inc, next_attempt_at = r.next_at,
            last_status_code = r.code, last_error = r.error, delivered_at = r.delivered_at,
            exhausted = r.exhausted,
            lease_token = NULL, lease_expires_at = NULL, updated_at = :now
        FROM r
        WHERE j.id = r.id AND j.lease_token = r.token AND j.status = 'in_flight'
    )
    SELECT 1
    """
)
_ATTEMPT_ARRAYS = {
    "a_job": "job_id",
    "a_started": "started_at",
    "a_dur": "duration_ms",
    "a_code": "status_code",
    "a_error": "error",
    "a_body": "response_body",
    "a_outcome": "outcome",
    "a_counted": "counted",
    "a_sent": "sent",
}


def _record_pg(
    conn: sa.Connection,
    attempt_rows: list[dict[str, Any]],
    job_rows: list[dict[str, Any]],
    now: datetime,
) -> None:
    """One statement: the attempts and the jobs' new states."""
    params: dict[str, Any] = {"now": now}
    for name, column in _ATTEMPT_ARRAYS.items():
        params[name] = [row[column] for row in attempt_rows]
    for name in job_rows[0]:
        params[name] = [row[name] for row in job_rows]
    conn.execute(_RECORD_PG, params)


_STATUS_AFTER = {
    Outcome.DELIVERED: JobStatus.DELIVERED,
    Outcome.RETRY: JobStatus.RETRYING,
    Outcome.DEAD: JobStatus.DEAD,
    Outcome.PAUSE: JobStatus.PENDING,
}


def record(
    conn: sa.Connection, results: Sequence[AttemptResult], now: datetime
) -> dict[str, AttemptResult]:
    """Write each attempt and the job's new state; pause queues that answered 401/403.

    A job whose lease was lost (the sweeper returned it after expiry and another worker holds it)
    still gets its attempt row, but its state is left to the current holder. Returns the queues
    this call paused (they were not paused before), each with the answer that paused it, so the
    caller can announce each pause exactly once.
    """
    newly_paused: dict[str, AttemptResult] = {}
    if not results:
        return newly_paused
    attempt_rows = [
        {
            "job_id": r.job.id,
            "started_at": r.started_at,
            "duration_ms": r.duration_ms,
            "status_code": r.status_code,
            "error": r.error,
            "response_body": r.response_body,
            "outcome": r.decision.outcome.value,
            "counted": r.decision.counts,
            "sent": r.sent,
        }
        for r in results
    ]
    job_rows = [
        {
            "b_id": r.job.id,
            "b_token": r.job.lease_token,
            "b_status": _STATUS_AFTER[r.decision.outcome],
            "b_inc": 1 if r.decision.counts else 0,
            "b_next": now + timedelta(seconds=r.decision.delay_seconds or 0.0),
            "b_code": r.status_code,
            "b_error": r.decision.reason,
            "b_delivered": now if r.decision.outcome is Outcome.DELIVERED else None,
            "b_exhausted": r.decision.exhausted,
        }
        for r in results
    ]
    if conn.dialect.name == "postgresql":
        _record_pg(conn, attempt_rows, job_rows, now)
    else:
        conn.execute(attempts.insert(), attempt_rows)
        conn.execute(_RECORD_JOB.values(updated_at=now), job_rows)
    for r in results:  # the answers' effects on their whole queue (policy.decide says which)
        effect = r.decision.effect
        if effect is QueueEffect.PAUSE and r.job.queue not in newly_paused:
            reason = r.decision.reason or "paused by the API's answer"
            if pause(conn, r.job.queue, reason, now):
                newly_paused[r.job.queue] = r
        elif effect is QueueEffect.COOL_DOWN and r.decision.effect_seconds:
            until = now + timedelta(seconds=r.decision.effect_seconds)
            cool_down(conn, r.job.queue, until, now)
    resent = Counter(r.job.queue for r in results if r.maybe_twice)
    for queue, n in sorted(resent.items()):  # rare: a timeout after the body was sent
        _ensure_queue_row(conn, queue, now)
        conn.execute(
            sa.update(queues).where(queues.c.name == queue).values(resent=queues.c.resent + n)
        )
    return newly_paused


def report_window(conn: sa.Connection, queue: str, window: int, now: datetime) -> None:
    """The in-flight window a worker now keeps for ``queue`` (for stats, the page, /metrics)."""
    _ensure_queue_row(conn, queue, now)
    conn.execute(sa.update(queues).where(queues.c.name == queue).values(send_window=window))


def release(conn: sa.Connection, claimed: Iterable[Claimed], now: datetime) -> int:
    """Give leased jobs back unsent (the queue paused mid-batch): pending, no attempt counted."""
    params = [{"b_id": c.id, "b_token": c.lease_token} for c in claimed]
    if not params:
        return 0
    return int(
        conn.execute(
            sa.update(jobs)
            .where(
                jobs.c.id == sa.bindparam("b_id"),
                jobs.c.lease_token == sa.bindparam("b_token"),
                jobs.c.status == JobStatus.IN_FLIGHT,
            )
            .values(
                status=JobStatus.PENDING, lease_token=None, lease_expires_at=None, updated_at=now
            ),
            params,
        ).rowcount
    )


# --------------------------------------------------------------------------- sweeping


def release_expired(conn: sa.Connection, now: datetime) -> int:
    """Return jobs whose lease ran out (their worker died mid-delivery) to ``pending``."""
    result = conn.execute(
        sa.update(jobs)
        .where(sa.text(LEASED_WHERE), jobs.c.lease_expires_at < now)
        .values(status=JobStatus.PENDING, lease_token=None, lease_expires_at=None, updated_at=now)
    )
    return int(result.rowcount)


PROMOTE_BATCH = 10_000  # scheduled jobs made pending per statement (the sweeper loops)


def promote_scheduled(conn: sa.Connection, now: datetime, limit: int = PROMOTE_BATCH) -> int:
    """Make up to ``limit`` scheduled jobs whose time has come pending (the sweeper, every pass,
    before it signals the queues with jobs due): oldest time first, skipping rows another
    transaction holds. How many."""
    chosen = (
        sa.select(jobs.c.id)
        .where(sa.text(SCHEDULED_WHERE), jobs.c.next_attempt_at <= now)
        .order_by(jobs.c.next_attempt_at)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    return int(
        conn.execute(
            sa.update(jobs)
            .where(jobs.c.id.in_(chosen.scalar_subquery()), sa.text(SCHEDULED_WHERE))
            .values(status=JobStatus.PENDING, updated_at=now)
        ).rowcount
        or 0
    )


def due_queues(conn: sa.Connection, now: datetime) -> list[str]:
    """Queues that have a job due now and are not held (paused, cooling down, or an open circuit
    whose next probe is not due yet).

    Walks the distinct queue names with one index seek each (a "loose index scan", one
    statement), so the cost grows with the number of queues, not with the number of waiting
    jobs.
    """
    paused = set(
        conn.execute(
            sa.select(queues.c.name).where(
                _holding(now),
                # an open circuit whose probe is due is signalled: a worker sends the probe
                sa.not_(
                    sa.and_(
                        queues.c.paused.is_(False),
                        sa.or_(queues.c.cooldown_until.is_(None), queues.c.cooldown_until <= now),
                        queues.c.circuit_retry_at <= now,
                    )
                ),
            )
        ).scalars()
    )
    return [q for q in conn.execute(_DUE_QUEUES, {"now": now}).scalars() if q not in paused]


# The loose index scan as one statement (both databases have recursive CTEs): a round trip for
# 200 queues instead of 400, about 2 ms instead of 200 on a busy machine (bench/scale.py).
_DUE_QUEUES = sa.text(
    f"""
    WITH RECURSIVE walk(queue) AS (
        SELECT (SELECT min(j.queue) FROM dispatcher_jobs AS j WHERE {DUE_WHERE})
        UNION ALL
        SELECT (SELECT min(j.queue) FROM dispatcher_jobs AS j
                WHERE {DUE_WHERE} AND j.queue > walk.queue)
        FROM walk WHERE walk.queue IS NOT NULL
    )
    SELECT walk.queue FROM walk
    WHERE walk.queue IS NOT NULL
      AND (SELECT min(j.next_attempt_at) FROM dispatcher_jobs AS j
           WHERE j.queue = walk.queue AND {DUE_WHERE}) <= :now
    """
).bindparams(sa.bindparam("now", type_=jobs.c.next_attempt_at.type))


# --------------------------------------------------------------------------- counts
# Kept by the jobs table's triggers (see dispatcher.schema): nothing here is called when a job
# changes state. PostgreSQL's triggers append to dispatcher_count_deltas; fold_counts moves them
# into dispatcher_counts, and job_counts reads the two added.

_FOLD_PG = sa.text(
    """
    WITH moved AS (DELETE FROM dispatcher_count_deltas RETURNING queue, status, jobs)
    INSERT INTO dispatcher_counts AS c (queue, status, jobs)
    SELECT queue, status, sum(jobs) FROM moved GROUP BY queue, status ORDER BY status, queue
    ON CONFLICT (queue, status) DO UPDATE SET jobs = c.jobs + excluded.jobs
    """
)


def fold_counts(conn: sa.Connection) -> int:
    """Fold the triggers' appended deltas into ``dispatcher_counts`` (the sweeper, every pass);
    the (queue, status) rows it changed. Safe beside another fold: a delta row is deleted by
    exactly one of them. SQLite's triggers write the counts directly: nothing to fold."""
    if conn.dialect.name != "postgresql":
        return 0
    return int(conn.execute(_FOLD_PG).rowcount or 0)


def job_counts(conn: sa.Connection) -> dict[tuple[str, str], int]:
    """Jobs per (queue, status), exact as of this statement: the folded counts plus the deltas
    not folded yet. Its cost is the number of queues and deltas, never the number of jobs."""
    both = sa.union_all(
        sa.select(counts.c.queue, counts.c.status, counts.c.jobs),
        sa.select(count_deltas.c.queue, count_deltas.c.status, count_deltas.c.jobs),
    ).subquery()
    rows = conn.execute(
        sa.select(both.c.queue, both.c.status, sa.func.sum(both.c.jobs).label("n"))
        .group_by(both.c.queue, both.c.status)
        .having(sa.func.sum(both.c.jobs) != 0)
    )
    return {(r.queue, r.status): int(r.n) for r in rows}


def count_dropped(conn: sa.Connection, gone: Mapping[tuple[str, str], int]) -> None:
    """Take the jobs of a dropped partition (``gone``: (queue, status) -> jobs) out of the
    counts: a ``DROP TABLE`` fires no trigger."""
    rows = [{"queue": q, "status": str(s), "jobs": -n} for (q, s), n in gone.items() if n]
    if rows:
        conn.execute(count_deltas.insert(), rows)


def recount(conn: sa.Connection) -> None:
    """Rebuild the counts from the jobs table (a repair after the triggers were off, or a
    test's hand-made rows): one grouped scan, seconds at ten million rows. On PostgreSQL the jobs
    table is locked against writes (SHARE) until the commit, so nothing moves meanwhile."""
    if conn.dialect.name == "postgresql":
        conn.exec_driver_sql("LOCK TABLE dispatcher_jobs IN SHARE MODE")
        conn.exec_driver_sql("LOCK TABLE dispatcher_counts IN EXCLUSIVE MODE")
    conn.execute(sa.delete(count_deltas))
    conn.execute(sa.delete(counts))
    conn.execute(
        counts.insert().from_select(
            ["queue", "status", "jobs"],
            sa.select(jobs.c.queue, jobs.c.status, sa.func.count()).group_by(
                jobs.c.queue, jobs.c.status
            ),
        )
    )


# --------------------------------------------------------------------------- an operator's moves


def replay_jobs(
    conn: sa.Connection,
    where: Sequence[sa.ColumnElement[bool]],
    targets: Sequence[JobStatus],
    now: datetime,
) -> Counter[str]:
    """``dispatcher replay``: the jobs matching ``where`` whose status is one of ``targets``
    (finished ones) are due again at once, with a fresh attempt budget; their history (attempt
    rows, ``last_status_code``, ``last_error``) is kept. How many moved, per queue."""
    return _move(
        conn,
        where,
        targets,
        {
            "status": JobStatus.PENDING,
            "attempts": 0,
            "next_attempt_at": now,
            "lease_token": None,
            "lease_expires_at": None,
            "delivered_at": None,
            "replays": jobs.c.replays + 1,
            "replayed_at": now,
            "updated_at": now,
        },
    )


def cancel_jobs(
    conn: sa.Connection,
    where: Sequence[sa.ColumnElement[bool]],
    targets: Sequence[JobStatus],
    now: datetime,
) -> Counter[str]:
    """``dispatcher cancel``: the jobs matching ``where`` whose status is one of ``targets``
    (waiting ones only: a leased job is its worker's to record) are never sent. How many moved,
    per queue."""
    return _move(conn, where, targets, {"status": JobStatus.CANCELLED, "updated_at": now})


def _move(
    conn: sa.Connection,
    where: Sequence[sa.ColumnElement[bool]],
    targets: Sequence[JobStatus],
    values: Mapping[str, Any],
) -> Counter[str]:
    """One UPDATE (RETURNING the queue) of the jobs of ``where`` in one of the ``targets``
    statuses; the jobs table's triggers count it. How many moved, per queue."""
    statement = (
        sa.update(jobs)
        .where(*where, jobs.c.status.in_(targets))
        .values(**values)
        .returning(jobs.c.queue)
    )
    return Counter(conn.execute(statement).scalars())


@dataclass(frozen=True, slots=True)
class Erasure:
    """``dispatcher forget``'s change to one job: its texts rewritten (``values``), and, if it
    was still waiting, cancelled."""

    job_id: int
    values: Mapping[str, Any]
    cancel: bool = False


def erase_jobs(conn: sa.Connection, erased: Sequence[Erasure], now: datetime) -> None:
    """Write ``erased`` in the caller's transaction (which has locked those rows)."""
    for e in erased:
        values = dict(e.values)
        if e.cancel:
            values["status"] = JobStatus.CANCELLED
        conn.execute(sa.update(jobs).where(jobs.c.id == e.job_id).values(**values, updated_at=now))


# --------------------------------------------------------------------------- retention


@dataclass(frozen=True, slots=True)
class Purged:
    jobs: int
    attempts: int


def purge_batch(
    conn: sa.Connection,
    cutoff: datetime,
    limit: int,
    statuses: Sequence[str] = FINISHED_STATUSES,
    *,
    created_before: datetime | None = None,
) -> Purged:
    """Delete up to ``limit`` finished jobs (``statuses``, never a live one) last changed before
    ``cutoff``, with their attempts. Rows another transaction holds are skipped, not waited for.
    ``created_before`` keeps to older jobs (partitioned: the legacy partition, see partitions.py).
    """
    where = [jobs.c.status.in_(statuses), jobs.c.updated_at < cutoff]
    if created_before is not None:
        where.append(jobs.c.created_at < created_before)
    chosen = conn.execute(
        sa.select(jobs.c.id).where(*where).limit(limit).with_for_update(skip_locked=True)
    ).all()
    if not chosen:
        return Purged(0, 0)
    ids = [r.id for r in chosen]
    removed_attempts = conn.execute(sa.delete(attempts).where(attempts.c.job_id.in_(ids))).rowcount
    removed_jobs = conn.execute(sa.delete(jobs).where(jobs.c.id.in_(ids))).rowcount
    return Purged(int(removed_jobs), int(removed_attempts))


# --------------------------------------------------------------------------- pausing


def pause(conn: sa.Connection, queue: str, reason: str, now: datetime) -> bool:
    """Pause ``queue``; the first reason is kept if it was paused already. True if it changed."""
    stmt = _insert_for(conn.dialect.name)(queues).values(
        name=queue, paused=True, pause_reason=reason, paused_at=now, updated_at=now
    )
    stmt = stmt.on_conflict_do_update(
        index_elements=["name"],
        set_={"paused": True, "pause_reason": reason, "paused_at": now, "updated_at": now},
        where=queues.c.paused.is_(False),
    )
    # RETURNING, not rowcount: SQLAlchemy 2.1 reports -1 for an upsert's rowcount on psycopg.
    return conn.execute(stmt.returning(queues.c.name)).first() is not None


def resume(conn: sa.Connection, queue: str, now: datetime) -> bool:
    """Unpause ``queue``. True if it was paused."""
    result = conn.execute(
        sa.update(queues)
        .where(queues.c.name == queue, queues.c.paused.is_(True))
        .values(paused=False, pause_reason=None, paused_at=None, updated_at=now)
    )
    return bool(result.rowcount)


def is_paused(conn: sa.Connection, queue: str) -> bool:
    return bool(conn.execute(sa.select(_paused(queue))).scalar())
