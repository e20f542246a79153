"""Tell a person when a queue pauses or its circuit opens: one ERROR log line and, if
configured, a webhook notice.

A pause is by design (a revoked key must not burn every job's attempts), so after it nothing
happens until someone looks; this is what makes them look. The worker whose transaction flipped
the pause switch calls :func:`notify_pause` once, after that transaction committed, so each
pause is announced once however many workers saw the 401. Likewise the worker that opened a
queue's circuit breaker (:mod:`dispatcher.breaker`) calls :func:`notify_circuit_open` once per
opening: no operator is needed (the circuit closes by itself when a probe succeeds), but the API
is down, or unreachable from here, and deliveries wait.

Neither the log line nor the notice carries the API key: only the queue, the status code and
the API's problem ``detail``, with customer identifiers masked (:func:`dispatcher.masking.redact`:
a Slack channel or a log store is no place for a customer's email or phone number). The webhook
URL is a secret too (Slack puts its token in the path), so it is never logged, not even when
posting to it fails.

The post has a total deadline (:data:`WEBHOOK_DEADLINE_SECONDS`), not only httpx's per-read
timeout, which a webhook that trickles its answer byte by byte would reset forever: past the
deadline the worker goes back to delivering, and the connection is closed (the thread reading
it ends at its next read).
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from typing import Any

import httpx

from dispatcher.breaker import Circuit
from dispatcher.config import Secret
from dispatcher.masking import redact

log = logging.getLogger("dispatcher.alerts")

WEBHOOK_TIMEOUT_SECONDS = 5.0  # httpx's, per connect and per read
WEBHOOK_DEADLINE_SECONDS = 10.0  # the whole post, answer included
_DETAIL_LIMIT = 1000


def slack_escape(text: str) -> str:
    """``&``, ``<`` and ``>`` as Slack's mrkdwn needs them (``&amp;``, ``&lt;``, ``&gt;``), so
    an API's words cannot become ``<!channel>``, a mention or a disguised ``<url|link>``."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def pause_notice(queue: str, status_code: int | None, detail: str | None) -> dict[str, Any]:
    """The JSON posted to the webhook: Slack's ``text`` (the detail escaped) plus the same facts
    as fields (``detail`` raw, for machines)."""
    detail = _clip(detail)
    cause = f"after HTTP {status_code}" if status_code is not None else "before sending"
    text = (
        f":rotating_light: ecdp-dispatcher: queue `{queue}` paused {cause}"
        + (f": {slack_escape(detail)}" if detail else "")
        + f". Nothing is sent for it until an operator resumes it (`dispatcher resume {queue}`"
        " or the admin page); its jobs wait."
    )
    return {
        "text": text,
        "event": "queue_paused",
        "queue": queue,
        "status_code": status_code,
        "detail": detail,
    }


def notify_pause(
    queue: str,
    status_code: int | None,
    detail: str | None,
    *,
    webhook_url: Secret | str | None,
    post: Callable[..., Any] = httpx.post,
) -> None:
    """Log the pause at ERROR (logfmt-style, with the same fields as ``extra``) and POST the
    notice to ``webhook_url`` if set. Never raises: an alert must not break delivery."""
    detail = _clip(detail)
    log.error(
        "queue paused queue=%s status_code=%s detail=%s",
        queue,
        "-" if status_code is None else status_code,
        json.dumps(detail, ensure_ascii=False),
        extra={"queue": queue, "status_code": status_code, "detail": detail},
    )
    _post("pause", queue, pause_notice(queue, status_code, detail), webhook_url, post)


def circuit_notice(queue: str, reason: str | None) -> dict[str, Any]:
    """The JSON posted to the webhook when a queue's circuit opens: Slack's ``text`` (the reason
    escaped) plus the same facts as fields (``detail`` raw)."""
    reason = _clip(reason)
    text = (
        f":warning: ecdp-dispatcher: circuit of queue `{queue}` opened"
        + (f": {slack_escape(reason)}" if reason else "")
        + ". The ECDP API looks down (or unreachable from here): nothing is sent for this queue"
        " but one probe at a growing interval, and delivery resumes by itself when a probe"
        " succeeds. Its jobs wait; the outage dead-letters none of them."
    )
    return {
        "text": text,
        "event": "circuit_open",
        "queue": queue,
        "circuit": Circuit.OPEN,
        "detail": reason,
    }


def notify_circuit_open(
    queue: str,
    reason: str | None,
    *,
    webhook_url: Secret | str | None,
    post: Callable[..., Any] = httpx.post,
) -> None:
    """Log the opening at ERROR (logfmt-style, with the same fields as ``extra``) and POST the
    notice to ``webhook_url`` if set. Call it once per opening (not per failed probe). Never
    raises: an alert must not break delivery."""
    reason = _clip(reason)
    log.error(
        "circuit open queue=%s detail=%s",
        queue,
        json.dumps(reason, ensure_ascii=False),
        extra={"queue": queue, "circuit": Circuit.OPEN, "detail": reason},
    )
    _post("circuit", queue, circuit_notice(queue, reason), webhook_url, post)


def _post(
    kind: str,
    queue: str,
    notice: dict[str, Any],
    webhook_url: Secret | str | None,
    post: Callable[..., Any],
) -> None:
    url = webhook_url.reveal() if isinstance(webhook_url, Secret) else webhook_url
    if not url:
        return
    try:
        response = _post_within(url, notice, post, WEBHOOK_DEADLINE_SECONDS)
        response.raise_for_status()
    except Exception as exc:
        # Only the exception's type and status: httpx messages contain the (secret) URL.
        status = getattr(getattr(exc, "response", None), "status_code", None)
        log.warning(
            "%s alert webhook failed for queue %s: %s%s",
            kind,
            queue,
            type(exc).__name__,
            f" (HTTP {status})" if status is not None else "",
        )


def _post_within(
    url: str, notice: dict[str, Any], post: Callable[..., Any], deadline: float
) -> Any:
    """``post``'s answer, or TimeoutError after ``deadline`` seconds in all. httpx's own post
    is sent through a client of ours, closed at the deadline so the trickle ends too."""
    client = httpx.Client(timeout=WEBHOOK_TIMEOUT_SECONDS) if post is httpx.post else None
    outcome: list[Any] = []

    def run() -> None:
        try:
            if client is not None:
                outcome.append(client.post(url, json=notice))
            else:
                outcome.append(post(url, json=notice, timeout=WEBHOOK_TIMEOUT_SECONDS))
        except Exception as exc:
            outcome.append(exc)

    thread = threading.Thread(target=run, name="alert-webhook", daemon=True)
    thread.start()
    thread.join(deadline)
    if client is not None:
        client.close()
    if thread.is_alive() or not outcome:
        raise TimeoutError(f"no complete answer within {deadline:g}s")
    if isinstance(outcome[0], Exception):
        raise outcome[0]
    return outcome[0]


def _clip(detail: str | None) -> str | None:
    """``detail`` masked, on one line, at most ``_DETAIL_LIMIT`` characters."""
    detail = redact(detail)
    if not detail:
        return None
    detail = " ".join(detail.split())
    return detail if len(detail) <= _DETAIL_LIMIT else detail[: _DETAIL_LIMIT - 1] + "…"
