"""How many requests a worker process keeps in flight for one queue (pure: the clock is passed in).

A closed loop on what the API's answers say, after TCP's AIMD and Vegas, Netflix's
concurrency-limits and Envoy's adaptive concurrency filter. The rule it replaces was open-loop
(Little's law: in flight = rate x latency, four per millisecond of the quickest answer): it never
shrank, so an API that slowed down under load got more load, its answers came later than the
request timeout, and every timeout became a re-send, a second trigger of the customer's scenario.

- **Baseline**: the quickest answer of the last two ``baseline_seconds`` periods: what the API
  takes when nothing of ours waits in front of the request. Every ``probe_seconds`` the window
  drops to ``minimum`` for a few answers and the baseline is measured afresh (Envoy's min-RTT
  recalculation), so it follows an API that really got slower, and a baseline taken while our
  own requests queued never ratchets the window up.
- **Rounds**: decisions are taken once per round, about one round trip (at least the baseline
  long, at least half a window of answers), on the round's median latency, so one slow answer
  moves nothing.
- **Failures** (a timeout, a 429, a 5xx, no answer) halve the window at once, at most once per
  window of requests (the answers of requests sent before the cut are the same congestion).
- **Latency** more than ``tolerance`` x the baseline (+ ``slack_ms``, so that a nearby API's
  jitter of a few ms is not read as a queue) shrinks it by ``ease``.
- **Growth**, only when the window was used (half of it was in flight): doubling per round
  until the first sign of congestion (slow start), then the square root of the window per round.

With one chosen fixed window (``minimum == maximum``) it is the old fixed limit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import median

__all__ = ["SendWindow", "WindowPolicy"]


@dataclass(frozen=True, slots=True)
class WindowPolicy:
    maximum: int = 256  # DISPATCHER_MAX_IN_FLIGHT
    minimum: int = 2
    initial: int = 8
    tolerance: float = 1.5  # a round's median above tolerance x baseline + slack: queueing
    slack_ms: float = 10.0
    backoff: float = 0.5  # on a failure
    ease: float = 0.9  # on inflated latency
    baseline_seconds: float = 30.0
    probe_seconds: float = 60.0
    probe_answers: int = 4

    def __post_init__(self) -> None:
        if not 1 <= self.minimum <= self.maximum:
            raise ValueError(f"need 1 <= minimum <= maximum, got {self.minimum}, {self.maximum}")
        if not (0 < self.backoff < 1 and 0 < self.ease < 1 and self.tolerance >= 1):
            raise ValueError("need 0 < backoff, ease < 1 and tolerance >= 1")


class SendWindow:
    """One process's window for one queue. Call :meth:`answered` for every answer; read
    :attr:`limit` before each send."""

    __slots__ = (
        "_baseline",
        "_cut_pending",
        "_newer_min",
        "_older_min",
        "_probe",
        "_probe_due",
        "_rotate_at",
        "_round",
        "_round_peak",
        "_round_start",
        "_saved_limit",
        "_size",
        "_slow_start",
        "policy",
    )

    def __init__(self, policy: WindowPolicy, now: float) -> None:
        self.policy = policy
        self._size = float(min(max(policy.initial, policy.minimum), policy.maximum))
        self._slow_start = True
        self._round: list[float] = []
        self._round_start = now
        self._round_peak = 0
        self._cut_pending = 0  # answers still due from requests sent before the last cut
        self._older_min = math.inf
        self._newer_min = math.inf
        self._rotate_at = now + policy.baseline_seconds
        self._baseline = math.inf
        self._probe_due = now + policy.probe_seconds
        self._probe: list[float] | None = None  # samples of the baseline probe under way
        self._saved_limit = self._size

    @property
    def limit(self) -> int:
        if self._probe is not None:
            return self.policy.minimum
        return max(self.policy.minimum, min(self.policy.maximum, int(self._size)))

    @property
    def baseline_ms(self) -> float | None:
        return None if math.isinf(self._baseline) else self._baseline

    def answered(
        self, rtt_ms: float, *, failed: bool, in_flight: int, sent_in_flight: int, now: float
    ) -> None:
        """One answer: its latency, whether it says the API is struggling (a timeout, 429, 5xx,
        no answer), how many requests are in flight now (this one no longer), and how many
        were in flight when it was sent (this one included)."""
        p = self.policy
        if self._probe is not None:
            self._probing(rtt_ms, failed, sent_in_flight, now)
            return
        if self._cut_pending:
            self._cut_pending -= 1
        if failed:
            if not self._cut_pending:  # once per window of requests
                self._size = max(p.minimum, self._size * p.backoff)
                self._slow_start = False
                self._cut_pending = in_flight
                self._new_round(now)
            return
        self._learn(rtt_ms, now)
        self._round.append(rtt_ms)
        self._round_peak = max(self._round_peak, sent_in_flight)
        if len(self._round) < max(1, self.limit // 2) or now - self._round_start < (
            self._baseline / 1000.0 if self.baseline_ms is not None else 0.0
        ):
            return
        typical = median(self._round)
        if typical > p.tolerance * self._baseline + p.slack_ms:
            if not self._cut_pending:
                self._size = max(p.minimum, self._size * p.ease)
                self._slow_start = False
                self._cut_pending = in_flight
        elif self._round_peak >= self.limit / 2:
            grown = self._size * 2 if self._slow_start else self._size + math.sqrt(self._size)
            self._size = min(float(p.maximum), grown)
        self._new_round(now)
        if now >= self._probe_due and p.minimum < p.maximum:
            self._probe = []
            self._saved_limit = self._size

    def _probing(self, rtt_ms: float, failed: bool, sent_in_flight: int, now: float) -> None:
        """Measure the baseline afresh: answers to requests sent while at most ``minimum`` were
        in flight. Then back to the window there was."""
        assert self._probe is not None
        if not failed and sent_in_flight <= self.policy.minimum:
            self._probe.append(rtt_ms)
        if len(self._probe) < self.policy.probe_answers:
            return
        self._baseline = self._older_min = self._newer_min = min(self._probe)
        self._rotate_at = now + self.policy.baseline_seconds
        self._probe = None
        self._probe_due = now + self.policy.probe_seconds
        self._size = self._saved_limit
        self._new_round(now)

    def _learn(self, rtt_ms: float, now: float) -> None:
        if now >= self._rotate_at:
            self._older_min, self._newer_min = self._newer_min, math.inf
            self._rotate_at = now + self.policy.baseline_seconds
        self._newer_min = min(self._newer_min, rtt_ms)
        self._baseline = min(self._older_min, self._newer_min)

    def _new_round(self, now: float) -> None:
        self._round = []
        self._round_start = now
        self._round_peak = 0
