"""`alembic upgrade head` / `downgrade base` on SQLite and PostgreSQL, and the model matches."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from dispatcher.db import create_engine
from dispatcher.migrate import downgrade, upgrade
from dispatcher.schema import metadata

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def empty_db(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'm.db'}"
    url = request.getfixturevalue("pg_test_url")
    downgrade(url)  # the shared test database starts migrated; begin this test from base
    request.addfinalizer(lambda: upgrade(url))
    return url


def tables(url: str) -> set[str]:
    engine = create_engine(url)
    try:
        return {t for t in sa.inspect(engine).get_table_names() if t.startswith("dispatcher_")}
    finally:
        engine.dispose()


def test_upgrade_then_downgrade(empty_db: str) -> None:
    upgrade(empty_db)
    assert tables(empty_db) >= {"dispatcher_jobs", "dispatcher_attempts", "dispatcher_queues"}
    engine = create_engine(empty_db)
    try:
        with engine.connect() as conn:
            ctx = MigrationContext.configure(
                conn, opts={"version_table": "dispatcher_alembic_version"}
            )
            diff = compare_metadata(ctx, metadata)
    finally:
        engine.dispose()
    assert diff == [], f"the migration and dispatcher/schema.py disagree: {diff}"
    downgrade(empty_db)
    assert tables(empty_db) == {"dispatcher_alembic_version"}
    upgrade(empty_db)  # and again, so downgrade really left a clean slate
    assert "dispatcher_jobs" in tables(empty_db)


def test_alembic_command_line(empty_db: str) -> None:
    env = {**os.environ, "DISPATCHER_DATABASE_URL": empty_db}
    for args in (["upgrade", "head"], ["downgrade", "base"]):
        subprocess.run(
            [sys.executable, "-m", "alembic", *args], cwd=ROOT, env=env, check=True, timeout=120
        )
    assert tables(empty_db) == {"dispatcher_alembic_version"}


def test_0009_moves_max_attempts_from_the_text_to_a_flag_and_back(empty_db: str) -> None:
    upgrade(empty_db, "0007")
    engine = create_engine(empty_db)
    row = (
        "INSERT INTO dispatcher_jobs (id, queue, endpoint, custom_event_id, payload, status, "
        "attempts, next_attempt_at, created_at, updated_at, replays, last_error) VALUES "
        "(:id, 'q', 'custom', 1, '{}', :status, 3, :now, :now, :now, 0, :error)"
    )
    now = "2026-12-08 00:00:00"
    jobs = {
        1: ("dead", "max attempts exceeded: 503 Service Unavailable"),
        2: ("dead", "400 Bad Request: max attempts exceeded: not a head"),
        3: ("pending", "max attempts exceeded: timeout: read"),  # replayed, not tried since
        4: ("delivered", None),
    }
    try:
        with engine.begin() as conn:
            for id_, (status, error) in jobs.items():
                conn.execute(
                    sa.text(row), {"id": id_, "status": status, "now": now, "error": error}
                )
        upgrade(empty_db, "0009")
        with engine.connect() as conn:
            found = {
                r.id: (bool(r.exhausted), r.last_error)
                for r in conn.execute(
                    sa.text("SELECT id, exhausted, last_error FROM dispatcher_jobs")
                )
            }
        assert found == {
            1: (True, "503 Service Unavailable"),
            2: (False, "400 Bad Request: max attempts exceeded: not a head"),
            3: (True, "timeout: read"),
            4: (False, None),
        }
        downgrade(empty_db, "0007")
        with engine.connect() as conn:
            back = dict(conn.execute(sa.text("SELECT id, last_error FROM dispatcher_jobs")).all())
        assert back == {id_: error for id_, (_, error) in jobs.items()}
    finally:
        engine.dispose()
    downgrade(empty_db)
