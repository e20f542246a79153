"""First contact and misconfiguration (issue 14): every command answers a missing schema, an
unreachable database or broker, or a bad URL with one or two lines naming the cause and the fix
and a distinct exit code (``-v`` adds the traceback), never a password; ``enqueue`` raises the same
exception for a missing table whatever the path; a worker without keys, a CLI on the default
SQLite file and a sweeper without its broker say so once."""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from click.testing import CliRunner, Result
from sqlalchemy.orm import Session

from dispatcher import (
    CustomEvent,
    OutboxSchemaMissing,
    enqueue,
    enqueue_async,
    enqueue_many,
    problems,
)
from dispatcher.cli import main
from dispatcher.config import get_settings
from dispatcher.db import dispose_engines, get_engine
from tests.conftest import PG_URL, require

SECRET = "hunter2-S3cr3t"

# Every command that touches the outbox, with arguments that would otherwise work.
COMMANDS = [
    ["enqueue", "--event-id", "1", "--customer-id", "3"],
    ["enqueue", "--event-id", "1", "--customer-id", "3", "--dedupe-key", "k"],
    ["pause", "default"],
    ["resume", "default"],
    ["history"],
    ["show", "1"],
    ["stats"],
    ["replay", "--status", "dead", "--yes"],
    ["replay", "1"],
    ["purge", "--older-than", "1d", "--yes"],
]


@pytest.fixture
def cli(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., Result]]:
    """``cli(url, *args)``: run a command with DISPATCHER_DATABASE_URL set to ``url``."""
    monkeypatch.setattr("dispatcher.producer.signal_workers", lambda qs: None)
    monkeypatch.setattr("dispatcher.admin.actions._signal", lambda qs: None)

    def run(url: str, *args: str) -> Result:
        monkeypatch.setenv("DISPATCHER_DATABASE_URL", url)
        get_settings.cache_clear()
        dispose_engines()
        return CliRunner().invoke(main, list(args))

    yield run
    get_settings.cache_clear()
    dispose_engines()


def _lines(result: Result) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.strip()]


def _unmigrated_urls(tmp_path: Path) -> list[str]:
    urls = [f"sqlite:///{tmp_path / 'empty.db'}"]
    if PG_URL:
        # The test database, but looking in a schema where no outbox table exists.
        url = sa.make_url(require(PG_URL, "PostgreSQL")).set(
            query={"options": "-csearch_path=no_outbox_here"}
        )
        urls.append(url.render_as_string(hide_password=False))
    return urls


@pytest.mark.parametrize("args", COMMANDS, ids=lambda a: " ".join(a[:2]))
def test_every_command_before_migrate_says_run_migrate(
    cli: Callable[..., Result], tmp_path: Path, args: list[str]
) -> None:
    for url in _unmigrated_urls(tmp_path):
        result = cli(url, *args)
        assert result.exit_code == problems.EXIT_SCHEMA, (url, result.output)
        lines = _lines(result)
        assert len(lines) == 2, lines
        assert "outbox tables do not exist" in lines[0] and "dispatcher migrate" in lines[1]
        assert "Traceback" not in result.output


def test_minus_v_shows_the_traceback(cli: Callable[..., Result], tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'empty.db'}"
    result = cli(url, "-v", "enqueue", "--event-id", "1", "--customer-id", "3")
    assert result.exit_code == problems.EXIT_SCHEMA
    assert "Traceback" in result.stderr and "OutboxSchemaMissing" in result.stderr
    assert result.stderr.rstrip().endswith("run `dispatcher migrate` against that database first")


# A port nothing listens on; the secret in each credential form.
DOWN = [
    f"postgresql://app:{SECRET}@127.0.0.1:9/shop",
    f"postgresql://app@127.0.0.1:9/shop?password={SECRET}",
    f"postgresql://app@127.0.0.1:9/shop?sslmode=disable&password={SECRET}&connect_timeout=2",
    f"postgresql://app@127.0.0.1:9/shop?passfile=/nonexistent/pgpass&password={SECRET}",
]


