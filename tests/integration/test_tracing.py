"""OpenTelemetry: the producer's span and the delivery spans share a trace (the SDK's in-memory
exporter records them)."""

from __future__ import annotations

import sqlalchemy as sa
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from dispatcher import CustomEvent, enqueue
from dispatcher.delivery import Deliverer
from dispatcher.sandbox import Reply, Sandbox
from dispatcher.schema import jobs
from tests.support import settle

EXPORTER = InMemorySpanExporter()
_provider = TracerProvider()
_provider.add_span_processor(SimpleSpanProcessor(EXPORTER))
trace.set_tracer_provider(_provider)  # once per process: the API allows no second provider


def test_delivery_attempts_are_spans_of_the_producers_trace(
    deliverer: Deliverer,
    engine: sa.Engine,
    sandbox: Sandbox,
) -> None:
    EXPORTER.clear()
    sandbox.script(31, Reply(503))  # the first attempt fails, the retry is delivered
    with trace.get_tracer("shop").start_as_current_span("POST /orders"):
        job_id = enqueue(CustomEvent(31, customer_email="anna@example.com"))
    settle(deliverer, engine)

    spans = EXPORTER.get_finished_spans()
    producer = next(s for s in spans if s.name == "POST /orders")
    attempts = sorted(
        (s for s in spans if s.name == "ecdp POST /scenariocustomevents"),
        key=lambda s: s.start_time or 0,
    )
    assert len(attempts) == 2
    for span in attempts:
        assert span.context.trace_id == producer.context.trace_id
        assert span.parent is not None and span.parent.span_id == producer.context.span_id
        assert span.kind is trace.SpanKind.CLIENT
        assert span.attributes is not None
        assert span.attributes["dispatcher.job_id"] == int(job_id)
        assert span.attributes["dispatcher.custom_event_id"] == 31
        assert span.attributes["messaging.destination.name"] == "default"
    first, second = (s.attributes for s in attempts)
    assert first is not None and second is not None
    assert (first["http.response.status_code"], first["dispatcher.outcome"]) == (503, "retry")
    assert (second["http.response.status_code"], second["dispatcher.outcome"]) == (201, "delivered")
    assert (first["dispatcher.attempt"], second["dispatcher.attempt"]) == (1, 2)
    assert attempts[0].status.status_code is trace.StatusCode.ERROR
    assert "anna" not in str([s.attributes for s in spans])


def test_no_trace_no_context_no_span(
    deliverer: Deliverer,
    engine: sa.Engine,
) -> None:
    EXPORTER.clear()
    enqueue(CustomEvent(32, customer_id=1))  # no span is current: nothing to continue
    with engine.connect() as conn:
        assert conn.execute(sa.select(jobs.c.trace_context)).scalar() is None
    settle(deliverer, engine)
    assert EXPORTER.get_finished_spans() == ()


def test_baggage_is_never_stored_in_the_outbox(
    deliverer: Deliverer,
    engine: sa.Engine,
) -> None:
    """The global propagator injects W3C baggage too (often a user id or an email): only
    traceparent and tracestate reach the row, and the spans still join the trace."""
    from opentelemetry import baggage, context

    EXPORTER.clear()
    token = context.attach(baggage.set_baggage("user.email", "anna.private@example.com"))
    try:
        with trace.get_tracer("shop").start_as_current_span("POST /orders"):
            enqueue(CustomEvent(33, customer_id=7))
    finally:
        context.detach(token)
    with engine.connect() as conn:
        stored = conn.execute(sa.select(jobs.c.trace_context)).scalar()
    assert stored is not None and "traceparent" in stored
    assert "anna" not in stored and "baggage" not in stored
    settle(deliverer, engine)
    producer = next(s for s in EXPORTER.get_finished_spans() if s.name == "POST /orders")
    attempt = next(s for s in EXPORTER.get_finished_spans() if s.name.startswith("ecdp "))
    assert attempt.context.trace_id == producer.context.trace_id
