"""``dispatcher demo``: the whole pipeline on one machine, with nothing installed but the package.

A SQLite outbox, the embedded SQLite broker, a real Celery worker and the sweeper (as the
Procfile starts them, in subprocesses) and the ECDP sandbox on loopback. The demo enqueues a
handful of events that meet every kind of answer, revokes and restores the API key, prints the
history and the stats, stops everything it started and exits 0.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import click
import sqlalchemy as sa

from dispatcher import admin
from dispatcher.config import get_settings
from dispatcher.db import dispose_engines, get_engine, utcnow
from dispatcher.events import CustomEvent, DataField, Event, SegmentEvent
from dispatcher.sandbox import Reply, Sandbox
from dispatcher.schema import STATUSES, JobStatus

DEMO_KEY = "demo-key-0000"  # the sandbox's key; a real key is never printed
UNKNOWN_EVENT = 404
REJECTED_EVENT = 400
FLAKY_EVENT = 500


def _say(text: str) -> None:
    click.secho(text, fg="cyan", bold=True)


def _counts(engine: sa.Engine) -> dict[str, int]:
    per_queue = admin.stats(engine, utcnow()).values()
    counts = {s.value: sum(q.counts[s] for q in per_queue) for s in STATUSES}
    return {s: n for s, n in counts.items() if n}


def _wait(engine: sa.Engine, done: Callable[[dict[str, int]], bool], limit: float = 60.0) -> None:
    """Poll the outbox, printing progress on one line, until ``done`` (bounded by ``limit``)."""
    deadline = time.monotonic() + limit
    tty = sys.stdout.isatty()
    shown = ""
    while True:
        counts = _counts(engine)
        line = "  … " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
        if line != shown:  # progress: rewrite one line on a terminal, a line per change elsewhere
            click.echo(("\r" + line.ljust(78)) if tty else line, nl=not tty)
            shown = line
        if done(counts):
            if tty:
                click.echo()
            return
        if time.monotonic() > deadline:
            raise click.ClickException("the demo's jobs did not settle; see processes.log")
        time.sleep(0.2)


def _settled(counts: dict[str, int]) -> bool:
    live = (JobStatus.PENDING, JobStatus.IN_FLIGHT, JobStatus.RETRYING)
    return not any(counts.get(s) for s in live)


def run(workdir: Path | None, show: Callable[[list[str]], None]) -> None:
    """Run the demo in ``workdir`` (a fresh temporary folder when None)."""
    folder = Path(workdir or tempfile.mkdtemp(prefix="dispatcher-demo-")).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    db_url = f"sqlite:///{folder / 'outbox.db'}"
    with Sandbox(api_key=DEMO_KEY, unknown_event_ids={UNKNOWN_EVENT}) as sandbox:
        env = {
            **os.environ,
            "DISPATCHER_DATABASE_URL": db_url,
            "DISPATCHER_BROKER_URL": f"sqla+sqlite:///{folder / 'broker.db'}",
            "ECDP_BASE_URL": sandbox.url,
            "ECDP_API_KEY": DEMO_KEY,
            "DISPATCHER_RETRY_BASE_SECONDS": "0.5",
            "DISPATCHER_SWEEP_INTERVAL_SECONDS": "0.5",
        }
        os.environ.update({k: env[k] for k in env if k.startswith(("DISPATCHER_", "ECDP_"))})
        get_settings.cache_clear()
        dispose_engines()

        _say(f"1. outbox: {db_url}")
        from dispatcher.migrate import upgrade

        upgrade(db_url)
        engine = get_engine(db_url)

        _say(f"2. ECDP sandbox on {sandbox.url}; a Celery worker and the sweeper start")
        log = (folder / "processes.log").open("ab")
        procs = [
            subprocess.Popen(
                [sys.executable, "-m", "dispatcher.cli", *args],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            for args in (
                ["worker", "--pool=solo", "--without-gossip", "--without-mingle", "-l", "WARNING"],
                ["sweeper"],
            )
        ]
        try:
            _scenario(engine, sandbox)
        finally:
            for proc in procs:
                proc.terminate()
            for proc in procs:
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            log.close()

        _say("6. delivery history (dispatcher history)")
        show(["history", "--limit", "20"])
        _say("7. queues (dispatcher stats)")
        show(["stats"])
        dispose_engines()
    click.echo(
        f"\nAll processes stopped. Explore the outbox yourself:\n"
        f"  export DISPATCHER_DATABASE_URL={db_url}\n"
        f"  dispatcher history --status dead; dispatcher show 4"
    )


def _scenario(engine: sa.Engine, sandbox: Sandbox) -> None:
    from dispatcher.producer import enqueue

    _say("3. enqueue events that meet every kind of answer")
    sandbox.script(
        REJECTED_EVENT,
        Reply(
            400,
            {
                "type": "https://tools.ietf.org/html/rfc7231#section-6.5.1",
                "title": "One or more validation errors occurred.",
                "status": 400,
                "substatus": "CustomerInvalidModelState",
                "detail": "Customer was not found",
                "instance": "/scenariocustomevents",
                "errors": ["customerEmail: customer does not exist"],
            },
        ),
    )
    sandbox.script(FLAKY_EVENT, Reply(500))
    order = CustomEvent(
        101,
        customer_email="anna@example.com",
        data_fields=[
            DataField("total", "Money", "129.90"),
            DataField("placed", "Date", "2026-11-27"),
        ],
    )
    samples: list[tuple[str, Event]] = [
        ("order placed, 201", order),
        ("cart abandoned, 201", CustomEvent(102, customer_id=42)),
        ("segments 1, 5, 15, 201", SegmentEvent(103, [1, 5, 15])),
        ("unknown customer, 400 -> dead", CustomEvent(REJECTED_EVENT, customer_crm_id="ghost")),
        ("unknown custom event, 404 -> dead", CustomEvent(UNKNOWN_EVENT, customer_id=7)),
        ("500 first, then 201 on retry", CustomEvent(FLAKY_EVENT, customer_phone="+48600100200")),
    ]
    for label, event in samples:
        click.echo(f"  job {enqueue(event):>3}: {label}")
    _wait(engine, _settled)

    _say("4. the API key is revoked: a 401 pauses the queue, nothing is dead-lettered")
    sandbox.api_key = "rotated-key"
    for n in range(3):
        enqueue(CustomEvent(105, customer_email=f"late{n}@example.com"))

    def paused(_: dict[str, int]) -> bool:
        return bool(admin.paused_queues(engine, ["default"]))

    _wait(engine, paused)
    click.echo(f"  requests refused with 401 so far: {sandbox.count(status=401)}")

    _say("5. the key is fixed and the operator resumes (dispatcher resume): the backlog goes out")
    sandbox.api_key = DEMO_KEY
    admin.resume_queue(engine, "default")  # as `dispatcher resume` does: signals after commit
    _wait(engine, _settled)
