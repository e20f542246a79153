"""Unit tests for dispatcher.policy: outcome table, backoff, Retry-After, summaries."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from email.utils import format_datetime
from http import HTTPStatus

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dispatcher.policy import (
    CAUSES,
    MAX_ATTEMPTS_REASON,
    Decision,
    Outcome,
    QueueEffect,
    RetryPolicy,
    backoff_delay,
    cause,
    decide,
    during_outage,
    parse_retry_after,
    problem_summary,
    shown_reason,
    truncate_body,
)

from .conftest import NO_DEADLINE

NOW = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)
POLICY = RetryPolicy()


def no_jitter() -> float:
    return 0.5


def low() -> float:
    return 0.0


def high() -> float:
    return 1.0


# The first 400 sample from the ECDP doc, verbatim (valid JSON).
SEED_400 = b"""{
  "type": "string",
  "title": "string",
  "status": 0,
  "detail": "string",
  "instance": "string",
  "errors": [
    "string"
  ]
}"""

# The /withsegments 400 sample, verbatim: note the doc omits the closing brace.
SEED_400_SEGMENTS = b"""{
  "type": "string",
  "title": "string",
  "status": 0,
  "substatus": "CustomerInvalidModelState",
  "detail": "string",
  "instance": "string",
  "errors": [
    "string"
  ]
"""

VALIDATION_400 = json.dumps(
    {
        "type": "https://tools.ietf.org/html/rfc7231#section-6.5.1",
        "title": "One or more validation errors occurred.",
        "status": 400,
        "substatus": "CustomerInvalidModelState",
        "instance": "/scenariocustomevents",
        "errors": ["a", "b"],
    }
).encode()


def expected_outcome(code: int) -> Outcome:
    """The spec's table, restated independently of the implementation."""
    if 200 <= code <= 299:
        return Outcome.DELIVERED
    if code in (401, 403):
        return Outcome.PAUSE
    if code in (408, 429):
        return Outcome.RETRY
    if 400 <= code <= 499:
        return Outcome.DEAD
    return Outcome.RETRY  # 1xx, 3xx, 5xx, >= 600


def expected_effect(code: int | None) -> QueueEffect | None:
    """What an answer does to the whole queue, restated independently of the implementation."""
    if code in (401, 403):
        return QueueEffect.PAUSE
    if code == 429:
        return QueueEffect.COOL_DOWN
    return None


# --- the outcome table -------------------------------------------------------------------------


@pytest.mark.parametrize("code", range(100, 600))
def test_every_status_code_first_attempt(code: int) -> None:
    d = decide(code, attempts_before=0, policy=POLICY, rand=no_jitter)
    assert d.outcome is expected_outcome(code)
    assert d.effect is expected_effect(code)
    assert d.counts is (d.outcome is not Outcome.PAUSE)
    if d.effect is QueueEffect.COOL_DOWN:
        assert d.effect_seconds == d.delay_seconds == POLICY.base_seconds
    else:
        assert d.effect_seconds is None
    if d.outcome is Outcome.RETRY:
        assert d.delay_seconds == POLICY.base_seconds
        assert d.reason is not None and d.reason.startswith(str(code))
    else:
        assert d.delay_seconds is None
    if d.outcome is Outcome.DELIVERED:
        assert d.reason is None
    else:
        assert d.reason is not None and d.reason.startswith(str(code))


@pytest.mark.parametrize("code", range(100, 600))
def test_every_status_code_at_the_limit(code: int) -> None:
    """On the last allowed attempt, every would-be retry becomes dead; nothing else changes."""
    d = decide(code, attempts_before=POLICY.max_attempts - 1, policy=POLICY, rand=no_jitter)
    table = expected_outcome(code)
    assert d.effect is expected_effect(code)  # the queue's effect stays on the last attempt
    if table is Outcome.RETRY:
        assert d.outcome is Outcome.DEAD and d.exhausted
        assert d.message is not None and d.message.startswith(MAX_ATTEMPTS_REASON)
    else:
        assert not d.exhausted
        assert d.outcome is table


@pytest.mark.parametrize("code", [0, 42, 600, 999, 1000, -1])
def test_out_of_range_codes_retry(code: int) -> None:
    d = decide(code, attempts_before=0, policy=POLICY, rand=no_jitter)
    assert d.outcome is Outcome.RETRY
    assert d.reason == str(code)
    assert d.effect is None


@pytest.mark.parametrize("code", [200, 201, 202, 204, 299])
def test_2xx_delivered(code: int) -> None:
    d = decide(code, attempts_before=5, policy=POLICY, body=b'{"title": "x"}')
    assert d == Decision(Outcome.DELIVERED, counts=True, delay_seconds=None, reason=None)


def test_2xx_with_error_string_is_still_delivered() -> None:
    d = decide(201, attempts_before=0, policy=POLICY, error="read error after headers")
    assert d.outcome is Outcome.DELIVERED


@pytest.mark.parametrize("code", [400, 404, 405, 409, 410, 413, 415, 422, 451, 499])
def test_4xx_dead_at_once_with_own_reason(code: int) -> None:
    for attempts_before in (0, 3, POLICY.max_attempts - 1, POLICY.max_attempts + 5):
        d = decide(code, attempts_before=attempts_before, policy=POLICY, body=VALIDATION_400)
        assert d.outcome is Outcome.DEAD
        assert d.counts is True
        assert d.delay_seconds is None
        assert d.reason is not None and not d.exhausted
        assert d.message == d.reason
        assert "One or more validation errors occurred." in d.reason


def test_400_reason_from_seed_body() -> None:
    d = decide(400, attempts_before=0, policy=POLICY, body=VALIDATION_400)
    assert d.reason == (
        "400 Bad Request: One or more validation errors occurred. "
        "[substatus=CustomerInvalidModelState] errors: a; b"
    )


@pytest.mark.parametrize("code", [401, 403])
@pytest.mark.parametrize("attempts_before", [0, 1, 11, 12, 100])
def test_401_403_pause_does_not_count(code: int, attempts_before: int) -> None:
    body = json.dumps({"title": HTTPStatus(code).phrase, "detail": "API key is invalid"}).encode()
    d = decide(code, attempts_before=attempts_before, policy=POLICY, body=body)
    assert d.outcome is Outcome.PAUSE
    assert d.counts is False
    assert d.delay_seconds is None
    assert d.reason == f"{code} {HTTPStatus(code).phrase}: API key is invalid"


def test_401_without_body() -> None:
    d = decide(401, attempts_before=0, policy=POLICY)
    assert d.reason == "401 Unauthorized"


@pytest.mark.parametrize("code", [408, 429, 500, 502, 503, 504, 599])
def test_transient_codes_retry(code: int) -> None:
    d = decide(code, attempts_before=0, policy=POLICY, rand=no_jitter)
    assert d.outcome is Outcome.RETRY
    assert d.counts is True
    assert d.delay_seconds == 1.0


def test_retry_reason_reads_like_status_line() -> None:
    d = decide(503, attempts_before=0, policy=POLICY, rand=no_jitter)
    assert d.reason == "503 Service Unavailable"
    d = decide(500, attempts_before=0, policy=POLICY, body=b'{"detail": "db down"}')
    assert d.reason == "500 Internal Server Error: db down"


@pytest.mark.parametrize(
    "error", ["timeout: ReadTimeout('timed out')", "connect error: [Errno 111] Connection refused"]
)
def test_transport_errors_retry_with_error_as_reason(error: str) -> None:
    d = decide(None, attempts_before=0, policy=POLICY, error=error, rand=no_jitter)
    assert d == Decision(Outcome.RETRY, counts=True, delay_seconds=1.0, reason=error)


def test_transport_error_reason_is_one_bounded_line() -> None:
    d = decide(None, attempts_before=0, policy=POLICY, error="timeout:\n" + "x" * 5000)
    assert d.reason is not None
    assert "\n" not in d.reason
    assert len(d.reason) <= 1000
    assert d.reason.startswith("timeout: x")


@pytest.mark.parametrize("error", [None, "", "   "])
def test_no_status_no_error(error: str | None) -> None:
    d = decide(None, attempts_before=0, policy=POLICY, error=error, rand=no_jitter)
    assert d.outcome is Outcome.RETRY
    assert d.reason == "no response"


def test_transport_error_ignores_retry_after() -> None:
    d = decide(
        None,
        attempts_before=0,
        policy=POLICY,
        error="timeout: x",
        retry_after="120",
        rand=no_jitter,
    )
    assert d.delay_seconds == 1.0


def test_negative_attempts_before_rejected() -> None:
    with pytest.raises(ValueError):
        decide(500, attempts_before=-1, policy=POLICY)


# --- the attempt budget ------------------------------------------------------------------------


def test_500_one_before_limit_still_retries() -> None:
    d = decide(500, attempts_before=POLICY.max_attempts - 2, policy=POLICY, rand=no_jitter)
    assert d.outcome is Outcome.RETRY
    assert d.delay_seconds == 2.0 ** (POLICY.max_attempts - 2)


def test_500_at_limit_is_dead() -> None:
    d = decide(500, attempts_before=POLICY.max_attempts - 1, policy=POLICY)
    assert d.outcome is Outcome.DEAD
    assert d.counts is True
    assert d.delay_seconds is None
    assert d.exhausted
    assert d.reason == "500 Internal Server Error"  # the answer's own: the flag says the rest
    assert d.message == f"{MAX_ATTEMPTS_REASON}: 500 Internal Server Error"
    assert MAX_ATTEMPTS_REASON == "max attempts exceeded"


def test_past_limit_is_dead() -> None:
    """A lowered max_attempts must not resurrect jobs that already used more."""
    d = decide(503, attempts_before=50, policy=RetryPolicy(max_attempts=3))
    assert d.outcome is Outcome.DEAD


def test_timeout_at_limit_is_dead_with_last_reason() -> None:
    d = decide(None, attempts_before=11, policy=POLICY, error="timeout: read")
    assert d.exhausted and d.reason == "timeout: read"
    assert d.message == "max attempts exceeded: timeout: read"


def test_unknown_answers_exhaust_the_budget() -> None:
    policy = RetryPolicy(max_attempts=4)
    outcomes = [decide(302, attempts_before=n, policy=policy).outcome for n in range(4)]
    assert outcomes == [Outcome.RETRY] * 3 + [Outcome.DEAD]


def test_max_attempts_one_means_no_retry() -> None:
    d = decide(500, attempts_before=0, policy=RetryPolicy(max_attempts=1))
    assert d.outcome is Outcome.DEAD


def test_full_run_counts_twelve_attempts() -> None:
    """Simulate the worker: pauses do not use budget, the 12th counted failure is the last."""
    attempts = 0
    seen: list[Outcome] = []
    answers = [500, 401, 503, 429, 403, 408] + [502] * 20
    for code in answers:
        d = decide(code, attempts_before=attempts, policy=POLICY, rand=no_jitter)
        seen.append(d.outcome)
        attempts += d.counts
        if d.outcome is Outcome.DEAD:
            break
    assert seen.count(Outcome.PAUSE) == 2
    assert attempts == POLICY.max_attempts
    assert seen[-1] is Outcome.DEAD


# --- backoff -----------------------------------------------------------------------------------


def test_backoff_doubles_without_jitter() -> None:
    delays = [backoff_delay(n, POLICY, no_jitter) for n in range(1, 15)]
    assert delays == [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 3600, 3600]


def test_backoff_custom_base_and_max() -> None:
    policy = RetryPolicy(base_seconds=5, max_seconds=60)
    delays = [backoff_delay(n, policy, no_jitter) for n in range(1, 7)]
    assert delays == [5, 10, 20, 40, 60, 60]


def test_decide_uses_attempt_number_for_backoff() -> None:
    for n in range(POLICY.max_attempts - 1):
        d = decide(500, attempts_before=n, policy=POLICY, rand=no_jitter)
        assert d.delay_seconds == min(2.0**n, POLICY.max_seconds)


@pytest.mark.parametrize("attempt", [1, 2, 5, 10])
def test_jitter_bounds_below_max(attempt: int) -> None:
    raw = 2.0 ** (attempt - 1)
    assert backoff_delay(attempt, POLICY, low) == pytest.approx(raw * 0.8)
    assert backoff_delay(attempt, POLICY, high) == pytest.approx(raw * 1.2)


def test_jitter_at_max_is_clipped() -> None:
    assert backoff_delay(20, POLICY, high) == POLICY.max_seconds
    assert backoff_delay(20, POLICY, low) == pytest.approx(POLICY.max_seconds * 0.8)


def test_zero_jitter_ignores_rand() -> None:
    policy = RetryPolicy(jitter=0.0)
    assert backoff_delay(3, policy, low) == backoff_delay(3, policy, high) == 4.0


@pytest.mark.parametrize("value", [-5.0, 7.0, float("nan"), float("inf"), float("-inf")])
def test_misbehaving_rand_stays_in_bounds(value: float) -> None:
    delay = backoff_delay(3, POLICY, lambda: value)
    assert 4.0 * 0.8 <= delay <= 4.0 * 1.2


@pytest.mark.parametrize("attempt", [0, -1])
def test_backoff_rejects_attempt_below_one(attempt: int) -> None:
    with pytest.raises(ValueError):
        backoff_delay(attempt, POLICY, no_jitter)


@given(
    attempt=st.integers(min_value=1, max_value=10**9),
    r=st.floats(min_value=0.0, max_value=1.0),
    base=st.floats(min_value=0.0, max_value=1e6),
    max_seconds=st.floats(min_value=0.0, max_value=1e7),
    jitter=st.floats(min_value=0.0, max_value=1.0),
)
def test_backoff_always_within_zero_and_max(
    attempt: int, r: float, base: float, max_seconds: float, jitter: float
) -> None:
    policy = RetryPolicy(base_seconds=base, max_seconds=max_seconds, jitter=jitter)
    delay = backoff_delay(attempt, policy, lambda: r)
    assert 0.0 <= delay <= max_seconds


@given(attempt=st.integers(min_value=1, max_value=60))
def test_backoff_monotonic_without_jitter(attempt: int) -> None:
    this = backoff_delay(attempt, POLICY, no_jitter)
    assert this <= backoff_delay(attempt + 1, POLICY, no_jitter)


@given(
    code=st.one_of(st.none(), st.integers(min_value=-10, max_value=1000)),
    attempts_before=st.integers(min_value=0, max_value=100),
    r=st.floats(min_value=0.0, max_value=1.0),
    retry_after=st.one_of(st.none(), st.text(max_size=40), st.integers(0, 10**7).map(str)),
    body=st.binary(max_size=300),
)
def test_decide_invariants(
    code: int | None, attempts_before: int, r: float, retry_after: str | None, body: bytes
) -> None:
    d = decide(
        code,
        attempts_before=attempts_before,
        policy=POLICY,
        retry_after=retry_after,
        body=body,
        error="timeout: x",
        now=NOW,
        rand=lambda: r,
    )
    assert d.counts is (d.outcome is not Outcome.PAUSE)
    assert d.effect is expected_effect(code)
    assert (d.effect is QueueEffect.PAUSE) is (d.outcome is Outcome.PAUSE)
    assert (d.effect_seconds is not None) is (d.effect is QueueEffect.COOL_DOWN)
    if d.effect_seconds is not None:
        assert 0.0 <= d.effect_seconds <= max(POLICY.max_seconds, POLICY.retry_after_cap_seconds)
        if d.outcome is Outcome.RETRY:
            assert d.effect_seconds == d.delay_seconds
    assert (d.delay_seconds is not None) is (d.outcome is Outcome.RETRY)
    assert (d.reason is None) is (d.outcome is Outcome.DELIVERED)
    if d.delay_seconds is not None:
        assert 0.0 <= d.delay_seconds <= max(POLICY.max_seconds, POLICY.retry_after_cap_seconds)
    if d.reason is not None:
        assert "\n" not in d.reason
        assert len(d.reason) <= 1000
    if d.outcome is Outcome.RETRY:
        assert attempts_before + 1 < POLICY.max_attempts


# --- policy validation -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [
        {"base_seconds": -1.0},
        {"max_seconds": -1.0},
        {"max_seconds": float("inf")},
        {"base_seconds": float("nan")},
        {"retry_after_cap_seconds": -0.5},
        {"max_attempts": 0},
        {"jitter": -0.1},
        {"jitter": 1.5},
    ],
)
def test_policy_rejects_nonsense(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        RetryPolicy(**kwargs)  # type: ignore[arg-type]


def test_policy_defaults() -> None:
    assert RetryPolicy() == RetryPolicy(
        base_seconds=1.0,
        max_seconds=3600.0,
        max_attempts=12,
        retry_after_cap_seconds=3600.0,
        jitter=0.2,
    )


# --- Retry-After -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "seconds"),
    [("0", 0.0), ("120", 120.0), (" 30 ", 30.0), ("007", 7.0), ("3600", 3600.0)],
)
def test_parse_delta_seconds(value: str, seconds: float) -> None:
    assert parse_retry_after(value, NOW) == seconds


