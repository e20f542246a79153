"""``dispatcher``: thin click commands over the producer, outbox and admin APIs."""

from __future__ import annotations

import contextlib
import json
import logging
import re
import shutil
import signal
import sys
import threading
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import click
import sqlalchemy as sa

from dispatcher import __version__, logs
from dispatcher.config import DEFAULT_QUEUE, ConfigError, get_settings
from dispatcher.db import get_engine, utcnow
from dispatcher.events import (
    CustomEvent,
    Event,
    SegmentEvent,
    ValidationError,
    event_from_json,
)

FC = TypeVar("FC", bound=Callable[..., Any])
FIELD_SPEC = re.compile(r"^(?P<name>[^=]+):(?P<type>[A-Za-z]+)=(?P<value>.*)$", re.DOTALL)


def fail(message: str, code: int = 1) -> NoReturn:
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


@click.group()
@click.version_option(__version__, prog_name="ecdp-dispatcher")
@click.option("-v", "--verbose", is_flag=True, help="Log at DEBUG level.")
def main(verbose: bool) -> None:
    """Deliver custom events from the SQL outbox to the ExpertSender CDP API."""
    try:
        settings = get_settings()
    except ConfigError as exc:
        logs.configure(verbose=verbose, fmt="text")
        fail(str(exc))
    logs.configure(verbose=verbose, fmt=settings.log_format)


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
    finally:
        from dispatcher.signals import signaller

        signaller.flush()  # this process exits next: send the after-commit signal now


def _db_error(exc: sa.exc.SQLAlchemyError) -> str:
    text = str(exc.orig if isinstance(exc, sa.exc.DBAPIError) else exc).splitlines()[0]
    if "dispatcher_jobs" in text and ("no such table" in text or "does not exist" in text):
        return "the outbox tables do not exist yet: run `dispatcher migrate` first"
    return f"database error: {text}"


# --------------------------------------------------------------------------- processes


@main.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.option(
    "--queues",
    default="",
    help="Serve only these outbox queues (comma-separated; each listed in "
    "DISPATCHER_DEDICATED_QUEUES). Default: all.",
)
@click.pass_context
def worker(ctx: click.Context, queues: str) -> None:
    """Start a Celery worker (extra arguments go to `celery worker`)."""
    from dispatcher.tasks import app, worker_queues

    settings = get_settings()
    try:
        consume = worker_queues([q.strip() for q in queues.split(",") if q.strip()], settings)
    except ConfigError as exc:
        fail(str(exc))
    quiet = ["--quiet"] if settings.log_format == "json" else []  # the banner is not JSON
    app.worker_main(
        [*quiet, "worker", "--loglevel=INFO", f"--queues={','.join(consume)}", *ctx.args]
    )


@main.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.pass_context
def check(ctx: click.Context) -> None:
    """Probe: readiness (database, schema, broker), or --worker / --sweeper liveness from their
    heartbeat on this machine (no broker, well under half a second). Exit 0 healthy, 1 not."""
    from dispatcher.health import check_command

    sys.exit(check_command(list(ctx.args)))


