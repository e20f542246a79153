"""The HTTP sinks drains post to: nginx (``return 201`` at once, and with the echo module after a
delay, as an API across the internet answers) and ``bench/sink.py`` (records each body's arrival,
for latency)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Protocol

from services import BENCH, ECHO_MODULE, BenchError, Proc, free_port, wait_port


class Sink(Protocol):
    name: str
    url: str

    def mark(self) -> None: ...

    def count(self) -> int: ...


class LogCounter:
    """Counts nginx access-log lines written since ``mark`` (one line per request)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fh: IO[bytes] | None = None
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
