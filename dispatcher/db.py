"""Engines and the column type for timestamps.

One engine per database URL per process. SQLite gets the settings that make several processes
(producer, worker, sweeper) share one file safely: WAL, a busy timeout, and ``BEGIN IMMEDIATE`` so a
transaction takes the write lock up front instead of failing when it upgrades from read to write.
"""

from __future__ import annotations

import threading
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Dialect, Engine
from sqlalchemy.pool import NullPool

from dispatcher.config import DEFAULT_DATABASE_URL, normalize_database_url
from dispatcher.logs import notice_defaults

SUPPORTED_BACKENDS = ("postgresql", "sqlite")
_engines: dict[str, Engine] = {}
_engines_lock = threading.Lock()


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(sa.types.TypeDecorator[datetime]):
    """Aware UTC datetimes in and out: ``timestamptz`` on PostgreSQL, naive-UTC text on SQLite."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given where UTC is required")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _sqlite_on_connect(dbapi_conn: Any, _record: Any) -> None:
    dbapi_conn.isolation_level = None  # we emit BEGIN ourselves (see _sqlite_on_begin)
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.close()


def _sqlite_on_begin(conn: sa.Connection) -> None:
    conn.exec_driver_sql("BEGIN IMMEDIATE")


def create_engine(url: str) -> Engine:
    url = normalize_database_url(url)
    try:
        backend = sa.make_url(url).get_backend_name()
    except ValueError as exc:  # e.g. a port that is not a number: a URL we cannot use
        raise sa.exc.ArgumentError(f"not a database URL: {exc}") from None
    if backend not in SUPPORTED_BACKENDS:  # before SQLAlchemy imports a driver we lack
        raise sa.exc.ArgumentError(
            f"{backend}:// is not supported: the outbox runs on PostgreSQL or SQLite"
        )
    if url.startswith("sqlite"):
        # NullPool: a file-backed SQLite connection is cheap, and pooling across fork() is unsafe.
        engine = sa.create_engine(url, poolclass=NullPool)
        sa.event.listen(engine, "connect", _sqlite_on_connect)
        sa.event.listen(engine, "begin", _sqlite_on_begin)
        return engine
    # No pool_pre_ping: it costs a round trip per checkout (a third of an enqueue). A connection
    # broken by a database restart raises once, SQLAlchemy then invalidates the whole pool, and
    # the delivery loop retries (see dispatcher.delivery.with_db_retry).
    return sa.create_engine(url, pool_size=5, max_overflow=10)


def get_engine(url: str) -> Engine:
    """The process's shared engine for ``url`` (created on first use). The embedded default,
    used because ``DISPATCHER_DATABASE_URL`` is not set, is announced once on stderr."""
    url = normalize_database_url(url)
    if url == DEFAULT_DATABASE_URL and url not in _engines:
        notice_defaults()
    with _engines_lock:
        engine = _engines.get(url)
        if engine is None:
            engine = _engines[url] = create_engine(url)
        return engine


def dispose_engines(*, close: bool = True) -> None:
    """Drop pooled connections, e.g. between tests; in a child after fork with ``close=False``:
    the connections are the parent's too, and closing them would end the parent's sessions."""
    with _engines_lock:
        for engine in _engines.values():
            engine.dispose(close=close)
        _engines.clear()