@main.command()
@click.option("--interval", type=float, help="Seconds between sweeps (default from settings).")
def sweeper(interval: float | None) -> None:
    """Re-signal due jobs and return expired leases, until Ctrl-C / SIGTERM."""
    from dispatcher import sweeper as sweeper_mod
    from dispatcher.tasks import notify_due

    settings = get_settings()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    from dispatcher.retention import Retention

    retention = Retention(_engine(), settings.retention) if settings.retention else None
    kept = "retention off"
    if settings.retention:
        kept = f"finished jobs kept {settings.retention.total_seconds() / 3600:g}h"
    logging.getLogger("dispatcher.sweeper").info(
        "sweeper running every %gs; %s", interval or settings.sweep_interval_seconds, kept
    )
    with contextlib.suppress(KeyboardInterrupt):
        sweeper_mod.run(
            _engine(),
            notify_due,
            interval or settings.sweep_interval_seconds,
            stop=stop,
            retention=retention,
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
    """Stop all deliveries for QUEUE; jobs wait (and new ones queue up) until `resume`.

    Returns once no worker will start another request for QUEUE."""
    from dispatcher import admin

    with _admin_errors(queue="QUEUE", reason="--reason"):
        changed = admin.pause_queue(_engine(), queue, reason)
    click.echo(f"queue {queue} paused" if changed else f"queue {queue} was already paused")


@main.command()
@click.argument("queue", default=DEFAULT_QUEUE)
def resume(queue: str) -> None:
    """Deliver QUEUE's backlog again."""
    from dispatcher import admin

    with _admin_errors(queue="QUEUE"), _flushing_signals():
        changed = admin.resume_queue(_engine(), queue)
    click.echo(f"queue {queue} resumed" if changed else f"queue {queue} was not paused")


@contextlib.contextmanager
def _flushing_signals() -> Iterator[None]:
    """Publish the workers' signals before this short-lived process exits: at interpreter exit
    the background thread can no longer import Celery, and a signal would wait for the sweeper."""
    try:
        yield
    finally:
        from dispatcher.signals import signaller

        signaller.flush()


@main.command()
@click.option(
    "--dir",
    "workdir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Keep the demo's outbox here (default: a fresh temporary folder).",
)
@click.pass_context
def demo(ctx: click.Context, workdir: Path | None) -> None:
    """Run the whole pipeline locally against the ECDP sandbox, print the history, exit."""
    from dispatcher.demo import run

    run(workdir, show=lambda args: ctx.invoke(main.commands[args[0]], **_defaults(args)))


def _defaults(args: list[str]) -> dict[str, object]:
    """Parse ``[command, *options]`` into the keyword arguments ``ctx.invoke`` needs."""
    command = main.commands[args[0]]
    sub = command.make_context(args[0], args[1:], parent=click.get_current_context())
    return dict(sub.params)


# --------------------------------------------------------------------------- history and admin
# Thin wrappers over dispatcher.admin: parse options, call, print a table or JSON.


def _parse_age(ctx: click.Context, param: click.Parameter, value: str | None) -> timedelta | None:
    from dispatcher.admin import parse_age

    try:
        return None if value is None else parse_age(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc), ctx=ctx, param=param) from None


_TIME_HELP = "ISO 8601 (naive = UTC) or an age like 2h, 7d meaning that long ago; on created_at"
_STATUS_HELP = "One of pending, in_flight, retrying, delivered, dead."
# The filter's options (dispatcher.admin.Filter's fields, as text: the service parses them).
_FILTER_OPTIONS = {
    "status": ("--status", _STATUS_HELP),
    "queue": ("--queue", "Queue name."),
    "event_id": ("--event-id", "customEventId."),
    "customer_email": ("--customer-email", "Case-insensitive, exact."),
    "status_code": ("--status-code", "The last HTTP status the job got."),
    "since": ("--since", f"Created at or after: {_TIME_HELP}."),
    "until": ("--until", f"Created before: {_TIME_HELP}."),
}


def _filter_options(status_help: str = _STATUS_HELP) -> Callable[[FC], FC]:
    """Add every filter option (as text) to a command."""

    def decorate(command: FC) -> FC:
        for name, (flag, help_text) in reversed(_FILTER_OPTIONS.items()):
            text = status_help if name == "status" else help_text
            command = click.option(flag, name, metavar="TEXT", help=text)(command)
        return command

    return decorate


def _filter(options: dict[str, Any]) -> Any:
    """The given filter options -> dispatcher.admin.Filter (the service's parser and rules)."""
    from dispatcher.admin import parse_filter

    texts = {k: options.pop(k) for k in _FILTER_OPTIONS if k in options}
    return parse_filter({k: v for k, v in texts.items() if v is not None}, utcnow())