def test_parse_huge_delta_saturates() -> None:
    assert parse_retry_after("9" * 5000, NOW) == 2.0**31
    assert parse_retry_after("0" * 5000 + "5", NOW) == 5.0
    assert parse_retry_after("99999999999", NOW) == 2.0**31


@pytest.mark.parametrize(
    "value",
    [
        "Wed, 01 May 2024 12:02:00 GMT",  # IMF-fixdate
        "Wednesday, 01-May-24 12:02:00 GMT",  # obsolete RFC 850
        "Wed May  1 12:02:00 2024",  # obsolete asctime
    ],
)
def test_parse_http_date(value: str) -> None:
    assert parse_retry_after(value, NOW) == 120.0


def test_parse_http_date_with_microsecond_now() -> None:
    now = NOW + timedelta(microseconds=500_000)
    assert parse_retry_after("Wed, 01 May 2024 12:00:10 GMT", now) == 9.5


def test_parse_http_date_naive_now_is_utc() -> None:
    now = NOW.replace(tzinfo=None)
    assert parse_retry_after("Wed, 01 May 2024 12:00:10 GMT", now) == 10.0


def test_parse_http_date_other_timezone_now() -> None:
    now = NOW.astimezone(timezone(timedelta(hours=2)))
    assert parse_retry_after("Wed, 01 May 2024 12:00:10 GMT", now) == 10.0


