"""The operator's service: the one place where operator rules live.

``dispatcher history|show|stats|queues|pause|resume|replay|cancel|purge|forget``, the admin
page, its JSON API, the demo and the benchmark all call this package and hold no rule of their
own; an application can call it for its own pages too. One :class:`Filter` type, parsed once
from text by :func:`parse_filter` (status, queue, event id, customer email, last status code,
since/until as a time or an age like ``2h``), feeds every read, the replay and the cancel; queue
names follow the rule ``enqueue`` applies.

- :mod:`~dispatcher.admin.filters`: the filter, its parsing from text, and every limit.
- :func:`parse_age`, :func:`parse_when`: ``2h`` and ISO 8601 times (:mod:`dispatcher.times`, pure).
- :mod:`~dispatcher.admin.reads`: :func:`history`, :func:`show`, :func:`stats`.
- :mod:`~dispatcher.admin.activity`: :func:`activity` / :func:`delivered_per_minute` (the admin
  page's charts), and :func:`keep_activity`, which the sweeper runs to keep settled buckets.
- :mod:`~dispatcher.admin.actions`: :func:`pause_queue` (returns once no worker sends),
  :func:`resume_queue` (tells the workers after its commit), :func:`replay` (optionally only if
  the filter still matches the expected number of jobs), :func:`cancel` (waiting jobs, the same
  way), :func:`purge`.
- :mod:`~dispatcher.admin.names`: which queues exist (:func:`require_queue` refuses a typo with
  :class:`UnknownQueue`, naming the closest), :func:`delete_queue` for a queue without jobs.
- :mod:`~dispatcher.admin.forget`: :func:`forget` a customer (GDPR art. 17), by one identifier
  (:func:`parse_customer`).
- :mod:`~dispatcher.admin.results`: what they return; ``as_dict()`` is the JSON ``--json`` prints.

Every function takes a ``Connection`` or an ``Engine`` (reads and ``replay`` run in the caller's
transaction when given a Connection; ``pause_queue``, ``resume_queue`` and ``purge`` need an Engine
because they commit themselves). Bad values raise :class:`AdminError` naming the field, before any
SQL runs. Time filters apply to ``created_at`` (when the event was enqueued); ``purge`` ages jobs
by ``updated_at`` (when they reached their final state).
"""

from __future__ import annotations

from dispatcher.admin.actions import (
    REASON_MAX,
    ExpectedCountMismatch,
    cancel,
    pause_queue,
    paused_queues,
    purge,
    replay,
    resume_queue,
)
from dispatcher.admin.activity import (
    ACTIVITY_WINDOWS,
    Activity,
    ActivityBucket,
    activity,
    delivered_per_minute,
    keep_activity,
)
from dispatcher.admin.filters import (
    FILTER_FIELDS,
    MAX_EXPECTED,
    MAX_JOB_IDS,
    MAX_LIMIT,
    AdminError,
    Filter,
    Page,
    check_queue,
    parse_filter,
    parse_int,
    parse_page,
)
from dispatcher.admin.forget import IDENTIFIER_KINDS, Customer, forget, parse_customer
from dispatcher.admin.names import UnknownQueue, delete_queue, existing_queues, require_queue
from dispatcher.admin.reads import history, history_page, show, stats
from dispatcher.admin.results import (
    Attempt,
    CancelResult,
    ForgetResult,
    JobDetail,
    JobSummary,
    PurgeResult,
    QueueStats,
    ReplayResult,
)
from dispatcher.times import parse_age, parse_when

__all__ = [
    "ACTIVITY_WINDOWS",
    "FILTER_FIELDS",
    "IDENTIFIER_KINDS",
    "MAX_EXPECTED",
    "MAX_JOB_IDS",
    "MAX_LIMIT",
    "REASON_MAX",
    "Activity",
    "ActivityBucket",
    "AdminError",
    "Attempt",
    "CancelResult",
    "Customer",
    "ExpectedCountMismatch",
    "Filter",
    "ForgetResult",
    "JobDetail",
    "JobSummary",
    "Page",
    "PurgeResult",
    "QueueStats",
    "ReplayResult",
    "UnknownQueue",
    "activity",
    "cancel",
    "check_queue",
    "delete_queue",
    "delivered_per_minute",
    "existing_queues",
    "forget",
    "history",
    "history_page",
    "keep_activity",
    "parse_age",
    "parse_customer",
    "parse_filter",
    "parse_int",
    "parse_page",
    "parse_when",
    "pause_queue",
    "paused_queues",
    "purge",
    "replay",
    "require_queue",
    "resume_queue",
    "show",
    "stats",
]
