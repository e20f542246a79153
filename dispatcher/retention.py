"""Scheduled retention: the sweeper removes finished jobs older than ``DISPATCHER_RETENTION``.

A job keeps the customer identifiers it was sent with (and a copy of the email for lookups)
until it is purged, so personal data ages out only if something deletes it. This runs inside
the sweeper, so nobody has to schedule ``dispatcher purge``: delivered and dead jobs (and their
attempts) last changed more than the retention ago go, in small batches at a quiet rate; pending,
in-flight and retrying jobs are never touched.

The rate: one batch of ``batch`` jobs per sweep while there is a backlog (a few hundred jobs a
second, each batch its own short transaction, so producers and workers never wait on it), then
one look every ``idle_seconds``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import datetime, timedelta

from sqlalchemy.engine import Engine

from dispatcher import outbox, partitions
from dispatcher.db import utcnow

log = logging.getLogger("dispatcher.retention")

BATCH = 500
IDLE_SECONDS = 60.0


class Retention:
    def __init__(
        self,
        engine: Engine,
        max_age: timedelta,
        *,
        batch: int = BATCH,
        idle_seconds: float = IDLE_SECONDS,
        clock: Callable[[], datetime] = utcnow,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.engine = engine
        self.max_age = max_age
        self.batch = batch
        self.idle_seconds = idle_seconds
        self._clock = clock
        self._monotonic = monotonic
        self._next_at = float("-inf")

    def run_once(self) -> outbox.Purged | None:
        """One batch, if it is time for one; what it removed (None: not time yet)."""
        if self._monotonic() < self._next_at:
            return None
        cutoff = self._clock() - self.max_age
        with self.engine.begin() as conn:
            # Partitioned: months go whole (partitions.Maintainer); rows are deleted only from
            # the legacy partition, and not at all once it is gone.
            run, created_before = partitions.batched_scope(conn)
            purged = (
                outbox.purge_batch(conn, cutoff, self.batch, created_before=created_before)
                if run
                else outbox.Purged(0, 0)
            )
        if purged.jobs:
            log.info(
                "retention: removed %d finished jobs and %d attempts last changed before %s",
                purged.jobs,
                purged.attempts,
                cutoff.isoformat(timespec="seconds"),
                extra={"removed_jobs": purged.jobs, "removed_attempts": purged.attempts},
            )
        backlog = purged.jobs >= self.batch
        self._next_at = self._monotonic() + (0.0 if backlog else self.idle_seconds)
        return purged
