"""How many requests a worker process keeps in flight for one queue (pure: the clock is passed in).

A closed loop on what the API's answers say, after TCP Vegas and AIMD, Netflix's
concurrency-limits and Envoy's adaptive concurrency filter. The rule it replaces was open-loop
(Little's law: in flight = rate x latency, four per millisecond of the quickest answer): it never
shrank, so an API that slowed down under load got more load, its answers came later than the
request timeout, and every timeout became a re-send, a second trigger of the customer's scenario.

- **Baseline**: the quickest answer of the last two ``baseline_seconds`` periods, what the API
  takes when nothing of ours waits in front of the request. Every ``probe_seconds`` the window
  drops to ``minimum`` for a few answers and the baseline is measured afresh (Envoy's min-RTT
  recalculation), so it follows an API that really got slower, and a baseline taken while our
  own requests queued never ratchets the window up.
- **Latency well above the baseline** (more than ``tolerance`` x the baseline + ``slack_ms``:
  requests queue in front of ours, in the API or in our own event loop) shrinks the window by
  ``ease``; below ``grow_below`` x the baseline (+ slack) it may grow; in between it holds. The
  band, not a single line, keeps it from oscillating; a ratio, not Vegas's queue estimate
  (window x (1 - baseline / latency) against a few requests), because that estimate counts the
  milliseconds our own busy event loop adds to every answer as queueing and held a worker 50 ms
  from its API to 0.82 x the old window's drain (measured, ``bench/run.py`` ``drain_50ms``).
- **Rounds**: each decision is taken on the median latency of the requests *sent* since the
  previous one (about one round trip), so a step is judged by the load it made, and one slow
  answer moves nothing. The window grows only when it was used (half of it was in flight).
- **Slow start**: the window doubles per round until the first sign of queueing; a request of
  the round that already shows it ends the round at once (an overshoot of at most 2x).
- **Failures** (a timeout, a 429, a 5xx, no answer) halve the window at once, at most once per
  window of requests (the answers of requests sent before the cut are the same congestion).

Measured (``bench/saturated.py``): an API that serves 32 requests at once in 0.25 s and queues
the rest, request timeout 2 s: no timeout, so no request served twice, and the time of the best
fixed window found by a sweep. Against a nearby API (a few ms) the window stays at a few dozen,
as the old rule's did: more in flight only queues in our own event loop.
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
    backoff: float = 0.5  # on a failure
    ease: float = 0.9  # on too much queueing
    baseline_seconds: float = 30.0
    probe_seconds: float = 60.0
    probe_answers: int = 4
    tolerance: float = 2.0  # a round's median above tolerance x baseline + slack: shrink
    grow_below: float = 1.5  # ... below grow_below x baseline + slack: grow
    slack_ms: float = 2.0  # latencies are whole ms: a nearby API's jitter is no queue

    def __post_init__(self) -> None:
        if not 1 <= self.minimum <= self.maximum:
            raise ValueError(f"need 1 <= minimum <= maximum, got {self.minimum}, {self.maximum}")
        if not (0 < self.backoff < 1 and 0 < self.ease < 1):
            raise ValueError("need 0 < backoff < 1 and 0 < ease < 1")
        if not 1 <= self.grow_below <= self.tolerance:
            raise ValueError("need 1 <= grow_below <= tolerance")


class SendWindow:
    """One process's window for one queue: :meth:`sent` for every request (its result is the
    request's send time, to hand back to :meth:`answered` with its answer); :attr:`limit`
    before each send."""

    __slots__ = (
        "_baseline",
        "_cut_pending",
        "_newer_min",
        "_older_min",
        "_probe",
        "_probe_clear_at",
        "_probe_due",
        "_rotate_at",
        "_round",
        "_round_peak",
        "_round_sent",
        "_round_start",
        "_saved",
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
        self._round_sent = 0
        self._round_peak = 0
        self._cut_pending = 0  # answers still due from requests sent before the last cut
        self._older_min = math.inf
        self._newer_min = math.inf
        self._rotate_at = now + policy.baseline_seconds
        self._baseline = math.inf
        self._probe_due = now + policy.probe_seconds
        self._probe: list[float] | None = None  # the baseline probe's samples, while it runs
        self._probe_clear_at = math.inf  # when the probe had the window down to ``minimum``
        self._saved = self._size

    @property
    def limit(self) -> int:
        if self._probe is not None:
            return self.policy.minimum
        return max(self.policy.minimum, min(self.policy.maximum, int(self._size)))

    @property
    def baseline_ms(self) -> float | None:
        return None if math.isinf(self._baseline) else self._baseline

    def sent(self, in_flight: int, now: float) -> float:
        """One request sent, ``in_flight`` with it; returns its send time."""
        self._round_sent += 1
        self._round_peak = max(self._round_peak, in_flight)
        return now

    def answered(
        self, rtt_ms: float, *, failed: bool, sent_at: float, in_flight: int, now: float
    ) -> None:
        """One answer: its latency, whether it says the API is struggling (a timeout, 429, 5xx,
        no answer), when its request was sent (:meth:`sent`'s result), and how many requests
        are still in flight."""
        if self._probe is not None:
            self._probing(rtt_ms, failed, sent_at, in_flight, now)
            return
        pending = self._cut_pending
        if pending:
            self._cut_pending -= 1
        if failed:
            if not pending:  # once per window of requests
                self._cut(self.policy.backoff, in_flight, now)
            return
        self._learn(rtt_ms, now)
        if sent_at < self._round_start:
            return  # sent under an earlier window: says nothing of this one
        self._round.append(rtt_ms)
        if self._slow_start and self._above(rtt_ms, self.policy.tolerance):
            self._cut(self.policy.ease, in_flight, now)
            return
        if len(self._round) < max(1, math.ceil(self._round_sent / 2)):
            return
        typical = median(self._round)
        if self._above(typical, self.policy.tolerance):
            if not pending:
                self._cut(self.policy.ease, in_flight, now)
                return
        elif not self._above(typical, self.policy.grow_below) and (
            self._round_peak >= self.limit / 2
        ):
            grown = self._size * 2 if self._slow_start else self._size + math.log2(self._size)
            self._size = min(float(self.policy.maximum), grown)
        self._new_round(now)
        if now >= self._probe_due and self.policy.minimum < self.policy.maximum:
            self._probe, self._saved = [], self._size

    def _above(self, rtt_ms: float, factor: float) -> bool:
        """Is this latency more than ``factor`` x the baseline (+ the slack)?"""
        return rtt_ms > factor * self._baseline + self.policy.slack_ms

    def _cut(self, factor: float, in_flight: int, now: float) -> None:
        self._size = max(float(self.policy.minimum), self._size * factor)
        self._slow_start = False
        self._cut_pending = in_flight
        self._new_round(now)

    def _probing(
        self, rtt_ms: float, failed: bool, sent_at: float, in_flight: int, now: float
    ) -> None:
        """Measure the baseline afresh: answers to requests sent once no more than ``minimum``
        were in flight. Then back to the window there was."""
        assert self._probe is not None
        if in_flight <= self.policy.minimum:
            self._probe_clear_at = min(self._probe_clear_at, now)
        if not failed and sent_at >= self._probe_clear_at:
            self._probe.append(rtt_ms)
        if len(self._probe) < self.policy.probe_answers:
            return
        self._baseline = self._older_min = self._newer_min = min(self._probe)
        self._rotate_at = now + self.policy.baseline_seconds
        self._probe, self._probe_clear_at = None, math.inf
        self._probe_due = now + self.policy.probe_seconds
        self._size = self._saved
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
        self._round_sent = 0
        self._round_peak = 0
