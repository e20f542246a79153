"""What an operator changes: pause and resume a queue, replay dead jobs, purge old ones.

Each rule lives here once; the CLI, the admin page, its API, the demo and the benchmark call these.
A call that owns its transaction (given an Engine) tells the workers after its own commit, and
logs one line; given a Connection, it runs in the caller's transaction, and the caller commits and
calls :func:`dispatcher.producer.signal_workers` (or lets the sweeper find the jobs).
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Iterable
from datetime import datetime, timedelta
from typing import Any, TypeVar

import sqlalchemy as sa

from dispatcher import outbox, producer
from dispatcher.admin.filters import (
    MAX_BATCH_SIZE,
    MAX_EXPECTED,
    MAX_JOB_IDS,
    AdminError,
    Filter,
    check_int,
    check_queue,
    check_status,
    check_time,
)
from dispatcher.admin.names import in_use, require_queue
from dispatcher.admin.reads import Bind, connected, job_id, where
from dispatcher.admin.results import CancelResult, PurgeResult, ReplayResult
from dispatcher.db import utcnow
from dispatcher.masking import redact
from dispatcher.schema import (
    FINISHED_STATUSES,
    WAITING_STATUSES,
    JobStatus,
    attempts,
    jobs,
)

__all__ = [
    "REASON_MAX",
    "ExpectedCountMismatch",
    "cancel",
    "pause_queue",
    "paused_queues",
    "purge",
    "queue_in_use",
    "replay",
    "resume_queue",
]

log = logging.getLogger("dispatcher.admin")
Moved = TypeVar("Moved", bound=ReplayResult)  # what _move returns: ReplayResult, CancelResult

# After each batch, a purge waits this multiple of the time the batch took, so it uses a third of
# the time it would back to back (about 10,000 jobs/s instead of 30,000 on 2 cores) and a drain
# running beside it keeps its pace (bench/scale.py: 0.67x its speed with 0.5, 0.73x with none).
PURGE_YIELD = 2.0

# On PostgreSQL a purge VACUUMs the jobs and attempts tables after every this many jobs and at its
# end. A DELETE leaves dead rows and index entries until a VACUUM, and every drain steps over them
# until then; autovacuum may be late, throttled, or off. A plain VACUUM takes no lock that
# producers or workers wait for; it reads the pages not known to be all-visible and scans each
# index: 6.5 s after 5M deleted jobs at 10M rows (bench/scale.py). On the partitioned layout it
# covers every month.
PURGE_VACUUM_EVERY = 1_000_000


def _signal(queues: Iterable[str]) -> None:
    producer.signal_workers(queues)  # looked up at the call: tests replace it


# --------------------------------------------------------------------------- pause / resume

REASON_MAX = 500  # an operator's reason for a pause


def pause_queue(
    engine: sa.Engine, queue: str, reason: str = "paused by an operator", *, create: bool = False
) -> bool:
    """Pause ``queue`` and return once no worker will start another request for it (requests
    already in flight may still be answered; jobs claimed but not sent go back to pending).
    True if it was not paused before. The reason is at most :data:`REASON_MAX` characters: it
    is shown on every page, in ``stats`` and in alerts. A queue that does not exist yet is
    refused (:class:`~dispatcher.admin.names.UnknownQueue`: a typo pauses nothing) unless
    ``create``."""
    check_queue(queue)
    if not isinstance(reason, str) or not reason.strip():
        raise AdminError("reason", "say why (it is shown wherever the pause is)")
    if len(reason) > REASON_MAX:
        raise AdminError("reason", f"at most {REASON_MAX} characters (got {len(reason)})")
    if "\x00" in reason or not _encodable(reason):  # PostgreSQL text holds neither
        raise AdminError("reason", "NUL characters and lone surrogates are not text we can keep")
    if not create:
        require_queue(engine, queue)
    with engine.begin() as conn:
        changed = outbox.pause(conn, queue, reason, utcnow())
    time.sleep(outbox.PAUSE_SETTLE_SECONDS)  # every sending worker re-reads the row by then
    if changed:
        log.info("admin: paused queue %s: %s", queue, redact(reason), extra={"queue": queue})
    return changed


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def resume_queue(engine: sa.Engine, queue: str) -> bool:
    """Deliver ``queue``'s backlog again: unpause it and, after the commit, tell the workers.
    True if it was paused. A queue that does not exist is refused, as by :func:`pause_queue`."""
    require_queue(engine, queue)
    with engine.begin() as conn:
        changed = outbox.resume(conn, queue, utcnow())
    if changed:
        log.info("admin: resumed queue %s", queue, extra={"queue": queue})
        _signal([queue])
    return changed


def queue_in_use(bind: Bind, queue: str) -> bool:
    """Whether ``queue`` has a job or a row (paused, throttled, a circuit) already: pausing a
    name that has neither (``create``) pauses it ahead of use, which the CLI says."""
    check_queue(queue)
    with connected(bind) as conn:
        found = in_use(conn, queue)
        if isinstance(bind, sa.Engine):
            conn.rollback()
    return found


def paused_queues(bind: Bind, names: Iterable[str]) -> list[str]:
    """Those of ``names`` that are paused (a replay into them waits for ``resume``)."""
    with connected(bind) as conn:
        found = [q for q in names if outbox.is_paused(conn, q)]
        if isinstance(bind, sa.Engine):
            conn.rollback()
    return found


# --------------------------------------------------------------------------- replay


class ExpectedCountMismatch(AdminError):
    """The filter no longer matches the number of jobs the operator confirmed: nothing changed."""

    def __init__(self, expected: int, result: ReplayResult) -> None:
        # Not a bad argument (field None): the outbox changed since the operator looked.
        super().__init__(
            None, f"the filter matches {result.count} jobs, not {expected}: nothing done"
        )
        self.expected = expected
        self.result = result


def replay(
    bind: Bind,
    f: Filter | None = None,
    *,
    job_ids: Iterable[int | str] | None = None,
    include_delivered: bool = False,
    dry_run: bool = False,
    expected: int | None = None,
    now: datetime,
) -> ReplayResult:
    """Send finished jobs again: back to ``pending`` with a fresh attempt budget, in one UPDATE.

    Choose them by ``job_ids`` or by ``f.status`` (dead or cancelled; delivered needs
    ``include_delivered``) plus the rest of ``f``; the filter narrows ids when both are given,
    and a filter without ids or status is refused so a typo cannot replay everything. Only dead
    and cancelled jobs (and, with ``include_delivered``, delivered ones) ever change: a cancelled
    job is replayed like a dead one (the operator who cancelled it changed their mind); by id
    both are taken. A named id that is unknown or not replayable makes the whole call fail before
    anything changes. Attempt rows stay (they are the history); ``replays``/``replayed_at``
    record the replay, ``last_status_code`` and ``last_error`` are kept until the next attempt.

    ``expected``: replay only if the filter still matches exactly that many jobs (what the
    operator confirmed); otherwise nothing changes and :class:`ExpectedCountMismatch` carries
    the new count. It needs an Engine, since the call must own the transaction it may undo.
    """
    f = f or Filter()
    now = check_time("now", now)
    targets: tuple[JobStatus, ...] = (JobStatus.DEAD, JobStatus.CANCELLED)
    if include_delivered:
        targets = (*targets, JobStatus.DELIVERED)
    if f.status is not None:
        if f.status not in FINISHED_STATUSES:
            raise AdminError(
                "status",
                f"only dead, cancelled or delivered jobs can be replayed ({f.status} is live)",
            )
        if f.status is JobStatus.DELIVERED and not include_delivered:
            raise AdminError(
                "status",
                "replaying delivered jobs sends them again: needs include_delivered "
                "(--include-delivered)",
            )
        if not (include_delivered and f.status is JobStatus.DEAD):
            targets = (f.status,)
        else:
            targets = (JobStatus.DEAD, JobStatus.DELIVERED)
    if job_ids is None and f.status is None:
        # A filter alone (a queue, a time window) never replays: that is too easy to mistype.
        raise AdminError("status", "give job ids, or status dead and filters")

    def refusal(i: int, state: str) -> str | None:
        if state == JobStatus.DELIVERED:
            return (
                f"job {i} is delivered: replaying sends it again, which needs include_delivered "
                "(--include-delivered)"
            )
        return f"job {i} is {state}: only dead, cancelled or delivered jobs can be replayed"

    result = _move(
        bind,
        f,
        job_ids,
        targets,
        lambda conn, where: outbox.replay_jobs(conn, where, targets, now),
        refusal=refusal,
        verb="replayed",
        dry_run=dry_run,
        expected=expected,
        result=lambda found, skipped: ReplayResult(found.total(), tuple(sorted(found)), dry_run),
    )
    if isinstance(bind, sa.Engine) and result.count and not dry_run:
        _signal(result.queues)
    return result


def cancel(
    bind: Bind,
    f: Filter | None = None,
    *,
    job_ids: Iterable[int | str] | None = None,
    dry_run: bool = False,
    expected: int | None = None,
    now: datetime,
) -> CancelResult:
    """Cancel waiting jobs (scheduled, pending, retrying): they take the finished status
    ``cancelled`` and are never sent, in one UPDATE (the triggers count it).

    Choose them by ``job_ids`` and/or ``f`` (a filter with at least one field: an empty one is
    refused; ``f.status`` may narrow to one of those). A job in flight (leased by a worker)
    cannot be recalled, its request may be on the wire: it is left alone and counted in
    ``in_flight`` (its worker records its answer as usual). A named id that is unknown or
    finished makes the whole call fail before anything changes. ``expected`` as for
    :func:`replay` (the number cancelled, in-flight ones not included).
    """
    f = f or Filter()
    now = check_time("now", now)
    targets: tuple[JobStatus, ...] = WAITING_STATUSES
    if f.status is not None:
        if f.status is JobStatus.IN_FLIGHT:
            raise AdminError(
                "status", "in-flight jobs cannot be recalled: their request may be on the wire"
            )
        if f.status not in WAITING_STATUSES:
            raise AdminError(
                "status",
                f"only scheduled, pending or retrying jobs can be cancelled ({f.status} is final)",
            )
        targets = (f.status,)
    if job_ids is None and not f.given():
        raise AdminError(None, "give job ids or at least one filter (nothing is cancelled blindly)")

    def refusal(i: int, state: str) -> str | None:
        if state == JobStatus.IN_FLIGHT:
            return None  # skipped and counted: it may be on the wire
        return f"job {i} is {state}: only scheduled, pending or retrying jobs can be cancelled"

    result = _move(
        bind,
        f,
        job_ids,
        targets,
        lambda conn, where: outbox.cancel_jobs(conn, where, targets, now),
        refusal=refusal,
        verb="cancelled",
        dry_run=dry_run,
        expected=expected,
        result=lambda found, skipped: CancelResult(
            found.total(), tuple(sorted(found)), dry_run, in_flight=skipped
        ),
        skipped=JobStatus.IN_FLIGHT,
    )
    return result


def _move(
    bind: Bind,
    f: Filter,
    job_ids: Iterable[int | str] | None,
    targets: tuple[JobStatus, ...],
    move: Callable[[sa.Connection, list[sa.ColumnElement[bool]]], Counter[str]],
    *,
    refusal: Callable[[int, str], str | None],
    verb: str,
    dry_run: bool,
    expected: int | None,
    result: Callable[[Counter[str], int], Moved],
    skipped: JobStatus | None = None,
) -> Moved:
    """What replay and cancel share: the jobs of ``f`` (and ``job_ids``) whose status is one of
    ``targets`` move (``move``: :func:`dispatcher.outbox.replay_jobs` or
    :func:`~dispatcher.outbox.cancel_jobs`); or, with
    ``dry_run``, are only counted. Returns ``result(moved (or movable) jobs per queue, how many
    jobs of status ``skipped`` the selection left alone)``; logs a line if it owns its
    transaction and moved any.

    Named ids are checked first: an unknown one, or one whose status is neither a target nor
    ``skipped``, fails the whole call (``refusal`` says why). ``expected``: see :func:`replay`.
    """
    if expected is not None:
        check_int("expected_count", expected, 0, MAX_EXPECTED)
        if not isinstance(bind, sa.Engine):
            raise TypeError(f"{verb[:-1]}(expected=...) needs an Engine: it owns its transaction")
    if f.queue is not None:
        require_queue(bind, f.queue)
    ids: list[int] | None = None
    missing: list[str] = []
    if job_ids is not None:
        given = list(job_ids)
        if not given:  # an empty selection moves nothing, never "everything"
            return result(Counter(), 0)
        if len(given) > MAX_JOB_IDS:
            raise AdminError(
                "job_ids", f"at most {MAX_JOB_IDS} ids per call (use filters for more)"
            )
        parsed = [(g, job_id(g)) for g in given]
        ids = [i for _, i in parsed if i is not None]
        missing = [str(g).strip() for g, i in parsed if i is None]

    chosen = where(Filter(**{**f.given(), "status": None}))
    conditions = [*chosen, jobs.c.status.in_(targets)]
    left_alone = 0
    with connected(bind, write=not dry_run and expected is None) as conn:
        if ids is not None:
            _check_ids(
                conn, ids, missing, (*targets, *([skipped] if skipped else [])), verb, refusal
            )
            conditions.append(jobs.c.id.in_(ids))
            chosen.append(jobs.c.id.in_(ids))
        if skipped is not None:
            left_alone = int(
                conn.execute(
                    sa.select(sa.func.count())
                    .select_from(jobs)
                    .where(*chosen, jobs.c.status == skipped)
                ).scalar_one()
            )
        per_queue: Counter[str] = Counter()
        if dry_run:
            for r in conn.execute(
                sa.select(jobs.c.queue, sa.func.count().label("n"))
                .where(*conditions)
                .group_by(jobs.c.queue)
            ):
                per_queue[r.queue] = int(r.n)
            if isinstance(bind, sa.Engine):
                conn.rollback()
            return result(per_queue, left_alone)
        per_queue = move(conn, conditions)
        if expected is not None:  # this call's own connection: commit or undo here
            if per_queue.total() != expected:
                conn.rollback()
                raise ExpectedCountMismatch(expected, result(per_queue, left_alone))
            conn.commit()
    if isinstance(bind, sa.Engine) and per_queue:
        log.info(
            "admin: %s %d jobs (%s)",
            verb,
            per_queue.total(),
            " ".join(f"{k}={v}" for k, v in f.as_text(f.given()).items()) or "by id",
        )
    return result(per_queue, left_alone)


def _check_ids(
    conn: sa.Connection,
    ids: list[int],
    missing: list[str],
    allowed: tuple[JobStatus, ...],
    verb: str,
    refusal: Callable[[int, str], str | None],
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
        elif state in allowed:
            continue
        elif (why := refusal(i, state)) is not None:
            problems.append(why)
    if problems:
        shown = "; ".join(problems[:10])
        more = f"; and {len(problems) - 10} more" if len(problems) > 10 else ""
        raise AdminError(None, f"nothing {verb}: {shown}{more}")


# --------------------------------------------------------------------------- purge


def purge(
    engine: sa.Engine,
    *,
    older_than: timedelta,
    status: str | None = None,
    batch_size: int = 1000,
    dry_run: bool = False,
    now: datetime,
    progress: Callable[[int, int], None] | None = None,
) -> PurgeResult:
    """Delete finished jobs (delivered and dead, or only ``status``) last changed more than
    ``older_than`` before ``now``, with their attempts.

    Batches of ``batch_size`` jobs, each its own short transaction (:func:`outbox.purge_batch`),
    so a purge of millions neither holds locks for long nor needs one huge transaction. Pending,
    in-flight and retrying jobs are never touched. ``progress(jobs, attempts)`` is called after
    each batch with the totals so far (the CLI's running count). Between batches it pauses twice
    as long as the last one took (``PURGE_YIELD``), so that deliveries keep their pace. On
    PostgreSQL it vacuums what it deleted as it goes (``PURGE_VACUUM_EVERY``) and at its end.
    """
    now = check_time("now", now)
    if not isinstance(older_than, timedelta) or older_than < timedelta(0):
        raise AdminError("older_than", f"expected a duration >= 0 (got {older_than!r:.80})")
    targets = FINISHED_STATUSES if status is None else (check_status(status, FINISHED_STATUSES),)
    batch_size = check_int("batch_size", batch_size, 1, MAX_BATCH_SIZE)
    try:
        cutoff = now - older_than
    except OverflowError:
        return PurgeResult(0, 0, dry_run)  # before the year 1: nothing is that old

    if dry_run:
        conditions = (jobs.c.status.in_(targets), jobs.c.updated_at < cutoff)
        with engine.connect() as conn:
            n_jobs = conn.execute(
                sa.select(sa.func.count()).select_from(jobs).where(*conditions)
            ).scalar_one()
            n_attempts = conn.execute(
                sa.select(sa.func.count())
                .select_from(attempts.join(jobs, attempts.c.job_id == jobs.c.id))
                .where(*conditions)
            ).scalar_one()
            conn.rollback()
        return PurgeResult(int(n_jobs), int(n_attempts), dry_run=True)

    total_jobs = total_attempts = unvacuumed = 0
    while True:
        started = time.monotonic()
        with engine.begin() as conn:
            done = outbox.purge_batch(conn, cutoff, batch_size, targets)
        total_jobs += done.jobs
        total_attempts += done.attempts
        unvacuumed += done.jobs
        last = done.jobs < batch_size
        if progress is not None:  # jobs and attempts deleted so far, after each batch
            progress(total_jobs, total_attempts)
        if unvacuumed and (last or unvacuumed >= PURGE_VACUUM_EVERY):
            vacuum(engine, analyze=last)  # its time counts in the pause below
            unvacuumed = 0
        if last:
            break
        # Yield to the workers: a purge of millions runs for minutes, and back to back its
        # batches took a quarter of a 2-core machine's drain rate (bench/scale.py).
        time.sleep((time.monotonic() - started) * PURGE_YIELD)
    return PurgeResult(total_jobs, total_attempts)


def vacuum(engine: sa.Engine, *, analyze: bool, what: str = "purge") -> None:
    """VACUUM (and at a purge's end, ANALYZE: the history's shape changed) the jobs and attempts
    tables on PostgreSQL; SQLite reuses a deleted row's pages by itself.

    Only a help: the deletes are committed, so a VACUUM that fails or is refused (a role that does
    not own the tables gets a warning, not an error) is logged and the purge goes on. SKIP_LOCKED:
    it never waits behind another VACUUM, an index build or a partition's detach.
    """
    if engine.dialect.name != "postgresql":
        return
    started = time.monotonic()
    options = "SKIP_LOCKED, ANALYZE" if analyze else "SKIP_LOCKED"
    notices: list[str] = []

    def note(notice: Any) -> None:  # psycopg 3 drops the server's WARNINGs unless asked
        notices.append(str(notice.message_primary))

    try:
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            driver: Any = conn.connection.driver_connection
            listens = hasattr(driver, "add_notice_handler")
            if listens:
                driver.add_notice_handler(note)
            try:
                conn.exec_driver_sql(f"VACUUM ({options}) {jobs.name}, {attempts.name}")
            finally:
                if listens:
                    driver.remove_notice_handler(note)
    except sa.exc.DBAPIError as exc:
        log.warning("admin: %s could not VACUUM the outbox: %s", what, str(exc.orig).strip())
        return
    for notice in notices:
        log.warning("admin: %s's VACUUM: %s", what, notice)
    log.info("admin: %s vacuumed the outbox in %.1f s", what, time.monotonic() - started)
