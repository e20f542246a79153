"""Keyset (cursor) paging wherever history is listed (issue 14): the history page, /api/jobs and
``dispatcher history`` page by ``before=<job id>``, never by offset; a deep page reads what the
first does (an index range scan on the primary key, bounded by the cursor)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from click.testing import CliRunner

from dispatcher import CustomEvent, admin, enqueue_many
from dispatcher.admin import Filter, Page
from dispatcher.cli import main
from dispatcher.schema import jobs


@pytest.fixture
def many(env: pytest.MonkeyPatch, engine: sa.Engine) -> list[int]:
    """2,500 jobs (ids ascending), every fifth one dead."""
    env.setattr("dispatcher.producer.signal_workers", lambda qs: None)
    ids = [int(i) for i in enqueue_many([CustomEvent(5, customer_id=n) for n in range(2500)])]
    with engine.begin() as conn:
        conn.execute(sa.update(jobs).where(jobs.c.id % 5 == 0).values(status="dead"))
    return ids


def test_cursor_pages_return_every_job_once_newest_first(
    many: list[int], engine: sa.Engine
) -> None:
    seen: list[int] = []
    page = Page(size=100)
    while True:
        found, more = admin.history_page(engine, Filter(), page)
        seen += [int(j.id) for j in found]
        if not more:
            break
        page = Page(size=100, before=int(found[-1].id))
    assert seen == sorted(many, reverse=True)
    deep, _ = admin.history_page(engine, Filter(status="dead"), Page(size=3, before=many[1000]))
    assert [int(j.id) for j in deep] == [i for i in reversed(many[:1000]) if i % 5 == 0][:3]


def test_the_cli_pages_by_cursor(many: list[int]) -> None:
    first = CliRunner().invoke(main, ["history", "--limit", "3"])
    assert first.exit_code == 0, first.output
    rows = [line.split()[0] for line in first.stdout.splitlines()[1:]]
    assert rows == [str(i) for i in many[-1:-4:-1]]
    assert f"dispatcher history --before {rows[-1]}" in first.stderr
    deep = CliRunner().invoke(main, ["history", "--before", str(many[100]), "--json"])
    assert [int(j["id"]) for j in json.loads(deep.stdout)] == list(reversed(many[50:100]))
    bad = CliRunner().invoke(main, ["history", "--before", "x"])
    assert bad.exit_code == 2 and "--before" in bad.stderr


@pytest.fixture
def statements(engine: sa.Engine) -> Iterator[list[tuple[str, Any]]]:
    seen: list[tuple[str, Any]] = []

    def record(conn: Any, cursor: Any, statement: str, params: Any, *args: Any) -> None:
        if "FROM dispatcher_jobs" in statement and "ORDER BY" in statement:
            seen.append((statement, params))

    sa.event.listen(engine, "before_cursor_execute", record)
    yield seen
    sa.event.remove(engine, "before_cursor_execute", record)


def test_a_deep_page_is_an_index_range_scan_bounded_by_the_cursor(
    many: list[int], engine: sa.Engine, statements: list[tuple[str, Any]], db_url: str
) -> None:
    if not db_url.startswith("postgresql"):
        pytest.skip("EXPLAIN's plan is PostgreSQL's")
    admin.history_page(engine, Filter(), Page(size=50, before=many[200]))
    [(statement, params)] = statements
    assert "OFFSET" not in statement.upper() and "dispatcher_jobs.id <" in statement
    with engine.connect() as conn:
        conn.exec_driver_sql("ANALYZE dispatcher_jobs")
        plan = conn.exec_driver_sql(
            "EXPLAIN (ANALYZE, FORMAT JSON) " + statement, params
        ).scalar_one()
    text = json.dumps(plan)
    node = plan[0]["Plan"]
    while node["Node Type"] == "Limit":
        node = node["Plans"][0]
    assert node["Node Type"] == "Index Scan" and node["Scan Direction"] == "Backward", text
    assert node["Index Name"] == "pk_dispatcher_jobs" and "id <" in node["Index Cond"], text
    assert node["Actual Rows"] <= 51  # a page and one more: not the 2,300 newer jobs
    assert '"Sort"' not in text
