"""Long operations (issue 14): replay and purge of more than 1,000 jobs ask first (or need
--yes), show a running count on a terminal (never under --json or off a terminal), and
``enqueue --file`` streams: memory stays flat in the file's size."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from click.testing import CliRunner, Result

from dispatcher import CustomEvent, enqueue_many, problems
from dispatcher.cli import main
from dispatcher.db import get_engine, utcnow
from dispatcher.schema import jobs

MANY = 1001  # one more than the confirmation threshold


@pytest.fixture
def run(env: pytest.MonkeyPatch) -> Callable[..., Result]:
    env.setattr("dispatcher.producer.signal_workers", lambda qs: None)
    env.setattr("dispatcher.admin.actions._signal", lambda qs: None)

    def invoke(*args: str, code: int = 0, stdin: str | None = None) -> Result:
        result = CliRunner().invoke(main, list(args), input=stdin)
        assert result.exit_code == code, result.output
        return result

    return invoke


def _dead(engine: sa.Engine, n: int, *, age: timedelta = timedelta(days=40)) -> None:
    enqueue_many([CustomEvent(7, customer_id=i) for i in range(n)])
    with engine.begin() as conn:
        conn.execute(sa.update(jobs).values(status="dead", updated_at=utcnow() - age))


def _count(engine: sa.Engine, status: str) -> int:
    with engine.connect() as conn:
        return int(
            conn.execute(
                sa.select(sa.func.count()).select_from(jobs).where(jobs.c.status == status)
            ).scalar_one()
        )


def test_replay_of_many_jobs_asks_first(
    run: Callable[..., Result], engine: sa.Engine, env: pytest.MonkeyPatch
) -> None:
    _dead(engine, MANY)
    # Not a terminal: refused, nothing changed, and the way out named.
    refused = run("replay", "--status", "dead", code=problems.EXIT_DECLINED)
    assert f"replay {MANY:,} jobs in default" in refused.stderr and "--yes" in refused.stderr
    assert _count(engine, "dead") == MANY
    # On a terminal: asked; "n" changes nothing, "y" replays exactly what was confirmed.
    env.setattr("dispatcher.cli._interactive", lambda: True)
    declined = run("replay", "--status", "dead", stdin="n\n", code=problems.EXIT_DECLINED)
    assert f"replay: replay {MANY:,} jobs in default? [y/N]" in declined.stderr
    assert _count(engine, "dead") == MANY
    done = run("replay", "--status", "dead", stdin="y\n")
    assert f"replayed {MANY} jobs in default" in done.stdout
    assert _count(engine, "pending") == MANY


def test_replay_with_yes_or_a_count_or_few_jobs_does_not_ask(
    run: Callable[..., Result], engine: sa.Engine
) -> None:
    _dead(engine, MANY)
    run("replay", "--status", "dead", "--expected-count", str(MANY))
    assert _count(engine, "pending") == MANY
    with engine.begin() as conn:
        conn.execute(sa.update(jobs).values(status="dead"))
    assert json.loads(run("replay", "--status", "dead", "--yes", "--json").stdout)["count"] == MANY
    with engine.begin() as conn:
        conn.execute(sa.update(jobs).values(status="dead"))
        conn.execute(sa.update(jobs).where(jobs.c.id > 10).values(status="delivered"))
    assert "replayed 10 jobs" in run("replay", "--status", "dead").stdout


def test_purge_of_many_jobs_asks_first_and_shows_progress_on_a_terminal(
    run: Callable[..., Result], engine: sa.Engine, env: pytest.MonkeyPatch
) -> None:
    _dead(engine, MANY)
    refused = run("purge", "--older-than", "30d", code=problems.EXIT_DECLINED)
    assert f"delete {MANY:,} jobs" in refused.stderr
    assert _count(engine, "dead") == MANY
    # Off a terminal and under --json: no progress line, only the result.
    quiet = run("purge", "--older-than", "30d", "--yes", "--batch-size", "100", "--dry-run")
    assert "\r" not in quiet.stderr
    # On a terminal: a running count on stderr, the result on stdout.
    env.setattr("dispatcher.cli._stderr_is_tty", lambda: True)
    env.setattr("dispatcher.cli.PROGRESS_EVERY", 0.001)
    done = run("purge", "--older-than", "30d", "--yes", "--batch-size", "100")
    assert done.stdout.strip() == f"purged {MANY} jobs and 0 attempts"
    assert f"purged {MANY:,} jobs, 0 attempts" in done.stderr  # the last count, kept on screen
    assert "\r" in done.stderr
    assert _count(engine, "dead") == 0


def test_progress_is_quiet_under_json(
    run: Callable[..., Result], engine: sa.Engine, env: pytest.MonkeyPatch
) -> None:
    _dead(engine, 20)
    env.setattr("dispatcher.cli._stderr_is_tty", lambda: True)
    env.setattr("dispatcher.cli.PROGRESS_EVERY", 0.001)
    done = run("purge", "--older-than", "30d", "--batch-size", "5", "--json")
    assert json.loads(done.stdout)["jobs"] == 20
    assert "purged 20" not in done.stderr and "\r" not in done.stderr
    _dead(engine, 20)
    done = run("replay", "--status", "dead", "--json")
    assert json.loads(done.stdout)["count"] == 20
    assert "replaying" not in done.stderr and "\r" not in done.stderr


# --------------------------------------------------------------------------- enqueue --file

_PEAK = """
import resource, subprocess, sys
child = subprocess.run(sys.argv[1:], capture_output=True, text=True)
sys.stderr.write(child.stderr)
print(child.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
"""


def _write_events(path: Path, lines: int) -> None:
    with path.open("w") as f:
        for i in range(lines):
            f.write(json.dumps({"customEventId": 101, "customerId": i}) + "\n")


def _peak_rss_kib(db: str, path: Path, tmp_path: Path) -> tuple[int, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DISPATCHER_", "ECDP_"))}
    env.update(DISPATCHER_DATABASE_URL=db, DISPATCHER_BROKER_URL="memory://")
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            _PEAK,
            sys.executable,
            "-c",
            "from dispatcher.entry import main; main()",
            "enqueue",
            "--file",
            str(path),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
        cwd=tmp_path,
    )
    code, peak = done.stdout.split()
    assert code == "0", done.stderr
    return int(peak), done.stderr


@pytest.mark.postgres  # memory is the reader's, not the database's: one database is enough
def test_enqueue_file_streams_memory_flat_in_file_size(pg_test_url: str, tmp_path: Path) -> None:
    db_url, engine = pg_test_url, get_engine(pg_test_url)
    with engine.begin() as conn:
        conn.exec_driver_sql(
            "TRUNCATE dispatcher_attempts, dispatcher_jobs RESTART IDENTITY CASCADE"
        )
    small, big = tmp_path / "small.jsonl", tmp_path / "big.jsonl"
    _write_events(small, 10_000)
    _write_events(big, 300_000)
    small_peak, _ = _peak_rss_kib(db_url, small, tmp_path)
    big_peak, _ = _peak_rss_kib(db_url, big, tmp_path)
    with engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(jobs)).scalar_one() == 310_000
    assert big_peak <= 1.5 * small_peak, (small_peak, big_peak)


def test_enqueue_file_checks_every_line_first_and_writes_nothing_on_a_bad_one(
    run: Callable[..., Result], engine: sa.Engine, tmp_path: Path
) -> None:
    path = tmp_path / "events.jsonl"
    _write_events(path, 2500)
    with path.open("a") as f:
        f.write('{"customEventId": "x"}\n')
    refused = run("enqueue", "--file", str(path), code=1)
    assert "line 2501" in refused.stderr
    with engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(jobs)).scalar_one() == 0
    _write_events(path, 2500)
    done = run("enqueue", "--file", str(path), "--batch-size", "1000")
    assert done.stdout.startswith("enqueued 2500 events")
