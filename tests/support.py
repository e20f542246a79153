"""Helpers for tests that run the real processes: workers, the sweeper, a private Redis."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import sqlalchemy as sa

from dispatcher.db import get_engine, utcnow
from dispatcher.delivery import Deliverer
from dispatcher.sandbox import Sandbox
from dispatcher.schema import jobs

ROOT = Path(__file__).resolve().parents[1]  # the checkout


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start(env: dict[str, str], *args: str, log: Path) -> subprocess.Popen[bytes]:
    """``dispatcher ARGS`` in its own process group, output appended to ``log``."""
    with log.open("ab") as out:  # the child keeps its own descriptor
        return subprocess.Popen(
            [sys.executable, "-m", "dispatcher.cli", *args],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> None:
    """Stop a process and every child it forked (Celery's prefork pool)."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)  # pool children of a killed main process


def side_by_side(run: Callable[[Deliverer], object], workers: Iterable[Deliverer]) -> None:
    """``run`` each worker on a thread of its own, as separate worker processes would; then close
    them all."""
    workers = list(workers)
    threads = [threading.Thread(target=run, args=(w,)) for w in workers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for w in workers:
        w.close()


def wait_until(predicate: Callable[[], object], what: str, limit: float = 120.0) -> None:
    """Poll ``predicate`` (bounded); the bound is a hang guard, not a timing assertion."""
    deadline = time.monotonic() + limit
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(0.1)


def statuses(url: str) -> dict[str, int]:
    with get_engine(url).connect() as conn:
        rows = conn.execute(sa.select(jobs.c.status, sa.func.count()).group_by(jobs.c.status))
        return {r[0]: r[1] for r in rows}


def settled(url: str) -> bool:
    try:
        return not {"pending", "in_flight", "retrying"} & set(statuses(url))
    except sa.exc.OperationalError:  # the database is being restarted by the test
        return False


def settle(deliverer: Deliverer, engine: sa.Engine, queue: str = "default") -> None:
    """Deliver until no job of ``queue`` is pending, retrying or in flight.

    Waiting for a retry's time follows the outbox's own schedule (``next_attempt_at``), never a
    sleep whose length a test asserts on.
    """
    for _ in range(500):
        deliverer.drain(queue)
        with engine.connect() as conn:
            waiting = conn.execute(
                sa.select(sa.func.min(jobs.c.next_attempt_at)).where(
                    jobs.c.queue == queue, jobs.c.status.in_(("pending", "retrying", "in_flight"))
                )
            ).scalar()
        if waiting is None:
            return
        time.sleep(max(0.0, min(0.2, (waiting - utcnow()).total_seconds())))
    raise AssertionError("jobs did not settle")


def worker_ready(log: Path) -> Callable[[], bool]:
    return lambda: log.exists() and b" ready." in log.read_bytes()


@dataclass(frozen=True)
class Accounting:
    enqueued: int
    delivered: int
    dead: int
    sends: int
    duplicates: int  # 2xx answers beyond the first for the same job

    def __str__(self) -> str:
        return (
            f"enqueued={self.enqueued} delivered={self.delivered} dead={self.dead} "
            f"sends={self.sends} duplicate deliveries={self.duplicates}"
        )


def account(url: str, sandbox: Sandbox, key: str = "customerId") -> Accounting:
    """Every job is delivered or dead with a reason, and the server saw every delivered job."""
    with get_engine(url).connect() as conn:
        rows = conn.execute(sa.select(jobs.c.status, jobs.c.payload, jobs.c.last_error)).all()
    assert {r.status for r in rows} <= {"delivered", "dead"}, Counter(r.status for r in rows)
    assert all(r.last_error for r in rows if r.status == "dead"), "a dead job without a reason"
    accepted = Counter(json.loads(b)[key] for b in sandbox.bodies(status=201))
    delivered = [json.loads(r.payload)[key] for r in rows if r.status == "delivered"]
    missing = [k for k in delivered if not accepted[k]]
    assert not missing, f"delivered but never received: {missing[:10]}"
    return Accounting(
        enqueued=len(rows),
        delivered=len(delivered),
        dead=len(rows) - len(delivered),
        sends=len(sandbox.requests),
        duplicates=sum(n - 1 for n in accepted.values() if n > 1),
    )


def status_of(engine: sa.Engine, job_id: str) -> str:
    with engine.connect() as conn:
        found: str = conn.execute(
            sa.select(jobs.c.status).where(jobs.c.id == int(job_id))
        ).scalar_one()
        return found


def assert_counts_exact(engine: sa.Engine) -> None:
    """The counts (folded and not) hold exactly what a count of the jobs table finds."""
    from dispatcher.outbox import job_counts

    with engine.connect() as conn:
        real = {
            (r.queue, r.status): r.n
            for r in conn.execute(
                sa.select(jobs.c.queue, jobs.c.status, sa.func.count().label("n")).group_by(
                    jobs.c.queue, jobs.c.status
                )
            )
        }
        assert job_counts(conn) == real