@pytest.mark.parametrize("url", DOWN)
@pytest.mark.parametrize("args", [COMMANDS[0], COMMANDS[2], COMMANDS[6], ["migrate"]])
def test_an_unreachable_database_is_two_lines_without_the_password(
    cli: Callable[..., Result], url: str, args: list[str]
) -> None:
    for verbose in ([], ["-v"]):
        result = cli(url, *verbose, *args)
        assert result.exit_code == problems.EXIT_DATABASE, result.output
        assert SECRET not in result.output, result.output
        if not verbose:
            lines = _lines(result)
            assert len(lines) == 2, lines
            assert lines[0].startswith("error: cannot reach the outbox database at postgresql")
            assert "DISPATCHER_DATABASE_URL" in lines[1]
        else:
            assert "Traceback" in result.stderr
    if "passfile" in url:
        assert "passfile=/nonexistent/pgpass" in result.stderr  # a path is not a secret


@pytest.mark.parametrize("url", ["foo://nowhere/db", "postgresql://app@db:notaport/x", "nonsense"])
def test_a_bad_database_url_is_a_configuration_error(cli: Callable[..., Result], url: str) -> None:
    result = cli(url, "stats")
    assert result.exit_code == problems.EXIT_CONFIG, result.output
    assert len(_lines(result)) == 2 and "DISPATCHER_DATABASE_URL" in result.stderr


