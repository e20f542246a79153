"""Health probes: heartbeat liveness for the worker and the sweeper, readiness of database,
schema and broker, and `dispatcher check` as a container runs it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dispatcher import health
from dispatcher.migrate import HEAD, alembic_config, downgrade
from tests.support import free_port, start, stop, wait_until


def run_check(
    *args: str, env: dict[str, str] | None = None, clear: bool = False
) -> subprocess.CompletedProcess[str]:
    """``dispatcher check ARGS`` with ``env`` added to this environment (``clear``: instead)."""
    return subprocess.run(
        [sys.executable, "-c", "from dispatcher.entry import main; main()", "check", *args],
        env=dict(env or {}) if clear else {**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_heartbeat_fresh_stale_missing_unreadable(tmp_path: Path) -> None:
    assert health.check_heartbeat("worker", directory=tmp_path) == (
        False,
        f"worker: no heartbeat yet at {tmp_path / 'worker.heartbeat'}",
    )
    health.beat("worker", tmp_path)
    alive, line = health.check_heartbeat("worker", directory=tmp_path)
    assert alive and line.startswith("worker: alive")
    later = time.time() + 31
    alive, line = health.check_heartbeat("worker", directory=tmp_path, now=lambda: later)
    assert not alive and "more than 30s" in line
    (tmp_path / "sweeper.heartbeat").write_text("{")
    assert health.check_heartbeat("sweeper", directory=tmp_path)[0] is False


def test_the_liveness_probe_loads_no_database_or_broker_client(tmp_path: Path) -> None:
    """What makes it cheap: the probe imports none of SQLAlchemy, Celery, kombu or click."""
    health.beat("sweeper", tmp_path)
    code = (
        "import sys\n"
        "from dispatcher.entry import main\n"
        "sys.argv = ['dispatcher', 'check', '--sweeper']\n"
        "try:\n    main()\nexcept SystemExit as e:\n    code = e.code\n"
        "heavy = sorted({m.split('.')[0] for m in sys.modules} & "
        "{'sqlalchemy', 'celery', 'kombu', 'click', 'psycopg', 'aiohttp'})\n"
        "print(code, heavy)\n"
    )
    began = time.monotonic()
    out = subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, "DISPATCHER_HEARTBEAT_DIR": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    print(f"dispatcher check --sweeper: {time.monotonic() - began:.3f} s wall")
    assert out.stdout.splitlines()[-1] == "0 []", out.stdout + out.stderr


def test_check_exit_codes(tmp_path: Path) -> None:
    env = {"DISPATCHER_HEARTBEAT_DIR": str(tmp_path)}
    missing = run_check("--worker", env=env)
    assert missing.returncode == 1 and "no heartbeat yet" in missing.stdout
    health.beat("worker", tmp_path)
    assert run_check("--worker", env=env).returncode == 0
    assert run_check("--worker", "--max-age", "0", env=env).returncode == 1
    assert run_check("--bogus", env=env).returncode == 2


def test_readiness_of_each_component(db_url: str, redis_url: str) -> None:
    assert health.readiness(db_url, redis_url) == {
        "database": "ok",
        "schema": "ok",
        "broker": "ok",
    }
    assert health.readiness(db_url, f"redis://127.0.0.1:{free_port()}/0")["broker"] == (
        "unreachable"
    )
    down = f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/nothing"
    assert health.readiness(down, "memory://") == {
        "database": "unreachable",
        "schema": "unknown",
        "broker": "ok",
    }


def test_readiness_names_a_schema_behind(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'old.db'}"
    assert health.readiness(url, "memory://")["schema"] == "missing: run dispatcher migrate"
    from alembic import command

    command.upgrade(alembic_config(url), "0003")
    state = health.readiness(url, "memory://")
    assert state["schema"] == f"at 0003, not {HEAD}: run dispatcher migrate"
    assert not health.is_ready(state)
    downgrade(url)


def test_head_is_the_scripts_head() -> None:
    from alembic.script import ScriptDirectory

    assert ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head() == HEAD


def test_check_prints_readiness_as_json(db_url: str) -> None:
    out = run_check(env={"DISPATCHER_DATABASE_URL": db_url, "DISPATCHER_BROKER_URL": "memory://"})
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == {
        "ready": True,
        "database": "ok",
        "schema": "ok",
        "broker": "ok",
    }


@pytest.mark.postgres
@pytest.mark.redis
@pytest.mark.slow
def test_a_real_worker_and_sweeper_keep_their_heartbeats(
    system: dict[str, str],
    tmp_path: Path,
) -> None:
    beats = tmp_path / "beats"
    env = system | {"DISPATCHER_HEARTBEAT_DIR": str(beats)}
    worker = start(env, "worker", "--concurrency=1", log=tmp_path / "worker.log")
    sweeper = start(env, "sweeper", log=tmp_path / "sweeper.log")
    try:
        for kind in ("worker", "sweeper"):
            wait_until(
                lambda kind=kind: run_check(f"--{kind}", env=env).returncode == 0,
                f"the {kind}'s heartbeat",
            )
        first = json.loads((beats / "worker.heartbeat").read_text())["at"]
        wait_until(
            lambda: json.loads((beats / "worker.heartbeat").read_text())["at"] > first,
            "the worker's next heartbeat",
            limit=30,
        )
    finally:
        stop(worker)
        stop(sweeper)
    time.sleep(1.5)
    assert run_check("--worker", "--max-age", "1", env=env).returncode == 1
    assert run_check("--sweeper", "--max-age", "1", env=env).returncode == 1


def test_heartbeats_belong_to_one_installation(tmp_path: Path) -> None:
    """The default folder is named by the database URL: another installation's worker on this
    host (or a test beside production) is not taken for this one's."""
    ours = {"DISPATCHER_DATABASE_URL": "postgresql://app:s3cret-pw@db.example/shop"}
    theirs = {"DISPATCHER_DATABASE_URL": "postgresql://app:s3cret-pw@db.example/staging"}
    assert health.heartbeat_dir(ours) != health.heartbeat_dir(theirs)
    assert "s3cret" not in str(health.heartbeat_dir(ours))
    # One database, however it is spelled, is one installation (a password change included).
    for same in (
        "postgres://app:another@db.example/shop",
        "postgresql+psycopg://app@DB.example/shop",
    ):
        assert health.heartbeat_dir({"DISPATCHER_DATABASE_URL": same}) == health.heartbeat_dir(ours)
    assert health.heartbeat_dir({}) == health.heartbeat_dir(
        {"DISPATCHER_DATABASE_URL": f"sqlite:///{os.path.abspath('dispatcher.db')}"}
    )
    explicit = {**ours, "DISPATCHER_HEARTBEAT_DIR": str(tmp_path)}
    assert health.heartbeat_dir(explicit) == tmp_path

    # Their worker beats; ours is not running: the probe says so.
    theirs_dir = health.heartbeat_dir(theirs)
    try:
        health.beat("worker", theirs_dir)
        env = {k: v for k, v in os.environ.items() if k != "DISPATCHER_HEARTBEAT_DIR"}
        ours_probe = run_check("--worker", env={**env, **ours}, clear=True)
        assert ours_probe.returncode == 1 and "no heartbeat yet" in ours_probe.stdout
        assert "s3cret" not in ours_probe.stdout
        theirs_probe = run_check("--worker", env={**env, **theirs}, clear=True)
        assert theirs_probe.returncode == 0 and "alive" in theirs_probe.stdout
    finally:
        (theirs_dir / "worker.heartbeat").unlink(missing_ok=True)
