"""What went wrong at first contact, in words an operator can act on, and the CLI's exit codes.

:func:`explain` turns an exception from any command (a missing schema, an unreachable database or
broker, a URL we cannot use, a bad setting) into one or two lines that name the cause and the fix,
with credentials redacted, and the exit code that tells them apart:

====  ==========================================================================
code  meaning
====  ==========================================================================
0     done
1     the command ran but failed (no such job, a replay whose count changed, …)
2     usage: a bad option or argument (click's code)
3     configuration: a setting in the environment is wrong (the line names it)
4     the outbox database cannot be reached (down, refused, wrong password)
5     the outbox tables do not exist (or are older than this version): migrate
6     the broker cannot be reached or its URL is unusable
7     the operator declined a confirmation (nothing changed)
====  ==========================================================================
"""

from __future__ import annotations

from dataclasses import dataclass

import sqlalchemy as sa

from dispatcher.scrub import redact_url, scrub

__all__ = [
    "EXIT_BROKER",
    "EXIT_CONFIG",
    "EXIT_DATABASE",
    "EXIT_DECLINED",
    "EXIT_FAILED",
    "EXIT_SCHEMA",
    "EXIT_USAGE",
    "OutboxSchemaMissing",
    "OutboxUnavailable",
    "Problem",
    "explain",
    "is_schema_missing",
]

EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_CONFIG = 3
EXIT_DATABASE = 4
EXIT_SCHEMA = 5
EXIT_BROKER = 6
EXIT_DECLINED = 7

# PostgreSQL's SQLSTATEs for a table or column that is not there (an unmigrated database).
_SCHEMA_STATES = ("42P01", "42703")


class OutboxUnavailable(RuntimeError):
    """The outbox database could not be reached; nothing was written. The message names the
    database with every password form redacted (user-info, ``?password=``)."""

    def __init__(self, url: sa.URL | str, cause: Exception) -> None:
        lines = str(getattr(cause, "orig", None) or cause).strip().splitlines()
        reason = scrub(lines[0]) if lines else type(cause).__name__
        super().__init__(
            f"could not write to the outbox at {redact_url(url)}: {reason}; nothing was written"
        )


class OutboxSchemaMissing(OutboxUnavailable):
    """The outbox tables do not exist in that database (or are older than this version): run
    ``dispatcher migrate``. Raised alike with or without a ``session`` or ``dedupe_key``, whatever
    the driver; in the caller's transaction, that transaction is left failed (roll it back)."""

    def __init__(
        self,
        url: sa.URL | str,
        cause: BaseException | None = None,
        *,
        fix: str = "dispatcher migrate",
    ) -> None:
        RuntimeError.__init__(
            self,
            f"the outbox tables do not exist in {redact_url(url)} (or are older than this "
            f"version): run `{fix}` first; nothing was written",
        )


@dataclass(frozen=True, slots=True)
class Problem:
    code: int
    message: str  # one or two lines: the cause, then the fix


def _first_line(exc: BaseException) -> str:
    if isinstance(exc, OutboxUnavailable) and exc.__cause__ is not None:
        exc = exc.__cause__  # its own message names the database again
    cause = getattr(exc, "orig", None) or exc
    lines = [line.strip() for line in str(cause).strip().splitlines() if line.strip()]
    return scrub(lines[0]) if lines else type(cause).__name__


def is_schema_missing(exc: BaseException) -> bool:
    """Whether ``exc`` (SQLAlchemy's, a driver's, asyncpg's) says an outbox table or column is
    missing: the database was never migrated, or is older than this version."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        state = getattr(current, "sqlstate", None) or getattr(current, "pgcode", None)
        if state in _SCHEMA_STATES:
            return True
        text = str(current)
        if ("no such table" in text or "no such column" in text) and "dispatcher_" in text:
            return True
        if (
            "dispatcher_" in text
            and "does not exist" in text
            and ("relation" in text or "column" in text)
        ):
            return True
        current = getattr(current, "orig", None) or current.__cause__
    return False


def _database_url() -> str:
    try:
        from dispatcher.config import get_settings

        return redact_url(get_settings().database_url)
    except Exception:  # the settings themselves may be what is wrong
        return "DISPATCHER_DATABASE_URL"


def _broker_errors() -> tuple[type[BaseException], ...]:
    try:
        from kombu.exceptions import OperationalError as KombuOperationalError
    except ImportError:  # pragma: no cover - kombu comes with celery
        return ()
    return (KombuOperationalError,)


def explain(exc: BaseException) -> Problem | None:
    """The operator's version of ``exc``, or None if it is not a first-contact problem (a bug:
    the caller shows the traceback)."""
    from dispatcher.config import ConfigError

    if isinstance(exc, ConfigError):
        return Problem(EXIT_CONFIG, f"configuration: {scrub(str(exc))}")
    if isinstance(exc, OutboxSchemaMissing) or is_schema_missing(exc):
        return Problem(
            EXIT_SCHEMA,
            f"the outbox tables do not exist in {_database_url()} (or are older than this "
            "version)\nfix: run `dispatcher migrate` against that database first",
        )
    if isinstance(exc, sa.exc.ArgumentError | sa.exc.NoSuchModuleError):
        return Problem(
            EXIT_CONFIG,
            f"DISPATCHER_DATABASE_URL is not a database URL we can use: {_first_line(exc)}\n"
            "fix: set it to a postgresql:// URL (host, port, database name) or "
            "sqlite:////absolute/path/dispatcher.db",
        )
    if isinstance(
        exc,
        (OutboxUnavailable, sa.exc.OperationalError | sa.exc.InterfaceError | sa.exc.TimeoutError),
    ):
        return Problem(
            EXIT_DATABASE,
            f"cannot reach the outbox database at {_database_url()}: {_first_line(exc)}\n"
            "fix: start the database, or correct DISPATCHER_DATABASE_URL (host, port, user, "
            "password)",
        )
    if isinstance(exc, _broker_errors()) or _is_broker_url_error(exc):
        return Problem(
            EXIT_BROKER,
            f"cannot reach the broker: {_first_line(exc)}\n"
            "fix: start it, or correct DISPATCHER_BROKER_URL (e.g. redis://host:6379/0)",
        )
    if isinstance(exc, sa.exc.SQLAlchemyError):
        return Problem(EXIT_FAILED, f"database error: {_first_line(exc)}")
    return None


def _is_broker_url_error(exc: BaseException) -> bool:
    # kombu names an unknown transport with a KeyError/ImportError raised from its registry.
    module = type(exc).__module__ or ""
    return module.startswith(("kombu", "redis", "amqp"))