@contextlib.contextmanager
def _admin_errors(**hints: str) -> Iterator[None]:
    """AdminError naming an argument -> a usage error naming the option (or ``hints[field]``);
    others -> exit 1."""
    from dispatcher.admin import AdminError

    try:
        yield
    except AdminError as exc:
        if exc.field is None:
            fail(exc.message)
        hint = hints.get(exc.field) or (
            "JOB_ID" if exc.field.startswith("job_id") else "--" + exc.field.replace("_", "-")
        )
        raise click.BadParameter(exc.message, param_hint=hint) from None
    except sa.exc.SQLAlchemyError as exc:
        fail(_db_error(exc))


def _json(value: object) -> None:
    click.echo(json.dumps(value, indent=2, ensure_ascii=False))


def _when(value: datetime | None, *, precise: bool = False) -> str:
    if value is None:
        return "-"
    return value.astimezone(UTC).strftime(
        "%Y-%m-%d %H:%M:%S.%f" if precise else "%Y-%m-%d %H:%M:%S"
    )


def _age_text(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    whole = int(seconds)
    if whole < 60:
        return f"{seconds:.1f}s"
    for size, unit, small, small_unit in (
        (86400, "d", 3600, "h"),
        (3600, "h", 60, "m"),
        (60, "m", 1, "s"),
    ):
        if whole >= size:
            return f"{whole // size}{unit} {whole % size // small}{small_unit}"
    return f"{whole}s"  # pragma: no cover


def _cell(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, datetime):
        return _when(value)
    return " ".join(str(value).split())  # one line per row, whatever the text holds


def _print_table(
    headers: Sequence[str],
    rows: Iterable[Sequence[object]],
    *,
    right: Collection[int] = (),
    squeeze: int | None = None,
) -> None:
    """Aligned columns; column ``squeeze`` (long free text) is cut with "…" to fit the terminal."""
    cells = [[_cell(v) for v in row] for row in rows]
    widths = [max([len(h), *(len(r[i]) for r in cells)]) for i, h in enumerate(headers)]
    if squeeze is not None:
        columns = shutil.get_terminal_size((120, 24)).columns
        others = sum(w for i, w in enumerate(widths) if i != squeeze) + 2 * (len(widths) - 1)
        room = max(len(headers[squeeze]), 20, columns - others)
        if widths[squeeze] > room:
            widths[squeeze] = room
            for r in cells:
                if len(r[squeeze]) > room:
                    r[squeeze] = r[squeeze][: room - 1] + "…"
    for row in [list(headers), *cells]:
        line = "  ".join(
            c.rjust(w) if i in right else c.ljust(w)
            for i, (c, w) in enumerate(zip(row, widths, strict=True))
        )
        click.echo(line.rstrip())


@main.command()
@_filter_options()
@click.option("--limit", default=50, show_default=True, type=int)
@click.option("--json", "as_json", is_flag=True, help="A JSON array for scripts.")
def history(limit: int, as_json: bool, **filters: str | None) -> None:
    """Jobs, newest first, with their state and last error (times UTC)."""
    from dispatcher import admin

    with _admin_errors():
        found = admin.history(_engine(), _filter(filters), limit=limit)
    if as_json:
        _json([j.as_dict() for j in found])
        return
    if not found:
        click.echo("no jobs match")
        return
    _print_table(
        (
            "ID",
            "QUEUE",
            "ENDPOINT",
            "EVENT",
            "STATUS",
            "ATT",
            "CODE",
            "CREATED",
            "DELIVERED",
            "LAST ERROR",
        ),
        [
            (
                j.id,
                j.queue,
                j.endpoint,
                j.custom_event_id,
                j.status,
                j.attempts,
                j.last_status_code,
                j.created_at,
                j.delivered_at,
                j.last_error,
            )
            for j in found
        ],
        right={0, 3, 5, 6},
        squeeze=9,
    )


@main.command()
@click.argument("job_id")
@click.option("--json", "as_json", is_flag=True, help="A JSON object for scripts.")
def show(job_id: str, as_json: bool) -> None:
    """One job in full: the exact request body and every attempt with its answer."""
    from dispatcher import admin
    from dispatcher.schema import DUE_STATUSES

    with _admin_errors():
        job = admin.show(_engine(), job_id)
    if job is None:
        fail(f"no job {job_id}")
    if as_json:
        _json(job.as_dict())
        return
    fields = (
        ("job", job.id),
        ("queue", job.queue),
        ("endpoint", job.endpoint),
        ("custom event id", job.custom_event_id),
        ("status", job.status),
        ("attempts", job.attempts),
        ("last status code", job.last_status_code),
        ("last error", job.last_error),
        ("created", job.created_at),
        ("delivered", job.delivered_at),
        ("next attempt", job.next_attempt_at if job.status in DUE_STATUSES else None),
        ("replays", job.replays),
        ("replayed", job.replayed_at),
    )
    for label, value in fields:
        click.echo(f"{label:<17} {_cell(value)}")
    click.echo("\npayload (the exact body sent):")
    click.echo(job.payload)
    click.echo(f"\nattempts ({len(job.attempt_log)}):" if job.attempt_log else "\nno attempts yet")
    for a in job.attempt_log:
        code = "no answer" if a.status_code is None else f"HTTP {a.status_code}"
        click.echo(
            f"#{a.number}  {_when(a.started_at, precise=True)}  {code}  "
            f"{a.duration_ms} ms  {a.outcome}"
        )
        if a.error:
            click.echo(f"    error: {a.error}")
        if a.response_body:
            click.echo(f"    response: {a.response_body}")


@main.command()
@click.option("--json", "as_json", is_flag=True, help="A JSON object for scripts.")
def stats(as_json: bool) -> None:
    """Per queue: jobs by status, how long the most overdue due job has waited, circuit breaker
    and pause state (an open circuit's reason and next probe are listed below the table)."""
    from dispatcher import admin
    from dispatcher.schema import STATUSES

    with _admin_errors():
        per_queue = admin.stats(_engine(), utcnow())
    if as_json:
        _json({"queues": {name: q.as_dict() for name, q in per_queue.items()}})
        return
    if not per_queue:
        click.echo("no queues yet")
        return
    _print_table(
        ("QUEUE", *(s.upper() for s in STATUSES), "OLDEST DUE", "CIRCUIT", "PAUSED"),
        [
            (
                q.name,
                *(q.counts[s] for s in STATUSES),
                _age_text(q.oldest_due_age_seconds),
                q.circuit,
                f"yes, since {_when(q.paused_at)}: {q.pause_reason}" if q.paused else "no",
            )
            for q in per_queue.values()
        ],
        right=set(range(1, len(STATUSES) + 2)),
        squeeze=len(STATUSES) + 3,
    )
    tripped = [q for q in per_queue.values() if q.circuit_open]
    if tripped:
        click.echo("")
    for q in tripped:
        probe = (
            f", next probe {_when(q.circuit_next_probe_at)}"
            if q.circuit_next_probe_at is not None
            else " (a probe is in flight)"
            if q.circuit == "half_open"
            else ""
        )
        n = q.circuit_failed_probes
        failed = f" after {n} failed probe{'s' if n != 1 else ''}" if n else ""
        click.echo(
            f"circuit {q.circuit} for {q.name} since {_when(q.circuit_since)}{probe}{failed}: "
            f"{_cell(q.circuit_reason)}"
        )


@main.command()
@click.argument("job_ids", nargs=-1)
@_filter_options("dead (or delivered, with --include-delivered).")
@click.option("--include-delivered", is_flag=True, help="Also send delivered jobs again.")
@click.option("--expected-count", type=int, help="Replay only if the filter matches this many.")
@click.option("--dry-run", is_flag=True, help="Only count; change nothing.")
@click.option("--json", "as_json", is_flag=True, help="A JSON object for scripts.")
def replay(
    job_ids: tuple[str, ...],
    include_delivered: bool,
    expected_count: int | None,
    dry_run: bool,
    as_json: bool,
    **filters: str | None,
) -> None:
    """Send dead jobs again (JOB_ID... or --status dead and filters) with a fresh attempt budget.

    Their attempt history is kept and the replay is recorded on the job. Pending, in-flight and
    retrying jobs are never touched; delivered ones only with --include-delivered.
    """
    from dispatcher import admin

    engine = _engine()
    with _admin_errors(), _flushing_signals():
        result = admin.replay(
            engine,
            _filter(filters),
            job_ids=job_ids or None,
            include_delivered=include_delivered,
            dry_run=dry_run,
            expected=expected_count,
            now=utcnow(),
        )
        paused = admin.paused_queues(engine, result.queues)
    if as_json:
        _json(result.as_dict())
    else:
        jobs_text = f"{result.count} job{'' if result.count == 1 else 's'}"
        where = f" in {', '.join(result.queues)}" if result.queues else ""
        click.echo(
            f"would replay {jobs_text}{where} (dry run: nothing changed)"
            if dry_run
            else f"replayed {jobs_text}{where}"
        )
    for q in paused:
        click.echo(f"note: queue {q} is paused; `dispatcher resume {q}` to deliver", err=True)


@main.command()
@click.option(
    "--older-than", callback=_parse_age, required=True, help="Age like 30d (by updated_at)."
)
@click.option("--status", help="Only delivered or only dead (default: both).")
@click.option("--batch-size", default=1000, show_default=True, type=int)
@click.option("--dry-run", is_flag=True, help="Only count; delete nothing.")
@click.option("--json", "as_json", is_flag=True, help="A JSON object for scripts.")
def purge(
    older_than: timedelta, status: str | None, batch_size: int, dry_run: bool, as_json: bool
) -> None:
    """Delete finished jobs (and their attempts) that finished longer ago than --older-than.

    Pending, in-flight and retrying jobs are never deleted. Works in batches, one short
    transaction each.
    """
    from dispatcher import admin

    with _admin_errors():
        result = admin.purge(
            _engine(),
            older_than=older_than,
            status=status,
            batch_size=batch_size,
            dry_run=dry_run,
            now=utcnow(),
        )
    if as_json:
        _json(result.as_dict())
    elif dry_run:
        click.echo(
            f"would purge {result.jobs} jobs and {result.attempts} attempts "
            "(dry run: nothing deleted)"
        )
    else:
        click.echo(f"purged {result.jobs} jobs and {result.attempts} attempts")


# --------------------------------------------------------------------------- admin page and metrics


@main.command()
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    envvar="DISPATCHER_WEB_HOST",
    show_envvar=True,
    help="Anything but loopback needs DISPATCHER_ADMIN_TOKEN.",
)
@click.option("--port", default=8000, show_default=True, type=int)
def web(host: str, port: int) -> None:
    """Serve the admin page, its JSON API (/api, OpenAPI at /api/openapi.json) and /metrics."""
    _serve_web(host, port, pages=True)


def _serve_web(host: str, port: int, *, pages: bool) -> None:
    try:
        from dispatcher.web import BindError, serve
    except ModuleNotFoundError as exc:  # the base install has no web stack
        fail(f"{exc.name} is not installed: pip install 'ecdp-dispatcher[web]'")

    try:
        serve(host, port, get_settings(), pages_and_api=pages)
    except BindError as exc:
        fail(str(exc))


@main.command()
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    help="Anything but loopback needs DISPATCHER_ADMIN_TOKEN (sent as a bearer token).",
)
@click.option("--port", default=9108, show_default=True, type=int)
def metrics(host: str, port: int) -> None:
    """Serve only the Prometheus endpoint, /metrics (for installs without the admin page)."""
    _serve_web(host, port, pages=False)


if __name__ == "__main__":  # pragma: no cover
    main()