@pytest.mark.parametrize(
    "value", ["Wed, 01 May 2024 11:00:00 GMT", "Thu, 01 Jan 1970 00:00:00 GMT"]
)
def test_parse_past_date_is_zero(value: str) -> None:
    assert parse_retry_after(value, NOW) == 0.0


@pytest.mark.parametrize(
    "value",
    [
        None,
        "",
        "   ",
        "soon",
        "-5",
        "+5",
        "1.5",
        "1e3",
        "12 s",
        "\uff10\uff11\uff12",  # fullwidth digits are not DIGIT
        "²",
        "Wed, 32 May 2024 12:00:00 GMT",
        "Wed, 01 May 99999 12:00:00 GMT",
        "\x00",
    ],
)
def test_parse_garbage_is_none(value: str | None) -> None:
    assert parse_retry_after(value, NOW) is None


@given(st.text(max_size=80))
def test_parse_never_raises(value: str) -> None:
    result = parse_retry_after(value, NOW)
    assert result is None or 0.0 <= result <= 2.0**31


def test_retry_after_longer_than_backoff_is_honoured() -> None:
    d = decide(429, attempts_before=0, policy=POLICY, retry_after="120", rand=no_jitter)
    assert d.outcome is Outcome.RETRY
    assert d.delay_seconds == 120.0


