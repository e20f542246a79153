"""What operators run: the Procfile and docker-compose agree, and Flower sees the delivery tasks."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import yaml
from sqlalchemy.orm import Session

from dispatcher import CustomEvent, enqueue
from dispatcher.db import get_engine
from tests.support import free_port, start, statuses, stop, wait_until

ROOT = Path(__file__).resolve().parents[2]
INFRASTRUCTURE = {"postgres", "redis", "migrate"}


def procfile() -> dict[str, str]:
    lines = (ROOT / "Procfile").read_text().splitlines()
    return dict(line.split(": ", 1) for line in lines if line.strip())


def test_procfile_and_compose_describe_the_same_processes() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    app_services = {name: s for name, s in services.items() if name not in INFRASTRUCTURE}
    assert set(app_services) == set(procfile())
    for name, command in procfile().items():
        assert app_services[name]["command"] == command, name
    # The production shape: health checks on the servers, a named volume for PostgreSQL, and a
    # one-shot migration every app service waits for.
    assert "pgdata" in compose["volumes"]
    assert "pgdata:/var/lib/postgresql/data" in services["postgres"]["volumes"]
    for name in ("postgres", "redis", "worker", "sweeper", "flower", "web"):
        assert "healthcheck" in services[name], name
    assert services["migrate"]["command"] == "dispatcher migrate"
    for name in app_services:
        depends = app_services[name]["depends_on"]
        assert depends["migrate"]["condition"] == "service_completed_successfully"


def test_every_long_running_service_has_a_cheap_health_check() -> None:
    """Each app service's probe: the heartbeat files (dispatcher check --worker/--sweeper), the
    web's /healthz, Flower's /healthcheck; never `celery inspect` (seconds of CPU per probe)."""
    services = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    long_running = {name: s for name, s in services.items() if name != "migrate"}
    probes = {}
    for name, service in long_running.items():
        assert "healthcheck" in service, f"{name} has no health check"
        test = service["healthcheck"]["test"]
        assert test[0] in ("CMD", "CMD-SHELL"), name
        probes[name] = " ".join(test[1:])
        assert "celery" not in probes[name] and "inspect" not in probes[name], name
    assert probes["worker"] == "dispatcher check --worker"
    assert probes["sweeper"] == "dispatcher check --sweeper"
    assert "http://127.0.0.1:8000/healthz" in probes["web"] and "urllib" in probes["web"]
    assert "http://127.0.0.1:5555/healthcheck" in probes["flower"]
    assert probes["postgres"].startswith("pg_isready") and probes["redis"] == "redis-cli ping"
    assert "healthcheck" not in services["migrate"], "a one-shot job is not probed"


@pytest.mark.postgres
@pytest.mark.redis
@pytest.mark.slow
def test_flower_lists_the_worker_and_its_delivery_tasks(
    system: dict[str, str],
    pg_test_url: str,
    tmp_path: Path,
) -> None:
    port = free_port()
    env = {**system, "FLOWER_UNAUTHENTICATED_API": "true"}
    flower_cmd = procfile()["flower"].replace("--port=5555", f"--port={port}").split()
    with (tmp_path / "flower").open("wb") as out:
        flower = subprocess.Popen(
            [sys.executable, "-m", "celery", *flower_cmd[1:], "--address=127.0.0.1"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    worker = start(
        system, "worker", "--concurrency=1", "--hostname=flowertest@%h", log=tmp_path / "w"
    )
    api = f"http://127.0.0.1:{port}/api"
    try:

        def worker_listed() -> bool:
            try:
                workers = httpx.get(f"{api}/workers?refresh=1", timeout=10).json()
                return any("flowertest@" in name for name in workers)
            except (httpx.HTTPError, ValueError):
                return False

        wait_until(worker_listed, "Flower to list the worker")
        with Session(get_engine(pg_test_url)) as session, session.begin():
            for n in range(5):
                enqueue(CustomEvent(9, customer_email=f"f{n}@example.com"), session=session)
        wait_until(lambda: statuses(pg_test_url) == {"delivered": 5}, "the deliveries")

        def delivered_tasks() -> list[dict]:
            tasks = httpx.get(f"{api}/tasks", timeout=5).json()
            return [
                t
                for t in tasks.values()
                if t["name"] == "dispatcher.deliver" and t["state"] == "SUCCESS"
            ]

        wait_until(lambda: bool(delivered_tasks()), "Flower to show a finished delivery task")
        task = delivered_tasks()[0]
        assert "default" in task["args"]  # the queue name is all a task carries
        assert "delivered" in task["result"]
        everything = json.dumps(httpx.get(f"{api}/tasks", timeout=5).json())
        everything += json.dumps(httpx.get(f"{api}/workers?refresh=1", timeout=10).json())
        assert system["ECDP_API_KEY"] not in everything
        assert "@example.com" not in everything  # no customer data in task arguments
    finally:
        stop(worker)
        stop(flower)
