"""JobStatus is the one spelling of a job's states: the model, the migrations' CHECK constraint and
the partial indexes' predicates all list exactly its values."""

from __future__ import annotations

import re
from pathlib import Path

from dispatcher.schema import (
    DUE_STATUSES,
    DUE_WHERE,
    FINISHED_STATUSES,
    LEASED_WHERE,
    STATUSES,
    WAITING_STATUSES,
    JobStatus,
    jobs,
)

MIGRATIONS = Path(__file__).parents[2] / "dispatcher" / "migrations" / "versions"


def quoted(sql: str) -> set[str]:
    return set(re.findall(r"'([a-z_]+)'", sql))


def test_statuses_are_the_enum() -> None:
    assert tuple(JobStatus) == STATUSES
    assert set(WAITING_STATUSES) | set(FINISHED_STATUSES) | {JobStatus.IN_FLIGHT} == set(JobStatus)
    assert set(DUE_STATUSES) == set(WAITING_STATUSES) - {JobStatus.SCHEDULED}
    assert all(isinstance(s, str) and str(s) == s.value for s in JobStatus)


def test_the_check_constraint_lists_every_status() -> None:
    (check,) = [c for c in jobs.constraints if c.name == "ck_dispatcher_jobs_status"]
    assert quoted(str(check.sqltext)) == {s.value for s in JobStatus}
    first = (MIGRATIONS / "0001_outbox.py").read_text()
    migrated = re.search(r'"(status IN \([^)]*\))",\s*name="ck_dispatcher_jobs_status"', first)
    assert migrated and quoted(migrated[1]) == {s.value for s in JobStatus} - {
        "cancelled",
        "scheduled",
    }
    latest = (MIGRATIONS / "0012_scheduled.py").read_text()  # added scheduled
    widened = re.search(r'^NEW = \(?\s*"(status IN \([^)]*\))"', latest, re.MULTILINE)
    assert widened and widened[1] == str(check.sqltext)


def test_index_predicates_name_the_enums_values() -> None:
    assert quoted(DUE_WHERE) == {s.value for s in DUE_STATUSES}
    assert quoted(LEASED_WHERE) == {JobStatus.IN_FLIGHT.value}