def test_retry_after_http_date_is_honoured() -> None:
    d = decide(
        503,
        attempts_before=0,
        policy=POLICY,
        retry_after=format_datetime(NOW + timedelta(minutes=5), usegmt=True),
        now=NOW,
        rand=no_jitter,
    )
    assert d.delay_seconds == 300.0


def test_retry_after_http_date_without_now_is_ignored() -> None:
    d = decide(
        503,
        attempts_before=0,
        policy=POLICY,
        retry_after="Wed, 01 May 2024 12:05:00 GMT",
        rand=no_jitter,
    )
    assert d.delay_seconds == 1.0


def test_retry_after_seconds_without_now_is_honoured() -> None:
    d = decide(503, attempts_before=0, policy=POLICY, retry_after="90", rand=no_jitter)
    assert d.delay_seconds == 90.0


def test_retry_after_shorter_than_backoff_is_ignored() -> None:
    d = decide(503, attempts_before=6, policy=POLICY, retry_after="10", rand=no_jitter)
    assert d.delay_seconds == 64.0


@pytest.mark.parametrize("value", ["soon", "-5", "", "Wed, 01 May 2024 11:00:00 GMT"])
def test_retry_after_garbage_or_past_falls_back_to_backoff(value: str) -> None:
    d = decide(429, attempts_before=2, policy=POLICY, retry_after=value, now=NOW, rand=no_jitter)
    assert d.delay_seconds == 4.0


