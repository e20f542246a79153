"""OpenTelemetry: a delivery attempt as a span in the trace of the request that enqueued it.

With the ``[otel]`` extra (``opentelemetry-api``) installed and an SDK configured by the
application, :func:`current_context` (called by ``enqueue``) stores the caller's W3C trace context
with the job, and the worker turns each attempt into a ``CLIENT`` span of that trace: its queue,
job id, custom event id, attempt number, HTTP status and outcome. Without the package nothing is
imported (a spec look-up at import time says whether it is there) and nothing changes; without a
configured SDK the API is a no-op and no context is stored.

Only the W3C trace context is stored (``traceparent``, ``tracestate``), whatever propagators the
application configured: OpenTelemetry baggage travels with the same global propagator and often
holds a user id or an email, which has no business in the outbox row.

Sentry receives the spans through its ``OTLPIntegration`` (sentry-sdk 2.x and 3.x); Jaeger, Tempo
and any OTLP backend through the SDK's OTLP exporter. A worker sets its SDK up in a module named
with ``dispatcher worker -I module`` (see the README).
"""

from __future__ import annotations

import importlib.util
import json
from datetime import datetime
from functools import cache
from typing import Any

AVAILABLE = importlib.util.find_spec("opentelemetry") is not None
TRACER_NAME = "ecdp-dispatcher"


STORED_KEYS = ("traceparent", "tracestate")


@cache
def _otel() -> Any:
    """The W3C trace-context propagator alone (never the global one, which adds baggage), and
    the trace API."""
    from opentelemetry import trace
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    return TraceContextTextMapPropagator(), trace


def current_context() -> str | None:
    """The caller's trace context as JSON (``traceparent``, ``tracestate``; no baggage), or
    None."""
    if not AVAILABLE:
        return None
    propagator, _ = _otel()
    carrier: dict[str, str] = {}
    propagator.inject(carrier)
    stored = {k: v for k, v in carrier.items() if k in STORED_KEYS}
    return json.dumps(stored, separators=(",", ":")) if stored else None


def current_ids() -> tuple[str, str] | None:
    """The active span's trace id and span id in W3C hex (32 and 16 digits), for JSON log lines:
    a log search then finds the trace, and the trace its log lines. None without a span."""
    if not AVAILABLE:
        return None
    _, trace = _otel()
    context = trace.get_current_span().get_span_context()
    if not context.is_valid:
        return None
    return f"{context.trace_id:032x}", f"{context.span_id:016x}"


def record_attempt(
    trace_context: str | None,
    *,
    name: str,
    started_at: datetime,
    duration_ms: int,
    attributes: dict[str, Any],
    failed: bool,
) -> None:
    """One finished attempt as a span, child of the stored context (none stored: no span)."""
    if not AVAILABLE or not trace_context:
        return
    propagator, trace = _otel()
    try:
        parent = propagator.extract(json.loads(trace_context))
    except (ValueError, TypeError):
        return  # a context we did not write: no span rather than a broken one
    start_ns = int(started_at.timestamp() * 1e9)
    tracer = trace.get_tracer(TRACER_NAME)
    span = tracer.start_span(
        name,
        context=parent,
        kind=trace.SpanKind.CLIENT,
        start_time=start_ns,
        attributes={k: v for k, v in attributes.items() if v is not None},
    )
    if failed:
        span.set_status(trace.Status(trace.StatusCode.ERROR))
    span.end(end_time=start_ns + duration_ms * 1_000_000)
