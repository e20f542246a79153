"""The fault-injection rig: real Celery workers and the sweeper as the Procfile starts them, a
private Redis that tests may flush, stop and restart, the shared PostgreSQL, and the sandbox."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import redis
import sqlalchemy as sa

from dispatcher import CustomEvent, enqueue_many
from dispatcher.db import get_engine
from dispatcher.sandbox import Sandbox
from tests.support import (
    account,
    free_port,
    settled,
    start,
    statuses,
    stop,
    wait_until,
    worker_ready,
)

pytestmark = [pytest.mark.faults, pytest.mark.postgres, pytest.mark.redis]


class PrivateRedis:
    """A redis-server of the test's own on a free port, so stopping it harms nobody else."""

    def __init__(self, folder: Path) -> None:
        self.port = free_port()
        self.folder = folder
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        binary = shutil.which("redis-server")
        assert binary, "redis-server is needed for the fault tests"
        self.proc = subprocess.Popen(
            [
                binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.folder),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_until(self.ping, "the private Redis to start", limit=30)

    def ping(self) -> bool:
        try:
            return bool(redis.Redis(port=self.port, socket_timeout=1).ping())
        except redis.RedisError:
            return False

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port)


@dataclass
class Rig:
    """What a fault test drives. ``env`` is the processes' environment."""

    db_url: str
    redis: PrivateRedis
    sandbox: Sandbox
    env: dict[str, str]
    folder: Path
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def start_worker(self, name: str = "worker") -> subprocess.Popen[bytes]:
        log = self.folder / f"{name}.log"
        proc = start(self.env, "worker", "--concurrency=2", f"--hostname={name}@%h", log=log)
        self.procs[name] = proc
        wait_until(worker_ready(log), f"{name} to be ready", limit=60)
        return proc

    def start_sweeper(self) -> subprocess.Popen[bytes]:
        proc = start(self.env, "sweeper", log=self.folder / "sweeper.log")
        self.procs["sweeper"] = proc
        return proc

    def logs(self) -> bytes:
        return b"".join(p.read_bytes() for p in self.folder.glob("*.log"))


@pytest.fixture
def rig(pg_test_url: str, api_key: str, tmp_path: Path, monkeypatch) -> Iterator[Rig]:
    with get_engine(pg_test_url).begin() as conn:
        conn.exec_driver_sql(
            "TRUNCATE dispatcher_attempts, dispatcher_jobs, dispatcher_queues RESTART IDENTITY"
        )
    private = PrivateRedis(tmp_path)
    private.start()
    sandbox = Sandbox(api_key=api_key, seed=1234).start()
    env = {
        **os.environ,
        "DISPATCHER_DATABASE_URL": pg_test_url,
        "DISPATCHER_BROKER_URL": private.url,
        "ECDP_BASE_URL": sandbox.url,
        "ECDP_API_KEY": api_key,
        "DISPATCHER_SWEEP_INTERVAL_SECONDS": "0.5",
        "DISPATCHER_LEASE_SECONDS": "5",
        "DISPATCHER_RETRY_BASE_SECONDS": "0.1",
        "DISPATCHER_RETRY_MAX_SECONDS": "1",
        "DISPATCHER_HTTP_TIMEOUT_SECONDS": "2",
    }
    # The test process itself only enqueues; the sweeper signals the workers, so its own
    # (in-memory) broker is left alone.
    for name in ("DISPATCHER_DATABASE_URL", "ECDP_API_KEY"):
        monkeypatch.setenv(name, env[name])
    from dispatcher.config import get_settings

    get_settings.cache_clear()
    the_rig = Rig(pg_test_url, private, sandbox, env, tmp_path)
    try:
        yield the_rig
    finally:
        for proc in the_rig.procs.values():
            stop(proc)
        sandbox.stop()
        private.stop()
        get_settings.cache_clear()
        logs = the_rig.logs()
        assert api_key.encode() not in logs, "the API key leaked into a process log"


# The scenarios' shared steps (tests/faults/test_faults.py, test_slow_api.py).
JOBS = 2000


def fill(n: int = JOBS, event_id: int = 1) -> None:
    enqueue_many([CustomEvent(event_id, customer_id=i) for i in range(1, n + 1)])


def delivered(rig: Rig) -> int:
    try:
        return statuses(rig.db_url).get("delivered", 0)
    except sa.exc.OperationalError:
        return 0


def drain_and_account(rig: Rig, limit: float = 180.0):
    wait_until(lambda: settled(rig.db_url), "every job to be delivered or dead", limit=limit)
    result = account(rig.db_url, rig.sandbox)
    print(result)
    return result