@pytest.mark.parametrize("value", ["86400", "9" * 100, "Thu, 01 May 2025 12:00:00 GMT"])
def test_retry_after_over_cap_is_capped(value: str) -> None:
    d = decide(429, attempts_before=0, policy=POLICY, retry_after=value, now=NOW, rand=no_jitter)
    assert d.delay_seconds == POLICY.retry_after_cap_seconds


def test_retry_after_cap_is_independent_of_max() -> None:
    policy = RetryPolicy(max_seconds=60, retry_after_cap_seconds=600)
    d = decide(503, attempts_before=0, policy=policy, retry_after="300", rand=no_jitter)
    assert d.delay_seconds == 300.0
    d = decide(503, attempts_before=0, policy=policy, retry_after="5000", rand=no_jitter)
    assert d.delay_seconds == 600.0


def test_retry_after_zero_cap_disables_it() -> None:
    policy = RetryPolicy(retry_after_cap_seconds=0)
    d = decide(503, attempts_before=0, policy=policy, retry_after="300", rand=no_jitter)
    assert d.delay_seconds == 1.0


def test_retry_after_ignored_when_dead() -> None:
    d = decide(503, attempts_before=11, policy=POLICY, retry_after="60")
    assert d.outcome is Outcome.DEAD
    assert d.delay_seconds is None
    assert d.effect is None and d.effect_seconds is None


# --- queue-level effects -----------------------------------------------------------------------


def test_429_cools_the_queue_down_for_the_retry_delay() -> None:
    d = decide(429, attempts_before=0, policy=POLICY, retry_after="120", rand=no_jitter)
    assert d == Decision(
        Outcome.RETRY,
        counts=True,
        delay_seconds=120.0,
        reason="429 Too Many Requests",
        effect=QueueEffect.COOL_DOWN,
        effect_seconds=120.0,
    )


def test_429_on_the_last_attempt_is_dead_but_still_cools_the_queue_down() -> None:
    """The rate limit concerns every job of the queue, whatever happens to this one."""
    d = decide(429, attempts_before=11, policy=POLICY, retry_after="60", now=NOW, rand=no_jitter)
    assert d.outcome is Outcome.DEAD and d.delay_seconds is None
    assert d.effect is QueueEffect.COOL_DOWN
    assert d.effect_seconds == max(60.0, backoff_delay(12, POLICY, no_jitter))


@pytest.mark.parametrize("code", [401, 403])
def test_401_403_pause_the_queue(code: int) -> None:
    d = decide(code, attempts_before=3, policy=POLICY, retry_after="60", rand=no_jitter)
    assert (d.outcome, d.effect, d.effect_seconds) == (Outcome.PAUSE, QueueEffect.PAUSE, None)


@pytest.mark.parametrize("error", ["timeout: read", "connect error: refused", None])
def test_no_answer_has_no_queue_effect(error: str | None) -> None:
    d = decide(None, attempts_before=0, policy=POLICY, error=error, rand=no_jitter)
    assert d.effect is None and d.effect_seconds is None


# --- problem_summary ---------------------------------------------------------------------------


