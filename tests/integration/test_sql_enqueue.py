"""``SELECT dispatcher_enqueue(...)`` on PostgreSQL: the row the Python producer would write, in
the caller's transaction; dedupe and ordering keys; errors naming the field; ``deliver_at``; the
NOTIFY at commit and the sweeper's listener, which reconnects; and the documented trigger, run
until its event reaches the sandbox."""

from __future__ import annotations

import importlib
import threading
from collections.abc import Iterable, Iterator
from datetime import timedelta
from pathlib import Path

import psycopg
import pytest
import sqlalchemy as sa

from dispatcher import CustomEvent, DataField, SegmentEvent, enqueue_sql, listener, producer
from dispatcher.db import dispose_engines, get_engine, utcnow
from dispatcher.delivery import Deliverer
from dispatcher.outbox import insert_jobs
from dispatcher.sandbox import Sandbox
from dispatcher.schema import jobs
from tests.conftest import EMPTY_OUTBOX
from tests.support import wait_until

pytestmark = [pytest.mark.postgres, pytest.mark.usefixtures("env")]

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs" / "guides" / "sql-and-http.md"


@pytest.fixture
def db_url(pg_test_url: str) -> Iterator[str]:
    """PostgreSQL only (the function does not exist on SQLite), emptied for each test."""
    with get_engine(pg_test_url).begin() as conn:
        conn.exec_driver_sql(EMPTY_OUTBOX)
    yield pg_test_url
    dispose_engines()


def test_the_migration_holds_the_text_generated_today() -> None:
    migration = importlib.import_module("dispatcher.migrations.versions.0012_scheduled")
    assert enqueue_sql.function_sql() == migration.FUNCTIONS, (
        "the rules of dispatcher.events (or dispatcher.enqueue_sql) changed: add a migration "
        "that installs the new enqueue_sql.function_sql() (CREATE OR REPLACE)"
    )
    first = importlib.import_module("dispatcher.migrations.versions.0010_sql_enqueue")
    assert enqueue_sql.drop_sql() == first.DROP


def _call(conn: sa.Connection, queue: str, body: str, **keys: object) -> int:
    names = ", ".join(f"{k} => :{k}" for k in keys)
    statement = (
        f"SELECT dispatcher_enqueue(:queue, CAST(:body AS jsonb){', ' if keys else ''}{names})"
    )
    return int(conn.execute(sa.text(statement), {"queue": queue, "body": body, **keys}).scalar())


COLUMNS = [c for c in jobs.c if c.name not in ("id", "created_at", "updated_at", "next_attempt_at")]


def _row(conn: sa.Connection, job: int) -> dict[str, object]:
    return dict(conn.execute(sa.select(*COLUMNS).where(jobs.c.id == job)).one()._mapping)


@pytest.mark.parametrize(
    "event",
    [
        CustomEvent(
            7,
            customer_email="Jan.Kowalski@Example.com",
            customer_phone="+48 600 100 200",
            data_fields=[DataField("total", "Money", "0019.90"), DataField("ok", "Boolean", True)],
        ),
        SegmentEvent(8, [3, 1], [DataField("at", "DateTime", "2024-05-01 12:30Z")]),
    ],
    ids=["custom", "segment"],
)
def test_writes_the_row_the_python_producer_writes(db_url: str, event: object) -> None:
    body = event.to_json()  # type: ignore[attr-defined]
    with get_engine(db_url).begin() as conn:
        by_sql = _call(conn, "shop", body, dedupe_key="k-sql", ordering_key="cust-1")
        row = producer._to_row(event, "shop", "k-py", "event", "cust-1")
        assert not isinstance(row, list)
        (by_python,) = insert_jobs(conn, [row], utcnow())
        sql_row, python_row = _row(conn, by_sql), _row(conn, by_python)
    assert sql_row.pop("dedupe_key") == "k-sql" and python_row.pop("dedupe_key") == "k-py"
    assert sql_row == python_row
    assert sql_row["status"] == "pending" and sql_row["trace_context"] is None


def test_committed_or_rolled_back_with_the_caller(db_url: str) -> None:
    body = '{"customEventId": 1, "customerId": 5}'
    engine = get_engine(db_url)
    with engine.connect() as conn:
        _call(conn, "default", body)
        conn.rollback()
    with engine.begin() as conn:
        job = _call(conn, "default", body)
    with engine.connect() as conn:
        assert conn.execute(sa.select(jobs.c.id)).scalars().all() == [job]


