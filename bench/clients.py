"""HTTP clients side by side (issue 13): CPU per request and requests/s, the way a worker sends.

    python bench/clients.py [--rounds 3] [--quick] [--candidates ecdp,aiohttp,...]
                            [--in-flight 2,16,128] [--ecdp-rev REV]
    python bench/run.py --only clients         # the same, as a figure group of the benchmark

Every candidate is driven as ``Deliverer`` drives ``EcdpClient``: a calling thread submits
requests into the client's event loop (which runs on a thread of its own), gets a
``concurrent.futures.Future`` back for each, and keeps a window of ``in_flight`` of them
outstanding, topping it up as answers come in; the client may hold at most ``in_flight``
connections. Each measurement runs in a fresh process (so that process CPU time is the client's
alone): it warms up (connections opened), then times ``n`` requests; CPU per request is the
process's CPU time (every thread) / ``n``. The candidates alternate (the order flips every
round) and the table shows medians of the rounds.

Candidates: ``ecdp`` (the dispatcher's own ``EcdpClient``, as checked out), ``aiohttp``
(a bare ``aiohttp.ClientSession`` on an asyncio loop), ``aiohttp_uvloop`` (the same on uvloop),
``httpx_aiohttp`` (``httpx.AsyncClient`` over the httpx-aiohttp package's transport), ``httpx``
(a plain ``httpx.AsyncClient``, for reference); ``--ecdp-rev REV`` adds ``ecdp@REV``, the
``EcdpClient`` of a git revision (``dispatcher/`` exported from git), to compare against the past.
A candidate whose package is missing is skipped with a note (``pip install aiohttp uvloop
httpx-aiohttp``).

The sinks are bench/run.py's nginx (``return 201``, and ``echo_sleep 0.05`` for a 50 ms API); the
machine is shared and noisy, so compare within one run: read ratios, not absolute figures.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
import json
import os
import queue
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Coroutine, Iterable
from concurrent.futures import Future
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
RESULTS = BENCH / "results"
ENDPOINT = "/scenariocustomevents"
API_KEY = "bench"
BODY_LIMIT = 8192

CANDIDATES = {
    "ecdp": "EcdpClient (dispatcher.ecdp)",
    "ecdp_asyncio": "EcdpClient on asyncio's loop, not uvloop",
    "aiohttp": "aiohttp ClientSession",
    "aiohttp_uvloop": "aiohttp ClientSession + uvloop",
    "httpx_aiohttp": "httpx.AsyncClient + httpx-aiohttp transport",
    "httpx": "httpx.AsyncClient (reference)",
}
NEEDS = {
    "aiohttp": ["aiohttp"],
    "aiohttp_uvloop": ["aiohttp", "uvloop"],
    "httpx_aiohttp": ["aiohttp", "httpx_aiohttp"],
}
IN_FLIGHT = (2, 16, 128)
MAX_SECONDS = 5.0  # a measurement stops submitting after this (httpx.AsyncClient: ~90/s at 128)


# --------------------------------------------------------------------------- one measurement
# (runs in a process of its own: ``clients.py --one CANDIDATE --url ... --n ... --in-flight ...``)


class Client(Protocol):
    """``submit`` returns the candidate's own future (an ``Answer``'s for ``EcdpClient``, a
    status for the others); ``status`` reads the status from its result on the calling thread."""

    def submit(self, endpoint: str, payload: bytes) -> Future[Any]: ...

    def status(self, result: Any) -> int: ...

    def close(self) -> None: ...


class OnLoopThread:
    """A third-party async client on an event loop of its own thread, as ``EcdpClient`` runs:
    ``make`` builds the client on the loop, ``post`` sends one request and returns its status
    (the body read up to ``BODY_LIMIT``), ``aclose`` closes it."""

    def __init__(
        self,
        url: str,
        make: Callable[[], Any],
        post: Callable[[Any, str, bytes], Coroutine[Any, Any, int]],
        aclose: Callable[[Any], Coroutine[Any, Any, None]],
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        self.url = url
        self.loop = loop or asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self._post = post
        self._aclose = aclose

        async def build() -> Any:
            return make()

        self.client = asyncio.run_coroutine_threadsafe(build(), self.loop).result()

    def submit(self, endpoint: str, payload: bytes) -> Future[Any]:
        return asyncio.run_coroutine_threadsafe(
            self._post(self.client, self.url + endpoint, payload), self.loop
        )

    def status(self, result: Any) -> int:
        return int(result)

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self._aclose(self.client), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


HEADERS = {"x-api-key": API_KEY, "content-type": "application/json"}


def make_client(candidate: str, url: str, in_flight: int) -> Client:
    if candidate.startswith("ecdp"):
        return _ecdp(url, in_flight, candidate)
    if candidate in ("aiohttp", "aiohttp_uvloop"):
        import aiohttp

        loop = None
        if candidate == "aiohttp_uvloop":
            import uvloop

            loop = uvloop.new_event_loop()

        def make_session() -> aiohttp.ClientSession:
            connector = aiohttp.TCPConnector(limit=in_flight, limit_per_host=in_flight)
            return aiohttp.ClientSession(
                connector=connector,
                timeout=aiohttp.ClientTimeout(total=10, connect=5),
                auto_decompress=False,
            )

        async def post_aiohttp(session: aiohttp.ClientSession, url: str, body: bytes) -> int:
            async with session.post(
                url, data=body, headers=HEADERS, allow_redirects=False
            ) as response:
                await response.content.read(BODY_LIMIT)
                return response.status

        async def close_aiohttp(session: aiohttp.ClientSession) -> None:
            await session.close()

        return OnLoopThread(url, make_session, post_aiohttp, close_aiohttp, loop)
    if candidate in ("httpx", "httpx_aiohttp"):
        import httpx

        limits = httpx.Limits(max_connections=in_flight, max_keepalive_connections=in_flight)

        def make_httpx() -> httpx.AsyncClient:
            if candidate == "httpx_aiohttp":
                from httpx_aiohttp import AiohttpTransport

                return httpx.AsyncClient(
                    transport=AiohttpTransport(limits=limits), timeout=httpx.Timeout(10, connect=5)
                )
            return httpx.AsyncClient(limits=limits, timeout=httpx.Timeout(10, connect=5))

        async def post_httpx(client: httpx.AsyncClient, url: str, body: bytes) -> int:
            async with client.stream("POST", url, content=body, headers=HEADERS) as response:
                async for _ in response.aiter_raw():
                    pass
                return response.status_code

        async def close_httpx(client: httpx.AsyncClient) -> None:
            await client.aclose()

        return OnLoopThread(url, make_httpx, post_httpx, close_httpx)
    raise SystemExit(f"unknown candidate {candidate!r}")


def _ecdp(url: str, in_flight: int, candidate: str) -> Client:
    from dispatcher.config import Secret
    from dispatcher.ecdp import Answer, EcdpClient

    key = Secret(API_KEY)
    options: dict[str, Any] = {}
    if candidate == "ecdp_asyncio":
        options["loop_factory"] = asyncio.new_event_loop

    class Ecdp:
        def __init__(self) -> None:
            self.client = EcdpClient(
                url, max_connections=in_flight, body_limit=BODY_LIMIT, **options
            )

        def submit(self, endpoint: str, payload: bytes) -> Future[Any]:
            return self.client.submit(endpoint, payload, key)

        def status(self, result: Any) -> int:
            answer: Answer = result
            return answer.status_code or 0

        def close(self) -> None:
            self.client.close()

    return Ecdp()


def drive(
    client: Client, bodies: Iterable[bytes], in_flight: int, until: float = float("inf")
) -> list[int]:
    """Keep ``in_flight`` requests outstanding until ``bodies`` are all answered (or, past
    ``until`` on the perf_counter clock, those in flight are); the answers come back through a
    queue fed by the futures' callbacks, as in ``Deliverer``."""
    answered: queue.SimpleQueue[Future[Any]] = queue.SimpleQueue()
    todo = iter(bodies)
    codes: list[int] = []
    outstanding = 0
    while True:
        if time.perf_counter() > until:
            todo = iter(())
        for body in todo:
            client.submit(ENDPOINT, body).add_done_callback(answered.put)
            outstanding += 1
            if outstanding >= in_flight:
                break
        if not outstanding:
            return codes
        codes.append(client.status(answered.get(timeout=60).result()))
        outstanding -= 1