def test_summary_seed_400_sample() -> None:
    # title == detail == "string" in the doc's sample: the duplicate is dropped.
    assert problem_summary(400, SEED_400) == "400 Bad Request: string errors: string"


def test_summary_seed_400_segments_sample_is_not_valid_json() -> None:
    summary = problem_summary(400, SEED_400_SEGMENTS)
    assert summary.startswith('400 Bad Request: { "type": "string", "title": "string",')
    assert "\n" not in summary


def test_summary_validation_problem() -> None:
    assert problem_summary(400, VALIDATION_400) == (
        "400 Bad Request: One or more validation errors occurred. "
        "[substatus=CustomerInvalidModelState] errors: a; b"
    )


def test_summary_title_and_detail() -> None:
    body = json.dumps({"title": "Validation failed", "detail": "customerEmail is invalid"})
    assert problem_summary(400, body.encode()) == (
        "400 Bad Request: Validation failed: customerEmail is invalid"
    )


def test_summary_title_repeating_phrase_is_dropped() -> None:
    body = json.dumps({"title": "Not Found", "detail": "Custom event 7 does not exist"})
    assert problem_summary(404, body.encode()) == "404 Not Found: Custom event 7 does not exist"


def test_summary_aspnet_errors_map() -> None:
    body = json.dumps(
        {
            "title": "One or more validation errors occurred.",
            "errors": {"customerEmail": ["Too long.", "Invalid."], "dataFields[0].type": "Bad"},
        }
    )
    assert problem_summary(400, body.encode()) == (
        "400 Bad Request: One or more validation errors occurred. "
        "errors: customerEmail: Too long., Invalid.; dataFields[0].type: Bad"
    )


def test_summary_odd_field_types() -> None:
    body = json.dumps(
        {"title": 7, "detail": {"why": "nested"}, "substatus": None, "errors": "just one"}
    )
    assert problem_summary(400, body.encode()) == (
        '400 Bad Request: 7: {"why":"nested"} errors: just one'
    )


def test_summary_multiline_detail_is_one_line() -> None:
    body = json.dumps({"detail": "line one\nline two\r\n\tline three"})
    assert problem_summary(422, body.encode()) == (
        "422 Unprocessable Entity: line one line two line three"
    )


def test_summary_substatus_only() -> None:
    body = json.dumps({"substatus": "CustomerNotFound"})
    assert problem_summary(404, body.encode()) == "404 Not Found: [substatus=CustomerNotFound]"


def test_summary_empty_body() -> None:
    assert problem_summary(400, b"") == "400 Bad Request"


def test_summary_unknown_status() -> None:
    assert problem_summary(499, b"") == "499"
    assert problem_summary(799, b"nope") == "799: nope"


def test_summary_non_json() -> None:
    assert problem_summary(502, b"<html>\n<body>Bad gateway</body>\n</html>") == (
        "502 Bad Gateway: <html> <body>Bad gateway</body> </html>"
    )


def test_summary_invalid_utf8() -> None:
    summary = problem_summary(400, b"\xff\xfe bad \xc3 bytes")
    assert summary == "400 Bad Request: \ufffd\ufffd bad \ufffd bytes"


def test_summary_invalid_utf8_inside_json() -> None:
    summary = problem_summary(400, b'{"title": "caf\xe9"}')
    assert summary.startswith("400 Bad Request: {")


def test_summary_utf8_bom_json() -> None:
    body = b"\xef\xbb\xbf" + json.dumps({"detail": "with bom"}).encode()
    assert problem_summary(400, body) == "400 Bad Request: with bom"


def test_summary_5mb_body() -> None:
    body = b"x" * (5 * 1024 * 1024)
    summary = problem_summary(500, body)
    assert len(summary) == 1000
    assert summary.startswith("500 Internal Server Error: xxx")
    assert summary.endswith("…")


def test_summary_5mb_json_body() -> None:
    body = json.dumps({"title": "big", "errors": ["e" * 100] * 50_000}).encode()
    assert len(body) > 5_000_000
    summary = problem_summary(400, body)
    assert len(summary) <= 1000
    assert summary.startswith('400 Bad Request: {"title": "big"')


def test_summary_deeply_nested_json() -> None:
    body = b"[" * 50_000 + b"]" * 50_000
    summary = problem_summary(400, body[:60_000])
    assert summary.startswith("400 Bad Request: [[[")
    nested = b'{"title": ' + b"[" * 20_000 + b"]" * 20_000 + b"}"
    assert problem_summary(400, nested).startswith("400 Bad Request: ")


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b'["a", "b"]', '400 Bad Request: ["a", "b"]'),
        (b"42", "400 Bad Request: 42"),
        (b'"oops"', '400 Bad Request: "oops"'),
        (b"null", "400 Bad Request: null"),
        (b"{}", "400 Bad Request: {}"),
        (b'{"message": "x"}', '400 Bad Request: {"message": "x"}'),
        (b'{"title": null, "detail": ""}', '400 Bad Request: {"title": null, "detail": ""}'),
    ],
)
def test_summary_json_that_is_not_a_problem(body: bytes, expected: str) -> None:
    assert problem_summary(400, body) == expected


