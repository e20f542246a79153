"""One worker's delivery loop: claim a batch -> POST -> decide -> record, until nothing is due.

Kept free of Celery so that tests (and the demo) can run several deliverers side by side; the
Celery task in :mod:`dispatcher.tasks` is a thin wrapper around :meth:`Deliverer.drain`.

Requests go out through the process's one :class:`~dispatcher.ecdp.EcdpClient`, many in flight at
once, so a slow API costs latency, not throughput. A 401/403 stops the drain: requests not yet sent
are given back unsent, so each worker sends at most its in-flight requests after the key stops
working.
"""

from __future__ import annotations

import logging
import queue as queues
import time
from collections import Counter, deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import TypeVar

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from dispatcher import outbox
from dispatcher.alerts import notify_pause
from dispatcher.config import Secret, Settings, queue_env_suffix
from dispatcher.db import get_engine, utcnow
from dispatcher.ecdp import Answer, EcdpClient
from dispatcher.outbox import AttemptResult, Claimed
from dispatcher.policy import Outcome, decide, truncate_body

log = logging.getLogger("dispatcher.delivery")

T = TypeVar("T")
Answered = queues.SimpleQueue[tuple[Claimed, Future[Answer]]]  # (job, its answer) as they come
LATENCY_SAMPLES = 100  # answers that _window() looks back over
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
    pause: AttemptResult | None = field(default=None, repr=False)  # the answer that paused

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
        self.webhook = settings.alert_webhook_url
        self.engine = engine or get_engine(settings.database_url)
        self.client = client or EcdpClient(
            settings.base_url,
            timeout=settings.http_timeout_seconds,
            connect_timeout=settings.http_connect_timeout_seconds,
            max_connections=settings.max_in_flight,
            body_limit=settings.response_body_limit,
            proxy_url=proxy.reveal() if (proxy := settings.proxy_url()) else None,
        )
        self._latencies_ms: deque[int] = deque(maxlen=LATENCY_SAMPLES)  # see _window()

    def close(self) -> None:
        self.client.close()

    def drain(self, queue: str, *, max_seconds: float = 10.0) -> DrainSummary:
        """Deliver due jobs of ``queue`` until none is due, the queue pauses, or time is up.

        A pipeline, not lock-step batches: requests stay in flight while the next batch is
        claimed and finished ones are recorded, so a slow API costs latency, not throughput.
        """
        summary = DrainSummary(queue)
        api_key = self.settings.api_key(queue)
        if api_key is None:
            self._pause_without_key(queue, summary)
            return summary
        deadline = time.monotonic() + max_seconds
        inbox: deque[Claimed] = deque()  # leased, not yet sent
        answered: Answered = queues.SimpleQueue()  # answers not yet judged
        done: list[AttemptResult] = []  # judged, not yet recorded
        try:
            stop, exhausted = self._pump(queue, api_key, deadline, inbox, answered, done, summary)
        except BaseException:
            self._give_back(answered, done, inbox, summary)
            raise
        self._record(done, list(inbox), summary)  # inbox: left unsent by a stop or the deadline
        summary.more = not exhausted and not stop
        if stop:
            self._report_stop(queue, summary)
        return summary

    def _pump(
        self,
        queue: str,
        api_key: Secret,
        deadline: float,
        inbox: deque[Claimed],
        answered: Answered,
        done: list[AttemptResult],
        summary: DrainSummary,
    ) -> tuple[bool, bool]:
        """Claim, send and collect until nothing is due, a 401/403/429 stops it, or the deadline
        passes; ``(stopped, exhausted)``. Leaves in ``inbox`` and ``done`` what the caller must
        give back and record."""
        in_flight = 0
        stop = False  # a 401/403 or 429 answered: send nothing more
        exhausted = False  # nothing more was due at the last claim
        while True:
            window = self._window()  # changes only as answers come in
            while not stop and in_flight < window:
                if not inbox and not exhausted and time.monotonic() < deadline:
                    self._flush(done, summary)  # recorded jobs leave the in-flight ceiling
                    claimed, throttled_for = self._claim(queue)
                    if claimed:
                        summary.batches += 1
                        inbox.extend(claimed)
                    elif not throttled_for:
                        exhausted = True
                    elif not in_flight:  # throttled with nothing else to do
                        time.sleep(min(throttled_for, max(0.0, deadline - time.monotonic())))
                        continue
                    else:
                        break  # throttled: collect what is in flight first
                if not inbox:
                    break
                self._send(inbox[0], api_key, answered)
                inbox.popleft()  # only once sent: a job that failed to go out is given back
                in_flight += 1
            if not in_flight:
                return stop, exhausted
            # Wait for one answer, then take whatever else is in. No answer within a lease means
            # the client is broken; the jobs in flight come back when their leases expire.
            finished = [answered.get(timeout=self.settings.lease_seconds), *_ready(answered)]
            in_flight -= len(finished)
            for result in self._judge_all(finished):
                done.append(result)
                if result.status_code is not None:  # a refused connection says nothing of L
                    self._latencies_ms.append(result.duration_ms)
                stop = stop or result.decision.outcome is Outcome.PAUSE
                stop = stop or result.status_code == 429
            if len(done) >= self.settings.batch_size:
                self._flush(done, summary)

    def _window(self) -> int:
        """How many requests to keep in flight. Little's law: R requests/s at latency L need
        R x L in flight; a process sends on the order of a thousand a second, so about two per
        millisecond of latency, at least 2, at most ``max_in_flight``.

        L is the quickest of the recent answers, not their average: what the API takes when it is
        not queueing our own requests. An average would read an API slowed down by our load as
        a reason to send it more at once (and a revoked key would cost a hundred 401s instead of
        a few); the minimum stays a few ms against a nearby API and ~50 against one 50 ms away.
        """
        return min(self.settings.max_in_flight, max(2, 2 * min(self._latencies_ms, default=5)))

    def _send(self, job: Claimed, api_key: Secret, answered: Answered) -> None:
        future = self.client.submit(job.endpoint, job.payload, api_key)
        future.add_done_callback(lambda f: answered.put((job, f)))

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

    def _record(
        self,
        results: list[AttemptResult],
        unsent: list[Claimed],
        summary: DrainSummary,
        retry_seconds: float = DB_RETRY_SECONDS,
    ) -> None:
        """One transaction: every attempt and each job's new state; unsent jobs go back."""
        if not results and not unsent:
            return

        def write() -> tuple[dict[str, AttemptResult], int]:
            with self.engine.begin() as conn:
                now = utcnow()
                paused = outbox.record(conn, results, now)
                return paused, outbox.release(conn, unsent, now)

        paused, released = with_db_retry(write, "recording the batch", retry_seconds)
        summary.released += released
        for queue, r in paused.items():  # committed: announce each new pause once
            notify_pause(queue, r.status_code, r.decision.reason, webhook_url=self.webhook)
        for r in results:
            summary.outcomes[r.decision.outcome.value] += 1
            if r.decision.outcome is Outcome.PAUSE and summary.pause is None:
                summary.pause = r

    def _flush(self, done: list[AttemptResult], summary: DrainSummary) -> None:
        self._record(done, [], summary)
        done.clear()

    def _judge_all(self, finished: list[tuple[Claimed, Future[Answer]]]) -> list[AttemptResult]:
        return [self._judge(job, _answer_of(future)) for job, future in finished]

    def _give_back(
        self,
        answered: Answered,
        done: list[AttemptResult],
        inbox: deque[Claimed],
        summary: DrainSummary,
    ) -> None:
        """A drain that fails still records what was answered and gives back what was not sent,
        in one try: the error that stopped it is what the caller hears about. Requests still in
        flight have no answer yet; their jobs come back when their leases expire."""
        try:
            done.extend(self._judge_all(_ready(answered)))
            self._record(done, list(inbox), summary, retry_seconds=0.0)
        except Exception:
            log.exception("could not record %d answers after a failed drain", len(done))

    def _report_stop(self, queue: str, summary: DrainSummary) -> None:
        if summary.pause is None:
            summary.cooling = True  # a 429: the queue's cool-down is in its row
        else:
            summary.paused = True  # announced by _record if this worker paused it

    def _pause_without_key(self, queue: str, summary: DrainSummary) -> None:
        """Nothing can be sent for a queue without a key: pause it (if it has work) and say why."""
        reason = f"no API key configured (set ECDP_API_KEY_{queue_env_suffix(queue)})"
        if queue == "default":
            reason = "no API key configured (set ECDP_API_KEY)"
        with self.engine.begin() as conn:
            now = utcnow()
            if not outbox.has_due(conn, queue, now):
                return
            changed = outbox.pause(conn, queue, reason, now)
        if changed:
            notify_pause(queue, None, reason, webhook_url=self.webhook)
        summary.paused = True

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


def _ready(answered: Answered) -> list[tuple[Claimed, Future[Answer]]]:
    """The answers already in, without waiting for more."""
    found = []
    while not answered.empty():
        found.append(answered.get_nowait())
    return found


def _answer_of(future: Future[Answer]) -> Answer:
    try:
        return future.result()
    except Exception as exc:  # cancelled by close(), or a bug: a failed attempt, judged as one
        return Answer.failed(utcnow(), time.perf_counter(), f"unexpected error: {exc!r}")
