"""Coalesced "work is due" signals, sent off the producer's commit path.

Publishing a Celery message costs about a millisecond, more than the INSERT it announces. So a
commit only records which queues have new work and wakes a background thread, which publishes one
signal per queue for everything recorded since its last round. Every commit is followed by a
publish that starts after it, so no event waits for the sweeper unless the broker is down (or
the process exits before the thread runs: ``flush`` at exit, and the sweeper, cover that).
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
from collections.abc import Callable, Iterable

log = logging.getLogger("dispatcher.signals")


class Signaller:
    def __init__(self, send: Callable[[str], None]) -> None:
        self._send = send
        self._lock = threading.Lock()
        self._pending: set[str] = set()
        self._busy = False
        self._wake = threading.Condition(self._lock)
        self._thread: threading.Thread | None = None
        self._pid = 0

    def request(self, queues: Iterable[str]) -> None:
        """Ask for a signal for ``queues``; returns at once."""
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
        """Wait until everything requested so far has been published (or tried)."""
        with self._lock:
            return self._wake.wait_for(lambda: not self._pending and not self._busy, timeout)

    def _run(self) -> None:
        while True:
            with self._lock:
                self._wake.wait_for(lambda: bool(self._pending))
                queues, self._pending = self._pending, set()
                self._busy = True
            for queue in sorted(queues):
                try:
                    self._send(queue)
                except Exception:
                    log.warning(
                        "could not signal workers for queue %s; the sweeper will",
                        queue,
                        exc_info=True,
                    )
            with self._lock:
                self._busy = False
                self._wake.notify_all()


def _send_celery(queue: str) -> None:
    from dispatcher.tasks import notify_due  # Celery is imported only when a signal is sent

    notify_due([queue])


signaller = Signaller(_send_celery)
atexit.register(signaller.flush)
