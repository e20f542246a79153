"""The operator's filter: one type for every surface, parsed once from text, and every limit.

:class:`Filter` holds typed values and checks them when built, so the Python API refuses what the
CLI, the admin page and the JSON API refuse. :func:`parse_filter` turns the text an operator
typed (the CLI's options, a page's query string, the API's JSON fields) into a Filter; the surfaces
hold no rule of their own, only the names of the fields they offer. Errors are
:class:`AdminError` naming the field, before any SQL runs.

The limits here are the contract of every surface; the OpenAPI document (:mod:`dispatcher.web`)
reads them from this module.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from dispatcher.producer import check_queue as enqueue_rule
from dispatcher.schema import STATUSES, JobStatus
from dispatcher.times import parse_when

__all__ = [
    "EMAIL_MAX",
    "FILTER_FIELDS",
    "INT32",
    "MAX_BATCH_SIZE",
    "MAX_EXPECTED",
    "MAX_JOB_IDS",
    "MAX_LIMIT",
    "MAX_PER_PAGE",
    "PER_PAGE",
    "STATUS_CODES",
    "TIME_RANGE",
    "AdminError",
    "Filter",
    "Page",
    "check_queue",
    "parse_filter",
    "parse_int",
    "parse_page",
]

INT32 = (-(2**31), 2**31 - 1)  # INTEGER columns: custom_event_id
STATUS_CODES = (0, 999)  # last_status_code: what an HTTP status line can hold
EMAIL_MAX = 320  # as events.py validates customer_email
MAX_ID = 2**63 - 1  # BIGINT job ids
MAX_LIMIT = 100_000  # history rows per call
MAX_JOB_IDS = 10_000  # one IN (...) list; SQLite allows 32766 bound parameters per statement
MAX_BATCH_SIZE = 10_000  # purge
PER_PAGE = 50
MAX_PER_PAGE = 100
MAX_EXPECTED = 2**31  # replay's expected count
# since/until: the reads widen a window by margins (an hour), which must stay within datetime's
# range (years 1-9999); no job is older than 1900 or will be created after 9000.
TIME_RANGE = (datetime(1900, 1, 1, tzinfo=UTC), datetime(9000, 1, 1, tzinfo=UTC))

# Every field a filter has, in the order surfaces show them.
FILTER_FIELDS = ("status", "queue", "event_id", "customer_email", "status_code", "since", "until")


class AdminError(ValueError):
    """A filter or argument we refuse; ``field`` names the argument (None: not one argument)."""

    def __init__(self, field: str | None, message: str) -> None:
        super().__init__(f"{field}: {message}" if field else message)
        self.field = field
        self.message = message


# --------------------------------------------------------------------------- single values


def check_queue(queue: object, field: str = "queue") -> str:
    """A queue name by the rule ``enqueue`` applies (:func:`dispatcher.producer.check_queue`)."""
    problems = enqueue_rule(queue, field)
    if problems or not isinstance(queue, str) or "\n" in queue:  # QUEUE_NAME's $ allows a \n
        message = problems[0].partition(": ")[2] if problems else "control characters"
        raise AdminError(field, message or "not a queue name")
    return queue


def check_int(field: str, value: object, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise AdminError(field, f"expected an integer (got {value!r:.80})")
    if not low <= value <= high:
        raise AdminError(field, f"must be between {low} and {high} (got {value})")
    return value


def parse_int(field: str, text: str, low: int, high: int) -> int:
    """An integer typed as text (surrounding blanks allowed), within ``[low, high]``."""
    stripped = text.strip() if isinstance(text, str) else ""
    # int() would also take "1_000", "١٢" or 4300 digits; an operator means ASCII digits.
    digits = stripped.removeprefix("-").removeprefix("+")
    if not (digits.isascii() and digits.isdigit()) or len(digits) > 20:
        raise AdminError(field, f"expected an integer (got {text!r:.40})")
    return check_int(field, int(stripped), low, high)


def check_status(value: object, allowed: Collection[str] = STATUSES) -> JobStatus:
    if not isinstance(value, str) or value not in allowed:
        raise AdminError("status", f"expected one of {', '.join(allowed)} (got {value!r:.80})")
    return JobStatus(value)


def check_time(field: str, value: object) -> datetime:
    if not isinstance(value, datetime) or value.tzinfo is None:
        raise AdminError(field, f"expected a timezone-aware datetime (got {value!r:.80})")
    return value


def _iso(value: datetime | None) -> str:
    return "" if value is None else value.astimezone(UTC).isoformat().replace("+00:00", "Z")


# --------------------------------------------------------------------------- the filter


@dataclass(frozen=True, slots=True)
class Filter:
    """Jobs matching every given field (None: any). ``customer_email`` ignores case; ``since``
    and ``until`` bound ``created_at`` as a half-open range ``since <= created_at < until``."""

    status: JobStatus | None = None
    queue: str | None = None
    event_id: int | None = None
    customer_email: str | None = None
    status_code: int | None = None  # the last HTTP status the job got
    since: datetime | None = None
    until: datetime | None = None

    def __post_init__(self) -> None:
        if self.status is not None:
            object.__setattr__(self, "status", check_status(self.status))
        if self.queue is not None:
            check_queue(self.queue)
        if self.event_id is not None:
            check_int("event_id", self.event_id, *INT32)
        if self.customer_email is not None and (
            not isinstance(self.customer_email, str) or len(self.customer_email) > EMAIL_MAX
        ):
            raise AdminError("customer_email", f"expected at most {EMAIL_MAX} characters")
        if self.status_code is not None:
            check_int("status_code", self.status_code, *STATUS_CODES)
        for name in ("since", "until"):
            value = getattr(self, name)
            if value is not None:
                check_time(name, value)
                if not TIME_RANGE[0] <= value < TIME_RANGE[1]:
                    low, high = (t.date().isoformat() for t in TIME_RANGE)
                    raise AdminError(name, f"expected a time from {low} to before {high}")
        if self.since is not None and self.until is not None and self.since >= self.until:
            raise AdminError("since", "must be before until")

    def given(self) -> dict[str, Any]:
        """The fields that are set."""
        return {k: getattr(self, k) for k in FILTER_FIELDS if getattr(self, k) is not None}

    def as_text(self, fields: Collection[str] = FILTER_FIELDS) -> dict[str, str]:
        """Each of ``fields`` as text that :func:`parse_filter` reads back to the same filter
        ("" when not set), with ages pinned to times: a confirmed replay means what was shown."""
        out: dict[str, str] = {}
        for name in fields:
            value = getattr(self, name)
            if isinstance(value, datetime):
                out[name] = _iso(value)
            else:
                out[name] = "" if value is None else str(value)
        return out


def parse_filter(
    texts: Mapping[str, str],
    now: datetime,
    *,
    fields: Collection[str] = FILTER_FIELDS,
    blank: str = "refuse",
) -> Filter:
    """What an operator typed -> a :class:`Filter`; raises AdminError naming the field.

    ``texts`` maps field names to text (surrounding blanks are ignored). Only ``fields`` are
    read; other keys are the caller's. A blank value is refused (``blank="refuse"``: the CLI and
    the JSON API, where it is most likely an unset variable that would widen the filter) or means
    "not given" (``blank="ignore"``: a page's form sends every field). Ages (``2h``) in ``since``
    and ``until`` are taken back from ``now``.
    """
    if blank not in ("refuse", "ignore"):
        raise ValueError(f"blank must be 'refuse' or 'ignore' (got {blank!r})")
    values: dict[str, Any] = {}
    for name in FILTER_FIELDS:
        if name not in fields or name not in texts:
            continue
        raw = texts[name]
        text = raw.strip() if isinstance(raw, str) else ""
        if not isinstance(raw, str):
            raise AdminError(name, f"expected text (got {raw!r:.40})")
        if not text:
            if blank == "ignore":
                continue
            raise AdminError(name, "empty (leave it out instead)")
        if any(ord(c) < 32 or ord(c) == 127 for c in text):
            raise AdminError(name, "control characters are not allowed")
        values[name] = _parse_one(name, text, now)
    return Filter(**values)


def _parse_one(name: str, text: str, now: datetime) -> Any:
    if name == "status":
        return check_status(text)
    if name == "event_id":
        return parse_int(name, text, *INT32)
    if name == "status_code":
        return parse_int(name, text, *STATUS_CODES)
    if name in ("since", "until"):
        try:
            return parse_when(text, now)
        except ValueError as exc:
            raise AdminError(name, str(exc)) from None
    return text  # queue and customer_email: Filter checks them


@dataclass(frozen=True, slots=True)
class Page:
    """One page of a history, newest first: ``size`` jobs (at most :data:`MAX_PER_PAGE`) whose
    ids are below ``before`` (None: the newest). A cursor, not an offset: the next page is
    ``before=<the last id shown>``, and any page costs what the first does."""

    size: int = PER_PAGE
    before: int | None = None

    def __post_init__(self) -> None:
        check_int("per_page", self.size, 1, MAX_PER_PAGE)
        if self.before is not None:
            check_int("before", self.before, 1, MAX_ID)


def parse_page(texts: Mapping[str, str], *, blank: str = "refuse") -> Page:
    """``per_page`` and the cursor ``before`` (a job id) from text (as :func:`parse_filter`
    reads its fields)."""
    values: dict[str, int] = {}
    for name, key, high in (("per_page", "size", MAX_PER_PAGE), ("before", "before", MAX_ID)):
        text = texts.get(name)
        if text is None or (blank == "ignore" and not text.strip()):
            continue
        values[key] = parse_int(name, text, 1, high)
    return Page(**values)
