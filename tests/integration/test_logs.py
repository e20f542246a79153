"""Logs for machines: DISPATCHER_LOG_FORMAT=json makes every line a JSON object with stable keys,
Celery's own records included; dead letters and retries are logged without customer data."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from dispatcher import CustomEvent, enqueue
from dispatcher.logs import JsonFormatter, redact
from dispatcher.sandbox import Reply, Sandbox
from tests.support import start, statuses, stop, wait_until

EMAIL = "very.private@example.com"


def test_json_formatter_has_stable_keys() -> None:
    record = logging.LogRecord(
        "dispatcher.x", logging.WARNING, __file__, 1, "hi %s", ("there",), None
    )
    record.queue, record.job_id, record.status_code = "eu-shop", 7, 400
    line = json.loads(JsonFormatter().format(record))
    assert line == {
        "ts": line["ts"],
        "level": "WARNING",
        "logger": "dispatcher.x",
        "message": "hi there",
        "queue": "eu-shop",
        "job_id": 7,
        "status_code": 400,
    }
    assert line["ts"].endswith("+00:00")


@pytest.mark.parametrize(
    ("raw", "masked"),
    [
        ("customerEmail 'anna@example.com' is invalid", "customerEmail '<email>' is invalid"),
        ("Customer 1234567 not found", "Customer <number> not found"),
        ("md5 " + "a" * 32, "md5 <hash>"),
        ("nothing personal", "nothing personal"),
        # An escape (JSON, URL, HTML, fullwidth) cannot hide an address from the mask.
        ("no customer anna\\u002b1@example.com", "no customer <email>"),
        ("no customer anna%2B1@example.com", "no customer <email>"),
        ("no customer anna%2b1%40example.com", "no customer <email>"),
        ("no customer anna&#43;1&#64;example.com", "no customer <email>"),
        ("no customer anna\uff20example.com", "no customer <email>"),
        # Phone numbers in groups; dates, times, addresses and small counts stay.
        ("call +48 601 234 567.", "call <number>."),
        ("call (030) 123-4567", "call <number>"),
        ("at 2026-12-07 22:52:12 (17 of 20)", "at 2026-12-07 22:52:12 (17 of 20)"),
        ("connect error: 10.0.0.1:8080", "connect error: 10.0.0.1:8080"),
    ],
)
def test_redact(raw: str, masked: str) -> None:
    assert redact(raw) == masked


@pytest.mark.postgres
@pytest.mark.redis
@pytest.mark.slow
def test_every_line_a_json_worker_writes_parses(
    system: dict[str, str],
    pg_test_url: str,
    sandbox: Sandbox,
    tmp_path: Path,
) -> None:
    env = system | {"DISPATCHER_LOG_FORMAT": "json", "DISPATCHER_RETRY_BASE_SECONDS": "0.2"}
    sandbox.script(7, Reply(400, {"title": "Bad", "detail": f"customer {EMAIL} is invalid"}))
    sandbox.script(8, Reply(503))
    log_file = tmp_path / "worker.log"
    worker = start(env, "worker", "--concurrency=1", log=log_file)
    sweeper = start(env, "sweeper", log=tmp_path / "sweeper.log")
    try:
        wait_until(lambda: b"ready" in log_file.read_bytes(), "the worker to start")
        for event_id in (7, 8, 9):
            enqueue(CustomEvent(event_id, customer_email=EMAIL))
        wait_until(
            lambda: statuses(pg_test_url) == {"delivered": 2, "dead": 1}, "the three outcomes"
        )
    finally:
        stop(worker)
        stop(sweeper)
    lines = [
        json.loads(line)  # every line: a JSON object, or this raises
        for path in (log_file, tmp_path / "sweeper.log")
        for line in path.read_text().splitlines()
        if line
    ]
    assert lines
    for line in lines:
        assert {"ts", "level", "logger", "message"} <= line.keys(), line
    assert any(line["logger"].startswith("celery") for line in lines), "Celery's own records"
    dead = [line for line in lines if line["message"].startswith("dead letter")]
    assert len(dead) == 1
    assert dead[0]["level"] == "WARNING"
    assert dead[0]["status_code"] == 400 and dead[0]["queue"] == "default"
    assert dead[0]["outcome"] == "dead" and isinstance(dead[0]["job_id"], int)
    retries = [line for line in lines if line["message"].startswith("retry")]
    assert retries and retries[0]["level"] == "INFO" and retries[0]["status_code"] == 503
    assert retries[0]["attempt"] == 1 and "next_attempt_at" in retries[0]
    text = "\n".join(p.read_text() for p in tmp_path.glob("*.log"))
    assert EMAIL not in text
    assert system["ECDP_API_KEY"] not in text


def test_the_web_process_and_the_cli_write_json_lines_too(db_url: str, tmp_path: Path) -> None:
    import os
    import urllib.request

    from tests.support import free_port

    port = free_port()
    env = {
        **os.environ,
        "DISPATCHER_DATABASE_URL": db_url,
        "DISPATCHER_LOG_FORMAT": "json",
        "DISPATCHER_SWEEP_INTERVAL_SECONDS": "0.2",
    }
    web = start(env, "web", "--port", str(port), log=tmp_path / "web.log")
    try:
        wait_until(
            lambda: b"Uvicorn running" in (tmp_path / "web.log").read_bytes(), "the web server"
        )
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=10) as answer:
            assert answer.status == 200
    finally:
        stop(web)
    cli = start(
        env, "pause", "eu-shop", "--create", "--reason", "json test", log=tmp_path / "cli.log"
    )
    assert cli.wait(timeout=60) == 0
    web_records = [json.loads(line) for line in (tmp_path / "web.log").read_text().splitlines()]
    assert any(r["logger"].startswith("uvicorn") for r in web_records), "uvicorn's own records"
    # The CLI's answer ("queue eu-shop paused", a note) is its output; its log records are JSON.
    cli_lines = (tmp_path / "cli.log").read_text().splitlines()
    records = [json.loads(line) for line in cli_lines if line.startswith("{")]
    assert [r["message"] for r in records] == ["admin: paused queue eu-shop: json test"]
    for r in (*web_records, *records):
        assert {"ts", "level", "logger", "message"} <= r.keys(), r


def test_nothing_but_json_lines_from_start_to_shutdown(tmp_path: Path) -> None:
    """The lines that used to escape DISPATCHER_LOG_FORMAT=json: Celery's "worker: Warm shutdown"
    (printed from its signal handler), its pool's "Process 'ForkPoolWorker-1' exited with signal
    15" (a logger of its own, printed by Python's last resort), the notice that the default
    SQLite files are used, and an error at start (a bad setting)."""
    import os
    import signal
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if not k.startswith(("DISPATCHER_", "ECDP_"))} | {
        "DISPATCHER_LOG_FORMAT": "json",
        "DISPATCHER_HEARTBEAT_DIR": str(tmp_path / "beats"),
    }
    # DISPATCHER_DATABASE_URL not set: the default SQLite files, in this folder.
    migrate = subprocess.run(
        [sys.executable, "-m", "dispatcher.cli", "migrate"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert migrate.returncode == 0, migrate.stderr
    log_file = tmp_path / "worker.log"
    with log_file.open("ab") as out:
        worker = subprocess.Popen(
            [sys.executable, "-m", "dispatcher.cli", "worker", "--concurrency=1"],
            cwd=tmp_path, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    try:
        wait_until(lambda: b"ready" in log_file.read_bytes(), "the worker to start")
    finally:
        stop(worker, signal.SIGTERM)
    bad = subprocess.run(
        [sys.executable, "-m", "dispatcher.cli", "worker"],
        cwd=tmp_path, env=env | {"DISPATCHER_CONCURRENCY": "0.5"}, capture_output=True,
        text=True, timeout=120,
    )  # fmt: skip
    assert bad.returncode == 3
    lines = [*log_file.read_text().splitlines(), *migrate.stderr.splitlines()]
    lines += bad.stderr.splitlines()
    records = [json.loads(line) for line in lines if line.strip()]  # each one JSON, or this raises
    messages = [r["message"] for r in records]
    assert any(m.startswith("worker: Warm shutdown") for m in messages), messages
    assert any("DISPATCHER_DATABASE_URL is not set" in m for m in messages), messages
    assert any("DISPATCHER_CONCURRENCY" in m and r["level"] == "ERROR"
               for m, r in zip(messages, records, strict=True))  # fmt: skip
