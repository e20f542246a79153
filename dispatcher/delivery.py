"""One worker's delivery loop: claim a batch -> POST -> decide -> record, until nothing is due.

Kept free of Celery so that tests (and the demo) can run several deliverers side by side; the
Celery task in :mod:`dispatcher.tasks` is a thin wrapper around :meth:`Deliverer.drain`.

Requests go out through the process's one :class:`~dispatcher.ecdp.EcdpClient`, many in flight at
once, so a slow API costs latency, not throughput. What a worker promises while it holds jobs:

- **Its leases stay alive.** Every third of ``DISPATCHER_LEASE_SECONDS`` it renews the leases of
  the jobs it holds (claimed, in flight, answered but not yet recorded), so a slow batch is never
  handed to a second worker, and every answer is recorded by the worker that sent the request.
- **A hold takes effect at once.** Before each request it knows the queue's row (paused, cooling
  down after a 429, circuit open) as of at most ``outbox.STATE_CHECK_SECONDS`` ago; a held queue
  gets no new request, and the jobs claimed but not sent go back to ``pending`` unsent.
- **Outages trip the circuit breaker** (:mod:`dispatcher.breaker`) instead of burning attempts.
- **Shutdown is bounded**: asked to stop, it sends nothing more, waits at most the grace for the
  answers in flight, records them, and gives back every job it holds that was not answered.
"""

from __future__ import annotations

import logging
import queue as queues
import time
from collections import Counter, deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TypeVar

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from dispatcher import logs, outbox, tracing
from dispatcher.alerts import notify_circuit_open, notify_pause
from dispatcher.breaker import Circuit, Window
from dispatcher.config import Secret, Settings, check_lease, queue_env_suffix
from dispatcher.db import get_engine, utcnow
from dispatcher.ecdp import Answer, EcdpClient, Sender
from dispatcher.outbox import AttemptResult, Claimed
from dispatcher.policy import Outcome, QueueEffect, decide, is_outage, truncate_body
from dispatcher.window import SendWindow, WindowPolicy

log = logging.getLogger("dispatcher.delivery")

T = TypeVar("T")
Answered = queues.SimpleQueue[tuple[Claimed, Future[Answer]]]  # (job, its answer) as they come
# Keyed by (job id, attempt started at, custom event id): see outbox.open_circuit.
Breaker = Window[tuple[int, datetime, int | None]]
DB_RETRY_SECONDS = 60.0  # how long a worker rides out a database restart before giving up
WINDOW_REPORT_SECONDS = 1.0  # how often a drain writes its window to the queue's row, at most
POLL_SECONDS = 0.1  # how often a worker waiting for answers looks at its leases and the stop flag


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
    circuit_open: bool = False  # the queue's circuit is open: the sweeper wakes it for a probe
    shutdown: bool = False  # stopped because the worker is shutting down
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
            "circuit_open": self.circuit_open,
            "shutdown": self.shutdown,
            "more": self.more,
        }


@dataclass(frozen=True, slots=True)
class Recorded:
    """What one recording transaction did (see :meth:`Deliverer._record`)."""

    results: Sequence[AttemptResult]  # as recorded: uncounted if the circuit opened meanwhile
    paused: dict[str, AttemptResult]
    released: int
    opened: bool
    closed: tuple[bool, list[int]] | None  # a probe's verdict: (closed, kinds now poison)


