"""Logging for every process (worker, sweeper, web, CLI): text by default, or one JSON object per
line with ``DISPATCHER_LOG_FORMAT=json`` for a log pipeline.

JSON lines have stable keys: ``ts`` (UTC, ISO 8601), ``level``, ``logger``, ``message``, and,
where a record carries them, ``queue``, ``job_id``, ``status_code``, ``attempt``, ``outcome`` and
the few others in :data:`FIELDS`; ``exc`` holds a traceback. Celery's own records go through the
same handler (the worker connects :func:`configure` to Celery's ``setup_logging`` signal), and so
do Python's warnings. What Celery's signal handlers print themselves ("worker: Warm shutdown",
written with ``os.write`` since a handler may not take the logging lock) becomes a JSON line
too (:func:`json_line`), as does the notice that the default SQLite files are used.

Every line has database and broker passwords redacted (:func:`dispatcher.scrub.scrub`: a URL's
user-info, ``password=`` parameters), exception tracebacks included.

What the dispatcher logs never carries a customer identifier or a payload: per-job lines name the
job by id, and the API's answers are passed through :func:`redact` first
(:mod:`dispatcher.masking`).
"""

from __future__ import annotations

import json
import logging
import os
import sys
from datetime import UTC, datetime
from typing import Any

from dispatcher.config import DEFAULT_BROKER_URL, DEFAULT_DATABASE_URL, Settings, get_settings
from dispatcher.masking import redact
from dispatcher.scrub import scrub, terminal_safe
from dispatcher.tracing import current_ids

__all__ = [
    "FIELDS",
    "FORMATS",
    "JsonFormatter",
    "TextFormatter",
    "configure",
    "json_line",
    "notice_default_broker",
    "notice_defaults",
    "redact",
]

FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# Extra fields a record may carry (``log.info(..., extra={...})``), in this order.
FIELDS = (
    "queue",
    "job_id",
    "status_code",
    "attempt",
    "outcome",
    "next_attempt_at",
    "reason",
    "circuit",
    "detail",
    "removed_jobs",
    "removed_attempts",
)


class TextFormatter(logging.Formatter):
    """``TEXT_FORMAT``, with any database or broker password redacted (tracebacks included) and
    control characters shown escaped (an API's words cannot drive the terminal that shows the
    log; a traceback keeps its lines)."""

    def format(self, record: logging.LogRecord) -> str:
        return terminal_safe(scrub(super().format(record)), newlines=True)


def json_line(level: str, logger: str, message: str, created: float | None = None) -> str:
    """One JSON log line (no newline) with the stable keys, for text that is not a record."""
    return scrub(json.dumps(_head(level, logger, message, created), ensure_ascii=False))


def _head(level: str, logger: str, message: str, created: float | None) -> dict[str, object]:
    at = datetime.now(UTC) if created is None else datetime.fromtimestamp(created, UTC)
    return {
        "ts": at.isoformat(timespec="milliseconds"),
        "level": level,
        "logger": logger,
        "message": message,
    }


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return scrub(self._line(record))

    def _line(self, record: logging.LogRecord) -> str:
        line = _head(record.levelname, record.name, record.getMessage(), record.created)
        for name in FIELDS:
            value = record.__dict__.get(name)
            if value is not None:
                line[name] = value if isinstance(value, int | float | bool) else str(value)
        ids = current_ids()  # the span active where the record was made (same thread)
        if ids is not None:
            line["trace_id"], line["span_id"] = ids
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False)


def configure(*, verbose: bool = False, fmt: str | None = None, **_: object) -> None:
    """Send every record to stderr in ``fmt`` (default: ``DISPATCHER_LOG_FORMAT``), replacing
    handlers set before. Also Celery's ``setup_logging`` receiver (it ignores Celery's keywords)."""
    if fmt is None:
        fmt = get_settings().log_format
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter(TEXT_FORMAT))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    # Celery's process pool (billiard) logs to "multiprocessing" without propagating ("Process
    # 'ForkPoolWorker-1' exited with signal 15"): with no handler of its own, Python's last
    # resort printed those as bare text. It gets ours.
    pool = logging.getLogger("multiprocessing")
    for old in list(pool.handlers):
        pool.removeHandler(old)
    pool.addHandler(handler)
    pool.propagate = False
    pool.setLevel(logging.DEBUG if verbose else logging.WARNING)  # its INFO is per child start
    logging.captureWarnings(True)  # Python's warnings (Celery's root warning) as records too
    _celery_says(fmt)
    if not verbose:
        logging.getLogger("alembic").setLevel(logging.WARNING)
    # httpx logs every request's URL at INFO: the pause alert's webhook URL is a secret.
    logging.getLogger("httpx").setLevel(logging.WARNING)


