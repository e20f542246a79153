"""What the operator's service returns: frozen dataclasses whose ``as_dict()`` is the JSON that
``dispatcher … --json`` prints and the admin API answers."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from dispatcher.breaker import Circuit
from dispatcher.policy import Outcome, cause
from dispatcher.schema import JobStatus
from dispatcher.times import iso as _iso

__all__ = [
    "Attempt",
    "CancelResult",
    "ForgetResult",
    "JobDetail",
    "JobSummary",
    "PurgeResult",
    "QueueStats",
    "ReplayResult",
]


@dataclass(frozen=True, slots=True)
class JobSummary:
    """One row of the history."""

    id: str  # a string, like the ids enqueue() returns
    queue: str
    endpoint: str
    custom_event_id: int
    status: JobStatus
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
    outcome: Outcome  # delivered / retry / dead / pause
    # Was the body completely written? False: it cannot have reached the API. None: before 0006.
    sent: bool | None = None

    @property
    def answer(self) -> str:
        """The status as an operator reads it: a timeout after the body was sent may have
        reached the API; one before cannot have."""
        if self.status_code is not None:
            return f"HTTP {self.status_code}"
        if self.sent is False:
            return "no answer (not sent)"
        return "no answer (sent: may have reached the API)" if self.sent else "no answer"

    def as_dict(self) -> dict[str, Any]:
        return {
            "number": self.number,
            "started_at": _iso(self.started_at),
            "status_code": self.status_code,
            "duration_ms": self.duration_ms,
            "error": self.error,
            "response_body": self.response_body,
            "outcome": self.outcome,
            "sent": self.sent,
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
    counts: Mapping[str, int]  # every JobStatus, 0 if none
    # How long the most overdue job (pending/retrying, next_attempt_at <= now) has been waiting
    # for a worker: the delivery lag. None when nothing is due.
    oldest_due_age_seconds: float | None
    # The circuit breaker (dispatcher.breaker): closed, open or half_open; since when (None: it
    # never opened) and why it opened. While open, workers send nothing for the queue but one
    # probe at circuit_next_probe_at (None unless open), after circuit_failed_probes failed ones.
    circuit: Circuit = Circuit.CLOSED
    circuit_since: datetime | None = None
    circuit_reason: str | None = None
    circuit_next_probe_at: datetime | None = None
    circuit_failed_probes: int = 0
    # The in-flight window a worker last reported for the queue (dispatcher.window); None: no
    # worker has sent for it yet.
    window: int | None = None
    # Re-sends after a timeout that came after the request's body was sent: each of those jobs
    # may have reached the API twice (a second trigger of its scenario).
    maybe_twice: int = 0
    # Kinds of event (custom event ids) taken for bad payloads, not an outage: their failures
    # count toward their jobs' attempts and never open the circuit (see dispatcher.breaker).
    poison_kinds: tuple[int, ...] = ()

    @property
    def circuit_open(self) -> bool:
        """Open or half_open: nothing but probes is sent for the queue."""
        return self.circuit is not Circuit.CLOSED

    @property
    def pause_cause(self) -> str | None:
        """The pause's reason in a word (:data:`dispatcher.policy.CAUSES`); None unless paused."""
        return cause(self.pause_reason) if self.paused else None

    @property
    def circuit_cause(self) -> str | None:
        """Why the circuit opened, in a word; None while it is closed."""
        return cause(self.circuit_reason, circuit=True) if self.circuit_open else None

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
            "window": self.window,
            "maybe_twice": self.maybe_twice,
            "poison_kinds": list(self.poison_kinds),
        }


@dataclass(frozen=True, slots=True)
class ReplayResult:
    count: int
    queues: tuple[str, ...]  # sorted; signal these after commit
    dry_run: bool = False

    def as_dict(self) -> dict[str, Any]:
        return {"count": self.count, "queues": list(self.queues), "dry_run": self.dry_run}


@dataclass(frozen=True, slots=True)
class CancelResult(ReplayResult):
    """Jobs cancelled (or, in a dry run, that would be), and how many the selection matched
    in flight: those were left alone, their request may be on the wire."""

    in_flight: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {**ReplayResult.as_dict(self), "in_flight": self.in_flight}


@dataclass(frozen=True, slots=True)
class PurgeResult:
    jobs: int
    attempts: int
    dry_run: bool = False

    def as_dict(self) -> dict[str, Any]:
        return {"jobs": self.jobs, "attempts": self.attempts, "dry_run": self.dry_run}


@dataclass(frozen=True, slots=True)
class ForgetResult:
    """What ``forget`` erased (or, in a dry run, would): the customer's jobs (their data gone;
    of those, ``cancelled`` were waiting and ``in_flight`` were on the wire), attempt rows whose
    texts changed, and other texts an identifier was cut out of (other customers' bodies and
    errors, queue reasons). Never the identifier itself."""

    identifier_kind: str
    jobs: int
    cancelled: int
    in_flight: int
    attempts: int
    mentions: int
    dry_run: bool = False

    def as_dict(self) -> dict[str, Any]:
        return {
            "identifier_kind": self.identifier_kind,
            "jobs": self.jobs,
            "cancelled": self.cancelled,
            "in_flight": self.in_flight,
            "attempts": self.attempts,
            "mentions": self.mentions,
            "dry_run": self.dry_run,
        }