@dataclass
class _Drain:
    """One drain's state, shared by the steps of :meth:`Deliverer.drain`."""

    queue: str
    api_key: Secret
    deadline: float  # monotonic: claim nothing new after it
    stopping: Callable[[], bool]  # the worker is shutting down
    summary: DrainSummary
    inbox: deque[Claimed] = field(default_factory=deque)  # leased, not yet sent
    answered: Answered = field(default_factory=queues.SimpleQueue)  # answers not yet judged
    done: list[AttemptResult] = field(default_factory=list)  # judged, not yet recorded
    sent: dict[int, Claimed] = field(default_factory=dict)  # in flight, by job id
    sent_at: dict[int, float] = field(default_factory=dict)  # when each was sent (monotonic)
    leases: Counter[str] = field(default_factory=Counter)  # jobs held per lease token
    renewed_at: float = 0.0
    checked_at: float = float("-inf")  # when the last queue_state() read began
    stop: bool = False  # send nothing more: held, tripped, or shutting down
    exhausted: bool = False  # nothing more was due at the last claim
    outage: bool = False  # the circuit is not closed: outage answers do not count
    poison: frozenset[int] = frozenset()  # kinds taken for bad payloads: their failures count
    trip: str | None = None  # this worker saw the circuit trip, and why: to record
    grace_until: float | None = None  # shutting down: wait for answers until then
    last_answer_at: float = 0.0
    window_reported: tuple[int, float] = (-1, float("-inf"))  # (window, when) last written

    def hold(self, claimed: list[Claimed]) -> None:
        self.leases.update(c.lease_token for c in claimed)

    def let_go(self, claimed: list[Claimed]) -> None:
        self.leases.subtract(c.lease_token for c in claimed)
        for token in [t for t, n in self.leases.items() if n <= 0]:
            del self.leases[token]


