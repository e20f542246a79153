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
setting can be tried without editing anything.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import urlsplit, urlunsplit

if TYPE_CHECKING:
    import redis as redis_mod
    import sqlalchemy as sa

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
RESULTS = BENCH / "results"
QUEUE = "default"
NAIVE_QUEUE = "naive"
NAIVE_STAGING = "naive_staging"  # tasks wait here until the naive worker is ready (see naive_run)
BENCH_REDIS_DB = 14
API_KEY = "bench"
POLL = 0.05
WARM_UP = 200  # jobs delivered before the clock starts: connections, pools, lazy imports
NAIVE_WARM_UP = 20  # tasks, likewise (enough for every pool process with prefetch 4)
ECHO_MODULE = Path("/usr/lib/nginx/modules/ngx_http_echo_module.so")

sys.path.insert(0, str(BENCH))  # bench/naive.py


def snapshot(workdir: Path) -> Path:
    """Copy ``dispatcher/`` and import it (here and in every worker) from the copy: the whole run
    measures the engine as it was at the start, even while someone edits the checkout."""
    src = workdir / "src"
    shutil.copytree(
        REPO / "dispatcher", src / "dispatcher", ignore=shutil.ignore_patterns("__pycache__")
    )
    sys.path.insert(0, str(src))
    return src


class BenchError(RuntimeError):
    """Something the benchmark needs failed; the message says what (and where the logs are)."""


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- processes

RUNNING: list[Proc] = []


