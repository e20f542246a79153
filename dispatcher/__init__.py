"""ecdp-dispatcher: a transactional outbox that delivers custom events to the ExpertSender CDP API.

The public surface is exactly what is listed here::

    from dispatcher import (CustomEvent, SegmentEvent, DataField, ValidationError,
                            enqueue, enqueue_many, enqueue_async, enqueue_many_async)

Django projects use :mod:`dispatcher.contrib.django`; a host application's Alembic uses
:func:`dispatcher.alembic.include_name` / :func:`dispatcher.alembic.include_object`.
"""

from dispatcher.events import CustomEvent, DataField, SegmentEvent, ValidationError
from dispatcher.producer import (
    OutboxUnavailable,
    enqueue,
    enqueue_async,
    enqueue_many,
    enqueue_many_async,
)

__all__ = [
    "CustomEvent",
    "DataField",
    "OutboxUnavailable",
    "SegmentEvent",
    "ValidationError",
    "enqueue",
    "enqueue_async",
    "enqueue_many",
    "enqueue_many_async",
]
__version__ = "0.1.0"
