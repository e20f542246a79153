"""Logging for every process (worker, sweeper, web, CLI): text by default, or one JSON object per
line with ``DISPATCHER_LOG_FORMAT=json`` for a log pipeline.

JSON lines have stable keys: ``ts`` (UTC, ISO 8601), ``level``, ``logger``, ``message``, and,
where a record carries them, ``queue``, ``job_id``, ``status_code``, ``attempt``, ``outcome`` and
the few others in :data:`FIELDS`; ``exc`` holds a traceback. Celery's own records go through the
same handler (the worker connects :func:`configure` to Celery's ``setup_logging`` signal).

Every line has database and broker passwords redacted (:func:`dispatcher.scrub.scrub`: a URL's
user-info, ``password=`` parameters), exception tracebacks included.

What the dispatcher logs never carries a customer identifier or a payload: per-job lines name the
job by id, and the API's answers are passed through :func:`redact` first
(:mod:`dispatcher.masking`).
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime

from dispatcher.masking import redact
from dispatcher.scrub import scrub, terminal_safe

__all__ = ["FIELDS", "FORMATS", "JsonFormatter", "TextFormatter", "configure", "redact"]

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


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return scrub(self._line(record))

    def _line(self, record: logging.LogRecord) -> str:
        line: dict[str, object] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in FIELDS:
            value = record.__dict__.get(name)
            if value is not None:
                line[name] = value if isinstance(value, int | float | bool) else str(value)
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False)


def configure(*, verbose: bool = False, fmt: str | None = None, **_: object) -> None:
    """Send every record to stderr in ``fmt`` (default: ``DISPATCHER_LOG_FORMAT``), replacing
    handlers set before. Also Celery's ``setup_logging`` receiver (it ignores Celery's keywords)."""
    if fmt is None:
        from dispatcher.config import get_settings

        fmt = get_settings().log_format
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter(TEXT_FORMAT))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    logging.captureWarnings(True)  # Python's warnings (Celery's root warning) as records too
    if not verbose:
        logging.getLogger("alembic").setLevel(logging.WARNING)
    # httpx logs every request's URL at INFO: the pause alert's webhook URL is a secret.
    logging.getLogger("httpx").setLevel(logging.WARNING)