def test_summary_long_problem_is_cut() -> None:
    body = json.dumps({"title": "t", "errors": [f"error {i}" for i in range(1000)]}).encode()
    summary = problem_summary(400, body, limit=80)
    assert len(summary) == 80
    assert summary.startswith("400 Bad Request: t errors: error 0; error 1")
    assert summary.endswith("…")


@pytest.mark.parametrize("limit", [0, 1, 2, 5, 20])
def test_summary_tiny_limits(limit: int) -> None:
    summary = problem_summary(400, VALIDATION_400, limit=limit)
    assert len(summary) <= limit


@given(
    code=st.integers(min_value=-1000, max_value=1000),
    body=st.binary(max_size=2000),
    limit=st.integers(min_value=-5, max_value=2000),
)
def test_summary_never_raises_one_line_bounded(code: int, body: bytes, limit: int) -> None:
    summary = problem_summary(code, body, limit=limit)
    assert len(summary) <= max(limit, 0)
    assert "\n" not in summary and "\r" not in summary


@given(
    doc=st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
        lambda children: st.lists(children) | st.dictionaries(st.text(), children),
        max_leaves=30,
    ),
    extra=st.fixed_dictionaries(
        {},
        optional={
            "title": st.text(),
            "detail": st.text(),
            "substatus": st.text(),
            "errors": st.lists(st.text()),
        },
    ),
)
def test_summary_arbitrary_json(doc: object, extra: dict[str, object]) -> None:
    payload = {**extra, "nested": doc} if extra else doc
    summary = problem_summary(400, json.dumps(payload).encode())
    assert summary.startswith("400 Bad Request")
    assert len(summary) <= 1000
    assert "\n" not in summary


# --- truncate_body -----------------------------------------------------------------------------


def test_truncate_short_body_unchanged() -> None:
    assert truncate_body(b'{"ok": true}') == '{"ok": true}'
    assert truncate_body(b"") == ""
    assert truncate_body(b"x" * 8192) == "x" * 8192


def test_truncate_long_body() -> None:
    body = b"x" * (8192 + 123_456)
    text = truncate_body(body)
    assert text == "x" * 8192 + "…[truncated 123456 bytes]"


def test_truncate_5mb() -> None:
    body = b"y" * (5 * 1024 * 1024)
    text = truncate_body(body, limit=100)
    assert text == "y" * 100 + f"…[truncated {len(body) - 100} bytes]"


def test_truncate_does_not_split_a_character() -> None:
    body = "é".encode() * 10  # 2 bytes each
    text = truncate_body(body, limit=5)
    assert text == "éé…[truncated 16 bytes]"
    emoji = "😀".encode() * 3  # 4 bytes each
    assert truncate_body(emoji, limit=6) == "😀…[truncated 8 bytes]"
    assert truncate_body(emoji, limit=3) == "…[truncated 12 bytes]"


def test_truncate_invalid_utf8() -> None:
    assert truncate_body(b"\xff\xfeok") == "\ufffd\ufffdok"
    # Continuation bytes without a lead byte: cut where asked rather than search further.
    assert truncate_body(b"\x80" * 10, limit=4) == "\ufffd" * 4 + "…[truncated 6 bytes]"


def test_truncate_replaces_nul() -> None:
    assert truncate_body(b"a\x00b") == "a\ufffdb"


@pytest.mark.parametrize("limit", [0, -10])
def test_truncate_nonpositive_limit(limit: int) -> None:
    assert truncate_body(b"abc", limit=limit) == "…[truncated 3 bytes]"
    assert truncate_body(b"", limit=limit) == ""


@given(body=st.binary(max_size=3000), limit=st.integers(min_value=-5, max_value=3000))
def test_truncate_never_raises(body: bytes, limit: int) -> None:
    text = truncate_body(body, limit=limit)
    assert "\x00" not in text
    if len(body) <= max(limit, 0):
        assert "[truncated" not in text or b"[truncated" in body
    else:
        assert text.endswith(" bytes]")
        dropped = int(text.rsplit("[truncated ", 1)[1].removesuffix(" bytes]"))
        assert max(limit, 0) <= len(body) - dropped + 3
        assert len(body) - dropped <= max(limit, 0)


@given(text=st.text(max_size=500), limit=st.integers(min_value=0, max_value=600))
def test_truncate_valid_utf8_roundtrip_prefix(text: str, limit: int) -> None:
    body = text.encode()
    out = truncate_body(body, limit=limit)
    kept = out.split("…[truncated ", 1)[0] if len(body) > limit else out
    assert text.replace("\x00", "\ufffd").startswith(kept)


