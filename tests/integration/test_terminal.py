"""Terminal escape injection (issue 14): what a hostile API answered (or any stored text) cannot
drive the operator's terminal. Human output of every command shows control characters escaped
(``\\x1b``); ``--json`` stays exact."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest
import sqlalchemy as sa
from click.testing import CliRunner, Result

from dispatcher import CustomEvent, enqueue
from dispatcher.cli import main
from dispatcher.db import utcnow
from dispatcher.schema import attempts, jobs, queues

# Sets the terminal title, clears the screen, returns the cursor to overwrite the line, a C1 CSI,
# a bell, and a right-to-left override.
HOSTILE = "\x1b]0;pwned\x07\x1b[2J\x1b[H\rOK all delivered\x9b31m\u202etxt.exe"
RAW = ("\x1b", "\x07", "\r", "\x9b", "\u202e")


@pytest.fixture
def run(env: pytest.MonkeyPatch) -> Callable[..., Result]:
    env.setattr("dispatcher.producer.signal_workers", lambda qs: None)

    def invoke(*args: str) -> Result:
        result = CliRunner().invoke(main, list(args))
        assert result.exit_code == 0, result.output
        return result

    return invoke


@pytest.fixture
def hostile(engine: sa.Engine, env: pytest.MonkeyPatch) -> str:
    """A dead job whose answer, error and queue state hold escape sequences."""
    env.setattr("dispatcher.producer.signal_workers", lambda qs: None)
    job = enqueue(CustomEvent(101, customer_id=1))
    now = utcnow()
    with engine.begin() as conn:
        conn.execute(
            sa.update(jobs)
            .where(jobs.c.id == int(job))
            .values(status="dead", attempts=1, last_status_code=400, last_error=HOSTILE)
        )
        conn.execute(
            attempts.insert().values(
                job_id=int(job),
                started_at=now,
                duration_ms=5,
                status_code=400,
                error=HOSTILE,
                response_body=f'{{"title": "{HOSTILE}"}}\nsecond line',
                outcome="dead",
                counted=True,
            )
        )
        # A row written by an older version or by hand: the name is not one enqueue allows.
        conn.execute(
            queues.insert().values(
                name="evil\x1b[2J",
                paused=True,
                pause_reason=HOSTILE,
                paused_at=now,
                updated_at=now,
                circuit="open",
                circuit_since=now,
                circuit_reason=HOSTILE,
            )
        )
    return job


def _no_raw_controls(text: str) -> None:
    for c in RAW:
        assert c not in text, repr(c)


def test_show_escapes_a_hostile_answer_and_json_stays_exact(
    run: Callable[..., Result], hostile: str
) -> None:
    human = run("show", hostile).stdout
    _no_raw_controls(human)
    assert "\\x1b]0;pwned\\x07\\x1b[2J" in human and "\\u202e" in human and "\\x0d" in human
    assert "second line" in human  # multi-line answers keep their lines
    exact = json.loads(run("show", hostile, "--json").stdout)
    [attempt] = exact["attempt_log"]
    assert HOSTILE in attempt["response_body"] and attempt["error"] == HOSTILE
    assert exact["last_error"] == HOSTILE


def test_history_and_stats_escape_hostile_reasons_and_queue_names(
    run: Callable[..., Result], hostile: str
) -> None:
    for args in (["history"], ["stats"]):
        human = run(*args).stdout
        _no_raw_controls(human)
        assert "\\x1b" in human
    stats = run("stats").stdout
    assert "evil\\x1b[2J" in stats  # the queue's name, escaped
    assert json.loads(run("history", "--json").stdout)[0]["last_error"] == HOSTILE
    queues_json = json.loads(run("stats", "--json").stdout)["queues"]
    assert queues_json["evil\x1b[2J"]["pause_reason"] == HOSTILE
    assert queues_json["evil\x1b[2J"]["circuit_reason"] == HOSTILE
