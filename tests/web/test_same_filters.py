"""The CLI, the admin page and the JSON API accept the same filters and refuse the same inputs:
one table of typed inputs, good and bad, fed to each (they all parse through
``dispatcher.admin.parse_filter``). An accepted filter finds the same jobs everywhere; a refused
one is refused naming the same field."""

from __future__ import annotations

import json
import re
from collections.abc import Callable

import httpx
import pytest
from click.testing import CliRunner, Result

from dispatcher.cli import main

from .conftest import AUTH, Outbox

# (field, what the operator typed, accepted?)
TABLE: list[tuple[str, str, bool]] = [
    ("status", "dead", True),
    ("status", "delivered", True),
    ("status", " pending ", True),
    ("status", "lost", False),
    ("status", "DEAD", False),
    ("queue", "default", True),
    ("queue", "eu-shop", True),
    ("queue", "nothing-here", True),
    ("queue", "Default", False),
    ("queue", "' OR 1=1 --", False),
    ("queue", "a" * 65, False),
    ("queue", "-leading-dash", False),
    ("event_id", "103", True),
    ("event_id", " 101 ", True),
    ("event_id", "-5", True),
    ("event_id", "abc", False),
    ("event_id", "1.5", False),
    ("event_id", "1_000", False),
    ("event_id", str(2**31), False),
    ("customer_email", "ANNA.smith@example.com", True),
    ("customer_email", "nobody@example.com", True),
    ("customer_email", "' OR 1=1 --", True),  # free text: it matches nothing
    ("customer_email", "a" * 321, False),
    ("customer_email", "a\x01b@example.com", False),
    ("status_code", "503", True),
    ("status_code", "400", True),
    ("status_code", "0", True),
    ("status_code", "1000", False),
    ("status_code", "-1", False),
    ("status_code", "5xx", False),
    ("since", "2h", True),
    ("since", "2026-01-01", True),
    ("since", "2026-11-27T10:00:00Z", True),
    ("since", "yesterday", False),
    ("since", "2M", False),
    ("until", "2100-01-01", True),
    ("until", "1d", True),
    ("until", "2026-13-01", False),
]
DEAD_FIELDS = {"queue", "event_id", "status_code", "since", "until"}


def flag(field: str) -> str:
    return "--" + field.replace("_", "-")


@pytest.fixture
def cli(settings: object) -> Callable[..., Result]:
    def invoke(*args: str) -> Result:
        return CliRunner().invoke(main, list(args))

    return invoke


def field_refused_by_cli(result: Result) -> str | None:
    """The option a usage error names, as a field name (None: accepted)."""
    if result.exit_code == 0:
        return None
    assert result.exit_code == 2, (result.output, result.exception)
    named = re.search(r"Invalid value for (--[a-z-]+)", result.output)
    assert named, result.output
    return named[1][2:].replace("-", "_")


def field_refused_by_page(response: httpx.Response) -> str | None:
    if response.status_code == 200:
        return None
    assert response.status_code == 400, response.text
    named = re.search(r'id="error" data-field="([a-z_]*)"', response.text)
    assert named, response.text
    return named[1]


@pytest.mark.parametrize(("field", "text", "ok"), TABLE)
def test_history_cli_page_and_api_agree(
    outbox: Outbox,
    client: httpx.Client,
    cli: Callable[..., Result],
    field: str,
    text: str,
    ok: bool,
) -> None:
    by_cli = cli("history", "--json", "--limit", "50", flag(field), text)
    page = client.get("/jobs", params={field: text}, headers=AUTH)
    api = client.get("/api/jobs", params={field: text}, headers=AUTH)

    expected = None if ok else field
    assert field_refused_by_cli(by_cli) == expected, by_cli.output
    assert field_refused_by_page(page) == expected
    assert (api.status_code == 200) is ok, api.text
    if not ok:
        assert api.json()["field"] == field
        return
    found = [j["id"] for j in json.loads(by_cli.output)]
    assert [j["id"] for j in api.json()["jobs"]] == found
    assert re.findall(r'id="job-(\d+)"', page.text) == found


@pytest.mark.parametrize(("field", "text", "ok"), [row for row in TABLE if row[0] in DEAD_FIELDS])
def test_dead_letters_cli_replay_and_page_agree(
    outbox: Outbox,
    client: httpx.Client,
    cli: Callable[..., Result],
    field: str,
    text: str,
    ok: bool,
) -> None:
    """The dead-letter page counts what ``dispatcher replay --status dead --dry-run`` would; a
    queue no job has used is refused by both (a typo must not replay "nothing" silently)."""
    ok = ok and not (field == "queue" and text == "nothing-here")
    by_cli = cli("replay", "--status", "dead", "--dry-run", "--json", flag(field), text)
    page = client.get("/dead", params={field: text}, headers=AUTH)

    expected = None if ok else field
    assert field_refused_by_cli(by_cli) == expected, by_cli.output
    assert field_refused_by_page(page) == expected
    if ok:
        count = json.loads(by_cli.output)["count"]
        shown = re.search(r'id="replay">Replay (\d+) job', page.text)
        assert (int(shown[1]) if shown else 0) == count


def test_an_empty_value(outbox: Outbox, client: httpx.Client, cli: Callable[..., Result]) -> None:
    """A form sends every field, so the page reads an empty one as "not given"; the CLI and the
    API refuse it (an unset variable in a script must not widen a replay to every queue)."""
    assert client.get("/jobs", params={"queue": "  "}, headers=AUTH).status_code == 200
    assert client.get("/api/jobs", params={"queue": ""}, headers=AUTH).json()["field"] == "queue"
    assert field_refused_by_cli(cli("history", "--queue", " ")) == "queue"
    refused = cli("replay", "--status", "dead", "--queue", "")
    assert field_refused_by_cli(refused) == "queue"
