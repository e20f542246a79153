"""Turn the answer to one delivery attempt into a decision (pure: no I/O, no clock, no RNG).

Everything that decides *whether* and *when* a job is tried again, and what an answer does to the
whole queue (a pause, a cool-down), lives here, so the worker only has to record and apply what
this module says. Randomness (jitter) and the current time (for an HTTP-date
``Retry-After``) are injected, which keeps every decision reproducible in tests.
"""

from __future__ import annotations

import json
import math
import random
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from enum import StrEnum
from http import HTTPStatus

__all__ = [
    "CAUSES",
    "MAX_ATTEMPTS_REASON",
    "Decision",
    "Outcome",
    "QueueEffect",
    "RetryPolicy",
    "backoff_delay",
    "cause",
    "decide",
    "during_outage",
    "is_outage",
    "parse_retry_after",
    "problem_summary",
    "shown_reason",
    "truncate_body",
]

MAX_ATTEMPTS_REASON = "max attempts exceeded"  # how people are shown Decision.exhausted
# Why a queue is paused or its circuit is open, in a word: a bounded set, for a metric's label
# (a reason is free text, with the API's words in it: unbounded, and maybe personal).
CAUSES = (
    "unauthorized",  # 401
    "forbidden",  # 403
    "rate_limited",  # 429
    "outage",  # 5xx, 408, timeout, connection error: the API (or the way to it) is down
    "rejected",  # any other HTTP status
    "no_key",  # no API key configured for the queue
    "operator",  # paused by an operator (dispatcher pause, the admin page, the API)
    "unknown",  # no reason recorded
)
NO_KEY_REASON = "no API key configured"
# A reason recorded before 0009 may still carry the "max attempts exceeded: " head.
_STATUS_HEAD = re.compile(rf"(?:{MAX_ATTEMPTS_REASON}: )?([1-9][0-9]{{2}})(?![0-9])")
_NO_ANSWER_HEADS = ("timeout", "connection error", "connect error", "no response", "no answer")

# RFC 9111 §1.2.2: a delta-seconds too large to represent is taken as 2**31. It also spares us
# int() on a 5000-digit header (Python refuses to convert more than 4300 digits).
_MAX_DELTA_SECONDS = 2**31
# Problem-details bodies are small; parsing anything bigger only costs time (and a deeply nested
# document could exhaust the recursion limit), so larger bodies are summarised as raw text.
_MAX_JSON_BYTES = 64 * 1024
_DELTA_SECONDS = re.compile(r"[0-9]+")
_WHITESPACE = re.compile(r"\s+")
_ELLIPSIS = "…"


class Outcome(StrEnum):
    DELIVERED = "delivered"
    RETRY = "retry"
    DEAD = "dead"
    PAUSE = "pause"


