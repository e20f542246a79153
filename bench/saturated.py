"""The ``saturated`` figure (issue 21): an API at its capacity, and how many second triggers and
how much time the closed-loop in-flight window costs there.

    python bench/saturated.py [--events 1000] [--repeats 3] [--windows 16,24,32,48,64,96,128]
    python bench/run.py --only saturated      # the same, as a figure group of the benchmark

The API is the sandbox (``dispatcher.sandbox.Sandbox``, in process) serving at most 32 requests at
once, 0.25 s each; the others wait inside the server and are served even after their client gave
up, as a real API under load does. The worker is one ``Deliverer`` in this process with the
default settings but ``DISPATCHER_HTTP_TIMEOUT_SECONDS=2`` and quick retries (0.5 s, at most 2 s,
so that a re-sent job does not leave the clock waiting for its back-off). Each run delivers
``--events`` pending jobs of one queue; the clock runs from the first ``drain`` until every job is
delivered. ECDP has no idempotency key: every request served beyond one per event is a customer's
second email.

- ``served / events``: requests the sandbox served per event, the most of the adaptive runs
  (target <= 1.01);
- ``time / best fixed``: the median time of ``--repeats`` runs with the adaptive window, over the
  quickest of a sweep of fixed windows (``WindowPolicy(minimum=W, maximum=W, initial=W)``) in the
  same invocation (target <= 1.2).

Its own PostgreSQL database (``dispatcher_bench_saturated``, on the server of
``DISPATCHER_TEST_POSTGRES_URL``), made and dropped here; signals go to an in-memory broker
(nothing listens: the ``Deliverer`` is driven directly). About 2 minutes. Prints its own table;
``--json`` writes the result for ``bench/run.py``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

# Before anything imports dispatcher: its settings are read once.
os.environ["DISPATCHER_BROKER_URL"] = "memory://"
os.environ["DISPATCHER_HTTP_TIMEOUT_SECONDS"] = "2"
os.environ["DISPATCHER_RETRY_BASE_SECONDS"] = "0.5"
os.environ["DISPATCHER_RETRY_MAX_SECONDS"] = "2"
os.environ["DISPATCHER_MAX_ATTEMPTS"] = "20"
os.environ["ECDP_API_KEY"] = "bench"
# bench/run.py puts its copy of dispatcher/ on PYTHONPATH; alone, the checkout's.
sys.path.append(str(Path(__file__).resolve().parents[1]))

from databases import QUEUE, drop_db, events, make_db, sql
from services import log

DB = "dispatcher_bench_saturated"
CAPACITY = 32
LATENCY = 0.25
WINDOWS = (16, 24, 32, 48, 64, 96, 128)
SERVED_MAX = 1.01  # requests served / events
TIME_MAX = 1.2  # adaptive time / the best fixed window's


def one_run(db_url: str, n: int, fixed: int | None) -> dict[str, Any]:
    """``n`` events delivered by one ``Deliverer`` against a fresh saturated sandbox; ``fixed``:
    a fixed window of that size instead of the adaptive one."""
    import sqlalchemy as sa

    from dispatcher import enqueue_many
    from dispatcher.config import get_settings
    from dispatcher.db import get_engine
    from dispatcher.delivery import Deliverer
    from dispatcher.sandbox import Sandbox
    from dispatcher.window import WindowPolicy

    sql(
        db_url,
        "TRUNCATE dispatcher_attempts, dispatcher_jobs, dispatcher_queues, dispatcher_counts",
    )
    engine = get_engine(db_url)
    enqueue_many(events(n, f"sat{fixed or 0}"), queue=QUEUE)
    left_sql = sa.text("SELECT count(*) FROM dispatcher_jobs WHERE status <> 'delivered'")
    with Sandbox(api_key="bench", latency=LATENCY, capacity=CAPACITY) as sb:
        settings = dataclasses.replace(get_settings(), base_url=sb.url)
        d = Deliverer(settings, engine=engine)
        if fixed:
            d.window_policy = WindowPolicy(maximum=fixed, minimum=fixed, initial=fixed)
        windows: list[tuple[float, int]] = []  # (seconds since the start, window): 4 a second
        done = threading.Event()
        start = time.perf_counter()

        def sample() -> None:
            while not done.wait(0.25):
                window = d._windows.get(QUEUE)
                if window is not None:
                    windows.append((round(time.perf_counter() - start, 2), window.limit))

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        try:
            deadline = start + 60 + n * LATENCY  # one at a time would take n x LATENCY
            while True:
                d.drain(QUEUE, max_seconds=30)
                with engine.connect() as conn:
                    left = conn.execute(left_sql).scalar_one()
                if not left:
                    break
                if time.perf_counter() > deadline:
                    raise RuntimeError(f"saturated: {left} of {n} jobs not delivered in time")
                time.sleep(0.05)  # retries not due yet
            elapsed = time.perf_counter() - start
        finally:
            done.set()
            sampler.join()
            d.close()
        # Requests still waiting inside the server (their client gave up) are served all the
        # same, each one a second trigger: count them too.
        settle = time.monotonic() + 10
        while (sb.waiting or sb.in_flight) and time.monotonic() < settle:
            time.sleep(0.05)
        served, peak = sb.served, sb.max_in_flight
    attempts = dict(
        sql(
            db_url,
            "SELECT coalesce(status_code::text, CASE WHEN sent THEN 'no answer, body sent' "
            "ELSE 'no answer, never sent' END), count(*) FROM dispatcher_attempts GROUP BY 1",
        )
    )
    return {
        "window": fixed or "adaptive",
        "events": n,
        "seconds": elapsed,
        "served": served,
        "served_per_event": served / n,
        "attempts": {str(k): int(v) for k, v in attempts.items()},
        "max_in_flight_at_api": peak,
        "window_series": windows,
    }


def measure(n: int, repeats: int, windows: tuple[int, ...]) -> dict[str, Any]:
    """The adaptive runs interleaved with the sweep, in one database made and dropped here."""
    base = os.environ.get(
        "DISPATCHER_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
    )
    db_url = make_db(base, DB)
    os.environ["DISPATCHER_DATABASE_URL"] = db_url
    adaptive: list[dict[str, Any]] = []
    fixed: list[dict[str, Any]] = []
    try:
        # Each adaptive run before a share of the sweep: a slow spell of the shared machine
        # falls on both sides.
        for k in range(repeats):
            adaptive.append(_logged(db_url, n, None))
            fixed += [_logged(db_url, n, w) for w in windows[k::repeats]]
    finally:
        from dispatcher.db import dispose_engines

        dispose_engines()
        drop_db(base, DB)
    best = min(fixed, key=lambda r: r["seconds"])
    seconds = statistics.median(r["seconds"] for r in adaptive)
    served = max(r["served_per_event"] for r in adaptive)
    return {
        "events": n,
        "capacity": CAPACITY,
        "latency_s": LATENCY,
        "http_timeout_s": 2.0,
        "adaptive_seconds": seconds,
        "served_per_event": served,
        "best_fixed_window": best["window"],
        "best_fixed_seconds": best["seconds"],
        "time_ratio": seconds / best["seconds"],
        "met": {"served": served <= SERVED_MAX, "time": seconds / best["seconds"] <= TIME_MAX},
        "adaptive": adaptive,
        "fixed": fixed,
    }


def _logged(db_url: str, n: int, fixed: int | None) -> dict[str, Any]:
    r = one_run(db_url, n, fixed)
    log(
        f"saturated, window {r['window']}: {r['seconds']:.2f} s, {r['served']} served "
        f"({r['served_per_event']:.3f}/event), at most {r['max_in_flight_at_api']} at the API, "
        f"attempts {r['attempts']}"
    )
    return r


def table(result: dict[str, Any]) -> str:
    """The runs, then the two figures against their targets."""
    head = f"{'window':<10}{'seconds':>9}{'served/event':>14}{'most at API':>13}{'sizes':>10}"
    lines = [f"{head}  attempts"]
    for r in [*result["adaptive"], *sorted(result["fixed"], key=lambda r: r["window"])]:
        sizes = [w for _, w in r["window_series"]] or [0]
        lines.append(
            f"{r['window']!s:<10}{r['seconds']:>9.2f}{r['served_per_event']:>14.3f}"
            f"{r['max_in_flight_at_api']:>13}{f'{min(sizes)}-{max(sizes)}':>10}  {r['attempts']}"
        )
    met = result["met"]
    lines += [
        "",
        f"requests served / events: {result['served_per_event']:.3f} (the most of "
        f"{len(result['adaptive'])} adaptive runs; target <= {SERVED_MAX:g}): "
        + ("met" if met["served"] else "MISSED"),
        f"time / best fixed window: {result['adaptive_seconds']:.2f} s (median) / "
        f"{result['best_fixed_seconds']:.2f} s (window {result['best_fixed_window']}) = "
        f"{result['time_ratio']:.2f} (target <= {TIME_MAX:g}): "
        + ("met" if met["time"] else "MISSED"),
    ]
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--events", type=int, default=1000)
    p.add_argument("--repeats", type=int, default=3, help="adaptive runs (median)")
    p.add_argument(
        "--windows",
        default=",".join(map(str, WINDOWS)),
        help="the fixed windows of the sweep, comma-separated",
    )
    p.add_argument("--json", type=Path, help="also write the result there")
    args = p.parse_args()
    try:
        windows = tuple(int(w) for w in args.windows.split(",") if w.strip())
    except ValueError:
        p.error(f"--windows: comma-separated whole numbers (got {args.windows!r})")
    if not windows or min(windows) < 1 or args.repeats < 1 or args.events < 1:
        p.error("--windows, --repeats and --events: at least 1")
    started = time.perf_counter()
    result = measure(args.events, args.repeats, windows)
    result["total_seconds"] = time.perf_counter() - started
    print(
        f"\nSaturated API (capacity {CAPACITY}, {LATENCY:g} s each, request timeout 2 s), "
        f"{args.events:,} events, one Deliverer; {result['total_seconds']:.0f} s in all\n"
        + table(result)
    )
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
