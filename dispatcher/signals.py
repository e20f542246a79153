"""Coalesced "work is due" signals, sent off the producer's commit path.

Publishing a Celery message costs about a millisecond, more than the INSERT it announces. So a
commit only records which queues have new work and wakes a background thread, which publishes one
signal per queue for everything recorded since its last round, at most one round every 20 ms.
Every commit is followed by a publish that starts after it, so no event waits for the sweeper
unless the broker is down (or the process exits before the thread runs: ``flush`` at exit, and
the sweeper, cover that).
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable

log = logging.getLogger("dispatcher.signals")


class Signaller:
    """``make_send`` is called once, in the first caller's thread: importing Celery from the
    background thread could happen during interpreter shutdown, when imports that register exit
    hooks fail."""

    def __init__(
        self, make_send: Callable[[], Callable[[str], None]], min_interval: float = 0.02
    ) -> None:
        self._make_send = make_send
        self._min_interval = min_interval
        self._send: Callable[[str], None] | None = None
        self._lock = threading.Lock()
        self._pending: set[str] = set()
        self._busy = False
        self._wake = threading.Condition(self._lock)
        self._thread: threading.Thread | None = None
        self._pid = 0

    def request(self, queues: Iterable[str]) -> None:
        """Ask for a signal for ``queues``; returns at once."""
        if self._send is None:
            self._send = self._make_send()
        with self._lock:
            self._pending.update(queues)
            if self._thread is None or self._pid != os.getpid() or not self._thread.is_alive():
                self._pid = os.getpid()  # after fork, the parent's thread is not ours
                self._thread = threading.Thread(
                    target=self._run, name="dispatcher-signals", daemon=True
                )
                self._thread.start()
            self._wake.notify_all()

    def flush(self, timeout: float = 5.0) -> bool:
        """Publish what is pending now, in this thread, and wait for a round in progress.

        Short-lived processes (the CLI) call this before exiting; so does ``atexit``.
        """
        with self._lock:
            queues, self._pending = self._pending, set()
        self._publish(queues)
        with self._lock:
            return self._wake.wait_for(lambda: not self._busy, timeout)

    def _publish(self, queues: set[str]) -> None:
        send = self._send
        if send is None:
            return
        for queue in sorted(queues):
            try:
                send(queue)
            except Exception:
                log.warning(
                    "could not signal workers for queue %s; the sweeper will",
                    queue,
                    exc_info=True,
                )

    def _run(self) -> None:
        while True:
            with self._lock:
                self._wake.wait_for(lambda: bool(self._pending))
                queues, self._pending = self._pending, set()
                self._busy = True
            self._publish(queues)
            with self._lock:
                self._busy = False
                self._wake.notify_all()
            # At most one round per few ms: under a stream of commits, one publish announces
            # many of them instead of each paying for its own (the publish costs more CPU than
            # the INSERT), and no commit waits longer than this for its signal.
            time.sleep(self._min_interval)


def _celery_sender() -> Callable[[str], None]:
    from dispatcher.tasks import notify_due  # Celery is imported only once a signal is needed

    return lambda queue: notify_due([queue])


signaller = Signaller(_celery_sender)
atexit.register(signaller.flush)
