"""The in-flight window's closed loop (dispatcher.window), driven by a simulated API: pure, with
the clock passed in, so each rule is checked exactly."""

from __future__ import annotations

import math

import pytest

from dispatcher.window import SendWindow, WindowPolicy


class Api:
    """An API that serves ``capacity`` requests at once in ``service`` seconds and queues the
    rest (FIFO), answering nothing after ``timeout`` (the client's deadline): a fluid model of
    the sandbox's ``--capacity``, stepped in rounds of one service time."""

    def __init__(self, capacity: int, service: float, timeout: float = 2.0) -> None:
        self.capacity, self.service, self.timeout = capacity, service, timeout

    def latency(self, in_flight: int) -> float:
        waves = math.ceil(in_flight / self.capacity)  # queued requests wait for earlier waves
        return waves * self.service


def drive(window: SendWindow, api: Api, seconds: float, start: float = 0.0) -> list[int]:
    """Keep the window full for ``seconds``; return the limit after each round trip."""
    now, limits = start, []
    while now < start + seconds:
        n = window.limit
        rtt = api.latency(n)
        sent = [window.sent(i + 1, now) for i in range(n)]
        now += min(rtt, api.timeout)
        for i, at in enumerate(sent):
            window.answered(
                rtt * 1000,
                failed=rtt > api.timeout,
                sent_at=at,
                in_flight=n - i - 1,
                now=now,
            )
        limits.append(window.limit)
    return limits


def test_grows_fast_while_answers_keep_their_pace_and_stops_at_the_maximum() -> None:
    window = SendWindow(WindowPolicy(maximum=256, initial=8), now=0.0)
    limits = drive(window, Api(capacity=10_000, service=0.05), seconds=1.0)
    assert limits[:4] == [16, 32, 64, 128], "slow start: doubles each round trip"
    assert max(limits) == 256 and limits[-1] == 256


def test_settles_near_an_apis_capacity_without_ever_reaching_its_timeout() -> None:
    """The saturated API of the issue: 32 served at once in 0.25 s, the rest wait; a 2 s
    timeout. The open-loop rule kept 256 in flight (2 s of queue: every answer late)."""
    api = Api(capacity=32, service=0.25)
    window = SendWindow(WindowPolicy(maximum=256, initial=8), now=0.0)
    limits = drive(window, api, seconds=20.0)
    assert max(limits) * api.service / api.capacity < api.timeout, "never a timeout"
    settled = limits[len(limits) // 2 :]
    # About the API's capacity: busy nearly all the time, and little of ours queued in it.
    assert all(0.8 * api.capacity <= n <= 2 * api.capacity for n in settled), settled


def test_a_failure_halves_the_window_once_per_window_of_requests() -> None:
    window = SendWindow(WindowPolicy(maximum=256, initial=64), now=0.0)
    sent = [window.sent(i + 1, 0.0) for i in range(64)]
    for i, at in enumerate(sent):  # a whole window of timeouts: one congestion event
        window.answered(2000.0, failed=True, sent_at=at, in_flight=63 - i, now=2.0)
    assert window.limit == 32
    more = [window.sent(i + 1, 2.0) for i in range(32)]
    window.answered(2000.0, failed=True, sent_at=more[0], in_flight=31, now=4.0)
    assert window.limit == 16, "a failure of a request sent after the cut cuts again"


def test_queueing_shrinks_the_window_and_latency_at_the_baseline_grows_it() -> None:
    window = SendWindow(WindowPolicy(maximum=256, initial=8), now=0.0)
    drive(window, Api(capacity=10_000, service=0.1), seconds=0.35)  # baseline 100 ms
    before = window.limit
    at = [window.sent(before, 1.0) for _ in range(before)]
    for i, t in enumerate(at):  # everything takes 2.5 x the baseline: queued
        window.answered(250.0, failed=False, sent_at=t, in_flight=before - i - 1, now=1.25)
    assert window.limit < before
    shrunk = window.limit
    at = [window.sent(shrunk, 1.3) for _ in range(shrunk)]
    for i, t in enumerate(at):
        window.answered(100.0, failed=False, sent_at=t, in_flight=shrunk - i - 1, now=1.4)
    assert window.limit > shrunk


def test_does_not_grow_when_the_window_is_not_used() -> None:
    window = SendWindow(WindowPolicy(maximum=256, initial=16), now=0.0)
    for step in range(50):  # one request at a time, quick answers
        at = window.sent(1, step * 0.1)
        window.answered(5.0, failed=False, sent_at=at, in_flight=0, now=step * 0.1 + 0.005)
    assert window.limit == 16


def test_answers_to_requests_sent_before_a_step_do_not_judge_it() -> None:
    """The overshoot bench/saturated.py once showed: a round judged on answers to requests sent
    under the previous, smaller window doubled the window again and again."""
    window = SendWindow(WindowPolicy(maximum=256, initial=8), now=0.0)
    old = [window.sent(i + 1, 0.0) for i in range(8)]
    for i, at in enumerate(old[:4]):
        window.answered(100.0, failed=False, sent_at=at, in_flight=7 - i, now=0.1)
    assert window.limit == 16
    for i, at in enumerate(old[4:]):  # still answers from the first round
        window.answered(100.0, failed=False, sent_at=at, in_flight=3 - i, now=0.1)
    assert window.limit == 16, "one doubling per round trip"


def test_the_baseline_is_measured_again_at_the_minimum_window() -> None:
    """An API that really got slower (50 -> 80 ms unloaded) would look like a queue for ever to
    a baseline that only goes down: the probe at the minimum window learns the new one."""
    policy = WindowPolicy(maximum=256, initial=64, probe_seconds=10.0, probe_answers=4)
    window = SendWindow(policy, now=0.0)
    drive(window, Api(capacity=10_000, service=0.05), seconds=10.5)
    assert window.baseline_ms == 50.0 and window.limit == 256, "probed at 10 s, then back"
    probed = []

    def spy_limit() -> None:
        probed.append(window.limit)

    slower = Api(capacity=10_000, service=0.08)
    now = 10.5
    while now < 21.0:
        spy_limit()
        now = 10.5 + len(probed) * 0.08
        drive(window, slower, seconds=0.01, start=now)
    assert policy.minimum in probed, "the window went down to probe"
    assert window.baseline_ms == 80.0
    assert window.limit > 30, "and grows again against the new baseline"


def test_a_fixed_window_stays_fixed() -> None:
    window = SendWindow(WindowPolicy(maximum=32, minimum=32, initial=32), now=0.0)
    assert set(drive(window, Api(capacity=8, service=0.25), seconds=5.0)) == {32}


@pytest.mark.parametrize(
    "kwargs",
    [{"minimum": 0}, {"minimum": 9, "maximum": 8}, {"ease": 1.0}, {"grow_below": 3.0}],
)
def test_bad_policies_are_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        WindowPolicy(**kwargs)  # type: ignore[arg-type]
