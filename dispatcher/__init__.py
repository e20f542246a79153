"""ecdp-dispatcher: a transactional outbox that delivers custom events to the ExpertSender CDP API.

The public surface is exactly what is listed here::

    from dispatcher import (CustomEvent, SegmentEvent, DataField,
                            enqueue, enqueue_many, ValidationError)
"""

from dispatcher.events import CustomEvent, DataField, SegmentEvent, ValidationError
from dispatcher.producer import OutboxUnavailable, enqueue, enqueue_many

__all__ = [
    "CustomEvent",
    "DataField",
    "OutboxUnavailable",
    "SegmentEvent",
    "ValidationError",
    "enqueue",
    "enqueue_many",
]
__version__ = "0.1.0"
