"""The HTTP side: one long-lived ``httpx.Client`` per worker process, one typed answer per POST.

This module is the cut-off point between the delivery logic and the network: it never raises for an
HTTP or transport failure, it returns an :class:`Answer` that :mod:`dispatcher.policy` can judge.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime

import httpx

from dispatcher.config import Secret
from dispatcher.db import utcnow

DRAIN_LIMIT = 8 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class Answer:
    started_at: datetime
    duration_ms: int
    status_code: int | None  # None: no HTTP answer (see ``error``)
    body: bytes  # at most ``body_limit`` bytes of it
    body_size: int  # the whole body's size, to say how much was cut
    retry_after: str | None
    error: str | None


class EcdpClient:
    """POSTs outbox payloads to the ECDP API. Thread-safe (httpx.Client is)."""

    def __init__(
        self,
        base_url: str,
        *,
        timeout: float = 10.0,
        connect_timeout: float = 5.0,
        max_connections: int = 16,
        body_limit: int = 8192,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.body_limit = body_limit
        self._client = httpx.Client(
            timeout=httpx.Timeout(timeout, connect=connect_timeout),
            limits=httpx.Limits(
                max_connections=max_connections, max_keepalive_connections=max_connections
            ),
            follow_redirects=False,  # a redirect is an answer to judge, not to follow with the key
            transport=transport,
            headers={"user-agent": "ecdp-dispatcher"},
        )

    def post(self, endpoint: str, payload: str | bytes, api_key: Secret) -> Answer:
        body = payload.encode() if isinstance(payload, str) else payload
        started_at = utcnow()
        start = time.perf_counter()
        try:
            with self._client.stream(
                "POST",
                self.base_url + endpoint,
                content=body,
                headers={"x-api-key": api_key.reveal(), "content-type": "application/json"},
            ) as response:
                kept, size = self._read_capped(response)
                return Answer(
                    started_at=started_at,
                    duration_ms=_ms_since(start),
                    status_code=response.status_code,
                    body=kept,
                    body_size=size,
                    retry_after=response.headers.get("retry-after"),
                    error=None,
                )
        except httpx.TimeoutException as exc:
            error = f"timeout: {type(exc).__name__}"
        except httpx.TransportError as exc:
            error = f"connection error: {type(exc).__name__}: {exc}"
        return Answer(started_at, _ms_since(start), None, b"", 0, None, error[:1000])

    def _read_capped(self, response: httpx.Response) -> tuple[bytes, int]:
        """Keep the first ``body_limit`` bytes; read and drop the rest (up to a few MiB) so the
        connection can be reused. A body larger than that is abandoned with its connection."""
        kept = bytearray()
        size = 0
        for chunk in response.iter_bytes():
            size += len(chunk)
            if len(kept) < self.body_limit:
                kept += chunk[: self.body_limit - len(kept)]
            if size > DRAIN_LIMIT:
                break
        return bytes(kept), size

    def close(self) -> None:
        self._client.close()


def _ms_since(start: float) -> int:
    return round((time.perf_counter() - start) * 1000)