def body(i: int) -> bytes:
    return b'{"customEventId":1,"customerId":%d,"data":[{"name":"n","value":"%d"}]}' % (i, i)


def measure(
    candidate: str, url: str, n: int, in_flight: int, max_seconds: float = MAX_SECONDS
) -> dict[str, Any]:
    """``n`` requests (fewer if that takes more than ``max_seconds``: a slow candidate)."""
    client = make_client(candidate, url, in_flight)
    try:
        warm = drive(client, (body(i) for i in range(max(200, 2 * in_flight))), in_flight)
        wall, cpu = time.perf_counter(), time.process_time()
        codes = drive(client, (body(i) for i in range(n)), in_flight, wall + max_seconds)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    finally:
        client.close()
    bad = sum(1 for c in [*warm, *codes] if c != 201)
    n = len(codes)
    return {
        "n": n,
        "in_flight": in_flight,
        "seconds": wall,
        "cpu_seconds": cpu,
        "rate": n / wall,
        "cpu_ms": cpu / n * 1000,
        "bad": bad,
    }


# --------------------------------------------------------------------------- rounds and report


def available(candidate: str) -> str | None:
    """None if the candidate can run here, else why not."""
    missing = [m for m in NEEDS.get(candidate, []) if importlib.util.find_spec(m) is None]
    return f"not installed: {', '.join(missing)}" if missing else None


