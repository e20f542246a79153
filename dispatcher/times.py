"""Times as people type them: ISO 8601 or an age like ``2h`` meaning that long ago (pure).

The operator's filters (:mod:`dispatcher.admin`) and the settings (``DISPATCHER_RETENTION``) read
them; it imports nothing of the package, so both can.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

__all__ = ["iso", "parse_age", "parse_when"]

_AGE = re.compile(r"([0-9]{1,12})([smhdw])")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
_AGE_FORMS = "30s, 15m, 2h, 7d or 4w"


def parse_age(text: str) -> timedelta:
    """``30s``, ``15m``, ``2h``, ``7d``, ``4w`` -> a duration. Lower-case units only, so ``M`` is
    never mistaken for months."""
    match = _AGE.fullmatch(text.strip()) if isinstance(text, str) else None
    if match is None:
        raise ValueError(f"expected an age like {_AGE_FORMS} (got {text!r:.80})")
    try:
        return timedelta(**{_UNITS[match[2]]: int(match[1])})
    except OverflowError:
        raise ValueError(f"age too large (got {text!r:.80})") from None


def parse_when(text: str, now: datetime) -> datetime:
    """An ISO 8601 date or time (naive means UTC), or an age meaning "that long before ``now``";
    returned as an aware UTC datetime."""
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    stripped = text.strip() if isinstance(text, str) else ""
    if _AGE.fullmatch(stripped):
        try:
            return now.astimezone(UTC) - parse_age(stripped)
        except OverflowError:
            raise ValueError(f"too far in the past (got {text!r:.80})") from None
    try:
        when = datetime.fromisoformat(stripped.upper())  # RFC 3339 allows "t" and "z"
    except ValueError:
        raise ValueError(
            "expected an ISO 8601 time (2026-11-27, 2026-11-27T10:00:00Z; naive means UTC) or "
            f"an age like {_AGE_FORMS} meaning that long ago (got {text!r:.80})"
        ) from None
    if when.tzinfo is None:
        return when.replace(tzinfo=UTC)
    try:
        return when.astimezone(UTC)
    except OverflowError:  # e.g. 0001-01-01T00:00:00+01:00 lies before datetime.min in UTC
        raise ValueError(f"time out of range (got {text!r:.80})") from None


def iso(value: datetime | None) -> str | None:
    """``2026-11-27T10:00:00.000000Z``, as every JSON answer writes times; None stays None."""
    if value is None:
        return None
    return value.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")
