"""An edge date in the history filters (year 1, year 9999) is a clear 400 (exit 2) naming the
field, never a 500: the reads widen a time window by an hour, past what a datetime can hold."""

from __future__ import annotations

import httpx
import pytest
from click.testing import CliRunner

from dispatcher.cli import main
from dispatcher.config import get_settings

from .conftest import AUTH

EDGES = [
    ("since", "0001-01-01"),
    ("since", "0001-01-01T00:30:00Z"),
    ("until", "9999-12-31T23:59:59Z"),
    ("until", "9999-12-31"),
]


@pytest.mark.parametrize(("field", "text"), EDGES)
def test_the_api_and_the_pages_answer_400(client: httpx.Client, field: str, text: str) -> None:
    for path in ("/api/jobs", "/jobs", "/dead", "/dead/replay"):
        answer = client.get(path, params={field: text}, headers=AUTH)
        assert answer.status_code == 400, (path, answer.status_code, answer.text[:200])
        assert field in answer.text
    answer = client.get("/api/jobs", params={field: text}, headers=AUTH)
    assert answer.json()["field"] == field


@pytest.mark.parametrize(("field", "text"), EDGES)
def test_the_cli_exits_2(
    db_url: str, monkeypatch: pytest.MonkeyPatch, field: str, text: str
) -> None:
    monkeypatch.setenv("DISPATCHER_DATABASE_URL", db_url)
    get_settings.cache_clear()
    try:
        for command in (["history"], ["replay", "--dry-run"]):
            done = CliRunner().invoke(main, [*command, f"--{field}", text])
            assert done.exit_code == 2, (command, done.output)
            assert field in done.output and "Traceback" not in done.output
    finally:
        get_settings.cache_clear()