class Deliverer:
    def __init__(
        self,
        settings: Settings,
        *,
        engine: Engine | None = None,
        client: Sender | None = None,
    ) -> None:
        check_lease(settings)
        self.settings = settings
        ceiling = settings.max_in_flight
        self.window_policy = WindowPolicy(
            maximum=ceiling, minimum=min(2, ceiling), initial=min(8, ceiling)
        )
        self.webhook = settings.alert_webhook_url
        self.engine = engine or get_engine(settings.database_url)
        self.client: Sender = client or EcdpClient(
            settings.base_url,
            timeout=settings.http_timeout_seconds,
            connect_timeout=settings.http_connect_timeout_seconds,
            max_connections=settings.max_in_flight,
            body_limit=settings.response_body_limit,
            proxy_url=proxy.reveal() if (proxy := settings.proxy_url()) else None,
        )
        self._windows: dict[str, SendWindow] = {}  # this process's in-flight window, per queue
        self._breakers: dict[str, Breaker] = {}  # this process's recent answers, per queue

    def close(self) -> None:
        self.client.close()

    def drain(
        self,
        queue: str,
        *,
        max_seconds: float = 10.0,
        stopping: Callable[[], bool] = lambda: False,
    ) -> DrainSummary:
        """Deliver due jobs of ``queue`` until none is due, the queue is held, time is up, or
        ``stopping()`` says the worker is shutting down.

        A pipeline, not lock-step batches: requests stay in flight while the next batch is
        claimed and finished ones are recorded, so a slow API costs latency, not throughput.
        """
        summary = DrainSummary(queue)
        api_key = self.settings.api_key(queue)
        if api_key is None:
            self._pause_without_key(queue, summary)
            return summary
        now = time.monotonic()
        d = _Drain(queue, api_key, now + max_seconds, stopping, summary)
        d.renewed_at = d.last_answer_at = now
        try:
            self._pump(d)
        except BaseException:
            self._give_back(d)
            raise
        # Unsent (a hold, the deadline, a shutdown) and unanswered (a shutdown's grace ran out)
        # jobs go back to pending, uncounted, in the same transaction as the answers.
        self._record(d, [*d.inbox, *d.sent.values()])
        summary.more = not d.exhausted and (not d.stop or summary.shutdown)
        return summary

    def _pump(self, d: _Drain) -> None:
        """Claim, send and collect until nothing is due, something stops the drain, or the
        deadline passes. Leaves in ``d`` what the caller must record and give back."""
        while True:
            self._upkeep(d)
            sending = self._window(d.queue)
            window = sending.limit  # changes only as answers come in
            while not d.stop and len(d.sent) < window:
                if not d.inbox and not d.exhausted and time.monotonic() < d.deadline:
                    self._flush(d)  # recorded jobs leave the in-flight ceiling
                    claimed, throttled_for = self._claim(d.queue)
                    if claimed:
                        d.summary.batches += 1
                        d.hold(claimed)
                        d.inbox.extend(claimed)
                    elif not throttled_for:
                        d.exhausted = True
                    elif not d.sent:  # throttled with nothing else to do
                        left = max(0.0, d.deadline - time.monotonic())
                        time.sleep(min(throttled_for, POLL_SECONDS, left))
                        self._upkeep(d)  # a shutdown is heard while waiting, too
                        continue
                    else:
                        break  # throttled: collect what is in flight first
                if not d.inbox or not self._may_send(d):
                    break
                job = d.inbox[0]
                self._send(job, d)
                d.inbox.popleft()  # only once sent: a job that failed to go out is given back
                d.sent[job.id] = job
                d.sent_at[job.id] = sending.sent(len(d.sent), time.monotonic())
            if not d.sent:
                return
            finished = self._collect(d)
            if finished is None:  # shutting down and the grace is over
                return
            self._judge_all(d, finished)
            # A pause, cool-down or tripped circuit is written at once, so that the other
            # workers see it at their next request.
            if d.stop or len(d.done) >= self.settings.batch_size:
                self._flush(d)

    def _upkeep(self, d: _Drain) -> None:
        """Renew the leases this worker holds when a third of their length has passed, and
        notice a shutdown."""
        now = time.monotonic()
        if d.grace_until is None and d.stopping():
            d.stop = True
            d.summary.shutdown = True
            d.grace_until = now + self.settings.shutdown_grace_seconds
        if d.leases and now - d.renewed_at >= self.settings.lease_seconds / 3:
            d.renewed_at = now
            tokens = list(d.leases)

            def renew() -> int:
                with self.engine.begin() as conn:
                    return outbox.renew(conn, tokens, utcnow(), self.settings.lease_seconds)

            try:
                with_db_retry(renew, "renewing leases", budget=self.settings.lease_seconds / 3)
            except (sa.exc.OperationalError, sa.exc.InterfaceError):
                # The database is away (a restart): keep sending, try again in a second. If
                # the leases run out meanwhile, the answers still get their attempt rows.
                log.warning("could not renew the leases of queue %s; retrying", d.queue)
                d.renewed_at = now - self.settings.lease_seconds / 3 + 1.0

    def _collect(self, d: _Drain) -> list[tuple[Claimed, Future[Answer]]] | None:
        """Wait for at least one answer (looking after the leases meanwhile), then take whatever
        else is in. None: shutting down and the grace ran out first."""
        # Every request ends within its deadline: an answer later than that (and a margin)
        # means the client is broken, and the drain gives its jobs back.
        hang = self.settings.http_timeout_seconds + self.settings.http_connect_timeout_seconds + 30
        while True:
            try:
                first = d.answered.get(timeout=POLL_SECONDS)
                break
            except queues.Empty:
                self._upkeep(d)
                now = time.monotonic()
                if d.grace_until is not None and now >= d.grace_until:
                    log.warning(
                        "shutting down: %d requests of queue %s unanswered after the %.0fs "
                        "grace; their jobs go back to pending",
                        len(d.sent),
                        d.queue,
                        self.settings.shutdown_grace_seconds,
                    )
                    return None
                if now - d.last_answer_at > hang:
                    raise RuntimeError(f"no answer from the HTTP client in {hang:.0f}s") from None
        d.last_answer_at = time.monotonic()
        finished = [first, *_ready(d.answered)]
        for job, _ in finished:
            d.sent.pop(job.id, None)
        return finished

    def _may_send(self, d: _Drain) -> bool:
        """Whether the queue may get another request now, from a reading of its row at most
        ``outbox.STATE_CHECK_SECONDS`` old. A held queue stops the drain."""
        now = time.monotonic()
        if now - d.checked_at <= outbox.STATE_CHECK_SECONDS:
            return True
        d.checked_at = now

        def read() -> outbox.QueueState:
            with self.engine.connect() as conn:
                return outbox.queue_state(conn, d.queue, utcnow())

        state = with_db_retry(read, "reading the queue's state")
        if state.circuit is Circuit.CLOSED and state.circuit_since and d.trip is None:
            # Another worker may have seen an outage through since this one's last answers:
            # those answers belong to it, and kept, one failure could open the circuit again.
            closed_at = state.circuit_since
            self._breaker(d.queue).forget(lambda key: key[1] < closed_at)
        d.outage = d.outage or state.circuit is not Circuit.CLOSED
        d.poison = state.poison
        probing = d.inbox[0].probe
        if state.paused or state.cooling or (state.circuit is not Circuit.CLOSED and not probing):
            d.stop = True
            d.summary.paused = d.summary.paused or state.paused
            d.summary.cooling = d.summary.cooling or state.cooling
            d.summary.circuit_open = d.summary.circuit_open or state.circuit is Circuit.OPEN
            return False
        return True

    def _window(self, queue: str) -> SendWindow:
        """The queue's in-flight window in this process (:mod:`dispatcher.window`): it lives
        across drains, so what one drain learnt of the API the next one starts from."""
        window = self._windows.get(queue)
        if window is None:
            window = self._windows[queue] = SendWindow(self.window_policy, time.monotonic())
        return window

    def _send(self, job: Claimed, d: _Drain) -> None:
        answered = d.answered
        future = self.client.submit(job.endpoint, job.payload, d.api_key)
        future.add_done_callback(lambda f: answered.put((job, f)))

    def _claim(self, queue: str) -> tuple[list[Claimed], float]:
        """Lease a batch within the queue's shared ceilings. ``([], seconds)``: throttled, jobs
        are due, ask again after that long; ``([], 0)``: nothing to do. While the queue's circuit
        is open, the batch is the one probe, when it is due."""
        limits = self.settings.limits(queue)
        lease = self.settings.lease_seconds

        def claim() -> tuple[list[Claimed], float]:
            with self.engine.begin() as conn:
                now = utcnow()
                allowed, wait = outbox.admit(conn, queue, self.settings.batch_size, now, limits)
                if not allowed:
                    return [], (wait if outbox.has_due(conn, queue, now) else 0.0)
                jobs = outbox.claim(conn, queue, allowed, now, lease)
                outbox.refund(conn, queue, allowed - len(jobs), limits)
                if not jobs and self.settings.breaker.enabled:
                    probe_for = self.settings.http_timeout_seconds + 5.0
                    jobs = outbox.claim_probe(conn, queue, now, lease, probe_for)
                return jobs, 0.0

        return with_db_retry(claim, "claim")

    def _record(
        self,
        d: _Drain,
        unsent: list[Claimed],
        retry_seconds: float = DB_RETRY_SECONDS,
    ) -> None:
        """One transaction: every attempt and each job's new state, unsent jobs given back, and
        the circuit opened or a probe's verdict; then the announcements, once each."""
        results, trip = d.done, d.trip
        if not results and not unsent and trip is None:
            return
        probes = [r for r in results if r.job.probe]
        tripped = self._breaker(d.queue).outages() if trip else []
        refund = [(job_id, started_at) for job_id, started_at, _ in tripped]
        kinds = {kind for _, _, kind in tripped if kind is not None}
        cleared = {
            r.job.custom_event_id
            for r in results
            if r.decision.outcome is Outcome.DELIVERED and r.job.custom_event_id in d.poison
        }
        breaker = self.settings.breaker
        window = self._window(d.queue).limit
        reported, reported_at = d.window_reported
        report = window != reported and time.monotonic() - reported_at >= WINDOW_REPORT_SECONDS

        # A transaction that writes the queue's row locks it first, before record() touches the
        # counts rows: one lock order for every recording worker (see outbox.lock_queue).
        row = bool(trip or probes or report or cleared) or outbox.touches_queue(results)

        def write() -> Recorded:
            with self.engine.begin() as conn:
                now = utcnow()
                if row:
                    outbox.lock_queue(conn, d.queue, now)
                judged = outbox.uncount_open(conn, results, now)
                if report:
                    outbox.report_window(conn, d.queue, window, now)
                if cleared:
                    outbox.clear_poison(conn, d.queue, cleared, now)
                paused = outbox.record(conn, judged, now)
                released = outbox.release(conn, unsent, now)
                opened = trip is not None and outbox.open_circuit(
                    conn, d.queue, trip, now, breaker, refund, kinds
                )
                closed: tuple[bool, list[int]] | None = None
                if probes:  # any probe answered closes the circuit
                    answered = [r for r in probes if not is_outage(r.status_code)]
                    verdict = answered or probes
                    closed = outbox.end_probe(
                        conn,
                        d.queue,
                        bool(answered),
                        verdict[0].decision.reason,
                        now,
                        breaker,
                        [r.job.custom_event_id for r in verdict],
                    )
                return Recorded(judged, paused, released, opened, closed)

        done = with_db_retry(write, "recording the batch", retry_seconds)
        paused, released, opened, closed = done.paused, done.released, done.opened, done.closed
        d.let_go([r.job for r in results])
        d.let_go(unsent)
        d.done, d.trip = [], None
        if report:
            d.window_reported = (window, time.monotonic())
        d.summary.released += released
        for queue, r in paused.items():  # committed: announce each new pause once
            notify_pause(queue, r.status_code, r.decision.reason, webhook_url=self.webhook)
        if trip is not None:
            self._breaker(d.queue).reset()
            if opened:
                notify_circuit_open(d.queue, trip, webhook_url=self.webhook)
        if closed is not None:
            self._after_probe(d, *closed)
        for r in done.results:
            d.summary.outcomes[r.decision.outcome.value] += 1
            if r.decision.outcome is Outcome.PAUSE and d.summary.pause is None:
                d.summary.pause = r
            elif r.decision.outcome in (Outcome.DEAD, Outcome.RETRY):
                _log_failure(r)

    def _after_probe(self, d: _Drain, closed: bool, poisoned: list[int]) -> None:
        if closed:
            log.warning(
                "circuit closed queue=%s: a probe got an answer; delivery resumes",
                d.queue,
                extra={"queue": d.queue, "circuit": Circuit.CLOSED},
            )
            if poisoned:
                log.warning(
                    "bad payloads, not an outage, queue=%s: events %s failed while another "
                    "kind got through; their jobs go dead after their attempts and no longer "
                    "open the circuit",
                    d.queue,
                    ",".join(map(str, poisoned)),
                    extra={"queue": d.queue, "poison_kinds": poisoned},
                )
            self._breaker(d.queue).reset()
            d.outage = False
            d.exhausted = False  # the backlog is due again: go on draining
            d.checked_at = float("-inf")
        else:
            log.info("circuit still open queue=%s: the probe failed", d.queue)
            d.summary.circuit_open = True

    def _flush(self, d: _Drain) -> None:
        self._record(d, [])

    def _breaker(self, queue: str) -> Breaker:
        window = self._breakers.get(queue)
        if window is None:
            window = self._breakers[queue] = Breaker(self.settings.breaker)
        return window

    def _judge_all(self, d: _Drain, finished: list[tuple[Claimed, Future[Answer]]]) -> None:
        window = self._breaker(d.queue)
        sending = self._window(d.queue)
        now = time.monotonic()
        for job, future in finished:
            result = self._judge(job, _answer_of(future), d.outage, d.poison)
            d.done.append(result)
            if job.trace_context is not None:
                _span(result)
            sending.answered(
                result.duration_ms,
                failed=_congested(result.status_code),
                sent_at=d.sent_at.pop(job.id, now),
                in_flight=len(d.sent),
                now=now,
            )
            effect = result.decision.effect
            if effect is not None:
                d.stop = True  # a 401/403 pauses, a 429 cools down the whole queue
                d.summary.paused |= effect is QueueEffect.PAUSE
                d.summary.cooling |= effect is QueueEffect.COOL_DOWN
            if job.probe or d.outage or job.custom_event_id in d.poison:
                continue
            outage = is_outage(result.status_code)
            key = (job.id, result.started_at, job.custom_event_id)
            if window.add(outage, time.monotonic(), key):
                d.trip = _trip_reason(result, window)
                d.outage = d.stop = d.summary.circuit_open = True

    def _give_back(self, d: _Drain) -> None:
        """A drain that fails still records what was answered and gives back what was not sent
        or not answered, in one try: the error that stopped it is what the caller hears about."""
        try:
            for job, future in _ready(d.answered):
                d.sent.pop(job.id, None)
                d.done.append(self._judge(job, _answer_of(future), d.outage))
            self._record(d, [*d.inbox, *d.sent.values()], retry_seconds=0.0)
        except Exception:
            log.exception("could not record %d answers after a failed drain", len(d.done))

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

    def _judge(
        self,
        job: Claimed,
        answer: Answer,
        outage: bool = False,
        poison: frozenset[int] = frozenset(),
    ) -> AttemptResult:
        decision = decide(
            answer.status_code,
            attempts_before=job.attempts,
            policy=self.settings.retry,
            retry_after=answer.retry_after,
            body=answer.body,
            error=answer.error,
            now=answer.started_at,
            sent=answer.sent,
            # A kind taken for bad payloads fails on its own: its failures count even now.
            outage=(outage or job.probe) and job.custom_event_id not in poison,
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
            error=None if decision.outcome is Outcome.DELIVERED else decision.message,
            response_body=body,
            decision=decision,
            sent=answer.sent,
        )


