"""``dispatcher``: thin click commands over the producer, outbox and admin APIs."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import logging
import re
import shutil
import signal
import sys
import threading
import time
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import click
import sqlalchemy as sa

from dispatcher import __version__, logs, problems
from dispatcher.breaker import Circuit
from dispatcher.config import (
    DEFAULT_QUEUE,
    ConfigError,
    get_settings,
    log_format_despite,
    trusted_proxies,
)
from dispatcher.db import get_engine, utcnow
from dispatcher.events import (
    CustomEvent,
    Event,
    SegmentEvent,
    ValidationError,
    event_from_json,
)
from dispatcher.scrub import scrub, terminal_safe

FC = TypeVar("FC", bound=Callable[..., Any])
CONFIRM_ABOVE = 1000  # replay and purge ask before touching more jobs than this
FIELD_SPEC = re.compile(r"^(?P<name>[^=]+):(?P<type>[A-Za-z]+)=(?P<value>.*)$", re.DOTALL)


def fail(message: str, code: int = problems.EXIT_FAILED) -> NoReturn:
    """One error on stderr (credentials redacted, control characters escaped), then exit. Under
    ``DISPATCHER_LOG_FORMAT=json`` it is a JSON line, as every other line on stderr."""
    if any(isinstance(h.formatter, logs.JsonFormatter) for h in logging.getLogger().handlers):
        click.echo(logs.json_line("ERROR", "dispatcher.cli", message), err=True)
    else:
        click.echo(f"error: {terminal_safe(scrub(message), newlines=True)}", err=True)
    sys.exit(code)


def echo(text: object = "", *, err: bool = False, newlines: bool = False) -> None:
    """Human output: control characters from stored data (an API's answer) shown escaped."""
    click.echo(terminal_safe(str(text), newlines=newlines), err=err)


_verbose = False


class _Commands(click.Group):
    """Every command's first-contact problems (a missing schema, an unreachable database or
    broker, a bad URL or setting) as one or two lines and a distinct exit code
    (:mod:`dispatcher.problems`); ``-v`` adds the traceback, credentials redacted."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.exceptions.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except Exception as exc:
            problem = problems.explain(exc)
            if _verbose or problem is None:
                import traceback

                text = "".join(traceback.format_exception(exc))
                click.echo(terminal_safe(scrub(text), newlines=True), err=True, nl=False)
            if problem is None:
                sys.exit(problems.EXIT_FAILED)
            hint = "" if _verbose else " (-v shows the traceback)"
            cause, _, fix = problem.message.partition("\n")
            fail(cause + hint + (f"\n{fix}" if fix else ""), problem.code)


@click.group(cls=_Commands)
@click.version_option(__version__, prog_name="ecdp-dispatcher")
@click.option("-v", "--verbose", is_flag=True, help="Log at DEBUG level; show tracebacks.")
def main(verbose: bool) -> None:
    """Deliver custom events from the SQL outbox to the ExpertSender CDP API.

    \b
    Exit codes: 0 done, 1 failed, 2 usage, 3 configuration, 4 database unreachable,
    5 schema missing (run `dispatcher migrate`), 6 broker unreachable, 7 not confirmed.
    """
    global _verbose
    _verbose = verbose
    try:
        settings = get_settings()
    except ConfigError as exc:
        logs.configure(verbose=verbose, fmt=log_format_despite(exc))
        fail(f"configuration: {exc}", problems.EXIT_CONFIG)
    logs.configure(verbose=verbose, fmt=settings.log_format)


def _engine() -> sa.Engine:
    return get_engine(get_settings().database_url)


# --------------------------------------------------------------------------- schema


@main.command()
@click.option("--revision", default="head", show_default=True)
def migrate(revision: str) -> None:
    """Create or upgrade the outbox tables (Alembic)."""
    from dispatcher.logs import notice_defaults
    from dispatcher.migrate import upgrade

    notice_defaults()
    upgrade(get_settings().database_url, revision)
    echo(f"outbox schema at {revision}")


@main.command()
@click.option(
    "--months-ahead",
    default=2,
    show_default=True,
    type=click.IntRange(1, 24),
    help="Months of partitions to create past the current one.",
)
@click.option(
    "--lock-timeout",
    default=1.0,
    show_default=True,
    type=click.FloatRange(0.01, 60),
    help="Seconds a lock may keep producers waiting before the step retries.",
)
def partition(months_ahead: int, lock_timeout: float) -> None:
    """Convert the outbox to the partitioned layout (PostgreSQL; README: "Scaling out").

    Jobs and attempts become one partition per month, retention drops whole months. Producers
    and workers go on meanwhile: only catalog changes lock the tables, briefly. Running it on a
    partitioned outbox does nothing.
    """
    from dispatcher import partitions

    try:
        done = partitions.convert(
            _engine(), months_ahead=months_ahead, lock_timeout=lock_timeout, say=echo
        )
    except partitions.NotSupported as exc:
        fail(str(exc))
    if not done.done:
        echo("already partitioned: nothing to do")


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


MAX_SHOWN_ERRORS = 50  # of a file's bad lines, listed; the rest are counted


def _deliver_at(at: str | None, delay: str | None) -> datetime | None:
    """``--at`` (ISO 8601, naive means UTC) or ``--in`` (an age like 15m, 24h) as an aware time."""
    from dispatcher.times import parse_age

    if at is not None and delay is not None:
        raise ValidationError(["--at: give --at or --in, not both"])
    if delay is not None:
        try:
            return utcnow() + parse_age(delay)
        except (ValueError, OverflowError) as exc:
            raise ValidationError([f"--in: {exc}"]) from None
    if at is None:
        return None
    try:
        when = datetime.fromisoformat(at.strip().upper())  # RFC 3339 allows "t" and "z"
    except ValueError:
        raise ValidationError(
            [f"--at: expected an ISO 8601 time like 2026-12-24T18:00:00+01:00 (got {at!r:.80})"]
        ) from None
    return when if when.utcoffset() is not None else when.replace(tzinfo=UTC)


def _enqueue_file(
    path: str, queue: str, batch_size: int, deliver_at: datetime | None = None
) -> tuple[int, str | None, str | None]:
    """Stream a JSON-lines file into the outbox: a first pass checks every line (nothing is
    kept but the first errors), a second writes ``batch_size`` events per statement, all in one
    transaction (one bad line, or a failure halfway, writes nothing). Memory stays flat in the
    file's size; standard input is spooled to a temporary file for the second pass.
    Returns the number written and the first and last job ids."""
    import tempfile

    from dispatcher.producer import enqueue_many

    with contextlib.ExitStack() as stack:
        if path == "-":
            spool = tempfile.NamedTemporaryFile("wb", suffix=".jsonl")  # noqa: SIM115
            stack.callback(spool.close)
            shutil.copyfileobj(sys.stdin.buffer, spool)
            spool.flush()
            path = spool.name
        errors: list[str] = []
        bad_lines = 0
        for number, item in _read_events(path):
            if isinstance(item, ValidationError):
                bad_lines += 1
                if len(errors) < MAX_SHOWN_ERRORS:
                    errors.extend(f"line {number}: {e}" for e in item.errors)
        if bad_lines:
            shown = len({e.partition(":")[0] for e in errors})
            if bad_lines > shown:
                errors.append(f"… and {bad_lines - shown} more bad lines")
            raise ValidationError(errors)
        count, first, last = 0, None, None
        with _engine().begin() as conn:  # after its commit, the workers are told
            batch: list[Event] = []
            for _, event in _read_events(path):
                batch.append(event)  # type: ignore[arg-type]  # checked in the first pass
                if len(batch) >= batch_size:
                    ids = enqueue_many(batch, session=conn, queue=queue, deliver_at=deliver_at)
                    first, last, count = first or ids[0], ids[-1], count + len(ids)
                    batch.clear()
            if batch:
                ids = enqueue_many(batch, session=conn, queue=queue, deliver_at=deliver_at)
                first, last, count = first or ids[0], ids[-1], count + len(ids)
    return count, first, last


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
    "--at",
    "at",
    metavar="TIME",
    help="Not sent before this time: ISO 8601, naive means UTC (2026-12-24T18:00:00+01:00).",
)
@click.option(
    "--in", "delay", metavar="AGE", help="Not sent before this long from now: 30s, 15m, 24h, 7d."
)
@click.option(
    "--file",
    "path",
    type=click.Path(exists=True, dir_okay=False, allow_dash=True),
    help="JSON lines, one API-shaped body per line ('-' for stdin). All or nothing: every line "
    "is checked first, then the file is written in one transaction, streamed.",
)
@click.option(
    "--batch-size",
    default=1000,
    show_default=True,
    type=click.IntRange(1, 10_000),
    help="With --file: events per INSERT statement (memory use grows with it, not the file).",
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
    at: str | None,
    delay: str | None,
    path: str | None,
    batch_size: int,
) -> None:
    """Put an event (or a file of events) in the outbox; invalid input writes nothing.

    An invalid option (an event given as options, a queue name) exits 2 as any usage error; a
    file with bad lines exits 1: the command read it and refused it."""
    from dispatcher.producer import check_queue
    from dispatcher.producer import enqueue as enqueue_one

    code = problems.EXIT_USAGE
    try:
        deliver_at = _deliver_at(at, delay)
        if queue_problems := check_queue(queue, "--queue"):
            raise ValidationError(queue_problems)
        if path is not None:
            if event_id is not None or segments or fields or customer_email:
                raise ValidationError(["--file: cannot be combined with single-event options"])
            code = problems.EXIT_FAILED
            count, first, last = _enqueue_file(path, queue, batch_size, deliver_at)
            echo(f"enqueued {count} events" + (f" (ids {first}..{last})" if count else ""))
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
        echo(enqueue_one(event, queue=queue, dedupe_key=dedupe_key, deliver_at=deliver_at))
    except ValidationError as exc:
        fail("invalid input:\n  " + "\n  ".join(exc.errors), code)
    finally:
        from dispatcher.signals import signaller

        signaller.flush_before_exit()  # this process exits next: send the after-commit signal now


# --------------------------------------------------------------------------- processes


@main.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.option(
    "--queues",
    default="",
    help="Serve only these outbox queues (comma-separated): their signals then travel on Celery "
    "queues of their own, recorded in the outbox so that every process routes them here. "
    "Default: all.",
)
@click.pass_context
def worker(ctx: click.Context, queues: str) -> None:
    """Start a Celery worker (extra arguments go to `celery worker`)."""
    from dispatcher.routing import dedicate, read_dedicated
    from dispatcher.tasks import app, worker_queues

    settings = get_settings()
    selected = [q.strip() for q in queues.split(",") if q.strip()]
    try:
        worker_queues(selected, settings)  # refuses a name that is not a queue's
    except ConfigError as exc:
        fail(str(exc), problems.EXIT_USAGE)
    # The dedication goes in the queues' rows, so that producers and the sweeper route their
    # signals to this worker's Celery queues without being told (dispatcher.routing).
    # A worker serving every queue also consumes the dedicated ones' Celery queues; it may start
    # before the database is up (it waits for the broker likewise): then the settings' list.
    known = settings.dedicated_queues
    try:
        with _engine().begin() as conn:
            dedicate(conn, selected)
            known |= read_dedicated(conn)
    except sa.exc.SQLAlchemyError as exc:
        if selected:
            raise  # its dedication must be recorded, or nobody signals it: exit 4 or 5
        logging.getLogger("dispatcher.worker").warning(
            "could not read the dedicated queues from the outbox (%s): serving the shared "
            "queue and DISPATCHER_DEDICATED_QUEUES only",
            scrub(str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__),
        )
    consume = worker_queues(selected, settings, known)
    _warn_missing_keys(selected, settings)
    from dispatcher.logs import notice_default_broker

    notice_default_broker(settings)  # listening where producers may not signal: say so
    _check_broker(app)
    quiet = ["--quiet"] if settings.log_format == "json" else []  # the banner is not JSON
    app.worker_main(
        [*quiet, "worker", "--loglevel=INFO", f"--queues={','.join(consume)}", *ctx.args]
    )


def _warn_missing_keys(selected: list[str], settings: Any) -> None:
    """Say at start what would otherwise show as a paused queue later: a served queue without
    its API key (a worker serving every queue: no key configured at all)."""
    from dispatcher.config import queue_env_suffix

    log = logging.getLogger("dispatcher.worker")
    if not selected:
        if not settings.api_keys:
            log.warning(
                "no API key is configured (ECDP_API_KEY, ECDP_API_KEY_<QUEUE>): this worker "
                "serves every queue, and each will pause at its first job until a key is set"
            )
        return
    for queue in selected:
        if settings.api_key(queue) is None:
            variable = (
                "ECDP_API_KEY"
                if queue == DEFAULT_QUEUE
                else f"ECDP_API_KEY_{queue_env_suffix(queue)}"
            )
            log.warning(
                "no API key for queue %s: set %s; until then the queue pauses at its first job",
                queue,
                variable,
                extra={"queue": queue},
            )


def _check_broker(app: Any, seconds: float = 5.0) -> None:
    """Reach the broker before starting, so a wrong or dead DISPATCHER_BROKER_URL is one line
    and exit code 6, not an endless stream of reconnection tracebacks."""
    try:
        with app.connection_for_write() as conn:
            conn.ensure_connection(max_retries=2, interval_start=0.5, timeout=seconds)
    except Exception as exc:
        problem = problems.explain(exc)
        if problem is None or problem.code != problems.EXIT_BROKER:
            problem = problems.Problem(
                problems.EXIT_BROKER,
                f"cannot reach the broker: {scrub(str(exc).strip() or type(exc).__name__)}\n"
                "fix: start it, or correct DISPATCHER_BROKER_URL (e.g. redis://host:6379/0)",
            )
        fail(problem.message, problem.code)


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
    from dispatcher.signals import Signaller, celery_sender

    settings = get_settings()
    # Signals go out from a thread of their own with short broker timeouts: a hung broker never
    # holds the sweep's database work (leases, retention) nor its exit on SIGTERM.
    signaller = Signaller(celery_sender, fallback="the sweeper signals them again")
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    from dispatcher.partitions import Maintainer
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
            signaller.request,
            interval or settings.sweep_interval_seconds,
            stop=stop,
            retention=retention,
            partitions=Maintainer(_engine(), settings.retention),
        )


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8025, show_default=True, type=int)
@click.option("--api-key", envvar="ECDP_API_KEY", default="sandbox-key", show_default=False)
@click.option(
    "--unknown-event-id", "unknown", type=int, multiple=True, help="Answer 404 for this event id."
)
@click.option(
    "--latency",
    type=click.FloatRange(min=0),
    default=0.0,
    show_default=True,
    help="Seconds each answer takes.",
)
@click.option(
    "--capacity",
    type=click.IntRange(min=1),
    default=None,
    help="At most N requests served at once; the rest wait inside the server.  [default: no limit]",
)
def sandbox(
    host: str,
    port: int,
    api_key: str,
    unknown: tuple[int, ...],
    latency: float,
    capacity: int | None,
) -> None:
    """Run a local ECDP-compatible API server (for demos and your own tests).

    With --latency and --capacity it behaves like a real API at its limit: requests beyond the
    capacity are accepted and wait (toward the client's timeout), and are served even if the
    client gave up meanwhile, as a real API would serve them."""
    from dispatcher.sandbox import serve_forever

    serve_forever(
        host, port, api_key, unknown_event_ids=unknown, latency=latency, capacity=capacity
    )


# --------------------------------------------------------------------------- pause / resume


@main.command()
@click.argument("queue", default=DEFAULT_QUEUE)
@click.option("--reason", default="paused by an operator", show_default=True)
@click.option(
    "--create",
    is_flag=True,
    help="Pause a queue no job has used yet (otherwise an unknown name is refused as a typo).",
)
def pause(queue: str, reason: str, create: bool) -> None:
    """Stop all deliveries for QUEUE; jobs wait (and new ones queue up) until `resume`.

    Returns once no worker will start another request for QUEUE. A queue that no job has used
    and the settings do not name is refused (exit 2), naming the closest one, unless --create."""
    from dispatcher import admin
    from dispatcher.admin.actions import queue_in_use

    with _admin_errors(queue="QUEUE", reason="--reason"):
        known = not create or queue_in_use(_engine(), queue)
        changed = admin.pause_queue(_engine(), queue, reason, create=create)
    echo(f"queue {queue} paused" if changed else f"queue {queue} was already paused")
    if not known:
        echo(
            f"note: no job has used queue {queue} yet: it is paused ahead of use "
            "(`dispatcher queues` lists the queues in use)",
            err=True,
        )


@main.command()
@click.argument("queue", default=DEFAULT_QUEUE)
def resume(queue: str) -> None:
    """Deliver QUEUE's backlog again."""
    from dispatcher import admin

    with _admin_errors(queue="QUEUE"), _flushing_signals():
        changed = admin.resume_queue(_engine(), queue)
    echo(f"queue {queue} resumed" if changed else f"queue {queue} was not paused")


@contextlib.contextmanager
def _flushing_signals() -> Iterator[None]:
    """Publish the workers' signals before this short-lived process exits: at interpreter exit
    the background thread can no longer import Celery, and a signal would wait for the sweeper."""
    try:
        yield
    finally:
        from dispatcher.signals import signaller

        signaller.flush_before_exit()


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
_STATUS_HELP = "One of pending, in_flight, retrying, delivered, dead, cancelled."
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
    # One line per row, whatever the text holds; control characters shown escaped.
    return terminal_safe(" ".join(str(value).split()))


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
        echo(line.rstrip())


@main.command()
@_filter_options()
@click.option("--limit", default=50, show_default=True, type=int)
@click.option(
    "--before",
    metavar="JOB_ID",
    help="Only jobs older than this one (a cursor: the last id of the previous page).",
)
@click.option("--json", "as_json", is_flag=True, help="A JSON array for scripts.")
def history(limit: int, before: str | None, as_json: bool, **filters: str | None) -> None:
    """Jobs, newest first (by id), with their state and last error (times UTC).

    Pages by cursor: `--before ID` lists the jobs older than job ID, as fast as the first page.
    """
    from dispatcher import admin
    from dispatcher.admin.filters import MAX_ID

    with _admin_errors():
        cursor = None if before is None else admin.parse_int("before", before, 1, MAX_ID)
        probe = limit + 1 if 0 < limit < admin.MAX_LIMIT else limit  # one more: is there more?
        found = admin.history(_engine(), _filter(filters), limit=probe, before=cursor)
    more = len(found) > limit
    found = found[:limit]
    if as_json:
        _json([j.as_dict() for j in found])
        return
    if not found:
        echo("no jobs match")
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
    if more:
        echo(f"(older jobs: dispatcher history --before {found[-1].id} …)", err=True)


@main.command()
@click.argument("job_id")
@click.option("--json", "as_json", is_flag=True, help="A JSON object for scripts.")
def show(job_id: str, as_json: bool) -> None:
    """One job in full: the exact request body and every attempt with its answer."""
    from dispatcher import admin
    from dispatcher.schema import WAITING_STATUSES

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
        ("next attempt", job.next_attempt_at if job.status in WAITING_STATUSES else None),
        ("replays", job.replays),
        ("replayed", job.replayed_at),
    )
    for label, value in fields:
        echo(f"{label:<17} {_cell(value)}")
    echo("\npayload (the exact body sent):", newlines=True)
    echo(job.payload, newlines=True)
    echo(
        f"\nattempts ({len(job.attempt_log)}):" if job.attempt_log else "\nno attempts yet",
        newlines=True,
    )
    for a in job.attempt_log:
        echo(
            f"#{a.number}  {_when(a.started_at, precise=True)}  {a.answer}  "
            f"{a.duration_ms} ms  {a.outcome}"
        )
        if a.error:
            echo(f"    error: {a.error}", newlines=True)
        if a.response_body:
            echo(f"    response: {a.response_body}", newlines=True)


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
        echo("no queues yet")
        return
    _print_table(
        ("QUEUE", *(s.upper() for s in STATUSES), "OLDEST DUE", "WINDOW", "CIRCUIT", "PAUSED"),
        [
            (
                q.name,
                *(q.counts[s] for s in STATUSES),
                _age_text(q.oldest_due_age_seconds),
                "-" if q.window is None else q.window,
                q.circuit,
                f"yes, since {_when(q.paused_at)}: {q.pause_reason}" if q.paused else "no",
            )
            for q in per_queue.values()
        ],
        right=set(range(1, len(STATUSES) + 3)),
        squeeze=len(STATUSES) + 4,
    )
    for q in per_queue.values():
        if q.maybe_twice:
            echo(
                f"{q.name}: {q.maybe_twice} re-send{'s' if q.maybe_twice != 1 else ''} after a "
                "timeout that came after the request was sent: each of those may have reached "
                "the API twice"
            )
        if q.poison_kinds:
            echo(
                f"{q.name}: events {', '.join(map(str, q.poison_kinds))} taken for bad payloads "
                "(they failed while other events got through): they go dead after their "
                "attempts and do not open the circuit"
            )
    tripped = [q for q in per_queue.values() if q.circuit_open]
    if tripped:
        echo("")
    for q in tripped:
        probe = (
            f", next probe {_when(q.circuit_next_probe_at)}"
            if q.circuit_next_probe_at is not None
            else " (a probe is in flight)"
            if q.circuit is Circuit.HALF_OPEN
            else ""
        )
        n = q.circuit_failed_probes
        failed = f" after {n} failed probe{'s' if n != 1 else ''}" if n else ""
        echo(
            f"circuit {q.circuit} for {q.name} since {_when(q.circuit_since)}{probe}{failed}: "
            f"{_cell(q.circuit_reason)}"
        )


@main.command()
@click.argument("job_ids", nargs=-1)
@_filter_options("dead or cancelled (or delivered, with --include-delivered).")
@click.option("--include-delivered", is_flag=True, help="Also send delivered jobs again.")
@click.option("--expected-count", type=int, help="Replay only if the filter matches this many.")
@click.option("--dry-run", is_flag=True, help="Only count; change nothing.")
@click.option("--yes", "-y", is_flag=True, help=f"No confirmation above {CONFIRM_ABOVE:,} jobs.")
@click.option("--json", "as_json", is_flag=True, help="A JSON object for scripts.")
def replay(
    job_ids: tuple[str, ...],
    include_delivered: bool,
    expected_count: int | None,
    dry_run: bool,
    yes: bool,
    as_json: bool,
    **filters: str | None,
) -> None:
    """Send dead jobs again (JOB_ID... or --status dead and filters) with a fresh attempt budget.

    Cancelled jobs too: by id, or with --status cancelled.

    Their attempt history is kept and the replay is recorded on the job. Pending, in-flight and
    retrying jobs are never touched; delivered ones only with --include-delivered. More than
    1,000 jobs need a confirmation (or --yes, or --expected-count); then exactly the confirmed
    number is replayed, or nothing.
    """
    from dispatcher import admin

    engine = _engine()
    with _admin_errors(), _flushing_signals():
        selected = functools.partial(
            admin.replay,
            engine,
            _filter(filters),
            job_ids=job_ids or None,
            include_delivered=include_delivered,
            now=utcnow(),
        )
        result = _confirmed_move(selected, "replay", dry_run, yes, expected_count, as_json)
        paused = admin.paused_queues(engine, result.queues)
    for q in paused:
        echo(f"note: queue {q} is paused; `dispatcher resume {q}` to deliver", err=True)


def _confirmed_move(
    selected: Callable[..., Any],
    verb: str,
    dry_run: bool,
    yes: bool,
    expected_count: int | None,
    as_json: bool,
) -> Any:
    """What replay and cancel share: count first and confirm above CONFIRM_ABOVE jobs (then
    exactly the confirmed number moves, or nothing), a running line, and the answer printed."""
    if not dry_run and not yes and expected_count is None:
        planned = selected(dry_run=True)
        if planned.count > CONFIRM_ABOVE:
            queues = ", ".join(planned.queues)
            _confirm(f"{verb} {planned.count:,} jobs in {queues}", verb)
            expected_count = planned.count  # what was confirmed, or nothing
    ing = verb.removesuffix("e") + "ing"
    with _progress(f"{ing} {expected_count or ''}", quiet=as_json or dry_run):
        result = selected(dry_run=dry_run, expected=expected_count)
    if as_json:
        _json(result.as_dict())
        return result
    jobs_text = f"{result.count} job{'' if result.count == 1 else 's'}"
    where = f" in {', '.join(result.queues)}" if result.queues else ""
    done = "cancelled" if verb == "cancel" else f"{verb}ed"
    echo(
        f"would {verb} {jobs_text}{where} (dry run: nothing changed)"
        if dry_run
        else f"{done} {jobs_text}{where}"
    )
    return result


@main.command()
@click.argument("job_ids", nargs=-1)
@_filter_options("scheduled, pending or retrying (default: all three).")
@click.option("--expected-count", type=int, help="Cancel only if the filter matches this many.")
@click.option("--dry-run", is_flag=True, help="Only count; change nothing.")
@click.option("--yes", "-y", is_flag=True, help=f"No confirmation above {CONFIRM_ABOVE:,} jobs.")
@click.option("--json", "as_json", is_flag=True, help="A JSON object for scripts.")
def cancel(
    job_ids: tuple[str, ...],
    expected_count: int | None,
    dry_run: bool,
    yes: bool,
    as_json: bool,
    **filters: str | None,
) -> None:
    """Cancel waiting jobs (JOB_ID... and/or filters): they are never sent.

    Pending and retrying jobs take the final status `cancelled` (`dispatcher replay` can send
    them after all). A job in flight cannot be recalled, its request may be on the wire: it is
    left alone and counted. At least one id or filter is needed; more than 1,000 jobs need a
    confirmation (or --yes, or --expected-count), then exactly the confirmed number is cancelled,
    or nothing.
    """
    from dispatcher import admin

    with _admin_errors():
        selected = functools.partial(
            admin.cancel, _engine(), _filter(filters), job_ids=job_ids or None, now=utcnow()
        )
        result = _confirmed_move(selected, "cancel", dry_run, yes, expected_count, as_json)
    if result.in_flight and not as_json:
        n = result.in_flight
        echo(
            f"note: {n} job{'' if n == 1 else 's'} in flight {'was' if n == 1 else 'were'} not "
            "cancelled: a request may be on the wire and cannot be recalled (its worker records "
            "the answer)",
            err=True,
        )


@main.command()
@click.option(
    "--older-than", callback=_parse_age, required=True, help="Age like 30d (by updated_at)."
)
@click.option("--status", help="Only delivered or only dead (default: both).")
@click.option("--batch-size", default=1000, show_default=True, type=int)
@click.option("--dry-run", is_flag=True, help="Only count; delete nothing.")
@click.option("--yes", "-y", is_flag=True, help=f"No confirmation above {CONFIRM_ABOVE:,} jobs.")
@click.option("--json", "as_json", is_flag=True, help="A JSON object for scripts.")
def purge(
    older_than: timedelta,
    status: str | None,
    batch_size: int,
    dry_run: bool,
    yes: bool,
    as_json: bool,
) -> None:
    """Delete finished jobs (and their attempts) that finished longer ago than --older-than.

    Pending, in-flight and retrying jobs are never deleted. Works in batches, one short
    transaction each, with a running count on a terminal. More than 1,000 jobs need a
    confirmation (or --yes).
    """
    from dispatcher import admin

    with _admin_errors():
        now = utcnow()
        if not dry_run and not yes:
            planned = admin.purge(
                _engine(), older_than=older_than, status=status, dry_run=True, now=now
            )
            if planned.jobs > CONFIRM_ABOVE:
                _confirm(f"delete {planned.jobs:,} jobs and {planned.attempts:,} attempts", "purge")
        with _progress("purged", quiet=as_json or dry_run) as progress:
            result = admin.purge(
                _engine(),
                older_than=older_than,
                status=status,
                batch_size=batch_size,
                dry_run=dry_run,
                now=now,
                progress=lambda jobs, attempts: progress(f"{jobs:,} jobs, {attempts:,} attempts"),
            )
    if as_json:
        _json(result.as_dict())
    elif dry_run:
        echo(
            f"would purge {result.jobs} jobs and {result.attempts} attempts "
            "(dry run: nothing deleted)"
        )
    else:
        echo(f"purged {result.jobs} jobs and {result.attempts} attempts")


@main.command("queues")
@click.option("--delete", metavar="NAME", help="Remove queue NAME, which must have no jobs.")
@click.option(
    "--undedicate",
    metavar="NAME",
    help="Signal queue NAME on the shared Celery queue again (a `worker --queues NAME` made it "
    "dedicated).",
)
@click.option("--json", "as_json", is_flag=True, help="A JSON object for scripts.")
def queues_command(delete: str | None, undedicate: str | None, as_json: bool) -> None:
    """The queues in use: paused or not, circuit, live and finished jobs.

    `--delete NAME` removes a queue without jobs (a typo's pause row, a queue whose jobs were
    purged): its pause switch, throttle and circuit state, counts and chart buckets.
    `--undedicate NAME` undoes what `dispatcher worker --queues NAME` recorded: every process
    signals NAME on the shared Celery queue again within 5 s."""
    from dispatcher import admin
    from dispatcher.schema import FINISHED_STATUSES

    if undedicate is not None:
        from dispatcher.producer import check_queue
        from dispatcher.routing import undedicate as share

        if problems_found := check_queue(undedicate, "--undedicate"):
            raise click.BadParameter(problems_found[0], param_hint="--undedicate")
        with _engine().begin() as conn:
            changed = share(conn, undedicate)
        if as_json:
            _json({"queue": undedicate, "undedicated": changed})
        else:
            echo(
                f"queue {undedicate} is signalled on the shared Celery queue again"
                if changed
                else f"queue {undedicate} was not dedicated"
            )
        return
    if delete is not None:
        with _admin_errors(queue="--delete"):
            removed = admin.delete_queue(_engine(), delete)
        if as_json:
            _json({"queue": delete, "deleted": removed})
        else:
            echo(f"queue {delete} deleted" if removed else f"queue {delete} had nothing to delete")
        return
    with _admin_errors():
        per_queue = admin.stats(_engine(), utcnow())
        # Also a queue whose jobs were all purged (its counts are zero): it can be deleted.
        emptied = admin.existing_queues(_engine()) - per_queue.keys()
    rows = {
        name: {
            "paused": q.paused,
            "circuit": q.circuit,
            "live": sum(n for s, n in q.counts.items() if s not in FINISHED_STATUSES),
            "finished": sum(n for s, n in q.counts.items() if s in FINISHED_STATUSES),
        }
        for name, q in per_queue.items()
    }
    for name in emptied:
        rows[name] = {"paused": False, "circuit": Circuit.CLOSED, "live": 0, "finished": 0}
    rows = dict(sorted(rows.items()))
    if as_json:
        _json({"queues": rows})
        return
    if not rows:
        echo("no queues yet")
        return
    _print_table(
        ("QUEUE", "PAUSED", "CIRCUIT", "LIVE", "FINISHED"),
        [
            (name, "yes" if r["paused"] else "no", r["circuit"], r["live"], r["finished"])
            for name, r in rows.items()
        ],
        right={3, 4},
    )


@main.command()
@click.option("--email", help="Also matches the body's customerEmailMd5 and Sha256 of it.")
@click.option("--customer-id", help="customerId.")
@click.option("--phone", help="customerPhone (spaces and punctuation ignored).")
@click.option("--crm-id", help="customerCrmId.")
@click.option("--email-md5", help="customerEmailMd5.")
@click.option("--email-sha256", help="customerEmailSha256.")
@click.option("--dry-run", is_flag=True, help="Only count; change nothing.")
@click.option("--yes", "-y", is_flag=True, help="No confirmation.")
@click.option("--json", "as_json", is_flag=True, help="A JSON object for scripts.")
def forget(dry_run: bool, yes: bool, as_json: bool, **identifiers: str | None) -> None:
    """Erase one customer's personal data from the outbox (GDPR art. 17); name them by one
    identifier.

    Their jobs stay (counts and history keep their shape) but lose their body, email, dedupe key
    and error texts; their waiting jobs are cancelled. Other texts that mention them (other
    bodies, attempts' answers, queue reasons) lose the identifier. An audit row records the kind
    of identifier and how many rows changed, never the identifier. Irreversible: asks first (or
    --yes). Scans every job and attempt, in batches.
    """
    from dispatcher import admin

    hints = {k: "--" + k.replace("_", "-") for k in admin.IDENTIFIER_KINDS}
    with _admin_errors(**hints):
        customer = admin.parse_customer(identifiers)
        engine = _engine()
        if not dry_run and not yes:
            planned = admin.forget(engine, customer, dry_run=True, now=utcnow())
            _confirm(
                f"erase {planned.jobs:,} jobs' data (cancel {planned.cancelled:,}), "
                f"{planned.attempts:,} attempts and {planned.mentions:,} mentions",
                "forget",
                "it cannot be undone",
            )
        with _progress("forgetting", quiet=as_json or dry_run) as progress:
            result = admin.forget(
                engine,
                customer,
                dry_run=dry_run,
                now=utcnow(),
                progress=lambda done, total: progress(f"{done:,} of {total:,} jobs"),
            )
    if as_json:
        _json(result.as_dict())
        return
    what = (
        f"{result.jobs} job{'' if result.jobs == 1 else 's'} of this customer "
        f"({result.cancelled} waiting, cancelled), {result.attempts} attempts, "
        f"{result.mentions} mentions elsewhere"
    )
    echo(f"would erase {what} (dry run: nothing changed)" if dry_run else f"erased {what}")
    if result.in_flight:
        echo(
            f"note: {result.in_flight} of their jobs were in flight: a request may be on the wire "
            "(their data is erased all the same); run forget again once they have finished, to "
            "erase what the API's answer may echo",
            err=True,
        )


def _interactive() -> bool:
    return sys.stdin.isatty()


def _stderr_is_tty() -> bool:
    return sys.stderr.isatty()


def _confirm(what: str, command: str, why: str = f"more than {CONFIRM_ABOVE:,} jobs") -> None:
    """Ask on a terminal; elsewhere refuse (exit 7): a script must say --yes."""
    if not _interactive():
        fail(
            f"this would {what}: confirm on a terminal, or add --yes\n({why}; nothing changed)",
            problems.EXIT_DECLINED,
        )
    if not click.confirm(f"{command}: {what}?", default=False, err=True):
        fail("not confirmed: nothing changed", problems.EXIT_DECLINED)


@contextlib.contextmanager
def _progress(label: str, *, quiet: bool) -> Iterator[Callable[[str], None]]:
    """A running line on stderr while a long operation runs, if stderr is a terminal and not
    ``quiet`` (--json, a dry run): the latest count given to the callback and the seconds
    elapsed, redrawn twice a second; cleared at the end."""
    state = {"text": ""}
    if quiet or not _stderr_is_tty():
        yield lambda text: None
        return
    stop = threading.Event()
    started = time.monotonic()

    def line() -> str:
        shown = f"{label} {state['text']}".rstrip()
        return f"\r\x1b[K{shown}… {time.monotonic() - started:.0f}s"

    def draw() -> None:
        while not stop.wait(PROGRESS_EVERY):
            sys.stderr.write(line())
            sys.stderr.flush()

    def update(text: str) -> None:
        state["text"] = text

    thread = threading.Thread(target=draw, daemon=True)
    thread.start()
    try:
        yield update
    finally:
        stop.set()
        thread.join()
        sys.stderr.write(line() + "\n")
        sys.stderr.flush()


PROGRESS_EVERY = 0.5  # seconds between redraws of the running count


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
@click.option(
    "--trusted-proxies",
    "--forwarded-allow-ips",  # the old name, uvicorn's
    "trusted",
    help="Reverse proxies (comma-separated addresses or networks) whose X-Forwarded-Proto and "
    "X-Forwarded-For are believed (default: DISPATCHER_TRUSTED_PROXIES, else none). Behind a TLS "
    "proxy listed here the session cookie is Secure and the login throttle counts the client.",
)
def web(host: str, port: int, trusted: str | None) -> None:
    """Serve the admin page, its JSON API (/api, OpenAPI at /api/openapi.json) and /metrics."""
    _serve_web(host, port, pages=True, trusted=trusted)


def _serve_web(host: str, port: int, *, pages: bool, trusted: str | None = None) -> None:
    try:
        from dispatcher.web import BindError, serve
    except ModuleNotFoundError as exc:  # the base install has no web stack
        fail(f"{exc.name} is not installed: pip install 'ecdp-dispatcher[web]'")

    settings = get_settings()
    if trusted is not None:
        try:
            proxies = trusted_proxies(trusted, "--trusted-proxies")
        except ConfigError as exc:
            fail(str(exc), problems.EXIT_USAGE)
        settings = dataclasses.replace(settings, trusted_proxies=proxies)
    try:
        serve(host, port, settings, pages_and_api=pages)
    except BindError as exc:  # a public address without DISPATCHER_ADMIN_TOKEN: configuration
        fail(str(exc), problems.EXIT_CONFIG)


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
