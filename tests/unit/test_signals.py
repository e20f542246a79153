"""The signaller on its own: requests never wait, a flush is bounded whatever the broker does, an
outage logs one warning, and watched transactions are signalled once they end."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

import pytest

from dispatcher.signals import Signaller


def recording() -> tuple[list[str], Callable[[], Callable[[str], None]]]:
    sent: list[str] = []
    return sent, lambda: sent.append


def test_requests_are_coalesced_and_flushed() -> None:
    sent, make = recording()
    s = Signaller(make)
    s.request(["a", "b"])
    s.request(["a"])
    assert s.flush(5.0)
    s.request(["a"])
    assert s.flush(5.0)
    assert sorted(set(sent)) == ["a", "b"]
    assert sent.count("a") <= 2


def test_a_hung_broker_costs_a_flush_its_timeout_and_one_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    release = threading.Event()

    def make() -> Callable[[str], None]:
        return lambda queue: release.wait(30)  # a publish that never answers

    s = Signaller(make)
    try:
        started = time.monotonic()
        s.request(["a"])
        s.request(["b"])
        assert time.monotonic() - started < 1.0  # the caller never waits on the broker
        with caplog.at_level(logging.WARNING, logger="dispatcher.signals"):
            assert not s.flush(0.5)
            assert not s.flush(0.5)
        assert time.monotonic() - started < 5.0  # each flush costs its timeout, no more
        assert len([r for r in caplog.records if "could not signal" in r.message]) == 1
    finally:
        release.set()


def test_a_failing_broker_logs_once_per_outage(caplog: pytest.LogCaptureFixture) -> None:
    calls: list[str] = []

    def send(queue: str) -> None:
        calls.append(queue)
        raise ConnectionRefusedError("refused")

    s = Signaller(lambda: send)
    with caplog.at_level(logging.WARNING, logger="dispatcher.signals"):
        for queue in ("a", "b", "c"):
            s.request([queue])
            s.flush(2.0)
    assert calls[:1] == ["a"]  # then the broker counts as down for a while: no more attempts
    assert len(calls) == 1
    assert len([r for r in caplog.records if "could not signal" in r.message]) == 1


def test_a_watched_transaction_is_signalled_when_it_ends() -> None:
    sent, make = recording()
    s = Signaller(make)
    a_open, b_open = threading.Event(), threading.Event()
    b_open.set()
    s.request_when(["a"], lambda: not a_open.is_set())
    s.request_when(["b"], lambda: not b_open.is_set())
    s.flush(2.0)
    assert sent == ["a"]  # "b"'s transaction is still open
    b_open.clear()
    assert s.flush(2.0)
    assert sent == ["a", "b"]


def test_the_first_request_leaves_the_import_to_the_background_thread() -> None:
    """Issue 25: a web worker's first enqueue pays for its INSERT, not for importing Celery
    (most of a second): ``make_send`` runs on the signals thread, and ``request`` returns at
    once even while it is still importing."""
    made_on: list[str] = []
    sent: list[str] = []

    def make_send() -> Callable[[str], None]:
        made_on.append(threading.current_thread().name)
        time.sleep(1.0)  # an import that takes a second
        return sent.append

    signaller = Signaller(make_send)
    started = time.monotonic()
    signaller.request(["q"])
    signaller.request_when(["r"], lambda: True)
    assert time.monotonic() - started < 0.5
    assert signaller.flush(5.0)
    assert made_on == ["dispatcher-signals"] and sorted(sent) == ["q", "r"]


def test_a_sender_that_cannot_be_made_leaves_the_jobs_to_the_sweeper(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def make_send() -> Callable[[str], None]:
        raise RuntimeError("can't register atexit after shutdown")

    signaller = Signaller(make_send)
    signaller.request(["q"])
    assert signaller.flush(2.0)  # nothing left to wait for: the round failed at once
    assert "could not prepare the workers' signals" in caplog.text
    assert "the sweeper will deliver the jobs" in caplog.text
