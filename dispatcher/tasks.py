"""The Celery app and its one task: ``dispatcher.deliver(queue)``.

The broker carries only "queue X has work due" signals; the outbox holds every job's body, state
and schedule. So a signal may be lost (broker flush) or duplicated (redelivery) without harm: the
sweeper re-signals due work, and a duplicate finds nothing to claim. Task arguments are a queue
name, results are counts: nothing in Flower shows an API key or customer data.

Settings that matter, and why:
- ``task_acks_late`` + ``task_reject_on_worker_lost``: a worker killed mid-task leaves its signal
  on the broker to be redelivered (the leased jobs themselves come back through the sweeper).
- ``worker_prefetch_multiplier=1``: a worker holds one signal at a time, so idle workers get work.
- ``broker_connection_retry_on_startup``: a worker started before Redis waits for it.
- Broker connect and socket timeouts (:func:`dispatcher.config.broker_timeouts`,
  ``broker_connection_timeout``): a Redis that accepts connections and never answers costs a
  bounded wait (the worker's start then exits 6), never a hang. No result backend: results
  are ignored.
- Redis ``visibility_timeout`` (1 h): how long an unacked signal waits before redelivery. Tasks
  stop after ``DRAIN_SECONDS`` and re-signal, so a live task never comes near it, and nothing is
  ever scheduled with countdown/ETA (retry times live in ``next_attempt_at``).
"""

from __future__ import annotations

import logging
import multiprocessing
import multiprocessing.synchronize
import os
from collections.abc import Iterable
from typing import Any

from celery import Celery
from celery.signals import (
    heartbeat_sent,
    setup_logging,
    worker_init,
    worker_process_init,
    worker_process_shutdown,
    worker_ready,
    worker_shutting_down,
)

from dispatcher import health, logs
from dispatcher.config import (
    BROKER_CONNECT_TIMEOUT,
    QUEUE_NAME,
    ConfigError,
    Settings,
    broker_timeouts,
    get_settings,
    plain_http_warning,
)
from dispatcher.db import dispose_engines
from dispatcher.delivery import Deliverer

log = logging.getLogger("dispatcher.tasks")

CELERY_QUEUE = "dispatcher"
DRAIN_SECONDS = 10.0
TASK_NAME = "dispatcher.deliver"


def celery_queue(queue: str, settings: Settings, dedicated: frozenset[str] | None = None) -> str:
    """The Celery queue that carries ``queue``'s signals: one of its own for a dedicated queue
    (one a worker serves with ``--queues``, recorded in the outbox, or one listed in
    ``DISPATCHER_DEDICATED_QUEUES``), else the shared one. ``dedicated`` defaults to the
    settings' list alone."""
    dedicated = settings.dedicated_queues if dedicated is None else dedicated
    return f"{CELERY_QUEUE}.{queue}" if queue in dedicated else CELERY_QUEUE


def worker_queues(
    selected: Iterable[str], settings: Settings, dedicated: frozenset[str] | None = None
) -> list[str]:
    """What ``dispatcher worker [--queues a,b]`` consumes: the named outbox queues' own Celery
    queues, or (none named) the shared one and every dedicated one: such a worker serves all.
    A name that is not a queue name is refused (ConfigError naming ``--queues``)."""
    selected = list(selected)
    dedicated = settings.dedicated_queues if dedicated is None else dedicated
    if not selected:
        return [CELERY_QUEUE, *(f"{CELERY_QUEUE}.{q}" for q in sorted(dedicated))]
    bad = [q for q in selected if not QUEUE_NAME.fullmatch(q)]
    if bad:
        raise ConfigError(
            f"--queues: {', '.join(repr(q) for q in bad)} is not a queue name (lower-case "
            "letters, digits, '-' and '_', at most 64, starting with a letter or digit)"
        )
    return [f"{CELERY_QUEUE}.{q}" for q in selected]


