"""The partition planning: which months to create, which may go (pure functions)."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

from dispatcher.partitions import (
    add_months,
    attempts_to_drop,
    first_month,
    month_in,
    months_to_create,
    old_enough,
    partition_name,
)


def at(y: int, m: int, d: int, h: int = 12) -> datetime:
    return datetime(y, m, d, h, tzinfo=UTC)


def test_months_wrap_the_year_and_names_round_trip() -> None:
    assert add_months(date(2026, 11, 1), 2) == date(2027, 1, 1)
    assert add_months(date(2026, 1, 1), -1) == date(2025, 12, 1)
    name = partition_name("dispatcher_jobs", date(2026, 11, 1))
    assert name == "dispatcher_jobs_p2026_11"
    assert month_in("dispatcher_jobs", name) == date(2026, 11, 1)
    assert month_in("dispatcher_attempts", name) is None
    assert month_in("dispatcher_jobs", "dispatcher_jobs_legacy") is None


def test_the_first_month_leaves_the_running_conversion_a_day() -> None:
    assert first_month(at(2026, 11, 15)) == date(2026, 12, 1)
    assert first_month(at(2026, 11, 30, 23)) == date(2027, 1, 1)  # Dec 1 is less than a day away


def test_months_to_create_fill_up_to_the_months_ahead() -> None:
    now = at(2026, 11, 15)
    assert months_to_create([], date(2026, 12, 1), now, 2) == [date(2026, 12, 1), date(2027, 1, 1)]
    assert months_to_create([date(2026, 12, 1)], date(2026, 12, 1), now, 2) == [date(2027, 1, 1)]
    # the first month alone when it is already past the months ahead
    assert months_to_create([], date(2027, 1, 1), at(2026, 11, 30, 23), 1) == [date(2027, 1, 1)]
    assert months_to_create([date(2027, 1, 1)], date(2027, 1, 1), now, 2) == []


def test_a_month_is_old_enough_when_all_of_it_is_older_than_the_retention() -> None:
    months = [date(2026, 9, 1), date(2026, 10, 1), date(2026, 11, 1)]
    assert old_enough(months, at(2026, 11, 30), timedelta(days=30)) == [date(2026, 9, 1)]
    on_the_dot = at(2026, 12, 1, 0)  # October ends exactly 30 days before
    assert old_enough(months, on_the_dot, timedelta(days=30)) == months[:2]
    assert old_enough(months, on_the_dot, timedelta(days=30, seconds=1)) == months[:1]


def test_attempts_go_only_when_every_job_month_up_to_theirs_is_gone() -> None:
    attempts = [date(2026, 9, 1), date(2026, 10, 1), date(2026, 11, 1)]
    assert attempts_to_drop(attempts, [date(2026, 10, 1)], legacy_jobs=False) == [date(2026, 9, 1)]
    assert attempts_to_drop(attempts, [date(2026, 10, 1)], legacy_jobs=True) == []
    assert attempts_to_drop(attempts, [], legacy_jobs=False) == attempts
    assert attempts_to_drop(attempts, [date(2026, 9, 1), date(2026, 11, 1)], False) == []
