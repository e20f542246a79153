"""Test doubles for the network edge: a :class:`~dispatcher.ecdp.Sender` without a network.

``Deliverer(settings, client=StubSender())`` delivers every job with a 201 and keeps what it
sent; give it ``respond`` to script the API (a status, an :class:`~dispatcher.ecdp.Answer`, or
an exception raised as a broken client would raise it). For the real API's behaviour over HTTP,
use :class:`dispatcher.sandbox.Sandbox` instead.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field

from dispatcher.config import Secret
from dispatcher.db import utcnow
from dispatcher.ecdp import Answer


def answer(
    status_code: int, body: bytes = b"", *, retry_after: str | None = None, duration_ms: int = 1
) -> Answer:
    """An HTTP answer as :class:`~dispatcher.ecdp.EcdpClient` returns one."""
    return Answer(utcnow(), duration_ms, status_code, body, len(body), retry_after, None)


@dataclass(frozen=True)
class Sent:
    endpoint: str
    payload: bytes


@dataclass
class StubSender:
    """Answers each :meth:`submit` at once with ``respond(endpoint, payload)`` (201 unless told
    otherwise); if ``respond`` raises, so does :meth:`submit`. Thread-safe."""

    respond: Callable[[str, bytes], int | Answer] = lambda endpoint, payload: 201
    sent: list[Sent] = field(default_factory=list)
    closed: bool = False
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def submit(self, endpoint: str, payload: str | bytes, api_key: Secret) -> Future[Answer]:
        body = payload.encode() if isinstance(payload, str) else payload
        with self._lock:
            self.sent.append(Sent(endpoint, body))
        result = self.respond(endpoint, body)
        future: Future[Answer] = Future()
        future.set_result(answer(result) if isinstance(result, int) else result)
        return future

    def close(self) -> None:
        self.closed = True