def _span(r: AttemptResult) -> None:
    """The attempt as a span in its producer's trace (see dispatcher.tracing)."""
    job, decision = r.job, r.decision
    tracing.record_attempt(
        job.trace_context,
        name=f"ecdp POST {job.endpoint}",
        started_at=r.started_at,
        duration_ms=r.duration_ms,
        attributes={
            "messaging.destination.name": job.queue,
            "dispatcher.job_id": job.id,
            "dispatcher.custom_event_id": job.custom_event_id,
            "dispatcher.attempt": job.attempts + (1 if decision.counts else 0),
            "dispatcher.outcome": decision.outcome.value,
            "http.request.method": "POST",
            "http.response.status_code": r.status_code,
            "error.type": None if r.status_code is not None or r.error is None else "no_answer",
        },
        failed=decision.outcome is not Outcome.DELIVERED,
    )


def _log_failure(r: AttemptResult) -> None:
    """One line per dead letter (WARNING) and per retry (INFO): the job by id, the API's reason
    with customer identifiers masked, never the payload."""
    job, decision = r.job, r.decision
    attempt = job.attempts + (1 if decision.counts else 0)
    reason = logs.redact(decision.message)
    fields = {"queue": job.queue, "job_id": job.id, "status_code": r.status_code, "reason": reason}
    if decision.outcome is Outcome.DEAD:
        log.warning(
            "dead letter job_id=%d queue=%s status_code=%s reason=%s%s",
            job.id,
            job.queue,
            r.status_code,
            reason,
            "; the next jobs of its ordering key go on without it" if job.ordering_key else "",
            extra={**fields, "attempt": attempt, "outcome": Outcome.DEAD.value},
        )
        return
    next_at = r.started_at + timedelta(seconds=decision.delay_seconds or 0.0)
    log.info(
        "retry job_id=%d queue=%s status_code=%s attempt=%d next_attempt_at=%s reason=%s",
        job.id,
        job.queue,
        r.status_code,
        attempt,
        next_at.isoformat(timespec="seconds"),
        reason,
        extra={**fields, "attempt": attempt, "outcome": "retry", "next_attempt_at": next_at},
    )


def _congested(status_code: int | None) -> bool:
    """Does this answer say the API is struggling with our load? (The window halves.)"""
    return is_outage(status_code) or status_code == 429


def _trip_reason(result: AttemptResult, window: Breaker) -> str:
    outages = len(window.outages())
    what = result.decision.reason or "no answer"
    return f"{what} ({outages} of the last {len(window)} answers were outages)"


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