class Proc:
    """A child in a process group of its own, its output in a log file; ``stop`` ends the group
    (a Celery worker's pool children with it)."""

    def __init__(
        self, name: str, argv: list[str], env: dict[str, str], logdir: Path, cwd: Path = REPO
    ) -> None:
        self.name = name
        self.log_path = logdir / f"{name}-{time.monotonic_ns()}.log"
        self._log = self.log_path.open("wb")
        self.popen = subprocess.Popen(
            argv,
            env=env,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        RUNNING.append(self)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def tail(self, lines: int = 25) -> str:
        return "\n".join(self.output().splitlines()[-lines:])

    def wait_for(self, pattern: str, timeout: float) -> None:
        rx = re.compile(pattern, re.IGNORECASE)
        deadline = time.monotonic() + timeout
        while not rx.search(self.output()):
            if self.popen.poll() is not None:
                raise BenchError(
                    f"{self.name} exited ({self.popen.returncode}) before it was ready; "
                    f"its output ({self.log_path}):\n{self.tail()}"
                )
            if time.monotonic() > deadline:
                raise BenchError(
                    f"{self.name}: no line matching {pattern!r} after {timeout:.0f} s; "
                    f"its output ({self.log_path}):\n{self.tail()}"
                )
            time.sleep(POLL)

    def stop(self, timeout: float = 20.0) -> None:
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                log(f"{self.name} did not stop in {timeout:.0f} s; killing it")
        # Whatever is left of the group (orphaned pool children): our own group id.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(5)
        self._log.close()
        if self in RUNNING:
            RUNNING.remove(self)


def stop_all() -> None:
    for proc in reversed(list(RUNNING)):
        with contextlib.suppress(Exception):
            proc.stop(timeout=10)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise BenchError(f"nothing listens on 127.0.0.1:{port} after {timeout} s") from None
            time.sleep(POLL)


# --------------------------------------------------------------------------- memory


def _children() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        kids.setdefault(ppid, []).append(int(entry))
    return kids


def tree_pids(root: int) -> list[int]:
    kids = _children()
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(kids.get(pid, []))
    return out


def rss_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


class RssSampler(threading.Thread):
    """Sums VmRSS over a process tree every ``interval`` seconds (the tree is re-read every 2 s)."""

    def __init__(self, root: int, interval: float = 0.1) -> None:
        super().__init__(daemon=True, name="rss-sampler")
        self.root = root
        self.interval = interval
        self.samples: list[tuple[float, int]] = []
        self._halt = threading.Event()

    def sample(self, pids: list[int]) -> int:
        total = sum(rss_kib(p) for p in pids)
        self.samples.append((time.perf_counter(), total))
        return total

    def run(self) -> None:
        pids, refreshed = tree_pids(self.root), time.monotonic()
        while not self._halt.is_set():
            if time.monotonic() - refreshed > 2:
                pids, refreshed = tree_pids(self.root), time.monotonic()
            self.sample(pids)
            self._halt.wait(self.interval)

    def finish(self) -> None:
        self._halt.set()
        self.join()
        self.sample(tree_pids(self.root))

    def at(self, when: float) -> int:
        """The first sample taken at or after ``when`` (perf_counter)."""
        for t, kib in self.samples:
            if t >= when:
                return kib
        return self.samples[-1][1]


# --------------------------------------------------------------------------- sinks


class Sink(Protocol):
    name: str
    url: str

    def mark(self) -> None: ...

    def count(self) -> int: ...


class LogCounter:
    """Counts nginx access-log lines written since ``mark`` (one line per request)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fh: Any = None
        self._total = 0
        self._base = 0

    def total(self) -> int:
        if self._fh is None:
            if not self.path.exists():
                return 0
            self._fh = self.path.open("rb")
        while chunk := self._fh.read(1 << 20):
            self._total += chunk.count(b"\n")
        return self._total

    def mark(self) -> None:
        self._base = self.total()

    def count(self) -> int:
        return self.total() - self._base


@dataclass
class NginxSink:
    name: str
    url: str
    counter: LogCounter

    def mark(self) -> None:
        self.counter.mark()

    def count(self) -> int:
        return self.counter.count()


class Nginx:
    """One nginx (one worker process) serving 201 at once and, with the echo module, after a
    delay; its config, pid, logs and temp files live in ``workdir``."""

    def __init__(self, workdir: Path, logdir: Path, delay: float, use_echo: bool) -> None:
        self.dir = workdir / "nginx"
        self.dir.mkdir()
        fast_port = free_port()
        slow_port = free_port() if use_echo else None
        conf = self.dir / "nginx.conf"
        conf.write_text(self._config(fast_port, slow_port, delay))
        self.version = subprocess.run(
            ["nginx", "-v"], capture_output=True, text=True, check=False
        ).stderr.strip()
        check = subprocess.run(
            ["nginx", "-t", "-p", str(self.dir), "-c", str(conf)],
            capture_output=True,
            text=True,
            check=False,
        )
        if check.returncode:
            raise BenchError(f"nginx rejects the generated {conf}:\n{check.stderr}")
        argv = [shutil.which("nginx") or "nginx", "-p", str(self.dir), "-c", str(conf)]
        self.proc = Proc("nginx", argv, dict(os.environ), logdir)
        wait_port(fast_port)
        self.fast = NginxSink(
            f"nginx ({self.version.split(': ')[-1]}, `return 201`)",
            f"http://127.0.0.1:{fast_port}",
            LogCounter(self.dir / "fast.log"),
        )
        self.slow: NginxSink | None = None
        if slow_port is not None:
            wait_port(slow_port)
            self.slow = NginxSink(
                f"nginx + echo module (`echo_sleep {delay}`, 201)",
                f"http://127.0.0.1:{slow_port}",
                LogCounter(self.dir / "slow.log"),
            )

    def _config(self, fast_port: int, slow_port: int | None, delay: float) -> str:
        d = self.dir
        user = "user root;" if os.geteuid() == 0 else ""
        slow = ""
        if slow_port is not None:
            slow = f"""
  server {{
    listen 127.0.0.1:{slow_port} backlog=4096;
    access_log {d}/slow.log count;
    location / {{ echo_status 201; echo_sleep {delay}; echo -n ""; }}
  }}"""
        load = f"load_module {ECHO_MODULE};" if slow_port is not None else ""
        return f"""{load}
{user}
daemon off;
master_process on;
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 16384; multi_accept on; }}
http {{
  client_body_temp_path {d}/body;
  proxy_temp_path {d}/proxy;
  fastcgi_temp_path {d}/fastcgi;
  uwsgi_temp_path {d}/uwsgi;
  scgi_temp_path {d}/scgi;
  keepalive_requests 100000000;
  keepalive_timeout 600s;
  client_body_buffer_size 64k;
  log_format count '$msec';
  server {{
    listen 127.0.0.1:{fast_port} backlog=4096;
    access_log {d}/fast.log count;
    location / {{ return 201; }}
  }}{slow}
}}
"""


class PySink:
    """``bench/sink.py`` in its own process (see there)."""

    def __init__(self, logdir: Path, delay: float, record: bool) -> None:
        port = free_port()
        argv = [sys.executable, str(BENCH / "sink.py"), "--port", str(port), "--delay", str(delay)]
        if record:
            argv.append("--record")
        self.proc = Proc("pysink", argv, dict(os.environ), logdir)
        self.proc.wait_for("listening", 15)
        self.url = f"http://127.0.0.1:{port}"
        when = f"after {delay * 1000:.0f} ms" if delay else "at once"
        self.name = f"bench/sink.py (Python asyncio, 201 {when})"
        self._base = 0
        import httpx

        self._http = httpx.Client(timeout=10)

    def _get(self, what: str) -> Any:
        return self._http.get(f"{self.url}/_bench/{what}").json()

    def mark(self) -> None:
        self._base = int(self._get("stats")["count"])

    def count(self) -> int:
        return int(self._get("stats")["count"]) - self._base

    def arrivals(self) -> dict[str, float]:
        result: dict[str, float] = self._get("arrivals")
        return result

    def reset(self) -> None:
        self._http.post(f"{self.url}/_bench/reset")
        self._base = 0


def apt_install(packages: list[str]) -> bool:
    """Debian's packages, when we are root on a Debian-like system; False if that cannot be."""
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        return False
    log(f"installing {' '.join(packages)} from Debian's packages (apt-get)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], env=env, check=False, capture_output=True)
    done = subprocess.run(
        ["apt-get", "install", "-y", "-qq", *packages], env=env, check=False, capture_output=True
    )
    return done.returncode == 0


def ensure_nginx(install: bool) -> bool:
    """Make sure nginx is there; True if its echo module (for the delayed sink) is there too."""
    if shutil.which("nginx") is None and not (install and apt_install(["nginx"])):
        raise BenchError(
            "nginx is not installed and could not be installed here: "
            "`apt-get install nginx libnginx-mod-http-echo` (as root), then run again"
        )
    if shutil.which("nginx") is None:
        raise BenchError("apt-get installed nginx but it is not on PATH (/usr/sbin?)")
    if not ECHO_MODULE.exists() and install:
        apt_install(["libnginx-mod-http-echo"])
    return ECHO_MODULE.exists()


# --------------------------------------------------------------------------- services


def with_db(url: str, db: int) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{db}"))


def ensure_postgres(admin_dsn: str) -> Callable[[], None] | None:
    """Start the local cluster as CI does when it is down; return how to stop it again."""
    import psycopg

    try:
        psycopg.connect(admin_dsn, connect_timeout=3).close()
        return None
    except psycopg.OperationalError:
        pass
    clusters = sorted(Path("/etc/postgresql").glob("*/main"))
    if not clusters or shutil.which("pg_ctlcluster") is None:
        raise BenchError(f"PostgreSQL is not reachable at {admin_dsn} and no local cluster found")
    version = clusters[-1].parent.name
    log(f"starting PostgreSQL {version}")
    cmd = ["pg_ctlcluster", "--skip-systemctl-redirect", version, "main"]
    subprocess.run([*cmd, "start"], check=False, capture_output=True)
    deadline = time.monotonic() + 30
    while True:
        try:
            psycopg.connect(admin_dsn, connect_timeout=3).close()
            break
        except psycopg.OperationalError:
            if time.monotonic() > deadline:
                raise BenchError(f"PostgreSQL did not come up at {admin_dsn}") from None
            time.sleep(0.5)

    def stop() -> None:
        subprocess.run([*cmd, "stop"], check=False, capture_output=True)

    return stop


def ensure_redis(url: str, logdir: Path) -> redis_mod.Redis:
    import redis

    client = redis.Redis.from_url(url)
    try:
        client.ping()
        return client
    except redis.ConnectionError:
        pass
    parts = urlsplit(url)
    if parts.hostname not in ("127.0.0.1", "localhost") or shutil.which("redis-server") is None:
        raise BenchError(f"Redis is not reachable at {url} and cannot be started here")
    log("starting redis-server")
    port = str(parts.port or 6379)
    Proc(
        "redis",
        ["redis-server", "--bind", "127.0.0.1", "--port", port, "--save", "", "--appendonly", "no"],
        dict(os.environ),
        logdir,
    )
    deadline = time.monotonic() + 15
    while True:
        try:
            client.ping()
            return client
        except redis.ConnectionError:
            if time.monotonic() > deadline:
                raise BenchError(f"redis-server did not come up at {url}") from None
            time.sleep(0.2)


# --------------------------------------------------------------------------- the outbox side


def pg_dsn(url: str) -> str:
    import sqlalchemy as sa

    return sa.make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def make_db(base: str, name: str) -> str:
    import sqlalchemy as sa

    from dispatcher.migrate import upgrade

    url = sa.make_url(base.replace("postgresql://", "postgresql+psycopg://", 1))
    admin = sa.create_engine(url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        conn.exec_driver_sql(f"CREATE DATABASE {name}")
    admin.dispose()
    db_url = url.set(database=name).render_as_string(hide_password=False)
    upgrade(db_url)
    return db_url


def drop_db(base: str, name: str) -> None:
    import psycopg

    with psycopg.connect(pg_dsn(base), autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)".encode())


def events(n: int, tag: str) -> list[Any]:
    """Bodies like a shop's: an event id, an email (the latency sink's key), two data fields."""
    from dispatcher import CustomEvent, DataField

    return [
        CustomEvent(
            42,
            customer_email=f"{tag}-{i}@example.com",
            data_fields=[DataField("order", "Number", i), DataField("total", "Money", "19.90")],
        )
        for i in range(n)
    ]


def engine(url: str) -> sa.Engine:
    from dispatcher.db import get_engine

    return get_engine(url)


def sql(url: str, statement: str, *, autocommit: bool = False) -> list[tuple[Any, ...]]:
    import psycopg

    with psycopg.connect(pg_dsn(url), autocommit=autocommit) as conn:
        cur = conn.execute(statement.encode())
        return list(cur.fetchall()) if cur.description else []


def set_paused(url: str, paused: bool) -> None:
    """``dispatcher pause`` / ``dispatcher resume``, through the operator service: a resume tells
    the workers after its commit, and the signal is published at once (the clock is running)."""
    from dispatcher import admin
    from dispatcher.signals import signaller

    if paused:
        admin.pause_queue(engine(url), QUEUE, "bench: held until the worker is ready")
    else:
        admin.resume_queue(engine(url), QUEUE)
        signaller.flush()


def enqueue_all(url: str, evs: list[Any]) -> int:
    """``enqueue_many`` in batches of 1,000, one transaction each; returns the first job id."""
    from sqlalchemy.orm import Session

    from dispatcher import enqueue_many

    first = None
    for start in range(0, len(evs), 1000):
        with Session(engine(url)) as session, session.begin():
            ids = enqueue_many(evs[start : start + 1000], session=session)
        first = first if first is not None else int(ids[0])
    return first or 0


RAW_INSERT = (
    "INSERT INTO dispatcher_jobs (queue, endpoint, custom_event_id, customer_email, payload,"
    " status, attempts, next_attempt_at, created_at, updated_at)"
    " VALUES (%s, %s, %s, %s, %s, 'pending', 0, %s, %s, %s)"
)


def enqueue_round(
    url: str, single_n: int, batch_n: int, tag: str, *, raw_first: bool = False
) -> dict[str, float]:
    """``enqueue`` / ``enqueue_many`` beside raw psycopg doing the same inserts (as
    ``bench/enqueue.py``, but each batch of 1,000 is a transaction of its own on both sides).
    Both sides are warmed up first (the first ``enqueue()`` of a process starts the signal thread
    and connects to the broker), and which goes first alternates by round."""
    import psycopg
    from sqlalchemy.orm import Session

    from dispatcher import enqueue, enqueue_many
    from dispatcher.db import utcnow

    single, batch = events(single_n, f"{tag}-s"), events(batch_n, f"{tag}-b")
    eng = engine(url)
    out: dict[str, float] = {}

    def row(e: Any) -> tuple[Any, ...]:
        now = utcnow()
        return (QUEUE, e.endpoint, e.custom_event_id, e.customer_email, e.to_json(), now, now, now)

    def ours_single(evs: list[Any]) -> None:
        for e in evs:
            with Session(eng) as session, session.begin():
                enqueue(e, session=session)

    def raw_single(evs: list[Any]) -> None:
        with psycopg.connect(pg_dsn(url)) as conn:
            for e in evs:
                with conn.transaction():
                    conn.execute(RAW_INSERT + " RETURNING id", row(e))

    def ours_many(evs: list[Any]) -> None:
        for start in range(0, len(evs), 1000):
            with Session(eng) as session, session.begin():
                enqueue_many(evs[start : start + 1000], session=session)

    def raw_many(evs: list[Any]) -> None:
        with psycopg.connect(pg_dsn(url)) as conn:
            for start in range(0, len(evs), 1000):
                with conn.transaction(), conn.cursor() as cur:
                    cur.executemany(RAW_INSERT, [row(e) for e in evs[start : start + 1000]])

    steps = [
        ("enqueue", single, ours_single),
        ("enqueue_raw", single, raw_single),
        ("enqueue_many", batch, ours_many),
        ("enqueue_many_raw", batch, raw_many),
    ]
    for _, evs, fn in steps:  # warm-up, not counted
        fn(evs[:100])
    if raw_first:
        steps = [steps[1], steps[0], steps[3], steps[2]]
    for name, evs, fn in steps:
        sql(url, "TRUNCATE dispatcher_attempts, dispatcher_jobs")
        start = time.perf_counter()
        fn(evs)
        out[name] = len(evs) / (time.perf_counter() - start)
    sql(url, "TRUNCATE dispatcher_attempts, dispatcher_jobs")
    return out


ASYNCPG_INSERT = (
    "INSERT INTO dispatcher_jobs (queue, endpoint, custom_event_id, customer_email, payload,"
    " status, attempts, next_attempt_at, created_at, updated_at)"
    " VALUES ($1, $2, $3, $4, $5, 'pending', 0, $6, $7, $8) RETURNING id"
)


def enqueue_async_round(url: str, n: int, tag: str, *, raw_first: bool = False) -> dict[str, float]:
    """``await enqueue_async()``, one event per ``AsyncSession`` transaction (asyncpg), beside raw
    asyncpg doing the same inserts one per transaction, and beside the same INSERT written by hand
    through an ``AsyncSession`` (what any AsyncSession transaction costs: the floor for ours)."""
    import asyncio

    import asyncpg
    import sqlalchemy as sa
    from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine

    from dispatcher import enqueue_async
    from dispatcher.db import utcnow

    evs = events(n, f"{tag}-a")
    by_hand = sa.text(
        re.sub(r"\$(\d)", lambda m: f":p{m.group(1)}", ASYNCPG_INSERT)  # $1 -> :p1
    )

    def row(e: Any) -> tuple[Any, ...]:
        now = utcnow()
        return (QUEUE, e.endpoint, e.custom_event_id, e.customer_email, e.to_json(), now, now, now)

    async def run() -> dict[str, float]:
        eng = create_async_engine(sa.make_url(engine(url).url).set(drivername="postgresql+asyncpg"))
        conn = await asyncpg.connect(pg_dsn(url))

        async def ours(evs: list[Any]) -> None:
            for e in evs:
                async with AsyncSession(eng) as session, session.begin():
                    await enqueue_async(e, session=session, queue=QUEUE)

        async def raw(evs: list[Any]) -> None:
            for e in evs:
                async with conn.transaction():
                    await conn.fetchval(ASYNCPG_INSERT, *row(e))

        async def hand(evs: list[Any]) -> None:
            for e in evs:
                async with AsyncSession(eng) as session, session.begin():
                    params = {f"p{i}": v for i, v in enumerate(row(e), 1)}
                    await session.execute(by_hand, params)

        steps = [
            ("enqueue_async", ours),
            ("enqueue_async_raw", raw),
            ("enqueue_async_session", hand),
        ]
        for _, fn in steps:  # warm-up, not counted
            await fn(evs[:100])
        out: dict[str, float] = {}
        for name, fn in steps[::-1] if raw_first else steps:
            sql(url, "TRUNCATE dispatcher_attempts, dispatcher_jobs")
            start = time.perf_counter()
            await fn(evs)
            out[name] = len(evs) / (time.perf_counter() - start)
        await conn.close()
        await eng.dispose()
        return out

    try:
        return asyncio.run(run())
    finally:
        sql(url, "TRUNCATE dispatcher_attempts, dispatcher_jobs")


def reset_outbox(url: str, keep_up_to: int = 0) -> None:
    """Empty the outbox but for the jobs with ids up to ``keep_up_to`` (the big table's) and their
    attempts, so that every round (and a redone one) starts from the same state."""
    if not keep_up_to:
        sql(url, "TRUNCATE dispatcher_attempts, dispatcher_jobs")
        return
    sql(url, f"DELETE FROM dispatcher_attempts WHERE job_id > {keep_up_to}")
    sql(url, f"DELETE FROM dispatcher_jobs WHERE id > {keep_up_to}")
    sql(url, "VACUUM dispatcher_jobs", autocommit=True)
    sql(url, "VACUUM dispatcher_attempts", autocommit=True)


def build_big_table(url: str, rows: int) -> float:
    """``rows`` delivered jobs with one attempt each, as a busy outbox has after a while."""
    start = time.perf_counter()
    sql(
        url,
        f"""
        INSERT INTO dispatcher_jobs (queue, endpoint, custom_event_id, customer_email, payload,
            status, attempts, next_attempt_at, created_at, updated_at, delivered_at,
            last_status_code)
        SELECT 'default', '/scenariocustomevents', 42, 'old-' || g || '@example.com',
            '{{"customEventId":42,"customerEmail":"old-' || g || '@example.com","dataFields":'
            || '[{{"name":"order","type":"Number","value":"' || g || '"}},'
            || '{{"name":"total","type":"Money","value":"19.90"}}]}}',
            'delivered', 1, t, t, t, t, 201
        FROM generate_series(1, {rows}) AS g,
            LATERAL (SELECT now() - interval '30 days' + g * interval '2 seconds' AS t) AS x
        """,
    )
    sql(
        url,
        """
        INSERT INTO dispatcher_attempts (job_id, started_at, duration_ms, status_code,
            response_body, outcome, counted)
        SELECT id, created_at, 40, 201, '', 'delivered', true FROM dispatcher_jobs
        """,
    )
    sql(url, "VACUUM ANALYZE dispatcher_jobs", autocommit=True)
    sql(url, "VACUUM ANALYZE dispatcher_attempts", autocommit=True)
    return time.perf_counter() - start


# --------------------------------------------------------------------------- one figure each


@dataclass
class Ctx:
    args: argparse.Namespace
    logdir: Path
    redis_url: str
    redis: redis_mod.Redis
    small_url: str
    big_url: str | None
    fast: Sink
    slow: Sink
    latency_sink: PySink | None
    src: Path
    procfile: dict[str, str] = field(default_factory=dict)

    def env(self, db_url: str, base_url: str) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            DISPATCHER_DATABASE_URL=db_url,
            DISPATCHER_BROKER_URL=self.redis_url,
            ECDP_BASE_URL=base_url,
            ECDP_API_KEY=API_KEY,
            PYTHONUNBUFFERED="1",
            PYTHONPATH=os.pathsep.join([str(self.src), str(BENCH), env.get("PYTHONPATH", "")]),
            PATH=os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")]),
        )
        return env

    def start(self, proc: str, db_url: str, base_url: str) -> Proc:
        env = self.env(db_url, base_url)
        argv = shlex.split(self.procfile[proc])
        argv[0] = shutil.which(argv[0], path=env["PATH"]) or argv[0]
        return Proc(proc, argv, env, self.logdir)

    def start_workers(self, db_url: str, base_url: str) -> tuple[Proc, Proc]:
        worker = self.start("worker", db_url, base_url)
        sweeper = self.start("sweeper", db_url, base_url)
        worker.wait_for(self.args.ready_pattern, 90)
        sweeper.wait_for(r"sweep", 60)
        return worker, sweeper


def read_procfile() -> dict[str, str]:
    procs = {}
    for line in (REPO / "Procfile").read_text().splitlines():
        name, sep, command = line.partition(":")
        if sep and not line.lstrip().startswith("#"):
            procs[name.strip()] = command.strip()
    for needed in ("worker", "sweeper"):
        if needed not in procs:
            raise BenchError(f"the Procfile has no `{needed}:` line")
    return procs


def worker_concurrency(command: str) -> int:
    m = re.search(r"--concurrency[= ](\d+)|-c\s*(\d+)", command)
    return int(m.group(1) or m.group(2)) if m else os.cpu_count() or 2


def status_counts(url: str, first_id: int) -> dict[str, int]:
    rows = sql(
        url, f"SELECT status, count(*) FROM dispatcher_jobs WHERE id >= {first_id} GROUP BY 1"
    )
    return {str(s): int(c) for s, c in rows}


def drain_run(
    ctx: Ctx,
    db_url: str,
    sink: Sink,
    n: int,
    tag: str,
    *,
    keep_up_to: int = 0,
    profile: Path | None = None,
) -> dict[str, Any]:
    """n pending jobs -> all delivered, with the Procfile's worker and sweeper.

    As a backlog after an outage: the worker and sweeper are started and warmed up on a few jobs,
    the queue is paused while the n jobs are written, and the clock starts at ``resume`` (plus
    the signal ``dispatcher resume`` sends) and stops when no job is pending, retrying or in
    flight, that is when every outcome is recorded.
    """
    import psycopg

    reset_outbox(db_url, keep_up_to)
    set_paused(db_url, False)
    ctx.redis.flushdb()
    enqueue_all(db_url, events(WARM_UP, f"{tag}-warm"))
    worker, sweeper = ctx.start_workers(db_url, sink.url)
    poll = psycopg.connect(pg_dsn(db_url), autocommit=True)
    try:
        remaining_q = (
            "SELECT count(*) FROM dispatcher_jobs"
            " WHERE status IN ('pending', 'retrying', 'in_flight')"
        )

        def remaining() -> int:
            return int(poll.execute(remaining_q).fetchone()[0])  # type: ignore[index]

        deadline = time.monotonic() + 60
        while remaining():
            if time.monotonic() > deadline:
                raise BenchError(
                    f"drain ({tag}): {WARM_UP} warm-up jobs not delivered in 60 s; worker log "
                    f"{worker.log_path}:\n{worker.tail()}"
                )
            time.sleep(POLL)
        set_paused(db_url, True)
        first_id = enqueue_all(db_url, events(n, tag))
        sql(db_url, "ANALYZE dispatcher_jobs", autocommit=True)
        time.sleep(0.5)  # the signals for the paused queue come and go
        sampler = RssSampler(worker.pid)
        rss_ready = sampler.sample(tree_pids(worker.pid))
        sampler.start()
        spy = start_py_spy(ctx, worker.pid, profile) if profile else None
        sink.mark()
        start = time.perf_counter()
        set_paused(db_url, False)
        mid = first = None
        deadline = start + 60 + n / 50
        while True:
            left = remaining()
            now = time.perf_counter()
            if first is None and sink.count():
                first = now - start
            if mid is None and left <= n // 2:
                mid = now
            if left == 0:
                break
            if now > deadline:
                raise BenchError(
                    f"drain ({tag}) not done after {now - start:.0f} s: "
                    f"{status_counts(db_url, first_id)}; worker log {worker.log_path}:\n"
                    f"{worker.tail()}"
                )
            time.sleep(POLL)
        elapsed = time.perf_counter() - start
        if spy:
            stop_py_spy(spy)
        sampler.finish()
        time.sleep(0.2)
        half = [(t, k) for t, k in sampler.samples if t >= (mid or start)]
        growth = None
        if len(half) >= 3 and half[-1][0] > half[0][0]:
            # Least squares over the second half: RSS steps (allocator arenas) average out.
            slope = statistics.linear_regression([t for t, _ in half], [k for _, k in half]).slope
            growth = slope * 1024 / (n / elapsed)
        counts = status_counts(db_url, first_id)
        attempts = sql(
            db_url, f"SELECT count(*) FROM dispatcher_attempts WHERE job_id >= {first_id}"
        )[0][0]
        return {
            "n": n,
            "seconds": elapsed,
            "rate": n / elapsed,
            "statuses": counts,
            "attempts": int(attempts),
            "sink_requests": sink.count(),
            "first_request_s": first,
            "rss_kib": {
                "ready": rss_ready,
                "mid": sampler.at(mid or start),
                "peak": max(k for _, k in sampler.samples),
                "end": sampler.samples[-1][1],
            },
            "rss_growth_bytes_per_event": growth,
            # (seconds since the start, KiB), one per second: enough to see a plateau or a leak.
            "rss_series": [
                (round(t - start, 1), k)
                for i, (t, k) in enumerate(sampler.samples)
                if t >= start and i % 10 == 0
            ],
        }
    finally:
        poll.close()
        worker.stop()
        sweeper.stop()


def start_py_spy(ctx: Ctx, pid: int, out: Path) -> Proc:
    exe = shutil.which("py-spy", path=ctx.env("", "")["PATH"])
    if exe is None:
        raise BenchError("--py-spy: py-spy is not installed (pip install py-spy)")
    argv = [exe, "record", "--pid", str(pid), "--subprocesses", "--gil", "--format", "raw"]
    spy = Proc("py-spy", [*argv, "--rate", "200", "-o", str(out)], dict(os.environ), ctx.logdir)
    time.sleep(1.5)  # attaching takes a moment
    return spy


def stop_py_spy(spy: Proc) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(spy.pid, signal.SIGINT)  # py-spy writes its file on Ctrl-C
    with contextlib.suppress(subprocess.TimeoutExpired):
        spy.popen.wait(30)
    spy.stop()


def _package(frame: str) -> str:
    """``f (httpcore/_sync/http11.py:12)`` -> ``httpcore``; ``f (threading.py:3)`` -> threading."""
    m = re.search(r"\(([^():]+?)(?:\.py)?:\d+\)$", frame)
    if not m:
        return "?"
    return m.group(1).split("/")[0]


def summarize_profile(path: Path, top: int = 15) -> str:
    """Leaf (self) and inclusive shares of the samples, from py-spy's collapsed stacks."""
    leaf: dict[str, int] = {}
    incl: dict[str, int] = {}
    by_package: dict[str, int] = {}
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [f for f in stack.split(";") if not f.startswith("process ")]
        if not frames:
            continue
        total += count
        leaf[frames[-1]] = leaf.get(frames[-1], 0) + count
        package = _package(frames[-1])
        by_package[package] = by_package.get(package, 0) + count
        # The engine's own functions (any line), with what they call.
        for f in {re.sub(r":\d+\)$", ")", f) for f in frames if _package(f) == "dispatcher"}:
            incl[f] = incl.get(f, 0) + count
    if not total:
        return f"(no samples in {path})"
    out = [
        f"py-spy --gil of the worker during one drain: {total:,} samples of the thread holding "
        f"the GIL, so CPU time in Python ({path})"
    ]
    out.append(
        "  self time by package: "
        + ", ".join(
            f"{name} {count * 100 / total:.0f}%"
            for name, count in sorted(by_package.items(), key=lambda kv: -kv[1])[:12]
        )
    )
    for title, table in (("self", leaf), ("inclusive (dispatcher functions)", incl)):
        out.append(f"  top {top} by {title} time:")
        for frame, count in sorted(table.items(), key=lambda kv: -kv[1])[:top]:
            out.append(f"    {count * 100 / total:5.1f}%  {frame[:110]}")
    return "\n".join(out)


def naive_run(ctx: Ctx, sink: Sink, n: int, tag: str) -> dict[str, Any]:
    """n ``send.delay(body)`` tasks -> n requests at the sink, one Celery task per event.

    The tasks are published to a staging list while the worker starts; the clock starts when
    that list is renamed to the worker's queue (one atomic Redis command) and stops when the
    sink has counted n requests.
    """
    import naive

    ctx.redis.flushdb()
    for e in events(NAIVE_WARM_UP, f"{tag}-warm"):  # straight to the worker's queue, untimed
        naive.send.apply_async((e.endpoint, e.to_json()), queue=NAIVE_QUEUE)
    evs = events(n, tag)
    start = time.perf_counter()
    with naive.app.producer_or_acquire() as producer:
        for e in evs:
            args = (e.endpoint, e.to_json())
            naive.send.apply_async(args, queue=NAIVE_STAGING, producer=producer)
    produce = n / (time.perf_counter() - start)
    concurrency = worker_concurrency(ctx.procfile["worker"])
    argv = [
        sys.executable, "-m", "celery", "-A", "naive", "worker", "--pool=prefork",
        f"--concurrency={concurrency}", "-Q", NAIVE_QUEUE, "--loglevel=WARNING", "-n", "naive@%h",
    ]  # fmt: skip
    sink.mark()
    worker = Proc("naive-worker", argv, ctx.env(ctx.small_url, sink.url), ctx.logdir, cwd=BENCH)
    try:
        worker.wait_for("naive worker ready", 90)
        deadline = time.monotonic() + 60
        while sink.count() < NAIVE_WARM_UP:
            if time.monotonic() > deadline:
                raise BenchError(f"naive celery ({tag}): warm-up tasks not done in 60 s")
            time.sleep(POLL)
        time.sleep(0.2)
        sink.mark()
        start = time.perf_counter()
        ctx.redis.rename(NAIVE_STAGING, NAIVE_QUEUE)
        deadline = start + 60 + n / 10
        first = None
        while (got := sink.count()) < n:
            if first is None and got:
                first = time.perf_counter() - start
            if time.perf_counter() > deadline:
                raise BenchError(
                    f"naive celery ({tag}): {got} of {n} requests after "
                    f"{time.perf_counter() - start:.0f} s; log {worker.log_path}:\n{worker.tail()}"
                )
            time.sleep(POLL)
        elapsed = time.perf_counter() - start
        return {
            "n": n,
            "seconds": elapsed,
            "rate": n / elapsed,
            "produce_rate": produce,
            "first_request_s": first,
        }
    finally:
        worker.stop()


def raw_http_run(sink: Sink, n: int, threads: int, tag: str) -> dict[str, Any]:
    """One process, one ``httpx.Client``, the same bodies and headers: a loop (threads=1) or a
    thread pool sharing the client."""
    import httpx

    bodies = [(e.endpoint, e.to_json().encode()) for e in events(n, tag)]
    headers = {"x-api-key": API_KEY, "content-type": "application/json"}
    limits = httpx.Limits(max_connections=threads, max_keepalive_connections=threads)
    with httpx.Client(timeout=10, limits=limits) as client:
        client.post(sink.url + bodies[0][0], content=bodies[0][1], headers=headers)

        def post(item: tuple[str, bytes]) -> int:
            return client.post(sink.url + item[0], content=item[1], headers=headers).status_code

        start = time.perf_counter()
        if threads == 1:
            codes = [post(b) for b in bodies]
        else:
            with ThreadPoolExecutor(threads) as pool:
                codes = list(pool.map(post, bodies))
        elapsed = time.perf_counter() - start
    bad = sum(1 for c in codes if c != 201)
    if bad:
        raise BenchError(f"raw_http ({tag}): {bad} of {n} answers were not 201")
    return {"n": n, "threads": threads, "seconds": elapsed, "rate": n / elapsed}


def client_run(sink: Sink, n: int, in_flight: int, tag: str) -> dict[str, Any]:
    """One process, the dispatcher's own ``EcdpClient`` (aiohttp on the process's loop thread),
    the same bodies: what a worker's sending side does without the outbox."""
    from dispatcher.config import Secret
    from dispatcher.ecdp import EcdpClient

    bodies = [(e.endpoint, e.to_json().encode()) for e in events(n, tag)]
    key = Secret(API_KEY)
    client = EcdpClient(sink.url, max_connections=in_flight)
    try:
        client.post(bodies[0][0], bodies[0][1], key)
        start = time.perf_counter()
        futures = [client.submit(endpoint, body, key) for endpoint, body in bodies]
        codes = [f.result().status_code for f in futures]
        elapsed = time.perf_counter() - start
    finally:
        client.close()
    bad = sum(1 for c in codes if c != 201)
    if bad:
        raise BenchError(f"EcdpClient ({tag}): {bad} of {n} answers were not 201")
    return {"n": n, "in_flight": in_flight, "seconds": elapsed, "rate": n / elapsed}


def latency_run(ctx: Ctx, seconds: float, rate: float, tag: str) -> dict[str, Any]:
    """enqueue-commit -> request received, at a steady ``rate`` of single-event transactions."""
    from sqlalchemy.orm import Session

    from dispatcher import enqueue

    sink = ctx.latency_sink
    assert sink is not None
    url = ctx.small_url
    sql(url, "TRUNCATE dispatcher_attempts, dispatcher_jobs")
    set_paused(url, False)
    ctx.redis.flushdb()
    eng = engine(url)
    worker, sweeper = ctx.start_workers(url, sink.url)
    try:

        def produce(evs: list[Any]) -> dict[str, float]:
            committed: dict[str, float] = {}
            begin = time.perf_counter()
            for i, e in enumerate(evs):
                delay = begin + i / rate - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
                with Session(eng) as session, session.begin():
                    enqueue(e, session=session)
                committed[e.customer_email] = time.time()
            return committed

        def collect(committed: dict[str, float]) -> dict[str, float]:
            deadline = time.monotonic() + 30
            while True:
                arrived = sink.arrivals()
                if all(k in arrived for k in committed) or time.monotonic() > deadline:
                    return arrived
                time.sleep(0.2)

        warm = produce(events(int(rate), f"{tag}-warm"))  # one second of warm-up, not counted
        if not any(k in warm for k in collect(warm)):
            raise BenchError(
                f"latency ({tag}): no warm-up event reached the sink in 30 s; worker log "
                f"{worker.log_path}:\n{worker.tail()}"
            )
        sink.reset()
        committed = produce(events(int(seconds * rate), tag))
        arrived = collect(committed)
        lat = sorted((arrived[k] - t) * 1000 for k, t in committed.items() if k in arrived)
        if len(lat) < 2:
            raise BenchError(
                f"latency ({tag}): only {len(lat)} of {len(committed)} arrived; worker log "
                f"{worker.log_path}:\n{worker.tail()}"
            )
        q = statistics.quantiles(lat, n=100, method="inclusive")
        return {
            "n": len(committed),
            "missing": len(committed) - len(lat),
            "p50_ms": q[49],
            "p99_ms": q[98],
            "max_ms": lat[-1],
        }
    finally:
        worker.stop()
        sweeper.stop()


# --------------------------------------------------------------------------- report


@dataclass(frozen=True)
class Check:
    figure: str
    baseline: str | None  # None: an absolute target on the figure itself
    op: str  # ">=" or "<="
    target: float
    unit: str = "x"


CHECKS = (
    Check("enqueue", "enqueue_raw", ">=", 0.7),
    Check("enqueue_many", "enqueue_many_raw", ">=", 0.5),
    Check("enqueue_async", "enqueue_async_raw", ">=", 0.7),
    # What an AsyncSession transaction costs by itself is the floor: ours adds next to nothing.
    Check("enqueue_async", "enqueue_async_session", ">=", 0.9),
    Check("drain", "naive_celery", ">=", 3.0),
    Check("drain", "raw_http", ">=", 0.9),
    Check("latency_p50", None, "<=", 25.0, "ms"),
    Check("latency_p99", None, "<=", 100.0, "ms"),
    Check("drain_50ms", "drain", ">=", 0.8),
    Check("drain_50ms", "naive_celery_50ms", ">=", 10.0),
    Check("drain_big_table", "drain", ">=", 0.9),
    Check("worker_rss_growth", None, "<=", 100.0, "B/event"),
)

UNITS = {
    "enqueue": "events/s",
    "enqueue_raw": "events/s",
    "enqueue_many": "events/s",
    "enqueue_many_raw": "events/s",
    "enqueue_async": "events/s",
    "enqueue_async_raw": "events/s",
    "enqueue_async_session": "events/s",
    "drain": "events/s",
    "raw_http": "requests/s",
    "naive_celery": "events/s",
    "naive_celery_enqueue": "events/s",
    "latency_p50": "ms",
    "latency_p99": "ms",
    "drain_50ms": "events/s",
    "naive_celery_50ms": "events/s",
    "raw_http_50ms": "requests/s",
    "raw_http_50ms_threads": "requests/s",
    "raw_http_50ms_client": "requests/s",
    "drain_big_table": "events/s",
    "worker_rss_peak": "MiB",
    "worker_rss_growth": "B/event",
}

BASELINE_NAMES = {
    "enqueue_raw": "raw psycopg, 1 per tx",
    "enqueue_many_raw": "raw executemany",
    "enqueue_async_raw": "raw asyncpg, 1 per tx",
    "enqueue_async_session": "the INSERT by hand in an AsyncSession",
}


def fmt(value: float) -> str:
    if value >= 100:
        return f"{value:,.0f}"
    if value >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def report(per_round: dict[str, list[float]], notes: dict[str, str]) -> tuple[str, list[dict]]:
    med = {k: statistics.median(v) for k, v in per_round.items() if v}
    checks: list[dict[str, Any]] = []
    for c in CHECKS:
        if c.figure not in med or (c.baseline and c.baseline not in med):
            continue
        if c.baseline:
            pairs = zip(per_round[c.figure], per_round[c.baseline], strict=False)
            value = statistics.median(a / b for a, b in pairs if b)
        else:
            value = med[c.figure]
        met = value >= c.target if c.op == ">=" else value <= c.target
        checks.append(
            {
                "figure": c.figure,
                "vs": c.baseline,
                "value": value,
                "target": f"{c.op} {c.target:g}{'' if c.unit == 'x' else ' ' + c.unit}",
                "met": met,
            }
        )
    header = f"{'figure':<24}{'value':>10}  {'unit':<11}{'ratio':>7}  {'vs':<23}{'target':<16}met"
    lines = [header, "-" * len(header)]
    for name in UNITS:
        if name not in med:
            continue
        mine = [c for c in checks if c["figure"] == name]
        first = f"{name:<24}{fmt(med[name]):>10}  {UNITS[name]:<11}"
        if not mine:
            lines.append((first + (f"{'':>7}  {notes[name]}" if name in notes else "")).rstrip())
        for i, c in enumerate(mine):
            lead = first if i == 0 else " " * len(first)
            ratio = f"{c['value']:.2f}" if c["vs"] else ""
            vs = BASELINE_NAMES.get(c["vs"], c["vs"] or "")
            lines.append(
                f"{lead}{ratio:>7}  {vs:<23}{c['target']:<16}{'yes' if c['met'] else 'NO'}"
            )
    return "\n".join(lines), checks


def machine_info(pg_url: str, redis: redis_mod.Redis) -> dict[str, Any]:
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    import celery
    import httpx

    info: dict[str, Any] = {
        "nproc": len(os.sched_getaffinity(0)),
        "cpu": model,
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "loadavg_start": os.getloadavg(),
        "python": platform.python_version(),
        "postgresql": sql(pg_url, "SHOW server_version")[0][0],
        "redis": redis.info("server").get("redis_version"),
        "celery": celery.__version__,
        "httpx": httpx.__version__,
        "commit": git_head(),
    }
    return info


def git_head() -> str | None:
    """The checked-out commit, read from .git without running git."""
    git = REPO / ".git"
    with contextlib.suppress(OSError):
        head = (git / "HEAD").read_text().strip()
        if not head.startswith("ref: "):
            return head
        ref = head[5:]
        if (git / ref).exists():
            return (git / ref).read_text().strip()
        for line in (git / "packed-refs").read_text().splitlines():
            if line.endswith(" " + ref):
                return line.split()[0]
    return None


# --------------------------------------------------------------------------- main

FIGURES = (
    "enqueue",
    "enqueue_async",
    "drain",
    "raw_http",
    "naive_celery",
    "drain_big_table",
    "drain_50ms",
    "naive_celery_50ms",
    "raw_http_50ms",
    "latency",
    "memory",
    "clients",  # bench/clients.py: HTTP clients side by side, CPU per request (issue 13)
)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--rounds", type=int, help="alternating rounds (default 3; --quick: 1)")
    p.add_argument("--quick", action="store_true", help="small sizes, 1 round, no big table")
    p.add_argument("--only", help=f"comma-separated subset of: {', '.join(FIGURES)}")
    p.add_argument("--jobs", type=int, help="jobs per drain (default 20000; --quick: 2000)")
    p.add_argument("--naive-50ms-jobs", type=int, help="tasks for naive_celery_50ms (1000; 200)")
    p.add_argument("--memory-jobs", type=int, help="jobs of the long drain for RSS growth (60000)")
    p.add_argument("--big-rows", type=int, default=1_000_000, help="delivered rows, big table")
    p.add_argument("--latency-seconds", type=float, help="per round (default 10; --quick: 5)")
    p.add_argument("--latency-rate", type=float, default=100.0, help="events/s for latency")
    p.add_argument("--delay", type=float, default=0.05, help="the slow sink's delay (s)")
    p.add_argument("--threads", type=int, default=32, help="threads for raw_http_50ms_threads")
    p.add_argument(
        "--in-flight", type=int, default=128, help="requests in flight for raw_http_50ms_client"
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
    selected = set(FIGURES) - ({"drain_big_table", "memory", "clients"} if q else set())
    if args.only:
        selected = {f.strip() for f in args.only.split(",") if f.strip()}
        unknown = selected - set(FIGURES)
        if unknown:
            p.error(f"--only: unknown {', '.join(sorted(unknown))} (known: {', '.join(FIGURES)})")
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
    snapshot(workdir)
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
        ok = run(args, workdir, logdir, pg_base, redis_url, redis, has_echo)
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


def run(
    args: argparse.Namespace,
    workdir: Path,
    logdir: Path,
    pg_base: str,
    redis_url: str,
    redis: redis_mod.Redis,
    has_echo: bool,
) -> bool:
    started = datetime.now(UTC)
    sel = args.selected
    log("setting up: databases, sinks")
    small = make_db(pg_base, "dispatcher_bench")
    big = None
    big_max_id = 0
    setup: dict[str, Any] = {}
    if "drain_big_table" in sel:
        big = make_db(pg_base, "dispatcher_bench_big")
        log(f"writing {args.big_rows:,} delivered rows (+ attempts) into dispatcher_bench_big")
        setup["big_table_seconds"] = build_big_table(big, args.big_rows)
        log(f"big table ready in {setup['big_table_seconds']:.0f} s")
        big_max_id = int(sql(big, "SELECT max(id) FROM dispatcher_jobs")[0][0])
    nginx = Nginx(workdir, logdir, args.delay, has_echo)
    slow: Sink
    if nginx.slow is not None:
        slow = nginx.slow
    else:
        if any(f.endswith("_50ms") for f in sel):
            log("no nginx echo module: the delayed sink is bench/sink.py")
        slow = PySink(logdir, args.delay, record=False)
    lat_sink = PySink(logdir, 0.0, record=True) if "latency" in sel else None
    src = Path(sys.path[0])
    ctx = Ctx(args, logdir, redis_url, redis, small, big, nginx.fast, slow, lat_sink, src)
    ctx.procfile = read_procfile()
    info = machine_info(small, redis)
    sinks = {"fast": nginx.fast.name, "slow": slow.name}
    if lat_sink:
        sinks["latency"] = lat_sink.name
    log(f"sinks: {sinks}")

    per_round: dict[str, list[float]] = {k: [] for k in UNITS}
    raw: dict[str, list[dict[str, Any]]] = {}

    def keep(name: str, result: dict[str, Any]) -> dict[str, Any]:
        raw.setdefault(name, []).append(result)
        return result

    def step_enqueue(r: int) -> None:
        res = keep(
            "enqueue",
            enqueue_round(small, args.single, args.batch, f"enq{r}", raw_first=r % 2 == 1),
        )
        for k, v in res.items():
            per_round[k].append(v)
        log(
            f"enqueue {res['enqueue']:,.0f}/s (raw {res['enqueue_raw']:,.0f}), "
            f"enqueue_many {res['enqueue_many']:,.0f}/s (raw {res['enqueue_many_raw']:,.0f})"
        )

    def step_enqueue_async(r: int) -> None:
        res = keep(
            "enqueue_async",
            enqueue_async_round(small, args.single, f"enqa{r}", raw_first=r % 2 == 1),
        )
        for k, v in res.items():
            per_round[k].append(v)
        log(
            f"enqueue_async {res['enqueue_async']:,.0f}/s (raw asyncpg "
            f"{res['enqueue_async_raw']:,.0f}, by hand in an AsyncSession "
            f"{res['enqueue_async_session']:,.0f})"
        )

    def step_drain(r: int) -> None:
        res = keep("drain", drain_run(ctx, small, nginx.fast, args.jobs, f"d{r}"))
        per_round["drain"].append(res["rate"])
        rss = res["rss_kib"]
        per_round["worker_rss_peak"].append(rss["peak"] / 1024)
        log(
            f"drain {res['rate']:,.0f}/s ({res['seconds']:.1f} s, sink got "
            f"{res['sink_requests']:,}, {res['statuses']}); worker RSS MiB ready "
            f"{rss['ready'] / 1024:.0f} mid {rss['mid'] / 1024:.0f} peak "
            f"{rss['peak'] / 1024:.0f} end {rss['end'] / 1024:.0f}"
        )

    def step_big(r: int) -> None:
        assert big is not None
        res = drain_run(ctx, big, nginx.fast, args.jobs, f"b{r}", keep_up_to=big_max_id)
        keep("drain_big_table", res)
        per_round["drain_big_table"].append(res["rate"])
        log(f"drain_big_table {res['rate']:,.0f}/s ({res['seconds']:.1f} s, {res['statuses']})")

    def step_drain_slow(r: int) -> None:
        res = keep("drain_50ms", drain_run(ctx, small, slow, args.jobs, f"s{r}"))
        per_round["drain_50ms"].append(res["rate"])
        log(f"drain_50ms {res['rate']:,.0f}/s ({res['seconds']:.1f} s, {res['statuses']})")

    def step_raw(r: int) -> None:
        res = keep("raw_http", raw_http_run(nginx.fast, args.http_n, 1, f"h{r}"))
        per_round["raw_http"].append(res["rate"])
        log(f"raw_http {res['rate']:,.0f}/s")

    def step_raw_slow(r: int) -> None:
        seq = keep("raw_http_50ms", raw_http_run(slow, 100 if not args.quick else 40, 1, f"hs{r}"))
        thr = keep(
            "raw_http_50ms_threads",
            raw_http_run(slow, min(args.jobs, 5000), args.threads, f"ht{r}"),
        )
        ours = keep(
            "raw_http_50ms_client",
            client_run(slow, min(args.jobs, 5000), args.in_flight, f"hc{r}"),
        )
        per_round["raw_http_50ms"].append(seq["rate"])
        per_round["raw_http_50ms_threads"].append(thr["rate"])
        per_round["raw_http_50ms_client"].append(ours["rate"])
        log(
            f"raw_http_50ms {seq['rate']:,.1f}/s; {args.threads} threads {thr['rate']:,.0f}/s; "
            f"EcdpClient, {args.in_flight} in flight {ours['rate']:,.0f}/s"
        )

    def step_naive(r: int) -> None:
        res = keep("naive_celery", naive_run(ctx, nginx.fast, args.jobs, f"n{r}"))
        per_round["naive_celery"].append(res["rate"])
        per_round["naive_celery_enqueue"].append(res["produce_rate"])
        log(f"naive_celery {res['rate']:,.0f}/s (send.delay {res['produce_rate']:,.0f}/s)")

    def step_naive_slow(r: int) -> None:
        res = keep("naive_celery_50ms", naive_run(ctx, slow, args.naive_50ms_jobs, f"ns{r}"))
        per_round["naive_celery_50ms"].append(res["rate"])
        log(f"naive_celery_50ms {res['rate']:,.1f}/s")

    def step_latency(r: int) -> None:
        res = keep("latency", latency_run(ctx, args.latency_seconds, args.latency_rate, f"l{r}"))
        per_round["latency_p50"].append(res["p50_ms"])
        per_round["latency_p99"].append(res["p99_ms"])
        log(
            f"latency p50 {res['p50_ms']:.1f} ms p99 {res['p99_ms']:.1f} ms max "
            f"{res['max_ms']:.0f} ms ({res['n']} events, {res['missing']} missing)"
        )

    steps: list[tuple[str, Callable[[int], None]]] = [
        ("enqueue", step_enqueue),
        ("enqueue_async", step_enqueue_async),
        ("drain", step_drain),
        ("raw_http", step_raw),
        ("naive_celery", step_naive),
        ("drain_big_table", step_big),
        ("drain_50ms", step_drain_slow),
        ("naive_celery_50ms", step_naive_slow),
        ("raw_http_50ms", step_raw_slow),
        ("latency", step_latency),
    ]
    steps = [s for s in steps if s[0] in sel]
    try:
        for r in range(args.rounds):
            order = steps if r % 2 == 0 else steps[::-1]
            for name, fn in order:
                log(f"round {r + 1}/{args.rounds}: {name}")
                run_step(name, fn, r, small)
    except BenchError:
        if any(per_round.values()):
            print(f"incomplete run, figures so far:\n{report(per_round, {})[0]}", flush=True)
        raise

    if "memory" in sel:
        # RSS still settles (allocator arenas, caches: a few MiB) over the first tens of
        # thousands of events, so growth per event is judged on the second half of a long drain.
        log(f"one long drain of {args.memory_jobs:,} jobs for the worker's RSS growth")
        res = keep("memory", drain_run(ctx, small, nginx.fast, args.memory_jobs, "mem"))
        if res["rss_growth_bytes_per_event"] is not None:
            per_round["worker_rss_growth"].append(res["rss_growth_bytes_per_event"])
        rss = res["rss_kib"]
        log(
            f"memory: {res['rate']:,.0f}/s; RSS MiB ready {rss['ready'] / 1024:.0f} mid "
            f"{rss['mid'] / 1024:.0f} end {rss['end'] / 1024:.0f}; growth over the second half "
            f"{res['rss_growth_bytes_per_event']:.1f} B/event"
        )

    clients_result = None
    if "clients" in sel:
        import clients

        log("HTTP clients side by side (bench/clients.py)")
        clients_result = clients.side_by_side(
            {"nginx": nginx.fast.url, "50ms": slow.url},
            rounds=args.rounds,
            quick=args.quick,
            candidates=list(clients.CANDIDATES),
            src=src,
            log=log,
        )
        clients_result["table"] = (
            f"{clients.table(clients_result)}\n\n{clients.verdict(clients_result)}"
        )

    profile_summary = None
    if args.py_spy:
        out = Path(tempfile.gettempdir()) / "ecdp-bench-py-spy-drain.txt"  # MBs: not for git
        log("one more drain under py-spy (not counted)")
        drain_run(ctx, small, nginx.fast, args.jobs, "prof", profile=out)
        profile_summary = summarize_profile(out)

    notes = {
        "raw_http": "1 process, 1 httpx.Client, sequential",
        "raw_http_50ms": "sequential",
        "raw_http_50ms_threads": f"{args.threads} threads, 1 httpx.Client",
        "raw_http_50ms_client": f"1 process, EcdpClient, {args.in_flight} in flight",
        "naive_celery": f"prefork {worker_concurrency(ctx.procfile['worker'])}",
        "naive_celery_enqueue": "send.delay(), producer side",
        "worker_rss_peak": "worker + pool children, during drain",
    }
    table, checks = report(per_round, notes)
    finished = datetime.now(UTC)
    info["loadavg_end"] = os.getloadavg()
    title = (
        f"ecdp-dispatcher delivery benchmark, {finished:%Y-%m-%d %H:%M} UTC, "
        f"{info['nproc']} CPUs ({info['cpu']}), PostgreSQL {info['postgresql']}, "
        f"Redis {info['redis']}\nmedians of {args.rounds} alternating round(s); ratios are "
        f"medians of per-round ratios; drains of {args.jobs:,} jobs"
    )
    sink_lines = "\n".join(f"sink ({k}): {v}" for k, v in sinks.items())
    print(f"{title}\n{sink_lines}\n\n{table}")
    if "drain" in raw:
        rss = [d["rss_kib"] for d in raw["drain"]]
        print(
            "\nworker RSS during drain (MiB, per round: ready / mid / peak / end): "
            + "; ".join(
                " / ".join(f"{x[k] / 1024:.0f}" for k in ("ready", "mid", "peak", "end"))
                for x in rss
            )
        )
    if clients_result:
        print(f"\nHTTP clients, CPU ms per request and requests/s by sink and requests in flight:\n"
              f"{clients_result['table']}")  # fmt: skip
    if profile_summary:
        print("\n" + profile_summary)
    document = {
        "date": finished.isoformat(timespec="seconds"),
        "started": started.isoformat(timespec="seconds"),
        "seconds": round((finished - started).total_seconds()),
        "machine": info,
        "sinks": sinks,
        "config": {
            k: (sorted(v) if isinstance(v, set) else str(v) if isinstance(v, Path) else v)
            for k, v in vars(args).items()
        }
        | {"procfile": ctx.procfile, **setup},
        "medians": {k: statistics.median(v) for k, v in per_round.items() if v},
        "per_round": {k: v for k, v in per_round.items() if v},
        "checks": checks,
        "runs": raw,
        "table": table,
        "profile": profile_summary,
        "clients": clients_result,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.output.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(document, indent=2, default=str) + "\n")
    tmp.replace(args.output)
    print(f"\nwritten to {args.output}")
    return True


if __name__ == "__main__":
    sys.exit(main())
