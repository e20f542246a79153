"""One worker's delivery loop: claim a batch -> POST -> decide -> record, until nothing is due.

Kept free of Celery so that tests (and the demo) can run several deliverers side by side; the
Celery task in :mod:`dispatcher.tasks` is a thin wrapper around :meth:`Deliverer.drain`.

Requests of a batch go out on a small thread pool sharing one ``httpx.Client``, so a slow API
costs latency, not throughput. A 401/403 stops the batch: requests not yet sent are given back
unsent, so each worker sends at most its in-flight requests after the key stops working.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TypeVar

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from dispatcher import outbox
from dispatcher.config import Settings, queue_env_suffix
from dispatcher.db import get_engine, utcnow
from dispatcher.ecdp import Answer, EcdpClient
from dispatcher.outbox import AttemptResult, Claimed
from dispatcher.policy import Outcome, decide, truncate_body

log = logging.getLogger("dispatcher.delivery")

T = TypeVar("T")
DB_RETRY_SECONDS = 60.0  # how long a worker rides out a database restart before giving up


def with_db_retry(fn: Callable[[], T], what: str, budget: float = DB_RETRY_SECONDS) -> T:
    """Run a transaction, again and again while the database is unreachable or locked.

    Used for the write after a batch is sent: giving up there would leave the jobs leased until
    the lease expires and then send them a second time. Other errors are raised at once.
    """
    deadline = time.monotonic() + budget
    delay = 0.1
    while True:
        try:
            return fn()
        except (sa.exc.OperationalError, sa.exc.InterfaceError) as exc:
            if time.monotonic() + delay > deadline:
                raise
            log.warning("%s failed (%s); retrying in %.1fs", what, type(exc.orig).__name__, delay)
            time.sleep(delay)
            delay = min(delay * 2, 5.0)


@dataclass
class DrainSummary:
    """What one drain did; small enough to show as a Celery task result in Flower."""

    queue: str
    batches: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)
    released: int = 0
    paused: bool = False
    cooling: bool = False  # a 429 put the queue in a cool-down: the sweeper wakes it after
    more: bool = False  # stopped for the time budget with work left: re-signal

    def as_dict(self) -> dict[str, object]:
        return {
            "queue": self.queue,
            "batches": self.batches,
            **dict(self.outcomes),
            "released": self.released,
            "paused": self.paused,
            "cooling": self.cooling,
            "more": self.more,
        }


class Deliverer:
    def __init__(
        self,
        settings: Settings,
        *,
        engine: Engine | None = None,
        client: EcdpClient | None = None,
    ) -> None:
        self.settings = settings
        self.engine = engine or get_engine(settings.database_url)
        self.client = client or EcdpClient(
            settings.base_url,
            timeout=settings.http_timeout_seconds,
            connect_timeout=settings.http_connect_timeout_seconds,
            max_connections=settings.worker_threads,
            body_limit=settings.response_body_limit,
        )
        self._pool = ThreadPoolExecutor(settings.worker_threads, thread_name_prefix="ecdp-post")

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        self.client.close()

    def drain(self, queue: str, *, max_seconds: float = 10.0) -> DrainSummary:
        """Deliver due jobs of ``queue`` until none is due, the queue pauses, or time is up."""
        summary = DrainSummary(queue)
        deadline = time.monotonic() + max_seconds
        while True:
            claimed, wait = self._claim(queue)
            if claimed:
                summary.batches += 1
                self._deliver_batch(queue, claimed, summary)
                if summary.paused or summary.cooling:
                    return summary
            elif not wait:
                return summary  # nothing due (or the queue is paused)
            else:
                time.sleep(min(wait, max(0.0, deadline - time.monotonic())))  # throttled
            if time.monotonic() >= deadline:
                summary.more = True
                return summary

    def _claim(self, queue: str) -> tuple[list[Claimed], float]:
        """Lease a batch within the queue's shared ceilings. ``([], seconds)``: throttled, jobs
        are due, ask again after that long; ``([], 0)``: nothing to do."""
        limits = self.settings.limits(queue)

        def claim() -> tuple[list[Claimed], float]:
            with self.engine.begin() as conn:
                now = utcnow()
                allowed, wait = outbox.admit(conn, queue, self.settings.batch_size, now, limits)
                if not allowed:
                    return [], (wait if outbox.has_due(conn, queue, now) else 0.0)
                jobs = outbox.claim(conn, queue, allowed, now, self.settings.lease_seconds)
                outbox.refund(conn, queue, allowed - len(jobs), limits)
                return jobs, 0.0

        return with_db_retry(claim, "claim")

    def _deliver_batch(self, queue: str, claimed: list[Claimed], summary: DrainSummary) -> None:
        api_key = self.settings.api_key(queue)
        if api_key is None:
            reason = f"no API key configured (set ECDP_API_KEY_{queue_env_suffix(queue)})"
            if queue == "default":
                reason = "no API key configured (set ECDP_API_KEY)"
            with self.engine.begin() as conn:
                now = utcnow()
                summary.released += outbox.release(conn, claimed, now)
                outbox.pause(conn, queue, reason, now)
            log.error("queue paused: %s", reason, extra={"queue": queue})
            summary.paused = True
            return

        stop = threading.Event()

        def send(job: Claimed) -> AttemptResult | None:
            if stop.is_set():
                return None
            answer = self.client.post(job.endpoint, job.payload, api_key)
            result = self._judge(job, answer)
            if result.decision.outcome is Outcome.PAUSE or answer.status_code == 429:
                stop.set()  # send nothing more from this batch; the rest go back unsent
            return result

        outcomes = list(self._pool.map(send, claimed))
        results = [r for r in outcomes if r is not None]
        unsent = [job for job, r in zip(claimed, outcomes, strict=True) if r is None]
        def write() -> int:
            with self.engine.begin() as conn:
                now = utcnow()
                outbox.record(conn, results, now)
                return outbox.release(conn, unsent, now)

        summary.released += with_db_retry(write, "recording the batch")
        for r in results:
            summary.outcomes[r.decision.outcome.value] += 1
        if stop.is_set() and not any(r.decision.outcome is Outcome.PAUSE for r in results):
            summary.cooling = True
        elif stop.is_set():
            summary.paused = True
            pause = next(r for r in results if r.decision.outcome is Outcome.PAUSE)
            log.error(
                "queue %s paused after HTTP %s: %s",
                queue,
                pause.status_code,
                pause.decision.reason,
                extra={"queue": queue, "status_code": pause.status_code},
            )

    def _judge(self, job: Claimed, answer: Answer) -> AttemptResult:
        decision = decide(
            answer.status_code,
            attempts_before=job.attempts,
            policy=self.settings.retry,
            retry_after=answer.retry_after,
            body=answer.body,
            error=answer.error,
            now=answer.started_at,
        )
        body = None
        if answer.status_code is not None:
            body = truncate_body(answer.body, self.settings.response_body_limit)
            if answer.body_size > len(answer.body):
                body += f"…[truncated, {answer.body_size} bytes in all]"
        return AttemptResult(
            job=job,
            started_at=answer.started_at,
            duration_ms=answer.duration_ms,
            status_code=answer.status_code,
            error=None if decision.outcome is Outcome.DELIVERED else decision.reason,
            response_body=body,
            decision=decision,
        )
