"""Coalesced "work is due" signals, sent off the producer's commit path; never waits on a broker.

Publishing a Celery message costs about a millisecond, more than the INSERT it announces. So a
commit only records which queues have new work and wakes a background thread, which publishes one
signal per queue for everything recorded since its last round, at most one round every 20 ms.
Every commit is followed by a publish that starts after it, so no event waits for the sweeper
unless the broker is down or hung.

A producer never waits on the broker:

- the caller's thread only takes a lock and notifies the thread; the thread publishes on a
  connection of its own with connect and socket timeouts (:data:`SEND_TIMEOUT`) and no retries,
  so a broker that is down, refusing or hung costs the thread about a second per round;
- :meth:`Signaller.flush` (called by the CLI before it exits, and at interpreter exit) hands
  what is pending to that thread and waits for it at most :data:`EXIT_TIMEOUT` seconds;
- a failed or late signal logs one warning per outage; the sweeper finds the jobs anyway.

Connections without an after-commit hook (a plain psycopg connection) are *watched*: their queues
are signalled once the connection's transaction has ended (:meth:`Signaller.request_when`).
"""

from __future__ import annotations

import atexit

# Imported with this module (at the application's start-up), not by the signals thread: Celery's
# import needs it, and it registers an exit hook, which Python refuses once the interpreter has
# begun to shut down; with it loaded, that thread can still import Celery and publish while a
# one-shot script exits (its atexit flush waits for it).
import concurrent.futures.thread  # noqa: F401
import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from dispatcher.config import broker_timeouts
from dispatcher.logs import notice_default_broker

log = logging.getLogger("dispatcher.signals")

SEND_TIMEOUT = 1.0  # connect and socket timeout of one publish
EXIT_TIMEOUT = 2.0  # the longest a process waits for its signals when it exits
BROKER_DOWN_PAUSE = 5.0  # after a failed publish, leave signals to the sweeper for this long
WATCH_LIMIT = 600.0  # a watched transaction still open after this long is left to the sweeper


