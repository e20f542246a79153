"""The delivery benchmark (issue #6): the dispatcher against the ceilings and the naive alternative.

    python bench/run.py [--rounds 3] [--quick] [--only drain,naive_celery,...]

Starts what it needs and stops it again, also on Ctrl-C or an error: PostgreSQL and Redis when
they are not up (the same ``DISPATCHER_TEST_POSTGRES_URL`` / ``DISPATCHER_TEST_REDIS_URL`` as the
tests; it uses its own databases ``dispatcher_bench`` and ``dispatcher_bench_big`` and Redis db
14), nginx from Debian's packages as the sink (installed with apt-get when missing and running as
root), and the Procfile's ``worker`` and ``sweeper`` for every drain. Prints one table and writes
it as JSON to ``bench/results/latest.json``.

Competing figures run in the same invocation, alternating (the order flips every round), and
each ratio is the median of the per-round ratios: the machine is shared and noisy, so only the
ratios are comparable between runs. Environment variables the dispatcher reads
(``DISPATCHER_BATCH_SIZE``, ``DISPATCHER_CONCURRENCY``, ...) pass through to the worker, so a
setting can be tried without editing anything. ``drain_baseline`` and ``drain_50ms_baseline``
are ``drain`` and ``drain_50ms`` with the worker code of ``--baseline-ref`` (exported from git), so
the CPU per event and the drains against the starting commit read off the same run.
``drain_ordered`` is ``drain`` with an ordering key per job (issue 21).

The pieces: ``figures.py`` (every figure, its unit and targets, in one table), ``rounds.py`` (one
run of each figure group), ``sinks.py``, ``services.py`` (processes, PostgreSQL, Redis, nginx,
copies of the code), ``databases.py``, ``usage.py`` (a process tree's RSS and CPU), ``spy.py``
(``--py-spy``), ``report.py`` (table and JSON). After the rounds, ``saturated`` runs
``saturated.py`` (an API at its capacity: second triggers, and time against the best fixed
window; about 2 minutes; its figures join the main table), ``clients`` runs ``clients.py`` (HTTP
clients side by side) and ``scale`` runs ``scale.py`` (a 10M-row outbox, purge, many queues,
worker processes; ``--scale-rows``, about 25 minutes at 10M): each prints its own table under the
main one and goes into the JSON.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from databases import build_big_table, drop_db, make_db, pg_dsn, sql
from ingest import http_round, sql_round
from report import Results, machine_info, table, write_json
from rounds import (
    API_KEY,
    Ctx,
    client_run,
    drain_run,
    enqueue_async_round,
    enqueue_round,
    first_enqueue_round,
    latency_run,
    naive_run,
    raw_http_run,
    read_procfile,
    worker_concurrency,
)
from services import (
    BENCH,
    BenchError,
    Code,
    code_at,
    current_code,
    ensure_nginx,
    ensure_postgres,
    ensure_redis,
    log,
    snapshot,
    stop_all,
    with_db,
)
from sinks import Nginx, PySink, Sink
from spy import find_py_spy, summarize_profile

if TYPE_CHECKING:
    import redis as redis_mod

__all__ = ["main"]

RESULTS = BENCH / "results"
BENCH_REDIS_DB = int(os.environ.get("DISPATCHER_BENCH_REDIS_DB", "14"))  # another db: beside tests
# The starting commit of issues 21 and 25: "the drains ... stay >= 0.95 x today's" (21) and
# "drain_baseline is this starting commit" (25). Figures up to 2026-11-30 were measured
# against 25c103b, the engine before issue 13.
BASELINE_REF = "d7eaca3"

# The figure groups, in the order a round runs them (the next round runs them backwards): each
# makes one or more figures of figures.py. drain and drain_baseline side by side alternate.
GROUPS = (
    "enqueue",
    "enqueue_async",
    "drain",
    "drain_ordered",
    "drain_baseline",
    "raw_http",
    "naive_celery",
    "drain_big_table",
    "drain_50ms",
    "drain_50ms_baseline",
    "naive_celery_50ms",
    "raw_http_50ms",
    "latency",
    "ingest",  # the SQL function beside a raw INSERT, and POST /api/events (issue 24)
    "memory",  # after the rounds: one long drain
    "saturated",  # after the rounds: bench/saturated.py, an API at its capacity (issue 21)
    "clients",  # after the rounds: bench/clients.py, HTTP clients side by side (issue 13)
    "scale",  # after the rounds: bench/scale.py, a 10M-row outbox and scaling out (issue 16)
)
NOT_QUICK = {"drain_big_table", "memory", "saturated", "clients", "scale"}
ORDERING_KEYS = 10_000  # drain_ordered: distinct keys, at most half the jobs (two jobs a key)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--rounds", type=int, help="alternating rounds (default 3; --quick: 1)")
    p.add_argument("--quick", action="store_true", help="small sizes, 1 round, no big table")
    p.add_argument("--only", help=f"comma-separated subset of: {', '.join(GROUPS)}")
    p.add_argument("--jobs", type=int, help="jobs per drain (default 20000; --quick: 2000)")
    p.add_argument("--naive-50ms-jobs", type=int, help="tasks for naive_celery_50ms (1000; 200)")
    p.add_argument("--memory-jobs", type=int, help="jobs of the long drain for RSS growth (60000)")
    p.add_argument("--big-rows", type=int, default=1_000_000, help="delivered rows, big table")
    p.add_argument(
        "--scale-rows", type=int, default=10_000_000, help="history rows for the scale figures"
    )
    p.add_argument("--latency-seconds", type=float, help="per round (default 10; --quick: 5)")
    p.add_argument("--latency-rate", type=float, default=100.0, help="events/s for latency")
    p.add_argument("--delay", type=float, default=0.05, help="the slow sink's delay (s)")
    p.add_argument("--threads", type=int, default=32, help="threads for raw_http_50ms_threads")
    p.add_argument(
        "--in-flight", type=int, default=128, help="requests in flight for raw_http_50ms_client"
    )
    p.add_argument(
        "--baseline-ref",
        default=BASELINE_REF,
        help="git ref whose dispatcher/ runs the worker of drain_baseline and "
        f"drain_50ms_baseline (default {BASELINE_REF}, the start of issues 21 and 25)",
    )
    p.add_argument("--python-sink", action="store_true", help="slow sink: bench/sink.py, no echo")
    p.add_argument(
        "--py-spy",
        action="store_true",
        help="after the rounds, one more drain (not counted) under py-spy; prints where the "
        "worker's time goes and keeps the collapsed stacks in /tmp/ecdp-bench-py-spy-drain.txt",
    )
    p.add_argument("--no-install", action="store_true", help="never apt-get install nginx")
    p.add_argument(
        "--ready-pattern", default=r"\bready\b", help="the worker's readiness line (regex)"
    )
    p.add_argument("--output", type=Path, default=RESULTS / "latest.json")
    args = p.parse_args()
    q = args.quick
    args.rounds = args.rounds or (1 if q else 3)
    args.jobs = args.jobs or (2000 if q else 20000)
    args.naive_50ms_jobs = args.naive_50ms_jobs or (200 if q else 1000)
    args.latency_seconds = args.latency_seconds or (5.0 if q else 10.0)
    args.single = 500 if q else 2000
    args.batch = 5000 if q else 20000
    args.http_n = min(args.jobs, 10000)
    args.memory_jobs = args.memory_jobs or 60000
    selected = set(GROUPS) - (NOT_QUICK if q else set())
    if args.only:
        selected = {f.strip() for f in args.only.split(",") if f.strip()}
        unknown = selected - set(GROUPS)
        if unknown:
            p.error(f"--only: unknown {', '.join(sorted(unknown))} (known: {', '.join(GROUPS)})")
    args.selected = selected
    return args


def _interrupt(*_: object) -> None:
    raise KeyboardInterrupt  # SIGTERM cleans up like Ctrl-C


def main() -> int:
    args = parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="ecdp-bench-"))
    logdir = workdir / "logs"
    logdir.mkdir()
    pg_base = os.environ.get(
        "DISPATCHER_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
    )
    redis_url = with_db(
        os.environ.get("DISPATCHER_TEST_REDIS_URL", "redis://127.0.0.1:6379/15"), BENCH_REDIS_DB
    )
    src = snapshot(workdir)
    # Before anything imports dispatcher (its settings are read once): our own signals go here.
    os.environ["DISPATCHER_BROKER_URL"] = redis_url
    os.environ.setdefault("ECDP_API_KEY", API_KEY)
    signal.signal(signal.SIGTERM, _interrupt)
    stop_pg: Callable[[], None] | None = None
    redis = None
    ok = False
    try:
        stop_pg = ensure_postgres(pg_dsn(pg_base.replace("postgresql://", "postgresql+psycopg://")))
        redis = ensure_redis(redis_url, logdir)
        has_echo = ensure_nginx(not args.no_install) and not args.python_sink
        env = Env(args, workdir, logdir, src, pg_base, redis_url, redis, has_echo)
        ok = run(env)
    except BenchError as exc:
        log(f"error: {exc}")
    except KeyboardInterrupt:
        log("interrupted")
    finally:
        stop_all()
        if redis is not None:
            with contextlib.suppress(Exception):
                redis.flushdb()  # our own db: leave no signals or tasks behind
        with contextlib.suppress(Exception):
            drop_db(pg_base, "dispatcher_bench_big")  # ~1 GB on disk, rebuilt by every run
        if stop_pg:
            stop_pg()
        if ok:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            log(f"logs kept in {logdir}")
    return 0 if ok else 1


@dataclass(frozen=True)
class Env:
    """What ``main`` has set up before the figures: arguments, directories, services."""

    args: argparse.Namespace
    workdir: Path
    logdir: Path
    src: Path  # the snapshot of dispatcher/
    pg_base: str
    redis_url: str
    redis: redis_mod.Redis
    has_echo: bool


def run(env: Env) -> bool:
    started = datetime.now(UTC)
    ctx, big_max_id, setup_info = prepare(env)
    info = machine_info(ctx.small_url, ctx.redis)
    results = Results()
    play_rounds(ctx, Steps(ctx, results, big_max_id))
    extras = after_rounds(ctx, results)
    params = table_params(ctx, extras)
    text, checks = table(results, params)
    finished = datetime.now(UTC)
    info["loadavg_end"] = os.getloadavg()
    print(summary(ctx, info, finished, text, results, extras))
    document = {
        "date": finished.isoformat(timespec="seconds"),
        "started": started.isoformat(timespec="seconds"),
        "seconds": round((finished - started).total_seconds()),
        "machine": info,
        "sinks": sinks_of(ctx),
        "config": {
            k: (sorted(v) if isinstance(v, set) else str(v) if isinstance(v, Path) else v)
            for k, v in vars(ctx.args).items()
        }
        | {"procfile": ctx.procfile, "baseline": params["baseline"], **setup_info},
        "medians": results.medians(),
        "per_round": results.measured(),
        "checks": [asdict(c) for c in checks],
        "runs": results.runs,
        "table": text,
        **extras,
    }
    write_json(ctx.args.output, document)
    print(f"\nwritten to {ctx.args.output}")
    return True


def prepare(env: Env) -> tuple[Ctx, int, dict[str, Any]]:
    """The baseline's code, the databases (the big table if wanted) and the sinks; returns the
    context every run gets, the big table's last job id and what setting up took."""
    args, sel = env.args, env.args.selected
    baseline = None
    if sel & {"drain_baseline", "drain_50ms_baseline"}:
        baseline = code_at(args.baseline_ref, env.workdir / "baseline")
        log(f"the baseline drains run the worker code of {baseline.label}")
    log("setting up: databases, sinks")
    small = make_db(env.pg_base, "dispatcher_bench")
    big, big_max_id, setup_info = None, 0, {}
    if "drain_big_table" in sel:
        big = make_db(env.pg_base, "dispatcher_bench_big")
        log(f"writing {args.big_rows:,} delivered rows (+ attempts) into dispatcher_bench_big")
        setup_info["big_table_seconds"] = build_big_table(big, args.big_rows)
        log(f"big table ready in {setup_info['big_table_seconds']:.0f} s")
        big_max_id = int(sql(big, "SELECT max(id) FROM dispatcher_jobs")[0][0])
    nginx = Nginx(env.workdir, env.logdir, args.delay, env.has_echo)
    slow: Sink
    if nginx.slow is not None:
        slow = nginx.slow
    else:
        if any(f.endswith("_50ms") for f in sel):
            log("no nginx echo module: the delayed sink is bench/sink.py")
        slow = PySink(env.logdir, args.delay, record=False)
    lat_sink = PySink(env.logdir, 0.0, record=True) if "latency" in sel else None
    ctx = Ctx(
        args, env.logdir, env.redis_url, env.redis, small, big, nginx.fast, slow, lat_sink,
        current_code(env.src), baseline, read_procfile(),
    )  # fmt: skip
    log(f"sinks: {sinks_of(ctx)}")
    if args.py_spy:
        find_py_spy(ctx.env("", "")["PATH"])  # now, not after the rounds
    return ctx, big_max_id, setup_info


