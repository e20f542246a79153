"""``dispatcher``: thin click commands over the producer, outbox and admin APIs."""

from __future__ import annotations

import contextlib
import logging
import re
import signal
import sys
import threading
from collections.abc import Iterator
from typing import Any, NoReturn

import click
import sqlalchemy as sa

from dispatcher import outbox
from dispatcher.config import DEFAULT_QUEUE, ConfigError, get_settings
from dispatcher.db import get_engine, utcnow
from dispatcher.events import (
    CustomEvent,
    Event,
    SegmentEvent,
    ValidationError,
    event_from_json,
)

FIELD_SPEC = re.compile(r"^(?P<name>[^=]+):(?P<type>[A-Za-z]+)=(?P<value>.*)$", re.DOTALL)


def fail(message: str, code: int = 1) -> NoReturn:
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


@click.group()
@click.option("-v", "--verbose", is_flag=True, help="Log at DEBUG level.")
def main(verbose: bool) -> None:
    """Deliver custom events from the SQL outbox to the ExpertSender CDP API."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        get_settings()
    except ConfigError as exc:
        fail(str(exc))


def _engine() -> sa.Engine:
    return get_engine(get_settings().database_url)


# --------------------------------------------------------------------------- schema


@main.command()
@click.option("--revision", default="head", show_default=True)
def migrate(revision: str) -> None:
    """Create or upgrade the outbox tables (Alembic)."""
    from dispatcher.migrate import upgrade

    upgrade(get_settings().database_url, revision)
    click.echo(f"outbox schema at {revision}")


# --------------------------------------------------------------------------- producing


def _parse_fields(specs: tuple[str, ...]) -> list[dict[str, str]]:
    """``NAME:TYPE=VALUE`` -> data-field mappings; the event validates them with everything else."""
    parsed, bad = [], []
    for spec in specs:
        m = FIELD_SPEC.match(spec)
        if m:
            parsed.append({"name": m["name"], "type": m["type"], "value": m["value"]})
        else:
            bad.append(f"--field: expected NAME:TYPE=VALUE (got {spec!r:.80})")
    if bad:
        raise ValidationError(bad)
    return parsed


def _read_events(path: str) -> Iterator[tuple[int, Event | ValidationError]]:
    stream = click.open_file(path, "rb")
    with stream:
        for number, line in enumerate(stream, start=1):
            if not line.strip():
                continue
            try:
                yield number, event_from_json(line)
            except ValidationError as exc:
                yield number, exc


@main.command()
@click.option("--event-id", type=int, help="customEventId")
@click.option("--customer-id", type=int)
@click.option("--customer-email")
@click.option("--customer-email-md5")
@click.option("--customer-email-sha256")
@click.option("--customer-phone")
@click.option("--customer-crm-id")
@click.option("--segment", "segments", type=int, multiple=True, help="Segment id (repeatable).")
@click.option(
    "--field", "fields", multiple=True, metavar="NAME:TYPE=VALUE", help="A data field (repeatable)."
)
@click.option("--queue", default=DEFAULT_QUEUE, show_default=True)
@click.option("--dedupe-key")
@click.option(
    "--file",
    "path",
    type=click.Path(dir_okay=False, allow_dash=True),
    help="JSON lines, one API-shaped body per line ('-' for stdin). All or nothing.",
)
def enqueue(
    event_id: int | None,
    customer_id: int | None,
    customer_email: str | None,
    customer_email_md5: str | None,
    customer_email_sha256: str | None,
    customer_phone: str | None,
    customer_crm_id: str | None,
    segments: tuple[int, ...],
    fields: tuple[str, ...],
    queue: str,
    dedupe_key: str | None,
    path: str | None,
) -> None:
    """Put an event (or a file of events) in the outbox; invalid input writes nothing."""
    from dispatcher.producer import enqueue as enqueue_one
    from dispatcher.producer import enqueue_many

    try:
        if path is not None:
            if event_id is not None or segments or fields or customer_email:
                raise ValidationError(["--file: cannot be combined with single-event options"])
            events: list[Event] = []
            errors: list[str] = []
            for number, item in _read_events(path):
                if isinstance(item, ValidationError):
                    errors.extend(f"line {number}: {e}" for e in item.errors)
                else:
                    events.append(item)
            if errors:
                raise ValidationError(errors)
            ids = enqueue_many(events, queue=queue)
            click.echo(
                f"enqueued {len(ids)} events" + (f" (ids {ids[0]}..{ids[-1]})" if ids else "")
            )
            return
        if event_id is None:
            raise ValidationError(["--event-id: required (or use --file)"])
        # Mappings are validated by the event like DataField objects, all errors at once.
        data_fields: Any = _parse_fields(fields)
        event: Event
        if segments:
            identifiers = (
                customer_id,
                customer_email,
                customer_email_md5,
                customer_email_sha256,
                customer_phone,
                customer_crm_id,
            )
            if any(i is not None for i in identifiers):
                raise ValidationError(["--segment: cannot be combined with customer options"])
            event = SegmentEvent(event_id, segments, data_fields)
        else:
            event = CustomEvent(
                event_id,
                customer_id=customer_id,
                customer_email=customer_email,
                customer_email_md5=customer_email_md5,
                customer_email_sha256=customer_email_sha256,
                customer_phone=customer_phone,
                customer_crm_id=customer_crm_id,
                data_fields=data_fields,
            )
        click.echo(enqueue_one(event, queue=queue, dedupe_key=dedupe_key))
    except ValidationError as exc:
        fail("invalid input:\n  " + "\n  ".join(exc.errors))
    except sa.exc.SQLAlchemyError as exc:
        fail(_db_error(exc))


def _db_error(exc: sa.exc.SQLAlchemyError) -> str:
    text = str(exc.orig if isinstance(exc, sa.exc.DBAPIError) else exc).splitlines()[0]
    if "dispatcher_jobs" in text and ("no such table" in text or "does not exist" in text):
        return "the outbox tables do not exist yet: run `dispatcher migrate` first"
    return f"database error: {text}"


# --------------------------------------------------------------------------- processes


@main.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.pass_context
def worker(ctx: click.Context) -> None:
    """Start a Celery worker (extra arguments go to `celery worker`)."""
    from dispatcher.tasks import app

    app.worker_main(["worker", "--loglevel=INFO", *ctx.args])


@main.command()
@click.option("--interval", type=float, help="Seconds between sweeps (default from settings).")
def sweeper(interval: float | None) -> None:
    """Re-signal due jobs and return expired leases, until Ctrl-C / SIGTERM."""
    from dispatcher import sweeper as sweeper_mod
    from dispatcher.tasks import notify_due

    settings = get_settings()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    click.echo(f"sweeper running every {interval or settings.sweep_interval_seconds}s")
    with contextlib.suppress(KeyboardInterrupt):
        sweeper_mod.run(
            _engine(), notify_due, interval or settings.sweep_interval_seconds, stop=stop
        )


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8025, show_default=True, type=int)
@click.option("--api-key", envvar="ECDP_API_KEY", default="sandbox-key", show_default=False)
@click.option(
    "--unknown-event-id", "unknown", type=int, multiple=True, help="Answer 404 for this event id."
)
def sandbox(host: str, port: int, api_key: str, unknown: tuple[int, ...]) -> None:
    """Run a local ECDP-compatible API server (for demos and your own tests)."""
    from dispatcher.sandbox import serve_forever

    serve_forever(host, port, api_key, unknown_event_ids=unknown)


# --------------------------------------------------------------------------- pause / resume


@main.command()
@click.argument("queue", default=DEFAULT_QUEUE)
@click.option("--reason", default="paused by an operator", show_default=True)
def pause(queue: str, reason: str) -> None:
    """Stop all deliveries for QUEUE; jobs wait (and new ones queue up) until `resume`."""
    with _engine().begin() as conn:
        changed = outbox.pause(conn, queue, reason, utcnow())
    click.echo(f"queue {queue} paused" if changed else f"queue {queue} was already paused")


@main.command()
@click.argument("queue", default=DEFAULT_QUEUE)
def resume(queue: str) -> None:
    """Deliver QUEUE's backlog again."""
    with _engine().begin() as conn:
        changed = outbox.resume(conn, queue, utcnow())
    if changed:
        from dispatcher.producer import signal_workers

        signal_workers([queue])
    click.echo(f"queue {queue} resumed" if changed else f"queue {queue} was not paused")


if __name__ == "__main__":  # pragma: no cover
    main()
