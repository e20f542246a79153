"""Every count kept by the database: triggers on the jobs table keep ``dispatcher_counts`` exact
for every status, live ones too, so ``stats``, ``/metrics`` and the pages stop counting the
backlog (an index scan that grew with it: 1M waiting jobs cost a scrape 230 ms).

- PostgreSQL: three statement-level triggers (insert, update, delete) with transition tables
  append each statement's net change per (queue, status) to ``dispatcher_count_deltas``; the
  sweeper folds that table into ``dispatcher_counts``. No shared counter row, so concurrent
  producers never wait on each other.
- SQLite: row triggers update ``dispatcher_counts`` directly (one writer at a time).
- The counts are rebuilt here, every status, with the jobs table locked against writes (SHARE):
  a scan, seconds per ten million rows, during which producers and workers wait.
- ``ix_dispatcher_jobs_live`` goes: only the counting read it, and every enqueue paid for it.

The trigger SQL is frozen here as it was at this revision (``dispatcher.schema.count_triggers``
writes the same, for a partitioned layout's new parent; a test holds the two equal).

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-08
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

LIVE_WHERE = "status IN ('pending', 'in_flight', 'retrying')"
FINISHED = "('delivered', 'dead', 'cancelled')"

COUNT_FUNCTION_PG = """CREATE OR REPLACE FUNCTION dispatcher_count_jobs() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO dispatcher_count_deltas (queue, status, jobs)
        SELECT queue, status, count(*) FROM new_rows GROUP BY queue, status;
    ELSIF TG_OP = 'DELETE' THEN
        INSERT INTO dispatcher_count_deltas (queue, status, jobs)
        SELECT queue, status, -count(*) FROM old_rows GROUP BY queue, status;
    ELSE
        INSERT INTO dispatcher_count_deltas (queue, status, jobs)
        SELECT queue, status, sum(n) FROM (
            SELECT queue, status, 1 AS n FROM new_rows
            UNION ALL
            SELECT queue, status, -1 AS n FROM old_rows
        ) AS moved
        GROUP BY queue, status HAVING sum(n) <> 0;
    END IF;
    RETURN NULL;
END
$$"""


def triggers(dialect: str, table: str = "dispatcher_jobs") -> list[str]:
    if dialect == "postgresql":
        return [
            COUNT_FUNCTION_PG,
            *(
                f"CREATE TRIGGER dispatcher_jobs_count_{op_} AFTER {op_.upper()} ON {table} "
                f"REFERENCING {refs} FOR EACH STATEMENT EXECUTE FUNCTION dispatcher_count_jobs()"
                for op_, refs in (
                    ("insert", "NEW TABLE AS new_rows"),
                    ("update", "OLD TABLE AS old_rows NEW TABLE AS new_rows"),
                    ("delete", "OLD TABLE AS old_rows"),
                )
            ),
        ]
    return [
        f"CREATE TRIGGER dispatcher_jobs_count_insert AFTER INSERT ON {table} "
        f"BEGIN {_bump_sqlite('NEW', '+')} END",
        f"CREATE TRIGGER dispatcher_jobs_count_update AFTER UPDATE OF queue, status ON {table} "
        "WHEN OLD.queue IS NOT NEW.queue OR OLD.status IS NOT NEW.status "
        f"BEGIN {_bump_sqlite('OLD', '-')} {_bump_sqlite('NEW', '+')} END",
        f"CREATE TRIGGER dispatcher_jobs_count_delete AFTER DELETE ON {table} "
        f"BEGIN {_bump_sqlite('OLD', '-')} END",
    ]


def _bump_sqlite(row: str, sign: str) -> str:
    return (
        f"INSERT INTO dispatcher_counts (queue, status, jobs) "
        f"VALUES ({row}.queue, {row}.status, {sign}1) "
        f"ON CONFLICT (queue, status) DO UPDATE SET jobs = jobs {sign} 1;"
    )


def upgrade() -> None:
    bind = op.get_bind()
    postgresql = bind.dialect.name == "postgresql"
    op.create_table(
        "dispatcher_count_deltas",
        sa.Column("queue", sa.String(64), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("jobs", sa.BigInteger, nullable=False),
    )
    if postgresql:
        # No writer between the recount and the triggers: each job is counted exactly once.
        op.execute("LOCK TABLE dispatcher_jobs IN SHARE MODE")
        op.execute("LOCK TABLE dispatcher_counts IN EXCLUSIVE MODE")
    for statement in triggers(bind.dialect.name):
        op.execute(statement)
    op.execute("DELETE FROM dispatcher_counts")
    op.execute(
        "INSERT INTO dispatcher_counts (queue, status, jobs) "
        "SELECT queue, status, count(*) FROM dispatcher_jobs GROUP BY queue, status"
    )
    op.drop_index("ix_dispatcher_jobs_live", table_name="dispatcher_jobs")


def downgrade() -> None:
    postgresql = op.get_bind().dialect.name == "postgresql"
    if postgresql:
        op.execute("LOCK TABLE dispatcher_jobs IN SHARE MODE")
        op.execute("LOCK TABLE dispatcher_counts IN EXCLUSIVE MODE")
    for name in ("insert", "update", "delete"):
        on = " ON dispatcher_jobs" if postgresql else ""
        op.execute(f"DROP TRIGGER IF EXISTS dispatcher_jobs_count_{name}{on}")
    if postgresql:
        op.execute("DROP FUNCTION IF EXISTS dispatcher_count_jobs()")
    op.drop_table("dispatcher_count_deltas")
    # 0007's code counts finished jobs only, and keeps them itself from here on.
    op.execute("DELETE FROM dispatcher_counts")
    op.execute(
        "INSERT INTO dispatcher_counts (queue, status, jobs) SELECT queue, status, count(*) "
        f"FROM dispatcher_jobs WHERE status IN {FINISHED} GROUP BY queue, status"
    )
    op.create_index(
        "ix_dispatcher_jobs_live",
        "dispatcher_jobs",
        ["status", "queue"],
        postgresql_where=sa.text(LIVE_WHERE),
        postgresql_include=["next_attempt_at"],
        sqlite_where=sa.text(LIVE_WHERE),
    )