def sinks_of(ctx: Ctx) -> dict[str, str]:
    sinks = {"fast": ctx.fast.name, "slow": ctx.slow.name}
    if ctx.latency_sink:
        sinks["latency"] = ctx.latency_sink.name
    return sinks


class Steps:
    """One method per figure group of a round: runs it once and records its figures."""

    def __init__(self, ctx: Ctx, results: Results, big_max_id: int) -> None:
        self.ctx, self.args, self.results, self.big_max_id = ctx, ctx.args, results, big_max_id

    def selected(self) -> list[tuple[str, Callable[[int], None]]]:
        steps = {
            "enqueue": self.enqueue,
            "enqueue_async": self.enqueue_async,
            "drain": self.drain,
            "drain_ordered": self.drain_ordered,
            "drain_baseline": self.drain_baseline,
            "raw_http": self.raw_http,
            "naive_celery": self.naive,
            "drain_big_table": self.drain_big_table,
            "drain_50ms": self.drain_50ms,
            "drain_50ms_baseline": self.drain_50ms_baseline,
            "naive_celery_50ms": self.naive_50ms,
            "raw_http_50ms": self.raw_http_50ms,
            "latency": self.latency,
            "ingest": self.ingest,
        }
        return [(g, steps[g]) for g in GROUPS if g in steps and g in self.args.selected]

    def _add(self, result: dict[str, float]) -> None:
        for figure, value in result.items():
            self.results.add(figure, value)

    def enqueue(self, r: int) -> None:
        res = enqueue_round(
            self.ctx.small_url, self.args.single, self.args.batch, f"enq{r}", raw_first=r % 2 == 1
        )
        res |= first_enqueue_round(self.ctx.small_url)
        self._add(self.results.keep("enqueue", res))
        log(
            f"enqueue {res['enqueue']:,.0f}/s (raw {res['enqueue_raw']:,.0f}, by hand in a "
            f"Session {res['enqueue_session']:,.0f}), enqueue_many "
            f"{res['enqueue_many']:,.0f}/s (raw {res['enqueue_many_raw']:,.0f}); first enqueue "
            f"{res['first_enqueue_ms']:.0f} ms, first INSERT by hand "
            f"{res['first_insert_ms']:.0f} ms"
        )

    def enqueue_async(self, r: int) -> None:
        res = enqueue_async_round(
            self.ctx.small_url, self.args.single, f"enqa{r}", raw_first=r % 2 == 1
        )
        self._add(self.results.keep("enqueue_async", res))
        log(
            f"enqueue_async {res['enqueue_async']:,.0f}/s (raw asyncpg "
            f"{res['enqueue_async_raw']:,.0f}, by hand in an AsyncSession "
            f"{res['enqueue_async_session']:,.0f})"
        )

    def _drain(
        self,
        figure: str,
        cpu_figure: str | None,
        tag: str,
        sink: Sink | None = None,
        code: Code | None = None,
        ordering_keys: int = 0,
    ) -> dict[str, Any]:
        ctx = self.ctx
        res = drain_run(
            ctx,
            ctx.small_url,
            sink or ctx.fast,
            self.args.jobs,
            tag,
            code=code,
            ordering_keys=ordering_keys,
        )
        self.results.keep(figure, res)
        self.results.add(figure, res["rate"])
        if cpu_figure:
            self.results.add(cpu_figure, res["cpu_ms_per_event"])
        cpu = res["cpu_ms_per_event"]
        log(
            f"{figure} {res['rate']:,.0f}/s ({res['seconds']:.1f} s, sink got "
            f"{res['sink_requests']:,}, {res['statuses']}); worker CPU "
            f"{res['worker_cpu_s']:.2f} s, {'-' if cpu is None else f'{cpu:.3f}'} ms/event"
        )
        return res

    def drain(self, r: int) -> None:
        res = self._drain("drain", "cpu_per_event", f"d{r}")
        rss = res["rss_kib"]
        self.results.add("worker_rss_peak", rss["peak"] / 1024)
        log(
            f"drain: worker RSS MiB ready {rss['ready'] / 1024:.0f} mid {rss['mid'] / 1024:.0f} "
            f"peak {rss['peak'] / 1024:.0f} end {rss['end'] / 1024:.0f}"
        )

    def drain_ordered(self, r: int) -> None:
        keys = min(ORDERING_KEYS, max(1, self.args.jobs // 2))
        self._drain("drain_ordered", None, f"o{r}", ordering_keys=keys)

    def drain_baseline(self, r: int) -> None:
        self._drain("drain_baseline", "cpu_per_event_baseline", f"base{r}", code=self.ctx.baseline)

    def drain_big_table(self, r: int) -> None:
        ctx = self.ctx
        assert ctx.big_url is not None
        res = drain_run(
            ctx, ctx.big_url, ctx.fast, self.args.jobs, f"b{r}", keep_up_to=self.big_max_id
        )
        self.results.keep("drain_big_table", res)
        self.results.add("drain_big_table", res["rate"])
        log(f"drain_big_table {res['rate']:,.0f}/s ({res['seconds']:.1f} s, {res['statuses']})")

    def drain_50ms(self, r: int) -> None:
        self._drain("drain_50ms", "cpu_per_event_50ms", f"s{r}", sink=self.ctx.slow)

    def drain_50ms_baseline(self, r: int) -> None:
        ctx = self.ctx
        self._drain("drain_50ms_baseline", None, f"sb{r}", sink=ctx.slow, code=ctx.baseline)

    def raw_http(self, r: int) -> None:
        res = self.results.keep(
            "raw_http", raw_http_run(self.ctx.fast, self.args.http_n, 1, f"h{r}")
        )
        self.results.add("raw_http", res["rate"])
        log(f"raw_http {res['rate']:,.0f}/s")

    def raw_http_50ms(self, r: int) -> None:
        args, slow, keep = self.args, self.ctx.slow, self.results.keep
        seq = keep("raw_http_50ms", raw_http_run(slow, 40 if args.quick else 100, 1, f"hs{r}"))
        n = min(args.jobs, 5000)
        thr = keep("raw_http_50ms_threads", raw_http_run(slow, n, args.threads, f"ht{r}"))
        ours = keep("raw_http_50ms_client", client_run(slow, n, args.in_flight, f"hc{r}"))
        self.results.add("raw_http_50ms", seq["rate"])
        self.results.add("raw_http_50ms_threads", thr["rate"])
        self.results.add("raw_http_50ms_client", ours["rate"])
        log(
            f"raw_http_50ms {seq['rate']:,.1f}/s; {args.threads} threads {thr['rate']:,.0f}/s; "
            f"EcdpClient, {args.in_flight} in flight {ours['rate']:,.0f}/s"
        )

    def naive(self, r: int) -> None:
        res = self.results.keep(
            "naive_celery", naive_run(self.ctx, self.ctx.fast, self.args.jobs, f"n{r}")
        )
        self.results.add("naive_celery", res["rate"])
        self.results.add("naive_celery_enqueue", res["produce_rate"])
        log(f"naive_celery {res['rate']:,.0f}/s (send.delay {res['produce_rate']:,.0f}/s)")

    def naive_50ms(self, r: int) -> None:
        res = self.results.keep(
            "naive_celery_50ms",
            naive_run(self.ctx, self.ctx.slow, self.args.naive_50ms_jobs, f"ns{r}"),
        )
        self.results.add("naive_celery_50ms", res["rate"])
        log(f"naive_celery_50ms {res['rate']:,.1f}/s")

    def latency(self, r: int) -> None:
        args = self.args
        res = self.results.keep(
            "latency", latency_run(self.ctx, args.latency_seconds, args.latency_rate, f"l{r}")
        )
        self.results.add("latency_p50", res["p50_ms"])
        self.results.add("latency_p99", res["p99_ms"])
        log(
            f"latency p50 {res['p50_ms']:.1f} ms p99 {res['p99_ms']:.1f} ms max "
            f"{res['max_ms']:.0f} ms ({res['n']} events, {res['missing']} missing)"
        )

    def ingest(self, r: int) -> None:
        res = sql_round(self.ctx.small_url, self.args.single, f"ing{r}", raw_first=r % 2 == 1)
        res |= http_round(self.ctx, self.args.single, self.args.single, f"ing{r}")
        self._add(self.results.keep("ingest", res))
        log(
            f"dispatcher_enqueue {res['sql_enqueue']:,.0f}/s (raw INSERT "
            f"{res['sql_enqueue_raw']:,.0f}), POST /api/events {res['http_events']:,.0f}/s "
            f"(batches of 100: {res['http_events_batch']:,.0f}/s)"
        )


def play_rounds(ctx: Ctx, steps: Steps) -> None:
    """Every selected group once per round, the order flipped every other round."""
    selected, rounds = steps.selected(), ctx.args.rounds
    try:
        for r in range(rounds):
            for name, fn in selected if r % 2 == 0 else selected[::-1]:
                log(f"round {r + 1}/{rounds}: {name}")
                run_step(name, fn, r, ctx.small_url)
    except BenchError:
        if steps.results.measured():
            text = table(steps.results, table_params(ctx))[0]
            print(f"incomplete run, figures so far:\n{text}", flush=True)
        raise


def run_step(name: str, fn: Callable[[int], None], r: int, url: str) -> None:
    """Run one figure; if PostgreSQL went away under it (tests/faults restart the shared server),
    wait for it and run the figure again once: a step records nothing until it has finished."""
    import psycopg
    import sqlalchemy as sa

    from dispatcher.db import dispose_engines

    for attempt in (1, 2):
        try:
            fn(r)
            return
        except (sa.exc.OperationalError, psycopg.OperationalError) as exc:
            first_line = str(exc).splitlines()[0]
            if attempt == 2:
                raise BenchError(f"{name}: PostgreSQL failed again: {first_line}") from exc
            log(
                f"{name}: lost PostgreSQL ({first_line}); was it restarted, e.g. by the fault "
                "tests? Run the benchmark alone. Waiting for it, then redoing this figure"
            )
            dispose_engines()
            deadline = time.monotonic() + 60
            while True:
                try:
                    psycopg.connect(pg_dsn(url), connect_timeout=3).close()
                    break
                except psycopg.OperationalError:
                    if time.monotonic() > deadline:
                        raise BenchError("PostgreSQL did not come back in 60 s") from exc
                    time.sleep(0.5)


def after_rounds(ctx: Ctx, results: Results) -> dict[str, Any]:
    """What runs once, after the rounds: the long drain for RSS growth, the HTTP clients side
    by side, the drain under py-spy. Returns their parts of the JSON document."""
    args, sel = ctx.args, ctx.args.selected
    if "memory" in sel:
        memory_drain(ctx, results)
    extras: dict[str, Any] = {"profile": None, "saturated": None, "clients": None, "scale": None}
    if "saturated" in sel:
        extras["saturated"] = saturated_figures(ctx, results)
    if "clients" in sel:
        extras["clients"] = clients_side_by_side(ctx)
    if "scale" in sel:
        extras["scale"] = scale_figures(ctx)
    if args.py_spy:
        out = Path(tempfile.gettempdir()) / "ecdp-bench-py-spy-drain.txt"  # MBs: not for git
        log("one more drain under py-spy (not counted)")
        drain_run(ctx, ctx.small_url, ctx.fast, args.jobs, "prof", profile=out)
        extras["profile"] = summarize_profile(out)
    return extras


def memory_drain(ctx: Ctx, results: Results) -> None:
    # RSS still settles (allocator arenas, caches: a few MiB) over the first tens of thousands
    # of events, so growth per event is judged on the second half of a long drain.
    n = ctx.args.memory_jobs
    log(f"one long drain of {n:,} jobs for the worker's RSS growth")
    res = results.keep("memory", drain_run(ctx, ctx.small_url, ctx.fast, n, "mem"))
    growth = res["rss_growth_bytes_per_event"]
    results.add("worker_rss_growth", growth)
    rss = res["rss_kib"]
    log(
        f"memory: {res['rate']:,.0f}/s; RSS MiB ready {rss['ready'] / 1024:.0f} mid "
        f"{rss['mid'] / 1024:.0f} end {rss['end'] / 1024:.0f}; growth over the second half "
        + ("-" if growth is None else f"{growth:.1f} B/event")
    )


def clients_side_by_side(ctx: Ctx) -> dict[str, Any]:
    import clients

    log("HTTP clients side by side (bench/clients.py)")
    result = clients.side_by_side(
        {"nginx": ctx.fast.url, "50ms": ctx.slow.url},
        rounds=ctx.args.rounds,
        quick=ctx.args.quick,
        candidates=list(clients.CANDIDATES),
        src=ctx.code.src,
        log=log,
    )
    result["table"] = f"{clients.table(result)}\n\n{clients.verdict(result)}"
    return result


def saturated_figures(ctx: Ctx, results: Results) -> dict[str, Any]:
    """bench/saturated.py (its own database, the run's copy of dispatcher/): its three figures go
    into the table, its whole result into the JSON."""
    out = ctx.logdir / "saturated.json"
    argv = [sys.executable, str(BENCH / "saturated.py"), "--json", str(out)]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ctx.code.src), env.get("PYTHONPATH", "")])
    log("an API at its capacity (bench/saturated.py)")
    # Its log lines (stderr) show as it goes; its table (stdout) goes under the main one.
    done = subprocess.run(argv, env=env, stdout=subprocess.PIPE, text=True, check=False)
    if done.returncode:
        raise BenchError(f"bench/saturated.py failed (exit {done.returncode}): see above")
    result: dict[str, Any] = json.loads(out.read_text())
    result["table"] = done.stdout.strip()
    results.add("saturated_served", result["served_per_event"])
    results.add("saturated", result["adaptive_seconds"])
    results.add("saturated_best_fixed", result["best_fixed_seconds"])
    return result