def make_celery(settings: Settings) -> Celery:
    app = Celery("dispatcher", broker=settings.broker_url, set_as_current=False)
    transport_options: dict[str, Any] = broker_timeouts(settings.broker_url)
    if settings.broker_url.startswith(("redis://", "rediss://")):
        transport_options["visibility_timeout"] = 3600
    if settings.broker_url.startswith("sqla+"):
        # The embedded broker polls its table (1 s by default). kombu's SQLAlchemy transport
        # passes every transport option to create_engine(), so `polling_interval` cannot go
        # through broker_transport_options; the class attribute is the one knob that works.
        from kombu.transport.sqlalchemy import Transport

        Transport.polling_interval = 0.1
    app.conf.update(
        task_default_queue=CELERY_QUEUE,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        broker_connection_retry_on_startup=True,
        broker_connection_timeout=BROKER_CONNECT_TIMEOUT,
        broker_transport_options=transport_options,
        task_ignore_result=True,
        task_serializer="json",
        accept_content=["json"],
        worker_send_task_events=True,
        task_send_sent_event=True,
        worker_hijack_root_logger=False,
    )

    def route(name: str, args: Any, kwargs: Any, options: Any, **_: Any) -> dict[str, str] | None:
        if name == TASK_NAME and args:
            from dispatcher.routing import dedicated_queues  # the outbox's dedications too

            return {"queue": celery_queue(str(args[0]), settings, dedicated_queues(settings))}
        return None

    app.conf.task_routes = (route,)
    return app


app = make_celery(get_settings())

_deliverer: tuple[int, Deliverer] | None = None
# Set in the main process when the worker begins a warm shutdown (SIGTERM, as `docker stop`
# sends it); read by the drains in the pool's processes, which inherit it at fork. Made at
# worker start, so only worker processes create a semaphore.
_stopping: multiprocessing.synchronize.Event | None = None


def stopping() -> bool:
    return _stopping is not None and _stopping.is_set()


@worker_init.connect  # type: ignore[untyped-decorator]
def _on_worker_init(**_: object) -> None:
    global _stopping
    _stopping = multiprocessing.get_context("fork").Event()


@worker_ready.connect  # type: ignore[untyped-decorator]
def _warn_at_start(**_: object) -> None:
    """Once per worker, with its logging in place: settings that work but should not."""
    warning = plain_http_warning(get_settings().base_url)
    if warning is not None:
        log.warning(warning)


@worker_ready.connect  # type: ignore[untyped-decorator]
@heartbeat_sent.connect  # type: ignore[untyped-decorator]
def _beat(**_: object) -> None:
    # From the consumer's own loop (every event heartbeat, 2 s): `dispatcher check --worker`
    # then knows the worker is alive and not stuck, without asking the broker.
    try:
        health.beat("worker")
    except OSError:
        log.warning("could not write the worker's heartbeat to %s", health.heartbeat_dir())


@worker_shutting_down.connect  # type: ignore[untyped-decorator]
def _on_shutting_down(**_: object) -> None:
    # Drains stop claiming at once, wait at most DISPATCHER_SHUTDOWN_GRACE_SECONDS for the
    # answers in flight, record them and give back the rest; Celery's warm shutdown then waits
    # for the tasks, which end within that grace.
    if _stopping is not None:
        _stopping.set()


def get_deliverer() -> Deliverer:
    """One Deliverer (and so one HTTP client) per worker process, created after fork."""
    global _deliverer
    if _deliverer is None or _deliverer[0] != os.getpid():
        _deliverer = (os.getpid(), Deliverer(get_settings()))
    return _deliverer[1]


# Celery leaves logging alone when this signal has a receiver: its records (and ours) go through
# dispatcher.logs, as text or JSON lines.
setup_logging.connect(logs.configure, weak=False)


@worker_process_init.connect  # type: ignore[untyped-decorator]
def _after_fork(**_: object) -> None:
    dispose_engines(close=False)  # never use (nor close) the parent's pooled connections
    # httpx logs every request's URL at INFO; in a worker its only requests are the pause
    # alert's, and that webhook URL is a secret.
    logging.getLogger("httpx").setLevel(logging.WARNING)


@worker_process_shutdown.connect  # type: ignore[untyped-decorator]
def _on_shutdown(**_: object) -> None:
    if _deliverer is not None and _deliverer[0] == os.getpid():
        _deliverer[1].close()


@app.task(name=TASK_NAME, acks_late=True)  # type: ignore[untyped-decorator]
def deliver(queue: str) -> dict[str, object]:
    summary = get_deliverer().drain(queue, max_seconds=DRAIN_SECONDS, stopping=stopping)
    if summary.more:
        notify_due([queue])
    return summary.as_dict()


def notify_due(queues: Iterable[str]) -> None:
    """Tell workers that ``queues`` have work due (a hint; the outbox is the truth)."""
    for queue in queues:
        deliver.apply_async((queue,))