def test_a_bad_setting_is_a_configuration_error(
    cli: Callable[..., Result], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("DISPATCHER_MAX_ATTEMPTS", "many")
    result = cli(f"sqlite:///{tmp_path / 'x.db'}", "stats")
    assert result.exit_code == problems.EXIT_CONFIG
    assert "DISPATCHER_MAX_ATTEMPTS" in result.stderr and len(_lines(result)) == 1


def test_the_worker_refuses_an_unreachable_broker(
    cli: Callable[..., Result], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    started: list[Any] = []
    monkeypatch.setattr("dispatcher.tasks.app.worker_main", lambda argv: started.append(argv))
    monkeypatch.setattr("dispatcher.tasks.app.conf.broker_url", f"redis://:{SECRET}@127.0.0.1:9/0")
    monkeypatch.setattr("dispatcher.cli._check_broker.__defaults__", (1.0,))
    result = cli(f"sqlite:///{tmp_path / 'x.db'}", "worker")
    assert result.exit_code == problems.EXIT_BROKER, result.output
    assert started == []
    lines = _lines(result)
    assert any("cannot reach the broker" in line for line in lines)
    assert "DISPATCHER_BROKER_URL" in result.stderr and SECRET not in result.output


def test_exit_codes_are_distinct_and_documented() -> None:
    codes = [
        problems.EXIT_FAILED,
        problems.EXIT_USAGE,
        problems.EXIT_CONFIG,
        problems.EXIT_DATABASE,
        problems.EXIT_SCHEMA,
        problems.EXIT_BROKER,
        problems.EXIT_DECLINED,
    ]
    assert len(set(codes)) == len(codes)
    table = (Path(__file__).parents[2] / "docs" / "operations" / "errors.md").read_text()
    for code in codes:
        assert f"| {code} |" in table


# --------------------------------------------------------------------------- from Python


def _keyed_and_not(url: str) -> list[Callable[[], object]]:
    event = CustomEvent(1, customer_id=3)

    def in_session(**kw: Any) -> Callable[[], object]:
        def go() -> object:
            with Session(get_engine(url)) as s, s.begin():
                return enqueue(event, session=s, **kw)

        return go

    return [
        lambda: enqueue(event),
        lambda: enqueue(event, dedupe_key="order-1"),
        lambda: asyncio.run(enqueue_async(event)),
        lambda: asyncio.run(enqueue_async(event, dedupe_key="order-3")),
        lambda: enqueue_many([event, event], dedupe_keys=["a", None]),
        in_session(),
        in_session(dedupe_key="order-2"),
    ]


def test_enqueue_raises_the_same_schema_error_with_or_without_dedupe_key(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    for url in _unmigrated_urls(tmp_path):
        monkeypatch.setenv("DISPATCHER_DATABASE_URL", url)
        get_settings.cache_clear()
        dispose_engines()
        for call in _keyed_and_not(url):
            with pytest.raises(OutboxSchemaMissing, match="dispatcher migrate"):
                call()
    get_settings.cache_clear()
    dispose_engines()


# --------------------------------------------------------------------------- fail fast


def test_a_worker_without_keys_for_its_queues_says_so(
    cli: Callable[..., Result],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setattr("dispatcher.tasks.app.worker_main", lambda argv: None)
    monkeypatch.setattr("dispatcher.cli._check_broker", lambda app: None)
    monkeypatch.setattr("dispatcher.logs.configure", lambda **kw: None)
    monkeypatch.setenv("DISPATCHER_DEDICATED_QUEUES", "eu-shop,us-shop")
    monkeypatch.setenv("ECDP_API_KEY_US_SHOP", "a-key")
    url = f"sqlite:///{tmp_path / 'x.db'}"
    assert cli(url, "migrate").exit_code == 0  # a dedicated worker records itself there
    with caplog.at_level(logging.WARNING, logger="dispatcher.worker"):
        assert cli(url, "worker", "--queues", "eu-shop,us-shop").exit_code == 0
    assert [r.getMessage() for r in caplog.records] == [
        "no API key for queue eu-shop: set ECDP_API_KEY_EU_SHOP; until then the queue pauses "
        "at its first job"
    ]
    caplog.clear()
    monkeypatch.delenv("ECDP_API_KEY_US_SHOP")
    with caplog.at_level(logging.WARNING, logger="dispatcher.worker"):
        assert cli(url, "worker").exit_code == 0
    [record] = caplog.records
    assert "no API key is configured" in record.getMessage()
    caplog.clear()
    monkeypatch.setenv("ECDP_API_KEY", "a-key")
    with caplog.at_level(logging.WARNING, logger="dispatcher.worker"):
        assert cli(url, "worker").exit_code == 0
    assert caplog.records == []


def notices_of_two_enqueues(tmp_path: Path, database: str, **env: str) -> list[str]:
    """What a fresh process that migrates ``database`` and enqueues twice, with only ``env`` of
    the dispatcher's variables set, says on stderr about unset variables."""
    script = (
        "from dispatcher import CustomEvent, enqueue\n"
        "from dispatcher.migrate import upgrade\n"
        f"upgrade({database!r})\n"
        "enqueue(CustomEvent(1, customer_id=1)); enqueue(CustomEvent(1, customer_id=2))\n"
    )
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("DISPATCHER_", "ECDP_"))}
    done = subprocess.run(
        [sys.executable, "-c", script],
        cwd=tmp_path,
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return [line for line in done.stderr.splitlines() if "is not set" in line]


def test_the_default_sqlite_file_is_announced_once_on_stderr(tmp_path: Path) -> None:
    notices = notices_of_two_enqueues(
        tmp_path, "sqlite:///dispatcher.db", DISPATCHER_BROKER_URL="memory://"
    )
    assert notices == [
        "dispatcher: DISPATCHER_DATABASE_URL is not set: using the SQLite file "
        f"{tmp_path / 'dispatcher.db'} (set DISPATCHER_DATABASE_URL, and DISPATCHER_BROKER_URL, "
        "to use your own)"
    ]
    # With the variable set, nothing is said.
    said = notices_of_two_enqueues(
        tmp_path,
        "sqlite:///other.db",
        DISPATCHER_BROKER_URL="memory://",
        DISPATCHER_DATABASE_URL="sqlite:///other.db",
    )
    assert said == []


def test_a_sweeper_without_its_broker_logs_each_change_of_state_once(
    db_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    from kombu.exceptions import OperationalError as BrokerDown

    from dispatcher import sweeper

    engine = get_engine(db_url)
    with Session(engine) as s, s.begin():
        enqueue(CustomEvent(1, customer_id=1), session=s)
    stop = threading.Event()
    calls = {"n": 0}

    def notify(queues: object) -> None:
        calls["n"] += 1
        if calls["n"] >= 60:
            stop.set()
        if 10 <= calls["n"] < 40:  # the broker is down for 30 passes, then back
            raise BrokerDown("Error 111 connecting to redis:6379. Connection refused.")

    with caplog.at_level(logging.INFO, logger="dispatcher.sweeper"):
        sweeper.run(engine, notify, 0.001, stop=stop)
    lines = caplog.records
    assert [r.getMessage().split(":")[0] for r in lines] == [
        "the broker is unreachable",
        "the broker is back",
    ]
    assert not any(r.exc_info for r in lines)  # no traceback (only with -v: DEBUG)
    assert calls["n"] == 60


# --------------------------------------------------------------------------- queue names


def test_queue_names_follow_enqueues_rule_everywhere(
    env: pytest.MonkeyPatch, cli: Callable[..., Result], db_url: str
) -> None:
    from dispatcher import ValidationError

    for bad in ("DEFAULT", " default", "default ", "default\n", "eu shop", ""):
        with pytest.raises(ValidationError):
            enqueue(CustomEvent(1, customer_id=1), queue=bad)
        enqueue_bad = ["enqueue", "--queue", bad, *COMMANDS[0][1:]]
        for args in (["pause", bad], ["resume", bad], enqueue_bad):
            result = cli(db_url, *args)
            assert result.exit_code == problems.EXIT_USAGE, (args, result.output)
            assert "must be 1-64 characters of a-z" in result.stderr
    assert "did you mean 'default'?" in cli(db_url, "pause", "DEFAULT").stderr
    assert "did you mean 'default'?" in cli(db_url, "pause", " default").stderr
    with get_engine(db_url).connect() as conn:
        from dispatcher.schema import queues

        assert conn.execute(sa.select(queues.c.name)).all() == []  # no phantom queue


def test_a_valid_but_unused_queue_is_paused_ahead_of_use_with_create_and_says_so(
    env: pytest.MonkeyPatch, cli: Callable[..., Result], db_url: str
) -> None:
    env.setattr("dispatcher.admin.actions.outbox.PAUSE_SETTLE_SECONDS", 0)
    enqueue(CustomEvent(1, customer_id=1))
    typo = cli(db_url, "pause", "eu-shop")  # no job used it: refused unless --create
    assert typo.exit_code == problems.EXIT_USAGE and "no queue eu-shop" in typo.stderr
    ahead = cli(db_url, "pause", "eu-shop", "--create")
    assert ahead.exit_code == 0 and ahead.stdout.strip() == "queue eu-shop paused"
    assert "no job has used queue eu-shop yet: it is paused ahead of use" in ahead.stderr
    used = cli(db_url, "pause", "default")
    assert used.exit_code == 0 and "ahead of use" not in used.stderr
    again = cli(db_url, "pause", "eu-shop")  # its row exists now
    assert "was already paused" in again.stdout and "ahead of use" not in again.stderr
    for hostile in ("a\x00b", "\ud800"):  # neither fits a text column: refused, not a 500
        refused = cli(db_url, "pause", "us-shop", "--reason", hostile)
        assert refused.exit_code == problems.EXIT_USAGE and "--reason" in refused.stderr


def test_a_sweeper_before_migrate_says_so_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from dispatcher import sweeper

    engine = get_engine(f"sqlite:///{tmp_path / 'empty.db'}")
    stop = threading.Event()
    threading.Timer(0.5, stop.set).start()
    with caplog.at_level(logging.INFO, logger="dispatcher.sweeper"):
        sweeper.run(engine, lambda queues: None, 0.01, stop=stop)
    [line] = [r.getMessage() for r in caplog.records]
    assert line.startswith("the outbox tables do not exist (run `dispatcher migrate`)")


def test_the_web_before_migrate_answers_503_naming_migrate(tmp_path: Path) -> None:
    import httpx

    from dispatcher.config import Settings
    from dispatcher.web import create_app

    for url in _unmigrated_urls(tmp_path):
        dispose_engines()
        app = create_app(Settings(database_url=url), engine=get_engine(url))

        async def get(path: str, app: Any = app) -> httpx.Response:
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as c:
                return await c.get(path)

        for path in ("/api/queues", "/api/jobs", "/"):
            response = asyncio.run(get(path))
            assert response.status_code == 503, (url, path, response.text[:300])
            assert "dispatcher migrate" in response.text
    dispose_engines()


# --------------------------------------------------------------------------- issue 26: no traps


def test_a_producer_without_a_broker_url_says_where_its_signals_go(tmp_path: Path) -> None:
    """With the outbox set and the broker not, signals would go to ./dispatcher-broker.db, where
    no worker reads: said once on stderr, naming the variable."""
    notices = notices_of_two_enqueues(
        tmp_path, "sqlite:///outbox.db", DISPATCHER_DATABASE_URL="sqlite:///outbox.db"
    )
    assert notices == [
        "dispatcher: DISPATCHER_BROKER_URL is not set: signalling workers through the SQLite "
        f"file {tmp_path / 'dispatcher-broker.db'}, which only processes started in this folder "
        "read (set DISPATCHER_BROKER_URL, e.g. redis://host:6379/0, alike in every process)"
    ]


def test_an_async_applications_url_works_for_migrate_and_stats(
    cli: Callable[..., Result], tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """The URL a FastAPI application has (``+asyncpg``, ``+psycopg_async``, ``+aiosqlite``) is
    taken as its synchronous twin by the CLI: no greenlet traceback."""
    urls = [f"sqlite+aiosqlite:///{tmp_path / 'async.db'}"]
    if PG_URL:  # this run's own database (the server's `test` database is not ours to migrate)
        plain = request.getfixturevalue("pg_test_url")
        rest = plain.split("://", 1)[1]
        urls += [f"postgresql+asyncpg://{rest}", f"postgresql+psycopg_async://{rest}"]
    for url in urls:
        for args in (["migrate"], ["stats"]):
            result = cli(url, *args)
            assert result.exit_code == 0, (url, args, result.output)
            assert "Traceback" not in result.output and "greenlet" not in result.output


def test_async_urls_are_normalized_for_synchronous_use() -> None:
    from dispatcher.config import Settings, normalize_database_url

    assert normalize_database_url("postgresql+asyncpg://u:p@h/db?ssl=require") == (
        "postgresql+psycopg://u:p@h/db?sslmode=require"
    )
    assert normalize_database_url("postgresql+psycopg_async://h/db") == "postgresql+psycopg://h/db"
    assert normalize_database_url("sqlite+aiosqlite:///x.db") == "sqlite:///x.db"
    settings = Settings.from_env({"DISPATCHER_DATABASE_URL": "postgresql+asyncpg://h/db"})
    assert settings.database_url == "postgresql+psycopg://h/db"


@pytest.mark.parametrize("url", ["mysql://app:pw@db/shop", "mssql+pyodbc://db/shop", "oracle://db"])
def test_an_unsupported_database_names_what_is_supported(
    cli: Callable[..., Result], url: str
) -> None:
    for args in (["stats"], ["migrate"]):
        result = cli(url, *args)
        assert result.exit_code == problems.EXIT_CONFIG, result.output
        lines = _lines(result)
        assert len(lines) == 2, lines
        assert "is not supported: the outbox runs on PostgreSQL or SQLite" in lines[0]
        assert "Traceback" not in result.output and "pw" not in result.output


def test_a_missing_file_is_a_usage_error(cli: Callable[..., Result], db_url: str) -> None:
    result = cli(db_url, "enqueue", "--file", "nope.jsonl")
    assert result.exit_code == problems.EXIT_USAGE, result.output
    assert "Traceback" not in result.output
    assert "'nope.jsonl' does not exist" in result.stderr and len(_lines(result)) <= 4


# One command per documented exit code: what a script can rely on.
def test_every_documented_exit_code_has_its_case(
    cli: Callable[..., Result],
    db_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert cli(db_url, "stats").exit_code == 0
    assert cli(db_url, "show", "17").exit_code == problems.EXIT_FAILED
    assert cli(db_url, "history", "--since", "yesterday-ish").exit_code == problems.EXIT_USAGE
    assert cli("mysql://db/shop", "stats").exit_code == problems.EXIT_CONFIG
    assert cli("postgresql://app@127.0.0.1:9/x", "stats").exit_code == problems.EXIT_DATABASE
    assert cli(f"sqlite:///{tmp_path / 'empty.db'}", "stats").exit_code == problems.EXIT_SCHEMA
    monkeypatch.setattr("dispatcher.tasks.app.worker_main", lambda argv: None)
    monkeypatch.setattr("dispatcher.tasks.app.conf.broker_url", "redis://127.0.0.1:9/0")
    monkeypatch.setattr("dispatcher.cli._check_broker.__defaults__", (1.0,))
    assert cli(db_url, "worker").exit_code == problems.EXIT_BROKER
    monkeypatch.setattr("dispatcher.cli.CONFIRM_ABOVE", 1)
    with get_engine(db_url).begin() as conn:
        enqueue_many([CustomEvent(1, customer_id=n) for n in range(1, 3)], session=conn)
    declined = cli(db_url, "cancel", "--queue", "default")  # no terminal to ask on
    assert declined.exit_code == problems.EXIT_DECLINED, declined.output


@pytest.mark.parametrize("command", ["web", "metrics"])
def test_serving_publicly_without_a_token_is_a_configuration_error(
    cli: Callable[..., Result], db_url: str, monkeypatch: pytest.MonkeyPatch, command: str
) -> None:
    monkeypatch.delenv("DISPATCHER_ADMIN_TOKEN", raising=False)
    result = cli(db_url, command, "--host", "0.0.0.0")
    assert result.exit_code == problems.EXIT_CONFIG, result.output
    assert "DISPATCHER_ADMIN_TOKEN" in result.stderr and len(_lines(result)) == 1
