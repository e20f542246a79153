"""OpenTelemetry: the producer's span and the delivery spans share a trace (the SDK's in-memory
exporter records them)."""

from __future__ import annotations

import http.server
import os
import threading
from pathlib import Path

import pytest
import sqlalchemy as sa
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from dispatcher import CustomEvent, enqueue
from dispatcher.delivery import Deliverer
from dispatcher.sandbox import Reply, Sandbox
from dispatcher.schema import jobs
from tests.support import settle, start, statuses, stop, wait_until

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


def test_json_log_lines_carry_the_active_spans_ids() -> None:
    import json
    import logging

    from dispatcher.logs import JsonFormatter

    def line() -> dict[str, object]:
        record = logging.LogRecord("shop", logging.INFO, __file__, 1, "placed", None, None)
        return json.loads(JsonFormatter().format(record))  # type: ignore[no-any-return]

    assert "trace_id" not in line() and "span_id" not in line()
    with trace.get_tracer("shop").start_as_current_span("POST /orders") as span:
        inside = line()
    context = span.get_span_context()
    assert inside["trace_id"] == f"{context.trace_id:032x}"
    assert inside["span_id"] == f"{context.span_id:016x}"


# The worker recipe of docs/guides/observability.md, run: `dispatcher worker -I <module>`, the
# module setting up Sentry's OTLPIntegration (sentry-sdk 2.x/3.x); the attempts reach Sentry's
# OTLP endpoint (a loopback server here) in the producer's trace.
TELEMETRY = """
import os

import sentry_sdk
from sentry_sdk.integrations.otlp import OTLPIntegration

sentry_sdk.init(dsn=os.environ["SENTRY_DSN"], integrations=[OTLPIntegration()])
"""


@pytest.mark.postgres
@pytest.mark.redis
@pytest.mark.slow
def test_a_worker_started_with_minus_i_sends_its_spans_to_sentry_over_otlp(
    system: dict[str, str],
    pg_test_url: str,
    tmp_path: Path,
) -> None:
    pytest.importorskip("sentry_sdk.integrations.otlp")
    received: list[tuple[str, bytes]] = []

    class Sentry(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("content-length") or 0))
            received.append((self.path, body))
            self.send_response(200)
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Sentry)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    (tmp_path / "telemetry.py").write_text(TELEMETRY)
    env = system | {
        "SENTRY_DSN": f"http://publickey@127.0.0.1:{server.server_address[1]}/1",
        "OTEL_BSP_SCHEDULE_DELAY": "100",  # export within 0.1 s (the pool's processes never
        "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")]),
    }  # run atexit, so a batch waiting for the default 5 s would be lost at the worker's stop)
    worker = start(env, "worker", "-I", "telemetry", "--concurrency=1", log=tmp_path / "w.log")
    try:
        with trace.get_tracer("shop").start_as_current_span("POST /orders") as producer:
            enqueue(CustomEvent(34, customer_id=1))
        trace_id = producer.get_span_context().trace_id.to_bytes(16, "big")
        wait_until(lambda: statuses(pg_test_url).get("delivered") == 1, "the delivery")

        def exported() -> bool:
            return any(
                "/api/1/integration/otlp/v1/traces" in path and trace_id in body
                for path, body in received
            )

        wait_until(exported, "the attempt's span at Sentry's OTLP endpoint")
    finally:
        stop(worker)
        server.shutdown()
        server.server_close()
    (_path, body) = next(r for r in received if "otlp" in r[0] and trace_id in r[1])
    assert b"ecdp POST /scenariocustomevents" in body