def scale_figures(ctx: Ctx) -> list[dict[str, str]]:
    """bench/scale.py (its own databases, its own processes), its figures as a list."""
    out = ctx.logdir / "scale.json"
    argv = [sys.executable, str(BENCH / "scale.py"), "--rows", str(ctx.args.scale_rows)]
    argv += ["--jobs", str(ctx.args.jobs), "--json", str(out)]
    log(f"scale figures: {' '.join(argv[1:])}")
    done = subprocess.run(argv, check=False)
    if done.returncode:
        raise BenchError(f"bench/scale.py failed (exit {done.returncode})")
    figures: list[dict[str, str]] = json.loads(out.read_text())
    return figures


def table_params(ctx: Ctx, extras: dict[str, Any] | None = None) -> dict[str, Any]:
    """What the figures' labels and notes name (figures.py)."""
    saturated = (extras or {}).get("saturated") or {}
    return {
        "threads": ctx.args.threads,
        "in_flight": ctx.args.in_flight,
        "concurrency": worker_concurrency(ctx.procfile["worker"]),
        "baseline": ctx.baseline.label if ctx.baseline else ctx.args.baseline_ref,
        "saturated_window": saturated.get("best_fixed_window", "-"),
    }


def summary(
    ctx: Ctx,
    info: dict[str, Any],
    finished: datetime,
    text: str,
    results: Results,
    extras: dict[str, Any],
) -> str:
    args = ctx.args
    title = (
        f"ecdp-dispatcher delivery benchmark, {finished:%Y-%m-%d %H:%M} UTC, "
        f"{info['nproc']} CPUs ({info['cpu']}), PostgreSQL {info['postgresql']}, "
        f"Redis {info['redis']}\nmedians of {args.rounds} alternating round(s); ratios are "
        f"medians of per-round ratios; drains of {args.jobs:,} jobs"
    )
    if ctx.baseline:
        title += f"; the baseline drains: the worker code of {ctx.baseline.label}"
    sink_lines = "\n".join(f"sink ({k}): {v}" for k, v in sinks_of(ctx).items())
    out = [f"{title}\n{sink_lines}\n\n{text}"]
    if "drain" in results.runs:
        rss = [d["rss_kib"] for d in results.runs["drain"]]
        out.append(
            "\nworker RSS during drain (MiB, per round: ready / mid / peak / end): "
            + "; ".join(
                " / ".join(f"{x[k] / 1024:.0f}" for k in ("ready", "mid", "peak", "end"))
                for x in rss
            )
        )
    if extras["saturated"]:
        out.append("\n" + extras["saturated"]["table"])
    if extras["clients"]:
        out.append(
            "\nHTTP clients, CPU ms per request and requests/s by sink and requests in flight:\n"
            + extras["clients"]["table"]
        )
    if extras["scale"]:
        width = max(len(f["figure"]) for f in extras["scale"])
        out.append(
            f"\nScale (bench/scale.py, {args.scale_rows:,} rows of history):\n"
            + "\n".join(
                f"{f['figure']:<{width}}  {f['value']}  {f['target']}  {f['verdict']}".rstrip()
                for f in extras["scale"]
            )
        )
    if extras["profile"]:
        out.append("\n" + extras["profile"])
    return "\n".join(out)


if __name__ == "__main__":
    sys.exit(main())