def test_a_taken_dedupe_key_returns_the_existing_id(db_url: str) -> None:
    with get_engine(db_url).begin() as conn:
        first = _call(conn, "default", '{"customEventId": 1, "customerId": 5}', dedupe_key="o-1")
        again = _call(conn, "default", '{"customEventId": 2, "customerId": 6}', dedupe_key="o-1")
        other = _call(conn, "other", '{"customEventId": 1, "customerId": 5}', dedupe_key="o-1")
        assert again == first != other
        assert conn.execute(sa.select(sa.func.count()).select_from(jobs)).scalar() == 2


@pytest.mark.parametrize(
    ("queue", "body", "keys", "named"),
    [
        ("default", '{"customEventId": 1, "customerEmail": "nope"}', {}, "customerEmail: "),
        ("default", '{"customEventId": 1}', {}, "customer: at least one identifier"),
        ("Default", '{"customEventId": 1, "customerId": 1}', {}, "queue: "),
        ("default", '{"customEventId": 1, "customerId": 1}', {"dedupe_key": ""}, "dedupe_key: "),
        (
            "default",
            '{"customEventId": 1, "customerId": 1}',
            {"ordering_key": "x" * 256},
            "ordering_key: ",
        ),
        ("default", "[1]", {}, "body: expected a JSON object (got list)"),
    ],
)
def test_invalid_input_raises_naming_the_field(
    db_url: str, queue: str, body: str, keys: dict[str, object], named: str
) -> None:
    with get_engine(db_url).connect() as conn, pytest.raises(sa.exc.DBAPIError) as excinfo:
        _call(conn, queue, body, **keys)
    assert excinfo.value.orig.sqlstate == enqueue_sql.ERRCODE  # type: ignore[union-attr]
    assert named in str(excinfo.value.orig)


def test_deliver_at_sets_the_due_time_and_sends_no_notify(db_url: str) -> None:
    later = utcnow() + timedelta(hours=24)
    with _listening(db_url) as pg:
        with get_engine(db_url).begin() as conn:
            job = _call(conn, "default", '{"customEventId": 1, "customerId": 1}', deliver_at=later)
            now = _call(conn, "now", '{"customEventId": 1, "customerId": 1}')
        assert [n.payload for n in pg.notifies(timeout=2, stop_after=1)] == ["now"]
        assert list(pg.notifies(timeout=0.3)) == []
    with get_engine(db_url).connect() as conn:
        due = dict(conn.execute(sa.select(jobs.c.id, jobs.c.next_attempt_at)).all())
    assert due[job] == later and due[now] < later


def test_a_past_deliver_at_means_now_as_for_the_python_producer(db_url: str) -> None:
    with get_engine(db_url).begin() as conn:
        job = _call(
            conn,
            "default",
            '{"customEventId": 1, "customerId": 1}',
            deliver_at=utcnow() - timedelta(days=3),
        )
        (due, now) = conn.execute(
            sa.select(jobs.c.next_attempt_at, sa.func.now()).where(jobs.c.id == job)
        ).one()
    assert due == now


def _listening(db_url: str) -> psycopg.Connection:
    pg = psycopg.connect(listener.conninfo(db_url), autocommit=True)
    pg.execute(f"LISTEN {enqueue_sql.NOTIFY_CHANNEL}")
    return pg


def test_notify_comes_at_commit_and_never_after_a_rollback(db_url: str) -> None:
    with _listening(db_url) as pg, get_engine(db_url).connect() as conn:
        _call(conn, "gone", '{"customEventId": 1, "customerId": 1}')
        conn.rollback()
        _call(conn, "kept", '{"customEventId": 1, "customerId": 1}')
        assert list(pg.notifies(timeout=0.3)) == []  # not before the commit
        conn.commit()
        assert [n.payload for n in pg.notifies(timeout=2, stop_after=1)] == ["kept"]


class Heard:
    def __init__(self) -> None:
        self.queues: list[str] = []
        self.event = threading.Event()

    def __call__(self, queues: Iterable[str]) -> None:
        self.queues += sorted(queues)
        self.event.set()


