"""Unit tests for dispatcher.breaker: which answers mean an outage, the probe schedule, the
policy's validation and the sliding window that trips the circuit (what an outage answer does to
its job is policy's: tests/unit/test_policy.py)."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dispatcher.breaker import (
    BreakerPolicy,
    Circuit,
    Window,
    probe_interval,
)
from dispatcher.policy import is_outage

from .conftest import NO_DEADLINE

PROFILE = settings(deadline=None, max_examples=300)


def policy(**overrides: object) -> BreakerPolicy:
    values: dict[str, object] = {"min_requests": 5, "failure_ratio": 0.8, "window_seconds": 60.0}
    values.update(overrides)
    return BreakerPolicy(**values)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- is_outage


@pytest.mark.parametrize("status", [None, 408, 500, 501, 502, 503, 504, 507, 599])
def test_outages_are_5xx_408_and_no_answer(status: int | None) -> None:
    assert is_outage(status) is True


@pytest.mark.parametrize(
    "status",
    [100, 101, 200, 201, 204, 299, 301, 302, 304, 399, 400, 401, 403, 404, 405, 409, 410, 413,
     422, 429, 451, 499, 600, 999],
)  # fmt: skip
def test_answers_about_the_request_or_the_key_are_not_outages(status: int) -> None:
    # 429 is "too much" (a cool-down), 401/403 a pause, other 4xx the request's fault.
    assert is_outage(status) is False


@NO_DEADLINE
@given(st.integers(min_value=-1000, max_value=10_000))
def test_is_outage_is_exactly_5xx_and_408(status: int) -> None:
    assert is_outage(status) == (status == 408 or 500 <= status <= 599)


# --------------------------------------------------------------------------- probe_interval


def test_the_first_probe_waits_the_minimum_and_each_failure_doubles_it_up_to_the_cap() -> None:
    p = policy(probe_min_seconds=1.0, probe_max_seconds=15.0)
    assert [probe_interval(n, p) for n in range(6)] == [1.0, 2.0, 4.0, 8.0, 15.0, 15.0]


def test_probe_interval_survives_absurd_counts() -> None:
    p = policy(probe_min_seconds=0.5, probe_max_seconds=30.0)
    assert probe_interval(10**9, p) == 30.0  # no OverflowError
    assert probe_interval(-3, p) == 0.5  # a negative count is the first probe


def test_probe_interval_with_equal_bounds_is_constant() -> None:
    p = policy(probe_min_seconds=2.0, probe_max_seconds=2.0)
    assert {probe_interval(n, p) for n in range(100)} == {2.0}


@NO_DEADLINE
@given(
    st.floats(min_value=0.001, max_value=100.0),
    st.floats(min_value=1.0, max_value=1000.0),
    st.integers(min_value=0, max_value=200),
)
def test_probe_interval_grows_monotonically_within_its_bounds(
    low: float, factor: float, n: int
) -> None:
    p = policy(probe_min_seconds=low, probe_max_seconds=low * factor)
    now, after = probe_interval(n, p), probe_interval(n + 1, p)
    assert p.probe_min_seconds <= now <= after <= p.probe_max_seconds
    assert math.isfinite(after)


# --------------------------------------------------------------------------- BreakerPolicy


def test_the_defaults_are_valid_and_on() -> None:
    p = BreakerPolicy()
    assert p.enabled
    assert p.min_requests >= 1 and 0 < p.failure_ratio <= 1
    assert p.window_size >= p.min_requests
    # The promise: delivery resumes within 30 s of the API coming back.
    assert p.probe_max_seconds <= 30


@pytest.mark.parametrize(
    ("overrides", "names"),
    [
        ({"min_requests": 0}, "min_requests"),
        ({"min_requests": -5}, "min_requests"),
        ({"failure_ratio": 0.0}, "failure_ratio"),
        ({"failure_ratio": -0.1}, "failure_ratio"),
        ({"failure_ratio": 1.01}, "failure_ratio"),
        ({"failure_ratio": math.nan}, "failure_ratio"),
        ({"window_seconds": 0.0}, "window_seconds"),
        ({"window_seconds": -1.0}, "window_seconds"),
        ({"window_seconds": math.inf}, "window_seconds"),
        ({"window_seconds": math.nan}, "window_seconds"),
        ({"probe_min_seconds": 0.0}, "probe_min_seconds"),
        ({"probe_min_seconds": math.inf}, "probe_min_seconds"),
        ({"probe_max_seconds": -1.0}, "probe_max_seconds"),
        ({"probe_max_seconds": math.nan}, "probe_max_seconds"),
        ({"probe_min_seconds": 5.0, "probe_max_seconds": 4.0}, "probe_max_seconds"),
        ({"min_requests": 50, "window_size": 49}, "window_size"),
    ],
)
def test_a_bad_policy_is_refused_naming_the_setting(
    overrides: dict[str, object], names: str
) -> None:
    with pytest.raises(ValueError, match=names):
        policy(**overrides)


def test_the_boundaries_are_accepted() -> None:
    policy(min_requests=1, window_size=1, failure_ratio=1.0)
    policy(failure_ratio=1e-9)
    policy(probe_min_seconds=3.0, probe_max_seconds=3.0)
    policy(min_requests=100, window_size=100)


# --------------------------------------------------------------------------- Window


def test_trips_on_the_min_requests_th_outage_and_not_before() -> None:
    w: Window[int] = Window(policy(min_requests=5, failure_ratio=1.0))
    assert [w.add(True, float(i), i) for i in range(5)] == [False] * 4 + [True]


def test_trips_at_the_ratio_exactly_and_not_below_it() -> None:
    # 10 answers, ratio 0.8: 8 outages trip, 7 do not.
    w: Window[int] = Window(policy(min_requests=10, failure_ratio=0.8))
    for i in range(2):
        assert not w.add(False, 0.0, i)
    results = [w.add(True, 1.0, i) for i in range(2, 10)]
    assert results == [False] * 7 + [True]  # the 10th answer: 8/10

    w = Window(policy(min_requests=10, failure_ratio=0.8))
    for i in range(3):
        w.add(False, 0.0, i)
    assert not any(w.add(True, 1.0, i) for i in range(3, 10))  # 7/10
    # 8/11, 9/12, 10/13, 11/14 stay below 0.8; 12/15 reaches it.
    assert [w.add(True, 1.0, i) for i in range(10, 15)] == [False] * 4 + [True]


def test_never_trips_on_a_success() -> None:
    w: Window[int] = Window(policy(min_requests=10, failure_ratio=0.8))
    for i in range(9):
        assert not w.add(True, 0.0, i)  # 9 outages: fewer than min_requests
    assert not w.add(False, 0.0, 9)  # 9/10 would be over the ratio, but this one is a success
    assert w.add(True, 0.0, 10)  # the next outage: 10/11


def test_does_not_trip_while_the_failures_are_below_the_ratio() -> None:
    w: Window[int] = Window(policy(min_requests=5, failure_ratio=0.8, window_size=100))
    trips = []
    for i in range(200):  # alternate: half the answers are outages
        trips.append(w.add(i % 2 == 0, float(i) / 100, i))
    assert not any(trips)


def test_forgets_answers_older_than_window_seconds() -> None:
    w: Window[int] = Window(policy(min_requests=5, failure_ratio=1.0, window_seconds=10.0))
    for i in range(4):
        assert not w.add(True, 0.0, i)
    assert not w.add(True, 10.001, 4)  # the four at 0.0 left the window
    assert len(w) == 1
    assert w.outages() == [4]


def test_an_answer_exactly_window_seconds_old_still_counts() -> None:
    w: Window[int] = Window(policy(min_requests=5, failure_ratio=1.0, window_seconds=10.0))
    for i in range(4):
        w.add(True, 0.0, i)
    assert w.add(True, 10.0, 4)


def test_keeps_at_most_window_size_answers() -> None:
    w: Window[int] = Window(policy(min_requests=5, failure_ratio=1.0, window_size=5))
    for i in range(50):
        assert not w.add(False, 0.0, i)
        assert len(w) <= 5
    # The successes are pushed out one by one; with ratio 1.0 it trips once all five are outages.
    results = [w.add(True, 0.0, 100 + i) for i in range(5)]
    assert results == [False] * 4 + [True]
    assert w.outages() == [100, 101, 102, 103, 104]


def test_window_size_bounds_the_ratio_too() -> None:
    # A long success history does not dilute a fresh outage beyond window_size answers.
    w: Window[int] = Window(policy(min_requests=5, failure_ratio=0.8, window_size=10))
    for i in range(1000):
        w.add(False, 0.0, i)
    results = [w.add(True, 0.0, i) for i in range(8)]
    assert results == [False] * 7 + [True]  # 8 of the last 10


def test_a_disabled_policy_never_trips() -> None:
    w: Window[int] = Window(policy(enabled=False, min_requests=1, failure_ratio=1e-9))
    assert not any(w.add(True, float(i), i) for i in range(1000))


def test_outages_are_the_keys_of_the_outage_answers_in_the_window_oldest_first() -> None:
    w: Window[str] = Window(policy(min_requests=5, window_seconds=10.0))
    w.add(True, 0.0, "forgotten")
    w.add(True, 5.0, "a")
    w.add(False, 6.0, "success")
    w.add(True, 7.0, None)  # an answer without a key is counted but cannot be named
    w.add(True, 11.0, "b")  # 11 - 10 = 1: "forgotten" (at 0) leaves the window
    assert w.outages() == ["a", "b"]
    assert len(w) == 4


def test_reset_forgets_everything() -> None:
    w: Window[int] = Window(policy(min_requests=5, failure_ratio=1.0))
    for i in range(4):
        w.add(True, 0.0, i)
    w.reset()
    assert len(w) == 0 and w.outages() == []
    # min_requests answers are needed again, and the old failures are not counted.
    assert [w.add(True, 1.0, i) for i in range(5)] == [False] * 4 + [True]


def test_reset_also_resets_the_failure_count() -> None:
    w: Window[int] = Window(policy(min_requests=5, failure_ratio=0.8))
    for i in range(4):
        w.add(True, 0.0, i)
    w.reset()
    # 1 outage + 4 successes after the reset: 1/5; were the old 4 still counted it would trip.
    for i in range(4):
        assert not w.add(False, 1.0, i)
    assert not w.add(True, 1.0, 9)


def test_forget_drops_the_stale_answers_and_their_failures() -> None:
    w: Window[int] = Window(policy(min_requests=5, failure_ratio=0.8))
    for i in range(4):
        w.add(True, 0.0, i)  # an outage another worker saw through
    w.add(False, 0.0, 4)
    w.forget(lambda key: key < 4)
    assert len(w) == 1 and w.outages() == []
    # One failure now is 1 of 2, not 5 of 6: no trip; min_requests answers are needed again
    # (the fifth, 4 of 5, reaches the ratio).
    assert not w.add(True, 1.0, 5)
    assert [w.add(True, 1.0, i) for i in range(6, 9)] == [False, False, True]


def test_forget_keeps_answers_without_a_key_and_is_a_no_op_when_nothing_is_stale() -> None:
    w: Window[int] = Window(policy(min_requests=5, failure_ratio=1.0))
    w.add(True, 0.0, None)
    w.add(True, 0.0, 1)
    w.forget(lambda key: False)
    assert len(w) == 2
    w.forget(lambda key: True)
    assert len(w) == 1 and w.outages() == []
    assert [w.add(True, 0.0, i) for i in range(2, 6)] == [False, False, False, True]


# A model of the window from the whole history: the answers no older than window_seconds, of
# those the last window_size; trips on an outage when there are at least min_requests of them
# and at least failure_ratio of them are outages.
answers = st.lists(
    st.tuples(st.booleans(), st.floats(min_value=0.0, max_value=5.0)), min_size=1, max_size=300
)
policies = st.builds(
    lambda enabled, m, extra, ratio, secs: BreakerPolicy(
        enabled=enabled,
        min_requests=m,
        failure_ratio=ratio,
        window_seconds=secs,
        window_size=m + extra,
    ),
    st.booleans(),
    st.integers(min_value=1, max_value=30),
    st.integers(min_value=0, max_value=30),
    st.floats(min_value=0.01, max_value=1.0),
    st.floats(min_value=0.5, max_value=60.0),
)


@PROFILE
@given(policies, answers)
def test_the_window_matches_its_model(p: BreakerPolicy, seq: list[tuple[bool, float]]) -> None:
    w: Window[int] = Window(p)
    history: list[tuple[float, bool, int]] = []
    now = 0.0
    for key, (outage, step) in enumerate(seq):
        now += step
        history.append((now, outage, key))
        kept = [a for a in history if a[0] >= now - p.window_seconds][-p.window_size :]
        failures = sum(a[1] for a in kept)
        expected = (
            p.enabled
            and outage
            and len(kept) >= p.min_requests
            and failures >= p.failure_ratio * len(kept)
        )
        assert w.add(outage, now, key) == expected
        assert len(w) == len(kept) <= p.window_size
        assert w.outages() == [k for _, o, k in kept if o]


@PROFILE
@given(policies, answers)
def test_never_trips_with_fewer_than_min_requests_answers_in_the_window(
    p: BreakerPolicy, seq: list[tuple[bool, float]]
) -> None:
    w: Window[int] = Window(p)
    now = 0.0
    for key, (outage, step) in enumerate(seq):
        now += step
        tripped = w.add(outage, now, key)
        if len(w) < p.min_requests or not outage or not p.enabled:
            assert not tripped


@PROFILE
@given(st.integers(min_value=1, max_value=50), st.integers(min_value=0, max_value=200))
def test_all_outages_trip_exactly_at_min_requests(m: int, successes: int) -> None:
    w: Window[int] = Window(BreakerPolicy(min_requests=m, failure_ratio=1.0, window_size=m))
    for i in range(successes):
        assert not w.add(False, 0.0, i)
    results = [w.add(True, 0.0, i) for i in range(m)]
    assert results == [False] * (m - 1) + [True]


def test_circuit_states_are_the_strings_stored_in_the_queue_row() -> None:
    assert [c.value for c in Circuit] == ["closed", "open", "half_open"]
    assert Circuit("half_open") is Circuit.HALF_OPEN