class Signaller:
    """``make_send`` (which imports Celery and the broker's client: most of a second) is called
    once, by the background thread when it first publishes, never on a producer's thread: a web
    worker's first request after a deploy pays for its INSERT, not for Celery (or by
    :meth:`prepare`, for a caller that wants it now, e.g. the CLI). A process that exits at once
    still signals: the import works during interpreter shutdown (see the import of
    ``concurrent.futures.thread`` above), and the exit flush waits for it; should it fail all the
    same, the warning below says so and the sweeper signals those jobs.

    ``fallback`` ends the warning about a failed signal: who signals instead (the sweeper uses
    a Signaller too, so that its database work never waits on the broker)."""

    def __init__(
        self,
        make_send: Callable[[], Callable[[str], None]],
        min_interval: float = 0.02,
        fallback: str = "the sweeper will deliver the jobs",
    ) -> None:
        self._make_send = make_send
        self._min_interval = min_interval
        self._fallback = fallback
        self._send: Callable[[str], None] | None = None
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._pending: set[str] = set()
        self._watched: list[tuple[Callable[[], bool], frozenset[str], float]] = []
        self._busy = False
        self._warned = False
        self._down_until = 0.0  # monotonic time until which the broker counts as down
        self._thread: threading.Thread | None = None
        self._pid = 0

    @property
    def prepared(self) -> bool:
        return self._send is not None

    def prepare(self) -> None:
        """Import what publishing needs, now, in this thread (idempotent)."""
        if self._send is None:
            self._send = self._make_send()

    def request(self, queues: Iterable[str]) -> None:
        """Ask for a signal for ``queues``; returns at once: it takes a lock and adds to a set
        of queue names (bounded by the number of queues), and never imports or publishes."""
        with self._lock:
            self._pending.update(queues)
            self._ensure_thread()
            self._wake.notify_all()

    def request_when(self, queues: Iterable[str], done: Callable[[], bool]) -> None:
        """Signal ``queues`` once ``done()`` is true (polled by the background thread, which
        must be cheap and safe to call from another thread); returns at once."""
        with self._lock:
            self._watched.append((done, frozenset(queues), time.monotonic() + WATCH_LIMIT))
            self._ensure_thread()
            self._wake.notify_all()

    def flush_before_exit(self, timeout: float = EXIT_TIMEOUT) -> bool:
        """:meth:`flush` for a process that exits next (the CLI): with signals to send, the
        import is done here first, so that the timeout is the broker's alone."""
        with self._lock:
            waiting = bool(self._pending or self._watched or self._busy)
        if waiting and self._send is None:
            with contextlib.suppress(Exception):  # the background thread tries again, and warns
                self.prepare()
        return self.flush(timeout)

    def flush(self, timeout: float = EXIT_TIMEOUT) -> bool:
        """Wait, at most ``timeout`` seconds, until what is pending now has been published (or
        has failed). Short-lived processes (the CLI) call this before exiting; so does ``atexit``.

        The publishing happens in the background thread, so a hung broker costs this call the
        timeout, never more. Returns whether everything went out in time.
        """
        deadline = time.monotonic() + timeout
        with self._lock:
            self._pending |= self._due_watches()  # e.g. a psycopg transaction just committed
            if not self._pending and not self._busy:
                return True
            if time.monotonic() < self._down_until:  # it has just failed: already warned
                return False
            self._ensure_thread()
            self._wake.notify_all()
            done = self._wake.wait_for(
                lambda: not self._pending and not self._busy, max(0.0, deadline - time.monotonic())
            )
            late = sorted(self._pending) if not done else []
        if not done:
            self._warn(
                f"could not signal workers within {timeout:g} s (is the broker down or hung?); "
                f"{self._fallback}{' of ' + ', '.join(late) if late else ''}"
            )
        return done

    def _ensure_thread(self) -> None:  # with self._lock held
        if self._thread is None or self._pid != os.getpid() or not self._thread.is_alive():
            self._pid = os.getpid()  # after fork, the parent's thread is not ours
            self._busy = False
            self._thread = threading.Thread(
                target=self._run, name="dispatcher-signals", daemon=True
            )
            self._thread.start()

    def _warn(self, message: str) -> None:
        if not self._warned:  # one warning per outage; a successful publish re-arms it
            self._warned = True
            log.warning(message)

    def _sender(self) -> Callable[[str], None] | None:
        """The publishing function, made at the first publish (in the background thread)."""
        if self._send is None:
            try:
                self._send = self._make_send()
            except Exception as exc:
                self._down_until = time.monotonic() + BROKER_DOWN_PAUSE
                self._warn(
                    f"could not prepare the workers' signals ({type(exc).__name__}: "
                    f"{str(exc)[:200]}); {self._fallback}"
                )
        return self._send

    def _publish(self, queues: set[str]) -> None:
        if time.monotonic() < self._down_until:
            return  # the broker failed a moment ago: the sweeper signals these
        send = self._sender()
        if send is None:
            return
        for queue in sorted(queues):
            try:
                send(queue)
            except Exception as exc:
                # The broker is down or hung: the remaining queues would each cost a timeout
                # too, and so would the next rounds; the sweeper signals them all.
                self._down_until = time.monotonic() + BROKER_DOWN_PAUSE
                self._warn(
                    f"could not signal workers for queue {queue} ({type(exc).__name__}: "
                    f"{str(exc)[:200]}); {self._fallback}"
                )
                return
        if self._warned:
            self._warned = False
            log.info("signalling workers again")

    def _due_watches(self) -> set[str]:  # with self._lock held
        now = time.monotonic()
        due: set[str] = set()
        keep = []
        for done, queues, give_up in self._watched:
            try:
                finished = done() or now > give_up
            except Exception:
                finished = True  # the connection is gone: its transaction has ended one way
            if finished:
                due |= queues
            else:
                keep.append((done, queues, give_up))
        self._watched = keep
        return due

    def _run(self) -> None:
        while True:
            with self._lock:
                while True:
                    self._pending |= self._due_watches()
                    if self._pending:
                        break
                    self._wake.wait(self._min_interval if self._watched else None)
                queues, self._pending = self._pending, set()
                self._busy = True
            try:
                self._publish(queues)
            finally:
                with self._lock:
                    self._busy = False
                    self._wake.notify_all()
            # At most one round per few ms: under a stream of commits, one publish announces
            # many of them instead of each paying for its own (the publish costs more CPU than
            # the INSERT), and no commit waits longer than this for its signal.
            time.sleep(self._min_interval)


def celery_sender() -> Callable[[str], None]:
    """Publish ``dispatcher.deliver(queue)`` on a connection of our own with short timeouts and
    no retries (the Celery app's own pool retries a lost broker for a long time)."""
    from dispatcher.tasks import app, deliver  # Celery is imported only once a signal is needed

    notice_default_broker()  # no DISPATCHER_BROKER_URL: say where the signals go, once

    url = str(app.conf.broker_write_url or app.conf.broker_url or "")
    options: dict[str, Any] = broker_timeouts(url, SEND_TIMEOUT)
    if not url.startswith("sqla+"):  # that transport hands every option to create_engine()
        options.update(max_retries=0, interval_start=0, interval_step=0, interval_max=0)

    def connect() -> Any:
        conn = app.connection_for_write(connect_timeout=SEND_TIMEOUT, transport_options=options)
        conn.transport  # noqa: B018 -- imports the transport and its client library now
        return conn

    state: dict[str, Any] = {"conn": connect(), "producer": None, "pid": os.getpid()}

    def send(queue: str) -> None:
        if state["conn"] is None or state["pid"] != os.getpid():  # never a parent's socket
            state.update(conn=connect(), producer=None, pid=os.getpid())
        try:
            if state["producer"] is None:
                state["producer"] = state["conn"].Producer()
            deliver.apply_async((queue,), producer=state["producer"], retry=False)
        except Exception:
            # Start afresh next time: never reuse a connection a timeout left half-broken.
            state["conn"] = state["producer"] = None
            raise

    return send


signaller = Signaller(celery_sender)
atexit.register(signaller.flush)
