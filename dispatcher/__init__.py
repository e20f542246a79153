"""ecdp-dispatcher: a transactional outbox that delivers custom events to the ExpertSender CDP API.

The public surface is exactly what is listed here::

    from dispatcher import (CustomEvent, SegmentEvent, DataField, ValidationError,
                            enqueue, enqueue_many, enqueue_async, enqueue_many_async)

Django projects use :mod:`dispatcher.contrib.django`; a host application's Alembic uses
:func:`dispatcher.alembic.include_name` / :func:`dispatcher.alembic.include_object`.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from dispatcher.events import CustomEvent, DataField, SegmentEvent, ValidationError
    from dispatcher.problems import OutboxSchemaMissing, OutboxUnavailable
    from dispatcher.producer import (
        enqueue,
        enqueue_async,
        enqueue_many,
        enqueue_many_async,
    )

# Imported on first use (PEP 562), so that `dispatcher check` and other light entry points do
# not pay for SQLAlchemy and the producer: `from dispatcher import enqueue` works as ever.
_LAZY = {
    "CustomEvent": "dispatcher.events",
    "DataField": "dispatcher.events",
    "SegmentEvent": "dispatcher.events",
    "ValidationError": "dispatcher.events",
    "OutboxUnavailable": "dispatcher.problems",
    "OutboxSchemaMissing": "dispatcher.problems",
    "enqueue": "dispatcher.producer",
    "enqueue_async": "dispatcher.producer",
    "enqueue_many": "dispatcher.producer",
    "enqueue_many_async": "dispatcher.producer",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'dispatcher' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


__all__ = [
    "CustomEvent",
    "DataField",
    "OutboxSchemaMissing",
    "OutboxUnavailable",
    "SegmentEvent",
    "ValidationError",
    "enqueue",
    "enqueue_async",
    "enqueue_many",
    "enqueue_many_async",
]
__version__ = "0.1.0"  # the one place: pyproject.toml reads it
