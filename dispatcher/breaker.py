"""The per-queue circuit breaker's decisions (pure: no I/O; the clock is passed in).

Retries are per job, so without a breaker an outage longer than the backoff schedule dead-letters
every waiting job, and while it lasts each of them is sent into a dead API again and again. The
breaker looks at a queue's answers as a whole instead:

- **closed** (normal): each worker process keeps a :class:`Window` of its recent answers for the
  queue. When at least ``min_requests`` answers of the last ``window_seconds`` are there and a
  ``failure_ratio`` of them say "the API is down" (:func:`dispatcher.policy.is_outage`: 5xx,
  408, timeouts, connection errors; never another 4xx), the worker opens the circuit for every
  worker, in the queue's row.
- **open**: no worker claims from the queue. At ``circuit_retry_at`` one worker moves it to
  **half_open** and sends one probe; the interval grows from ``probe_min_seconds`` to at most
  ``probe_max_seconds`` per failed probe, so delivery resumes within that cap (plus a sweep) of
  the API coming back.
- **half_open**: a probe that gets any answer but an outage closes the circuit and the backlog
  drains; an outage answer opens it again.

Failures that tripped the circuit and attempts made while it is not closed are not counted
toward ``DISPATCHER_MAX_ATTEMPTS`` (:func:`dispatcher.policy.during_outage`): an outage of any
length dead-letters nothing by itself.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Generic, TypeVar

__all__ = [
    "BreakerPolicy",
    "Circuit",
    "Window",
    "probe_interval",
]


class Circuit(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


@dataclass(frozen=True, slots=True)
class BreakerPolicy:
    """Thresholds (``DISPATCHER_BREAKER_*``); validated so a bad setting fails at start."""

    enabled: bool = True
    min_requests: int = 20
    failure_ratio: float = 0.8
    window_seconds: float = 60.0
    probe_min_seconds: float = 1.0
    probe_max_seconds: float = 15.0
    window_size: int = 100  # answers kept per queue and process; the ratio is over these
    poison_seconds: float = 600.0  # how long kinds are taken for bad payloads (see end_probe)

    def __post_init__(self) -> None:
        if self.min_requests < 1:
            raise ValueError(f"min_requests must be >= 1, got {self.min_requests!r}")
        if not (0.0 < self.failure_ratio <= 1.0):
            raise ValueError(f"failure_ratio must be within (0, 1], got {self.failure_ratio!r}")
        for name in ("window_seconds", "probe_min_seconds", "probe_max_seconds", "poison_seconds"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
        if self.probe_max_seconds < self.probe_min_seconds:
            raise ValueError("probe_max_seconds must be >= probe_min_seconds")
        if self.window_size < self.min_requests:
            raise ValueError("window_size must be >= min_requests")


def probe_interval(failed_probes: int, policy: BreakerPolicy) -> float:
    """Seconds until the next probe after ``failed_probes`` failed ones (0: the first probe)."""
    raw = policy.probe_min_seconds * 2.0 ** min(max(failed_probes, 0), 64)
    return min(raw, policy.probe_max_seconds)


K = TypeVar("K")


class Window(Generic[K]):
    """One process's recent answers for one queue: ``add`` says when the circuit should open,
    and :meth:`outages` which answers tripped it (their keys, to stop counting them)."""

    __slots__ = ("_answers", "_failures", "policy")

    def __init__(self, policy: BreakerPolicy) -> None:
        self.policy = policy
        # (monotonic time, outage?, the caller's key for the answer)
        self._answers: deque[tuple[float, bool, K | None]] = deque()
        self._failures = 0

    def add(self, outage: bool, now: float, key: K | None = None) -> bool:
        """Count one answer at ``now`` (monotonic seconds); True if the circuit should open."""
        self._answers.append((now, outage, key))
        self._failures += outage
        horizon = now - self.policy.window_seconds
        while self._answers and (
            len(self._answers) > self.policy.window_size or self._answers[0][0] < horizon
        ):
            self._failures -= self._answers.popleft()[1]
        return (
            self.policy.enabled
            and outage
            and len(self._answers) >= self.policy.min_requests
            and self._failures >= self.policy.failure_ratio * len(self._answers)
        )

    def outages(self) -> list[K]:
        """The keys of the outage answers in the window, oldest first."""
        return [key for _, outage, key in self._answers if outage and key is not None]

    def forget(self, stale: Callable[[K], bool]) -> None:
        """Drop the answers whose key is ``stale`` (those from before the circuit last closed:
        they belong to an outage that is over, and kept, one failure could open it again)."""
        kept = [a for a in self._answers if a[2] is None or not stale(a[2])]
        if len(kept) < len(self._answers):
            self._answers = deque(kept)
            self._failures = sum(outage for _, outage, _ in kept)

    def reset(self) -> None:
        self._answers.clear()
        self._failures = 0

    def __len__(self) -> int:
        return len(self._answers)
