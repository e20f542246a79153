"""What the benchmark runs on: its child processes, PostgreSQL, Redis, nginx's packages, and the
copies of ``dispatcher/`` its workers import."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit, urlunsplit

if TYPE_CHECKING:
    import redis as redis_mod

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
POLL = 0.05
ECHO_MODULE = Path("/usr/lib/nginx/modules/ngx_http_echo_module.so")


class BenchError(RuntimeError):
    """Something the benchmark needs failed; the message says what (and where the logs are)."""


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- the engine's code


@dataclass(frozen=True)
class Code:
    """A copy of ``dispatcher/`` (in ``src``) and its console scripts (``name -> module:func``,
    from that version's ``pyproject.toml``): the worker and sweeper of a drain run from it."""

    label: str
    src: Path
    scripts: dict[str, str]

    def argv(self, command: list[str], path: str) -> list[str]:
        """A Procfile command run with this code: its own console script, not the installed one
        (whose entry point may not exist in another version). ``-P``: the working directory
        (the checkout) never comes before ``src`` on the path."""
        name, *rest = command
        entry = self.scripts.get(name)
        if entry is None:
            return [shutil.which(name, path=path) or name, *rest]
        module, _, func = entry.partition(":")
        launch = (
            f"import sys; from {module} import {func}; sys.argv[0] = {name!r}; sys.exit({func}())"
        )
        return [sys.executable, "-P", "-c", launch, *rest]


def _scripts(pyproject: str) -> dict[str, str]:
    scripts: dict[str, str] = tomllib.loads(pyproject).get("project", {}).get("scripts", {})
    return scripts


def snapshot(workdir: Path) -> Path:
    """Copy ``dispatcher/`` and import it (here and in every worker) from the copy: the whole run
    measures the engine as it was at the start, even while someone edits the checkout."""
    src = workdir / "src"
    shutil.copytree(
        REPO / "dispatcher", src / "dispatcher", ignore=shutil.ignore_patterns("__pycache__")
    )
    sys.path.insert(0, str(src))
    return src


def current_code(src: Path) -> Code:
    """The snapshot ``snapshot`` made, with the checkout's console scripts."""
    return Code("checkout", src, _scripts((REPO / "pyproject.toml").read_text()))


def code_at(ref: str, into: Path) -> Code:
    """``dispatcher/`` as it was at the git ``ref`` (``git archive REF dispatcher | tar -x``), for
    the worker of ``drain_baseline``; nothing here imports it."""
    into.mkdir(parents=True)
    try:
        archive = subprocess.run(
            ["git", "-C", str(REPO), "archive", ref, "dispatcher"], capture_output=True, check=True
        ).stdout
        subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
        pyproject = subprocess.run(
            ["git", "-C", str(REPO), "show", f"{ref}:pyproject.toml"],
            capture_output=True,
            check=True,
            text=True,
        ).stdout
        commit = subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "--short", f"{ref}^{{commit}}"],
            capture_output=True,
            check=True,
            text=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError) as exc:
        stderr = getattr(exc, "stderr", b"") or b""
        detail = stderr.decode(errors="replace") if isinstance(stderr, bytes) else stderr
        raise BenchError(f"--baseline-ref {ref}: git cannot export it: {detail or exc}") from exc
    return Code(f"{ref} ({commit})" if commit != ref else ref, into, _scripts(pyproject))


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


# --------------------------------------------------------------------------- services


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