@pytest.fixture
def heard(db_url: str) -> Iterator[tuple[Heard, threading.Event]]:
    """The sweeper's listener thread, running against the test database."""
    heard, stop, ready = Heard(), threading.Event(), threading.Event()
    thread = threading.Thread(
        target=listener.listen, args=(db_url, heard, stop, ready), daemon=True
    )
    thread.start()
    assert ready.wait(10)
    yield heard, ready
    stop.set()
    thread.join(10)
    assert not thread.is_alive()


def test_the_listener_reconnects_after_its_connection_is_killed(
    db_url: str, heard: tuple[Heard, threading.Event]
) -> None:
    calls, ready = heard
    with get_engine(db_url).begin() as conn:
        killed = conn.exec_driver_sql(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE application_name = 'dispatcher-listener' AND datname = current_database()"
        ).scalar()
    assert killed == 1
    wait_until(lambda: not ready.is_set(), "the listener noticed", 10)
    wait_until(ready.is_set, "the listener reconnected", 15)
    with get_engine(db_url).begin() as conn:
        _call(conn, "after", '{"customEventId": 1, "customerId": 1}')
    assert calls.event.wait(5) and calls.queues == ["after"]


def _snippet(name: str) -> str:
    """The fenced SQL block under the heading ``name`` in docs/guides/sql-and-http.md."""
    text = DOCS.read_text()
    section = text.split(f"## {name}", 1)[1]
    return section.split("```sql", 1)[1].split("```", 1)[0]


def test_the_documented_trigger_delivers_an_order_to_the_sandbox(
    db_url: str, heard: tuple[Heard, threading.Event], deliverer: Deliverer, sandbox: Sandbox
) -> None:
    calls, _ = heard
    engine = get_engine(db_url)
    with engine.begin() as conn:
        conn.exec_driver_sql("DROP TABLE IF EXISTS orders CASCADE")
        conn.exec_driver_sql(_snippet("A trigger"))
    try:
        with engine.begin() as conn:
            conn.exec_driver_sql(
                "INSERT INTO orders (id, customer_email, total) "
                "VALUES (17, 'ann@example.com', 42.5)"
            )
        assert calls.event.wait(5), "no NOTIFY reached the listener"
        assert calls.queues == ["default"]
        deliverer.drain("default")  # what the Celery task does for the listener's signal
        assert sandbox.count(201) == 1
        body = sandbox.bodies()[0].decode()
        assert '"customerEmail":"ann@example.com"' in body and '"value":"17"' in body
        with engine.begin() as conn:  # the same order inserted again: deduplicated
            conn.exec_driver_sql("DELETE FROM orders")
            conn.exec_driver_sql(
                "INSERT INTO orders (id, customer_email, total) "
                "VALUES (17, 'ann@example.com', 42.5)"
            )
            assert conn.execute(sa.select(sa.func.count()).select_from(jobs)).scalar() == 1
    finally:
        with engine.begin() as conn:
            conn.exec_driver_sql("DROP TABLE IF EXISTS orders CASCADE")
            conn.exec_driver_sql("DROP FUNCTION IF EXISTS orders_enqueue_event()")


def test_the_sweeper_signals_a_sql_enqueue_within_a_second_not_at_its_next_pass(
    db_url: str,
) -> None:
    """A sweep every 60 s: the signal can only come from the sweeper's listener thread."""
    from dispatcher import sweeper

    calls, stop = Heard(), threading.Event()
    engine = get_engine(db_url)
    thread = threading.Thread(target=sweeper.run, args=(engine, calls, 60.0, stop), daemon=True)
    thread.start()
    try:
        wait_until(
            lambda: any(t.name == "dispatcher-listener" for t in threading.enumerate()),
            "the sweeper's listener",
            10,
        )

        def listening() -> bool:  # a transaction per look: pg_stat_activity is read once in one
            with engine.connect() as conn:
                return bool(
                    conn.execute(
                        sa.text(
                            "SELECT count(*) FROM pg_stat_activity WHERE application_name = "
                            "'dispatcher-listener' AND query LIKE 'LISTEN%'"
                        )
                    ).scalar()
                )

        wait_until(listening, "LISTEN", 10)  # the LISTEN is in place
        with engine.begin() as conn:
            _call(conn, "from-sql", '{"customEventId": 1, "customerId": 1}')
        wait_until(lambda: "from-sql" in calls.queues, "the listener's signal", 5)
    finally:
        stop.set()
        thread.join(10)
    assert not thread.is_alive()