def export_rev(rev: str, into: Path) -> Path:
    """``dispatcher/`` as it was at ``rev``, for ``ecdp@REV``."""
    into.mkdir(parents=True)
    archive = subprocess.run(
        ["git", "-C", str(REPO), "archive", rev, "dispatcher"], capture_output=True, check=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into


def run_one(candidate: str, url: str, n: int, in_flight: int, pythonpath: Path) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(pythonpath), str(BENCH)])}
    argv = [sys.executable, str(Path(__file__).resolve()), "--one", candidate]
    argv += ["--url", url, "--n", str(n), "--in-flight", str(in_flight)]
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=600, check=False)
    if done.returncode:
        raise RuntimeError(f"{candidate} at {in_flight} in flight failed:\n{done.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    if result["bad"]:
        raise RuntimeError(f"{candidate}: {result['bad']} answers were not 201")
    return result


def requests_for(sink: str, in_flight: int, quick: bool) -> int:
    """About 1-3 s of requests: the 50 ms sink answers at most ``20 * in_flight`` a second."""
    most = 1500 if quick else 5000
    if sink == "50ms":
        return min(most, in_flight * (20 if quick else 50))
    return most


def side_by_side(
    sinks: dict[str, str],
    *,
    rounds: int,
    quick: bool,
    candidates: list[str],
    in_flight: Iterable[int] = IN_FLIGHT,
    src: Path = REPO,
    revs: dict[str, Path] | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Every candidate against every sink at every window, ``rounds`` alternating rounds.
    ``src`` is where ``dispatcher`` is imported from; ``revs`` maps ``ecdp@REV`` to its export."""
    revs = revs or {}
    skipped = {c: why for c in candidates if (why := available(c))}
    for c, why in skipped.items():
        log(f"clients: skipping {c} ({why})")
    names = [c for c in candidates if c not in skipped]
    runs: dict[str, list[dict[str, Any]]] = {}
    for r in range(rounds):
        order = names if r % 2 == 0 else names[::-1]
        for sink, url in sinks.items():
            for k in in_flight:
                n = requests_for(sink, k, quick)
                for c in order:
                    res = run_one(c, url, n, k, revs.get(c, src))
                    runs.setdefault(f"{c}|{sink}|{k}", []).append(res)
                    log(
                        f"clients round {r + 1}/{rounds}: {c:<16} {sink:>5} {k:>4} in flight: "
                        f"{res['cpu_ms']:.3f} ms CPU/request, {res['rate']:,.0f} requests/s"
                    )
    medians = {
        key: {
            "cpu_ms": statistics.median(x["cpu_ms"] for x in results),
            "rate": statistics.median(x["rate"] for x in results),
            "rounds": len(results),
        }
        for key, results in runs.items()
    }
    return {
        "candidates": {c: CANDIDATES.get(c.split("@")[0], c) for c in names},
        "skipped": skipped,
        "sinks": sinks,
        "in_flight": list(in_flight),
        "rounds": rounds,
        "medians": medians,
        "runs": runs,
    }


def table(result: dict[str, Any]) -> str:
    """One line per candidate: CPU per request and requests/s at every sink and window."""
    cols = [(s, k) for s in result["sinks"] for k in result["in_flight"]]
    med = result["medians"]
    lines = [
        f"{'client':<22}"
        + "".join(f"{f'{s} {k}':>9}" for s, k in cols)
        + "   | "
        + "".join(f"{f'{s} {k}':>9}" for s, k in cols),
        f"{'':<22}{'CPU ms per request':^{9 * len(cols)}}   | {'requests/s':^{9 * len(cols)}}",
    ]
    for c in result["candidates"]:
        cpu = "".join(
            f"{med[f'{c}|{s}|{k}']['cpu_ms']:>9.3f}" if f"{c}|{s}|{k}" in med else f"{'-':>9}"
            for s, k in cols
        )
        rate = "".join(
            f"{med[f'{c}|{s}|{k}']['rate']:>9,.0f}" if f"{c}|{s}|{k}" in med else f"{'-':>9}"
            for s, k in cols
        )
        lines.append(f"{c:<22}{cpu}   | {rate}")
    return "\n".join(lines)


def verdict(result: dict[str, Any], factor: float = 1.3) -> str:
    """The rule of issue 13: a hand-made client (``ecdp@REV``: the httpcore-on-asyncio backend
    this one replaced) stays only if the best well-kept option needs ``factor`` times its CPU per
    request or more. CPU per request is compared as the median over every sink and window."""
    med = result["medians"]
    cols = [(s, k) for s in result["sinks"] for k in result["in_flight"]]

    def cpu(c: str) -> float:
        return float(statistics.median(med[f"{c}|{s}|{k}"]["cpu_ms"] for s, k in cols))

    names = list(result["candidates"])
    kept = [c for c in names if c in NEEDS or c == "httpx"]  # third-party, as they come
    if not kept:
        return ""
    best = min(kept, key=cpu)
    lines = [f"CPU per request, median over sinks and windows (best well-kept: {best}):"]
    lines += [f"  {c:<18}{cpu(c):.3f} ms  {cpu(c) / cpu(best):.2f} x {best}" for c in names]
    for custom in (c for c in names if c.startswith("ecdp@")):
        edge = cpu(best) / cpu(custom)
        lines.append(
            f"the hand-made {custom} beats {best} by {edge:.2f} x in CPU per request: "
            + (f"keep it (>= {factor:g})" if edge >= factor else f"replace it (< {factor:g})")
        )
    return "\n".join(lines)


# --------------------------------------------------------------------------- standalone


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--rounds", type=int, help="alternating rounds (default 3; --quick: 1)")
    p.add_argument("--quick", action="store_true", help="fewer requests, 1 round")
    p.add_argument("--candidates", default=",".join(CANDIDATES), help="comma-separated")
    p.add_argument("--in-flight", default=",".join(map(str, IN_FLIGHT)), help="windows")
    p.add_argument("--ecdp-rev", action="append", default=[], help="add EcdpClient of a git rev")
    p.add_argument("--sinks", default="nginx,50ms", help="nginx (return 201), 50ms (echo_sleep)")
    p.add_argument("--delay", type=float, default=0.05, help="the slow sink's delay (s)")
    p.add_argument("--no-install", action="store_true", help="never apt-get install nginx")
    p.add_argument("--output", type=Path, default=RESULTS / "clients.json")
    p.add_argument("--one", help=argparse.SUPPRESS)  # a measurement process (see run_one)
    p.add_argument("--url", help=argparse.SUPPRESS)
    p.add_argument("--n", type=int, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.rounds = args.rounds or (1 if args.quick else 3)
    return args


def main() -> int:
    args = parse_args()
    if args.one:
        print(json.dumps(measure(args.one, args.url, args.n, int(args.in_flight))))
        return 0
    # The benchmark's services, sinks and process handling (bench/run.py imports this module).
    import services
    from sinks import Nginx

    workdir = Path(tempfile.mkdtemp(prefix="ecdp-bench-clients-"))
    logdir = workdir / "logs"
    logdir.mkdir()
    ok = False
    try:
        src = services.snapshot(workdir)
        revs = {f"ecdp@{rev}": export_rev(rev, workdir / f"rev-{i}") for i, rev in
                enumerate(args.ecdp_rev)}  # fmt: skip
        wanted = set(args.sinks.split(","))
        has_echo = services.ensure_nginx(not args.no_install)
        if "50ms" in wanted and not has_echo:
            services.log("clients: no nginx echo module, so no 50 ms sink")
        nginx = Nginx(workdir, logdir, args.delay, has_echo and "50ms" in wanted)
        sinks = {"nginx": nginx.fast.url} if "nginx" in wanted else {}
        if nginx.slow is not None:
            sinks["50ms"] = nginx.slow.url
        candidates = [c.strip() for c in args.candidates.split(",") if c.strip()]
        result = side_by_side(
            sinks,
            rounds=args.rounds,
            quick=args.quick,
            candidates=[*candidates, *revs],
            in_flight=[int(k) for k in args.in_flight.split(",")],
            src=src,
            revs=revs,
            log=services.log,
        )
        finished = datetime.now(UTC)
        title = (
            f"HTTP clients side by side, {finished:%Y-%m-%d %H:%M} UTC, {os.cpu_count()} CPUs, "
            f"medians of {args.rounds} alternating round(s); sinks: nginx `return 201` and "
            f"`echo_sleep {args.delay:g}`; columns: sink and requests in flight"
        )
        text = f"{title}\n\n{table(result)}\n\n{verdict(result)}"
        print(text)
        result["table"] = text
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(
            json.dumps({"date": finished.isoformat(timespec="seconds"), **result}, indent=2) + "\n"
        )
        print(f"\nwritten to {args.output}")
        ok = True
    except KeyboardInterrupt:
        services.log("interrupted")
    finally:
        services.stop_all()
        if ok:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            with contextlib.suppress(Exception):
                services.log(f"logs kept in {logdir}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
