"""Producer speed on PostgreSQL: ``enqueue`` / ``enqueue_many`` beside raw psycopg doing the same.

    python bench/enqueue.py [--rounds 3] [--single 2000] [--batch-total 10000]

Uses ``DISPATCHER_TEST_POSTGRES_URL`` (default ``postgresql://postgres@127.0.0.1:5432/test``) and
makes its own database ``dispatcher_bench``. Figures are medians of alternating rounds; the ratios
are what count, since the machine is shared.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("DISPATCHER_BROKER_URL", "memory://")

import psycopg
import sqlalchemy as sa
from databases import RAW_INSERT as INSERT  # bench/databases.py
from databases import events, make_db
from sqlalchemy.orm import Session

from dispatcher import enqueue, enqueue_many
from dispatcher.db import get_engine, utcnow

BASE = os.environ.get("DISPATCHER_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
RAW_INSERT = INSERT + " RETURNING id"


def rate(n: int, fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return n / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--single", type=int, default=2000)
    parser.add_argument("--batch-total", type=int, default=10000)
    args = parser.parse_args()

    url = make_db(BASE, "dispatcher_bench")
    os.environ["DISPATCHER_DATABASE_URL"] = url
    engine = get_engine(url)
    raw_dsn = sa.make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
    single, batch = events(args.single, "single"), events(args.batch_total, "batch")

    def ours_single() -> None:
        for e in single:
            with Session(engine) as session, session.begin():
                enqueue(e, session=session)

    def raw_single() -> None:
        with psycopg.connect(raw_dsn) as conn:
            for e in single:
                now = utcnow()
                with conn.transaction():
                    conn.execute(
                        RAW_INSERT,
                        (
                            "default",
                            e.endpoint,
                            e.custom_event_id,
                            e.customer_email,
                            e.to_json(),
                            now,
                            now,
                            now,
                        ),
                    )

    def ours_many() -> None:
        with Session(engine) as session, session.begin():
            for start in range(0, len(batch), 1000):
                enqueue_many(batch[start : start + 1000], session=session)

    def raw_many() -> None:
        with psycopg.connect(raw_dsn) as conn, conn.transaction(), conn.cursor() as cur:
            for start in range(0, len(batch), 1000):
                now = utcnow()
                cur.executemany(
                    RAW_INSERT.replace(" RETURNING id", ""),
                    [
                        (
                            "default",
                            e.endpoint,
                            e.custom_event_id,
                            e.customer_email,
                            e.to_json(),
                            now,
                            now,
                            now,
                        )
                        for e in batch[start : start + 1000]
                    ],
                )

    def ours_10k_one_call() -> None:
        with Session(engine) as session, session.begin():
            enqueue_many(batch, session=session)

    figures: dict[str, list[float]] = {k: [] for k in ("enqueue", "raw", "many", "raw_many", "10k")}
    ours_single()  # warm-up: connections, statement caches
    for _ in range(args.rounds):
        figures["enqueue"].append(rate(len(single), ours_single))
        figures["raw"].append(rate(len(single), raw_single))
        figures["many"].append(rate(len(batch), ours_many))
        figures["raw_many"].append(rate(len(batch), raw_many))
        figures["10k"].append(rate(len(batch), ours_10k_one_call))
        with engine.begin() as conn:
            conn.exec_driver_sql("TRUNCATE dispatcher_attempts, dispatcher_jobs")
    med = {k: statistics.median(v) for k, v in figures.items()}
    print(f"PostgreSQL, medians of {args.rounds} alternating rounds")
    print(f"{'figure':<34}{'events/s':>12}{'ratio':>10}")
    print(
        f"{'enqueue (1 per transaction)':<34}{med['enqueue']:>12,.0f}"
        f"{med['enqueue'] / med['raw']:>10.2f}"
    )
    print(f"{'raw psycopg (1 per transaction)':<34}{med['raw']:>12,.0f}")
    print(
        f"{'enqueue_many (batches of 1,000)':<34}{med['many']:>12,.0f}"
        f"{med['many'] / med['raw_many']:>10.2f}"
    )
    print(f"{'raw psycopg executemany':<34}{med['raw_many']:>12,.0f}")
    print(
        f"enqueue_many of {len(batch):,} events in one call: "
        f"{len(batch) / med['10k']:.3f} s ({med['10k']:,.0f} events/s)"
    )


if __name__ == "__main__":
    main()
