"""Queues are named, not typed into existence: which queues exist, and removing an unused one.

A queue exists once a job used it, the queues table has its row (a pause, a throttle, a circuit),
``dispatcher_counts`` remembers its finished jobs, or the settings name it
(:meth:`dispatcher.config.Settings.configures`). ``pause``, ``resume``, ``replay --queue`` and
``cancel --queue`` refuse any other name with :class:`UnknownQueue`, which names the closest
existing queue: ``dispatcher pause eu_shop`` (a typo for ``eu-shop``) pauses nothing.
``pause_queue(create=True)`` (``dispatcher pause --create``) pauses a queue ahead of its first job.

Every check here reads small things only: the queues and counts tables (a row per queue and
status) and the counts' unfolded deltas, never the jobs.
"""

from __future__ import annotations

import difflib
import logging
from collections.abc import Collection

import sqlalchemy as sa

from dispatcher import outbox
from dispatcher.admin.filters import AdminError, check_queue
from dispatcher.admin.reads import Bind, connected
from dispatcher.config import DEFAULT_QUEUE, get_settings, queue_env_suffix
from dispatcher.schema import (
    FINISHED_STATUSES,
    activity_buckets,
    activity_marks,
    count_deltas,
    counts,
    queues,
)

__all__ = ["UnknownQueue", "delete_queue", "existing_queues", "require_queue"]

log = logging.getLogger("dispatcher.admin")


class UnknownQueue(AdminError):
    """A queue name that no job used and the settings do not name (the API answers 404)."""

    def __init__(self, queue: str, known: Collection[str]) -> None:
        close = difflib.get_close_matches(queue, sorted(known), n=1, cutoff=0.6)
        hint = f"; did you mean {close[0]}?" if close else ""
        super().__init__(
            "queue",
            f"no queue {queue}: no job has used it and the settings do not name it{hint} "
            "(`dispatcher queues` lists them; `dispatcher pause --create` pauses a queue ahead "
            "of its first job)",
        )
        self.queue = queue
        self.suggestion = close[0] if close else None


def existing_queues(bind: Bind) -> set[str]:
    """Every queue in use: with a job, a queue row, or a counts row (also zero: its jobs were
    purged)."""
    with connected(bind) as conn:
        named = sa.union(
            sa.select(counts.c.queue), sa.select(count_deltas.c.queue), sa.select(queues.c.name)
        )
        found = set(conn.execute(named).scalars())
        if isinstance(bind, sa.Engine):
            conn.rollback()
    return found


def in_use(conn: sa.Connection, queue: str) -> bool:
    """One queue's :func:`existing_queues` test: primary-key lookups, and the triggers' deltas
    not folded yet (a queue's first job is there before the sweeper's next pass)."""
    return bool(
        conn.execute(
            sa.select(
                sa.or_(
                    sa.exists().where(queues.c.name == queue),
                    sa.exists().where(counts.c.queue == queue),
                    sa.exists().where(count_deltas.c.queue == queue),
                )
            )
        ).scalar_one()
    )


def require_queue(bind: Bind, queue: str) -> str:
    """``queue`` if it exists or the settings name it; else :class:`UnknownQueue`.

    A name the settings know only by its variable suffix (``ECDP_API_KEY_EU_SHOP`` serves both
    ``eu-shop`` and ``eu_shop``) is refused when another spelling of it is the one in use."""
    check_queue(queue)
    with connected(bind) as conn:
        used = in_use(conn, queue)
        if isinstance(bind, sa.Engine):
            conn.rollback()
    if used:
        return queue
    settings = get_settings()
    if settings.configures(queue):
        exact = queue in settings.dedicated_queues or queue == DEFAULT_QUEUE
        if exact:
            return queue
        twins = {q for q in existing_queues(bind) if queue_env_suffix(q) == queue_env_suffix(queue)}
        if not twins:
            return queue
        raise UnknownQueue(queue, twins)
    raise UnknownQueue(queue, existing_queues(bind))


def delete_queue(engine: sa.Engine, queue: str) -> bool:
    """Remove a queue that has no job: its queues-table row, its counts (all zero) and its kept
    chart buckets. True if there was anything to remove; :class:`AdminError` if it has jobs
    (purge or wait for them first)."""
    check_queue(queue)
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":  # no fold may add to a count being deleted
            conn.execute(sa.select(counts.c.queue).where(counts.c.queue == queue).with_for_update())
        held = {s: n for (q, s), n in outbox.job_counts(conn).items() if q == queue}
        finished = sum(n for s, n in held.items() if s in FINISHED_STATUSES)
        live = any(n for s, n in held.items() if s not in FINISHED_STATUSES)
        if finished or live:
            raise AdminError(
                "queue",
                f"queue {queue} has jobs "
                f"({'waiting or in flight' if live else f'{finished} finished'}): only a queue "
                "without jobs can be deleted (purge them, or let them finish, first)",
            )
        removed = 0
        for table, column in (
            (queues, queues.c.name),
            (counts, counts.c.queue),
            (count_deltas, count_deltas.c.queue),
            (activity_buckets, activity_buckets.c.queue),
            (activity_marks, activity_marks.c.queue),
        ):
            removed += conn.execute(sa.delete(table).where(column == queue)).rowcount
    if removed:
        log.info("admin: deleted queue %s", queue, extra={"queue": queue})
    return bool(removed)
