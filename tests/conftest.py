"""Shared fixtures: a migrated outbox on SQLite (always) and PostgreSQL (when configured).

``DISPATCHER_TEST_POSTGRES_URL`` / ``DISPATCHER_TEST_REDIS_URL`` turn on the PostgreSQL and Redis
variants. Without them those variants are skipped locally; under CI (``CI=true``) a missing
service is a failure, never a silent skip.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

# Before anything imports dispatcher.tasks: signals go to an in-memory broker unless a test asks
# for a real one, so tests never write a broker file into the working directory.
os.environ["DISPATCHER_BROKER_URL"] = "memory://"
for _name in list(os.environ):
    if _name.startswith(("ECDP_API_KEY", "DISPATCHER_")) and _name not in (
        "DISPATCHER_BROKER_URL",
        "DISPATCHER_TEST_POSTGRES_URL",
        "DISPATCHER_TEST_REDIS_URL",
    ):
        del os.environ[_name]

import sqlalchemy as sa  # noqa: E402

from dispatcher.config import Settings, get_settings, normalize_database_url  # noqa: E402
from dispatcher.db import dispose_engines, get_engine  # noqa: E402
from dispatcher.migrate import upgrade  # noqa: E402
from dispatcher.sandbox import Sandbox  # noqa: E402

PG_URL = os.environ.get("DISPATCHER_TEST_POSTGRES_URL")
REDIS_URL = os.environ.get("DISPATCHER_TEST_REDIS_URL")
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
TABLES = (
    "dispatcher_attempts",
    "dispatcher_jobs",
    "dispatcher_queues",
    "dispatcher_counts",
    "dispatcher_count_deltas",
    "dispatcher_activity",
    "dispatcher_activity_marks",
    "dispatcher_erasures",
)
EMPTY_OUTBOX = f"TRUNCATE {', '.join(TABLES)} RESTART IDENTITY CASCADE"


def require(url: str | None, what: str) -> str:
    if url:
        return url
    if IN_CI:
        pytest.fail(f"{what} is required in CI but its URL is not set")
    pytest.skip(f"{what} not configured")


@pytest.fixture(scope="session")
def pg_test_url() -> str:
    """A fresh database ``dispatcher_test_<pid>`` on the configured server, migrated once."""
    base = normalize_database_url(require(PG_URL, "PostgreSQL (DISPATCHER_TEST_POSTGRES_URL)"))
    url = sa.make_url(base)
    name = f"dispatcher_test_{os.getpid()}"
    admin = sa.create_engine(url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    test_url = url.set(database=name).render_as_string(hide_password=False)
    upgrade(test_url)
    yield test_url
    dispose_engines()
    admin.dispose()  # a fault test may have restarted the server under the pooled connection
    with admin.connect() as conn:
        conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    admin.dispose()


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("template") / "outbox.db"
    upgrade(f"sqlite:///{path}")
    dispose_engines()
    return path


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path, sqlite_template: Path) -> Iterator[str]:
    """A migrated, empty outbox: a copy of the SQLite template, or the PostgreSQL test database
    truncated."""
    if request.param == "sqlite":
        path = tmp_path / "outbox.db"
        shutil.copy(sqlite_template, path)
        yield f"sqlite:///{path}"
    else:
        url = request.getfixturevalue("pg_test_url")
        with get_engine(url).begin() as conn:
            conn.exec_driver_sql(EMPTY_OUTBOX)
        yield url
    dispose_engines()


@pytest.fixture
def api_key() -> str:
    return "test-" + uuid.uuid4().hex


@pytest.fixture
def sandbox(api_key: str) -> Iterator[Sandbox]:
    """The ECDP look-alike on loopback, answering with this test's API key."""
    with Sandbox(api_key=api_key) as server:
        yield server


@pytest.fixture
def slow_sandbox(api_key: str) -> Iterator[Callable[..., Sandbox]]:
    """``make(latency=0.25, capacity=32)``: a sandbox that answers like an API at its limit
    (started with this test's API key, stopped at teardown)."""
    started: list[Sandbox] = []

    def make(latency: float = 0.0, capacity: int | None = None) -> Sandbox:
        box = Sandbox(api_key=api_key, latency=latency, capacity=capacity).start()
        started.append(box)
        return box

    yield make
    for box in started:
        box.stop()


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, db_url: str, api_key: str) -> Iterator[pytest.MonkeyPatch]:
    """The process environment pointing at the test outbox; ``get_settings()`` re-reads it."""
    monkeypatch.setenv("DISPATCHER_DATABASE_URL", db_url)
    monkeypatch.setenv("ECDP_API_KEY", api_key)
    get_settings.cache_clear()
    yield monkeypatch
    get_settings.cache_clear()


@pytest.fixture
def settings(env: pytest.MonkeyPatch) -> Settings:
    return get_settings()


@pytest.fixture
def engine(db_url: str) -> sa.Engine:
    return get_engine(db_url)


@pytest.fixture
def redis_url() -> str:
    url = require(REDIS_URL, "Redis (DISPATCHER_TEST_REDIS_URL)")
    import redis

    redis.Redis.from_url(url).ping()  # fail loudly if it is configured but down
    return url