class QueueEffect(StrEnum):
    """What one answer does to its whole queue, besides its own job (the caller applies it)."""

    PAUSE = "pause"  # 401/403: no worker sends for the queue until an operator resumes it
    COOL_DOWN = "cool_down"  # 429: no worker claims from the queue for effect_seconds


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How hard to try. Validated on construction so a bad setting fails at startup, not mid-run."""

    base_seconds: float = 1.0
    max_seconds: float = 3600.0
    max_attempts: int = 12
    retry_after_cap_seconds: float = 3600.0
    jitter: float = 0.2

    def __post_init__(self) -> None:
        for name in ("base_seconds", "max_seconds", "retry_after_cap_seconds"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
        if self.max_attempts < 1:
            raise ValueError(f"max_attempts must be >= 1, got {self.max_attempts!r}")
        if not (0.0 <= self.jitter <= 1.0):
            raise ValueError(f"jitter must be within [0, 1], got {self.jitter!r}")


@dataclass(frozen=True, slots=True)
class Decision:
    outcome: Outcome
    counts: bool  # does this attempt count toward max_attempts (False only for PAUSE)
    delay_seconds: float | None  # only for RETRY
    reason: str | None  # last_error / pause_reason / dead reason; None for DELIVERED
    effect: QueueEffect | None = None  # on the whole queue: PAUSE (401/403), COOL_DOWN (429)
    effect_seconds: float | None = None  # only for COOL_DOWN: how long the queue waits
    # DEAD because this was the job's last counted attempt (``reason`` is the answer's own):
    # recorded as ``dispatcher_jobs.exhausted``, so nothing has to read it back out of a text.
    exhausted: bool = False

    @property
    def message(self) -> str | None:
        """The reason as people read it: "max attempts exceeded: …" when exhausted."""
        return shown_reason(self.reason, exhausted=self.exhausted)


def shown_reason(reason: str | None, *, exhausted: bool) -> str | None:
    """A job's last error as shown (history, the page, the API, the log): the answer's reason,
    after "max attempts exceeded: " when the job ran out of attempts."""
    if not exhausted:
        return reason
    return _one_line(f"{MAX_ATTEMPTS_REASON}: {reason or 'no response'}", 1000)


def is_outage(status_code: int | None) -> bool:
    """Does this answer say the API (not the request) is failing? 5xx, 408, or no answer."""
    return status_code is None or status_code == 408 or 500 <= status_code <= 599


def during_outage(decision: Decision) -> Decision:
    """An outage answer while its queue's circuit is not closed (or one that tripped it, or a
    probe's): the job waits for the circuit to close, due at once then, and the attempt does not
    count. ``decide(..., outage=True)`` applies it; the recording transaction applies it to the
    answers of a circuit another worker opened meanwhile (``outbox.uncount_open``)."""
    return Decision(
        Outcome.RETRY, counts=False, delay_seconds=0.0, reason=decision.reason or "no response"
    )


def decide(
    status_code: int | None,
    *,
    attempts_before: int,
    policy: RetryPolicy,
    retry_after: str | None = None,
    body: bytes = b"",
    error: str | None = None,
    now: datetime | None = None,
    rand: Callable[[], float] = random.random,
    sent: bool = True,
    outage: bool = False,
) -> Decision:
    """Classify one attempt.

    ``attempts_before`` is the number of counted attempts made before this one. ``status_code``
    None means no HTTP answer arrived; ``error`` then describes why and is used verbatim as the
    reason (the caller knows the kind, so it should read like "timeout: ..." or
    "connect error: ..."). When a status is present it wins over ``error``. ``now`` is only
    needed to resolve an HTTP-date ``Retry-After``; without it such a header is ignored rather
    than read from the clock, so this function stays pure.

    ``sent`` False: the request's body was never completely written. A timeout then (connecting,
    waiting for a connection) cannot have reached the API, so the job is tried again at once and
    the attempt does not count: it cannot be a second trigger, and it says nothing of the job.

    ``outage`` True: the queue's circuit is not closed (or this is a probe): an outage answer
    (:func:`is_outage`) is the outage's, not the job's (:func:`during_outage`).
    """
    decision = _decide(
        status_code,
        attempts_before=attempts_before,
        policy=policy,
        retry_after=retry_after,
        body=body,
        error=error,
        now=now,
        rand=rand,
        sent=sent,
    )
    if outage and is_outage(status_code):
        return during_outage(decision)
    return decision


def _decide(
    status_code: int | None,
    *,
    attempts_before: int,
    policy: RetryPolicy,
    retry_after: str | None,
    body: bytes,
    error: str | None,
    now: datetime | None,
    rand: Callable[[], float],
    sent: bool,
) -> Decision:
    if attempts_before < 0:
        raise ValueError(f"attempts_before must be >= 0, got {attempts_before!r}")

    if status_code is None:
        reason = _one_line(error or "", 1000) or "no response"
        if not sent and reason.startswith("timeout"):
            return Decision(Outcome.RETRY, counts=False, delay_seconds=0.0, reason=reason)
    else:
        if 200 <= status_code <= 299:
            return Decision(Outcome.DELIVERED, counts=True, delay_seconds=None, reason=None)
        if status_code in (HTTPStatus.UNAUTHORIZED, HTTPStatus.FORBIDDEN):
            # Bad credentials are the operator's to fix: hold the whole queue and do not burn
            # the job's attempt budget on an answer that says nothing about the job itself.
            return Decision(
                Outcome.PAUSE,
                counts=False,
                delay_seconds=None,
                reason=problem_summary(status_code, body),
                effect=QueueEffect.PAUSE,
            )
        reason = problem_summary(status_code, body)
        if _is_final_rejection(status_code):
            return Decision(Outcome.DEAD, counts=True, delay_seconds=None, reason=reason)

    # Everything else is retried, including answers we do not understand (1xx, 3xx, >= 600):
    # only the attempt budget may turn them into a dead letter.
    attempt = attempts_before + 1
    delay = backoff_delay(attempt, policy, rand)
    if status_code is not None and retry_after is not None:
        hinted = _resolve_retry_after(retry_after, now)
        if hinted is not None:
            delay = max(delay, min(hinted, policy.retry_after_cap_seconds))
    # A 429 is about the API key's rate, not this job: every worker holds off the whole queue
    # for the delay, also when this job has used its last attempt.
    cool = status_code == HTTPStatus.TOO_MANY_REQUESTS
    effect, effect_seconds = (QueueEffect.COOL_DOWN, delay) if cool else (None, None)
    if attempt >= policy.max_attempts:
        return Decision(
            Outcome.DEAD,
            counts=True,
            delay_seconds=None,
            reason=reason,
            effect=effect,
            effect_seconds=effect_seconds,
            exhausted=True,
        )
    return Decision(
        Outcome.RETRY,
        counts=True,
        delay_seconds=delay,
        reason=reason,
        effect=effect,
        effect_seconds=effect_seconds,
    )


def cause(reason: str | None, *, circuit: bool = False) -> str:
    """The :data:`CAUSES` word for a pause's (or, ``circuit=True``, an open circuit's) reason,
    read from the shape of the reasons the worker writes: a status line (``"401 Unauthorized:
    …"``), a failure without an answer (``"timeout: …"``), the missing key. Anything else is an
    operator's own words (or, for a circuit, which only an outage opens, an outage)."""
    if not reason:
        return "unknown"
    head = _STATUS_HEAD.match(reason)
    if head is not None:
        code = int(head[1])
        if code == HTTPStatus.UNAUTHORIZED:
            return "unauthorized"
        if code == HTTPStatus.FORBIDDEN:
            return "forbidden"
        if code == HTTPStatus.TOO_MANY_REQUESTS:
            return "rate_limited"
        if code == HTTPStatus.REQUEST_TIMEOUT or 500 <= code <= 599:
            return "outage"
        return "rejected"
    if reason.startswith(NO_KEY_REASON):
        return "no_key"
    if circuit or reason.lower().startswith(_NO_ANSWER_HEADS):
        return "outage"
    return "operator"


def _is_final_rejection(status_code: int) -> bool:
    """4xx but 401/403 (pause) and 408/429 (transient by definition): the request is at fault."""
    return 400 <= status_code <= 499 and status_code not in (
        HTTPStatus.UNAUTHORIZED,
        HTTPStatus.FORBIDDEN,
        HTTPStatus.REQUEST_TIMEOUT,
        HTTPStatus.TOO_MANY_REQUESTS,
    )


def _resolve_retry_after(value: str, now: datetime | None) -> float | None:
    if now is not None:
        return parse_retry_after(value, now)
    # Without a clock reading only the delta-seconds form can be resolved.
    stripped = value.strip()
    if _DELTA_SECONDS.fullmatch(stripped):
        return _delta_seconds(stripped)
    return None


def backoff_delay(attempt: int, policy: RetryPolicy, rand: Callable[[], float]) -> float:
    """Delay before retry number ``attempt`` (1 = first retry): base*2**(attempt-1), capped at max,
    then jittered by ±policy.jitter (Svix-style, so retries of many jobs do not move in lockstep)
    and clipped to [0, max]. ``rand`` should return a float in [0, 1]; 0.5 means no jitter.
    """
    if attempt < 1:
        raise ValueError(f"attempt must be >= 1, got {attempt!r}")
    # 2.0**1023 is the largest finite power; the product may become inf, which min() absorbs.
    raw = min(policy.base_seconds * 2.0 ** min(attempt - 1, 1023), policy.max_seconds)
    r = rand()
    r = 0.5 if math.isnan(r) else min(max(r, 0.0), 1.0)
    jittered = raw * (1.0 + policy.jitter * (2.0 * r - 1.0))
    return min(max(jittered, 0.0), policy.max_seconds)


def parse_retry_after(value: str | None, now: datetime) -> float | None:
    """``Retry-After`` (RFC 9110 §10.2.3) as seconds from ``now``.

    delta-seconds (ASCII digits only, so "-5" or "1.5" are garbage) or an HTTP-date (any of the
    three RFC 9110 formats; a date in the past gives 0). Garbage gives None, never an exception,
    because the header comes from a server we do not control.
    """
    if value is None:
        return None
    stripped = value.strip()
    if not stripped:
        return None
    if _DELTA_SECONDS.fullmatch(stripped):
        return _delta_seconds(stripped)
    try:
        when = parsedate_to_datetime(stripped)
        if when.tzinfo is None:  # asctime and "-0000" forms carry no zone; HTTP-dates are GMT.
            when = when.replace(tzinfo=UTC)
        if now.tzinfo is None:
            now = now.replace(tzinfo=UTC)
        seconds = (when - now).total_seconds()
    except (ValueError, TypeError, OverflowError, IndexError):
        return None
    return min(max(seconds, 0.0), float(_MAX_DELTA_SECONDS))


def _delta_seconds(digits: str) -> float:
    significant = digits.lstrip("0")
    if len(significant) > len(str(_MAX_DELTA_SECONDS)):
        return float(_MAX_DELTA_SECONDS)
    return float(min(int(significant or "0"), _MAX_DELTA_SECONDS))


def problem_summary(status_code: int, body: bytes, limit: int = 1000) -> str:
    """One line for an operator from an RFC 9457 problem-details body.

    e.g. "400 Bad Request: One or more validation errors occurred. [substatus=X] errors: a; b".
    Falls back to the first bytes of a body that is not a problem object (non-JSON, invalid
    UTF-8, a JSON list or number, too big to be worth parsing). Never raises, never longer than
    ``limit`` characters.
    """
    try:
        head = _status_line(status_code)
        details = _problem_details(body, head)
        if details is None:
            raw = _one_line(body[: max(limit, 0) * 4 + 4].decode("utf-8", errors="replace"), limit)
            details = raw or None
        text = f"{head}: {details}" if details else head
        return _one_line(text, limit)
    except Exception:  # a summary must never be the reason a result cannot be recorded
        return _one_line(f"{status_code}", limit)


def _status_line(status_code: int) -> str:
    try:
        return f"{status_code} {HTTPStatus(status_code).phrase}"
    except ValueError:
        return str(status_code)


def _problem_details(body: bytes, head: str) -> str | None:
    if not body or len(body) > _MAX_JSON_BYTES:
        return None
    try:
        doc = json.loads(body)
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        return None
    if not isinstance(doc, dict):
        return None

    title = _text(doc.get("title"))
    detail = _text(doc.get("detail"))
    substatus = _text(doc.get("substatus"))
    errors = _errors(doc.get("errors"))

    # A title that only repeats the status phrase ("Bad Request") adds nothing.
    if title and head.endswith(f" {title}"):
        title = None
    if detail and detail == title:
        detail = None
    message = ": ".join(part for part in (title, detail) if part)
    parts = [message] if message else []
    if substatus:
        parts.append(f"[substatus={substatus}]")
    if errors:
        parts.append(f"errors: {errors}")
    return " ".join(parts) or None


def _text(value: object) -> str | None:
    if value is None:
        return None
    if isinstance(value, str):
        text = value
    elif isinstance(value, dict | list):
        text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    else:
        text = str(value)
    text = _one_line(text, 10_000)
    return text or None


def _errors(value: object) -> str | None:
    """``errors`` is a list of strings in the ECDP doc, but ASP.NET's ValidationProblemDetails
    (whose title the ECDP API uses) sends a field -> messages map; render both."""
    items: list[str] = []
    if isinstance(value, list):
        items = [t for t in (_text(v) for v in value) if t]
    elif isinstance(value, dict):
        for key, messages in value.items():
            if isinstance(messages, list):
                joined = ", ".join(t for t in (_text(m) for m in messages) if t)
            else:
                joined = _text(messages) or ""
            items.append(f"{key}: {joined}" if joined else str(key))
    else:
        single = _text(value)
        if single:
            items = [single]
    return "; ".join(items) or None


def _one_line(text: str, limit: int) -> str:
    """Collapse whitespace/control characters and cut to ``limit`` characters with an ellipsis."""
    text = "".join(ch if ch.isprintable() else " " for ch in text)
    text = _WHITESPACE.sub(" ", text).strip()
    if limit <= 0:
        return ""
    if len(text) > limit:
        return text[: limit - 1].rstrip() + _ELLIPSIS
    return text


def truncate_body(body: bytes, limit: int = 8192) -> str:
    """Response body for storage: UTF-8 decoded with replacement, cut at ``limit`` bytes (on a
    character boundary) with a marker saying how much was dropped. NUL becomes U+FFFD because
    PostgreSQL text columns reject it. Never raises."""
    try:
        limit = max(limit, 0)
        if len(body) <= limit:
            return _storable(body.decode("utf-8", errors="replace"))
        cut = limit
        # Step back over UTF-8 continuation bytes (at most 3) so no character is split.
        while cut > 0 and limit - cut < 3 and (body[cut] & 0xC0) == 0x80:
            cut -= 1
        if (body[cut] & 0xC0) == 0x80:  # not UTF-8 anyway: cut where we were told
            cut = limit
        text = _storable(body[:cut].decode("utf-8", errors="replace"))
        return f"{text}{_ELLIPSIS}[truncated {len(body) - cut} bytes]"
    except Exception:  # pragma: no cover - defensive: storing a body must never fail a job
        return f"{_ELLIPSIS}[unreadable body of {len(body)} bytes]"


def _storable(text: str) -> str:
    return text.replace("\x00", "\ufffd")