def _json_say(msg: str, f: Any = None) -> None:
    """Celery's ``safe_say`` as a JSON line on stderr, with the same ``os.write`` (it runs in
    signal handlers: no logging, no locks). Never raises."""
    try:
        line = json_line("WARNING", "celery.apps.worker", " ".join(str(msg).split())) + "\n"
        os.write(sys.__stderr__.fileno() if sys.__stderr__ else 2, line.encode())
    except (OSError, ValueError):
        pass


def _celery_says(fmt: str) -> None:
    """Route what Celery's worker prints from its signal handlers through :func:`_json_say`
    under the JSON format (and back to Celery's own under text)."""
    worker = sys.modules.get("celery.apps.worker")
    if worker is None:  # not a worker: nothing of Celery's prints
        return
    original = getattr(worker, "_dispatcher_original_safe_say", None)
    if original is None:
        original = worker.safe_say
        setattr(worker, "_dispatcher_original_safe_say", original)  # noqa: B010
    setattr(worker, "safe_say", _json_say if fmt == "json" else original)  # noqa: B010


_noticed = False


def notice_defaults(settings: Settings | None = None) -> None:
    """Once per process, on stderr: the SQLite files used because ``DISPATCHER_DATABASE_URL``
    (and ``DISPATCHER_BROKER_URL``) are not set, so nobody creates ``./dispatcher.db`` by
    accident wherever a process happens to run."""
    global _noticed
    settings = settings or get_settings()
    if _noticed or "DISPATCHER_DATABASE_URL" not in settings.defaulted:
        return
    _noticed = True
    database = os.path.abspath(DEFAULT_DATABASE_URL.removeprefix("sqlite:///"))
    broker = ""
    if "DISPATCHER_BROKER_URL" in settings.defaulted:
        broker = " and the broker file " + _default_broker_file()
    _say(
        settings,
        f"DISPATCHER_DATABASE_URL is not set: using the SQLite file {database}"
        f"{broker} (set DISPATCHER_DATABASE_URL, and DISPATCHER_BROKER_URL, to use your own)",
    )


_noticed_broker = False


def notice_default_broker(settings: Settings | None = None) -> None:
    """Once per process, on stderr, when a process signals (or listens) through the embedded
    broker file although its outbox is a database of its own: a producer whose environment
    lacks ``DISPATCHER_BROKER_URL`` would otherwise signal into ``./dispatcher-broker.db`` where
    no worker reads, and its jobs would wait for the sweeper. (Both unset: notice_defaults.)"""
    global _noticed_broker
    settings = settings or get_settings()
    if _noticed_broker or "DISPATCHER_BROKER_URL" not in settings.defaulted:
        return
    _noticed_broker = True
    if "DISPATCHER_DATABASE_URL" in settings.defaulted:
        notice_defaults(settings)  # says both
        return
    _say(
        settings,
        "DISPATCHER_BROKER_URL is not set: signalling workers through the SQLite file "
        f"{_default_broker_file()}, which only processes started in this folder read (set "
        "DISPATCHER_BROKER_URL, e.g. redis://host:6379/0, alike in every process)",
    )


def _default_broker_file() -> str:
    return os.path.abspath(DEFAULT_BROKER_URL.removeprefix("sqla+sqlite:///"))


def _say(settings: Settings, message: str) -> None:
    if settings.log_format == "json":  # a log pipeline reads stderr: one JSON line there too
        sys.stderr.write(json_line("WARNING", "dispatcher.config", message) + "\n")
    else:
        sys.stderr.write(f"dispatcher: {message}\n")
    sys.stderr.flush()
