"""The obvious alternative the dispatcher is measured against: one Celery task per event.

The payload travels in the broker message and failures retry as Celery countdowns
(``autoretry_for`` + ``retry_backoff``). Given its best ordinary setup so that the comparison is
fair: one ``httpx.Client`` per worker process (keep-alive), ``acks_late`` like the dispatcher, no
result backend, and a worker at ``--loglevel=WARNING`` (Celery's INFO level logs two lines per
task, which would slow it down for no reason of its own).

Configured by the same variables as the dispatcher: ``DISPATCHER_BROKER_URL``, ``ECDP_BASE_URL``,
``ECDP_API_KEY``. ``bench/run.py`` starts it as
``celery -A naive worker --pool=prefork --concurrency=2 -Q naive`` with ``bench/`` on the path.
"""

from __future__ import annotations

import os
import sys

import httpx
from celery import Celery
from celery.signals import worker_ready

QUEUE = "naive"

app = Celery("naive", broker=os.environ.get("DISPATCHER_BROKER_URL", "redis://127.0.0.1:6379/14"))
app.conf.update(
    task_default_queue=QUEUE,
    task_acks_late=True,
    task_reject_on_worker_lost=True,
    task_ignore_result=True,
    broker_connection_retry_on_startup=True,
)

_client: tuple[int, httpx.Client] | None = None


def client() -> httpx.Client:
    """One client per process, made after fork (connections must not be shared across fork)."""
    global _client
    if _client is None or _client[0] != os.getpid():
        _client = (os.getpid(), httpx.Client(timeout=httpx.Timeout(10.0, connect=5.0)))
    return _client[1]


@app.task(name="naive.send", autoretry_for=(httpx.HTTPError,), retry_backoff=True, max_retries=12)  # type: ignore[untyped-decorator]
def send(endpoint: str, body: str) -> None:
    response = client().post(
        os.environ.get("ECDP_BASE_URL", "https://api.ecdp.app").rstrip("/") + endpoint,
        content=body.encode(),
        headers={
            "x-api-key": os.environ.get("ECDP_API_KEY", ""),
            "content-type": "application/json",
        },
    )
    response.raise_for_status()


@worker_ready.connect  # type: ignore[untyped-decorator]
def _ready(**_: object) -> None:
    # Celery's own "ready." line is INFO, which this worker does not log; run.py waits for this.
    print("naive worker ready", file=sys.stderr, flush=True)