@pytest.mark.parametrize(
    ("reason", "circuit", "word"),
    [
        ("401 Unauthorized: The API key is missing or invalid.", False, "unauthorized"),
        ("403 Forbidden", False, "forbidden"),
        ("429 Too Many Requests: slow down", False, "rate_limited"),
        ("max attempts exceeded: 503 Service Unavailable", True, "outage"),
        ("408 Request Timeout (20 of the last 20 answers were outages)", True, "outage"),
        ("timeout: no complete answer within 10s (5 of 5)", True, "outage"),
        ("connection error: refused", True, "outage"),
        ("400 Bad Request: nope", False, "rejected"),
        ("no API key configured (set ECDP_API_KEY_EU_SHOP)", False, "no_key"),
        ("maintenance till 3pm, ask anna@example.com", False, "operator"),
        ("something the breaker wrote", True, "outage"),
        (None, False, "unknown"),
        ("", True, "unknown"),
    ],
)
def test_cause_is_a_bounded_word(reason: str | None, circuit: bool, word: str) -> None:
    assert cause(reason, circuit=circuit) == word
    assert word in CAUSES


# --------------------------------------------------------------------------- during an outage

OUTAGE_POLICY = RetryPolicy(base_seconds=1.0, max_seconds=60.0, max_attempts=3)
OUTAGE_ANSWERS = st.one_of(st.none(), st.integers(min_value=500, max_value=599), st.just(408))


def test_an_outage_answer_during_an_outage_waits_uncounted_and_due_at_once() -> None:
    counted = decide(503, attempts_before=0, policy=OUTAGE_POLICY, rand=no_jitter)
    assert counted.outcome is Outcome.RETRY and counted.counts and counted.delay_seconds
    d = decide(503, attempts_before=0, policy=OUTAGE_POLICY, rand=no_jitter, outage=True)
    assert d == Decision(Outcome.RETRY, counts=False, delay_seconds=0.0, reason=counted.reason)
    assert d.reason is not None and d.reason.startswith("503")
    assert d == during_outage(counted)


def test_the_last_attempt_during_an_outage_is_not_a_dead_letter() -> None:
    last = OUTAGE_POLICY.max_attempts - 1
    dead = decide(503, attempts_before=last, policy=OUTAGE_POLICY)
    assert dead.outcome is Outcome.DEAD and dead.exhausted
    d = decide(503, attempts_before=last, policy=OUTAGE_POLICY, outage=True)
    assert d.outcome is Outcome.RETRY and not d.counts and d.delay_seconds == 0.0
    assert not d.exhausted and d.reason == dead.reason == d.message
    assert d.reason is not None and d.reason.startswith("503 Service Unavailable")


@pytest.mark.parametrize("code", [200, 201, 400, 401, 403, 404, 409, 422, 429, 302, 600, 999])
def test_answers_that_are_not_an_outage_are_judged_as_ever_during_one(code: int) -> None:
    for attempts_before in (0, OUTAGE_POLICY.max_attempts - 1):
        plain = decide(code, attempts_before=attempts_before, policy=OUTAGE_POLICY, rand=no_jitter)
        during = decide(
            code, attempts_before=attempts_before, policy=OUTAGE_POLICY, rand=no_jitter, outage=True
        )
        assert during == plain


def test_during_an_outage_a_timeout_keeps_its_reason_and_a_missing_one_is_named() -> None:
    timeout = decide(None, attempts_before=0, policy=OUTAGE_POLICY, error="timeout: ReadTimeout")
    assert during_outage(timeout).reason == "timeout: ReadTimeout"
    late = decide(
        None, attempts_before=5, policy=OUTAGE_POLICY, error="timeout: ReadTimeout", outage=True
    )
    assert late.reason == "timeout: ReadTimeout" and not late.exhausted
    assert during_outage(Decision(Outcome.RETRY, True, 1.0, None)).reason == "no response"


def test_a_reason_that_mentions_max_attempts_is_left_as_it_is() -> None:
    reason = f"500 Internal Server Error: upstream said {MAX_ATTEMPTS_REASON}: x"
    assert during_outage(Decision(Outcome.RETRY, True, 1.0, reason)).reason == reason
    assert shown_reason(reason, exhausted=False) == reason
    assert shown_reason(reason, exhausted=True) == f"{MAX_ATTEMPTS_REASON}: {reason}"
    assert shown_reason(None, exhausted=True) == f"{MAX_ATTEMPTS_REASON}: no response"


@NO_DEADLINE
@given(OUTAGE_ANSWERS, st.integers(min_value=0, max_value=50), st.booleans())
def test_an_outage_answer_during_an_outage_never_dead_letters(
    status: int | None, attempts_before: int, sent: bool
) -> None:
    d = decide(
        status,
        attempts_before=attempts_before,
        policy=OUTAGE_POLICY,
        error="connection error: x",
        sent=sent,
        outage=True,
    )
    assert d.outcome is Outcome.RETRY and d.counts is False and d.delay_seconds == 0.0
    assert d.reason and not d.exhausted and d.effect is None
