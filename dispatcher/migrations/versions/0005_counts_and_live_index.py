"""Costs that do not grow with history: exact finished counts and an index over live jobs only.

``dispatcher_counts`` holds the number of delivered and dead jobs per queue (kept by the
transactions that change them: see dispatcher.outbox.add_counts), and ``ix_dispatcher_jobs_live``
covers pending, in-flight and retrying rows only, so ``dispatcher stats``, ``/metrics`` and the
pages never scan the finished history. The counts are backfilled here (as ``outbox.recount``
would; its SQL is written out below, since a migration must not run today's code).
``dispatcher_activity`` keeps the admin page's settled chart buckets (filled as pages are viewed).

On PostgreSQL the index is built ``CONCURRENTLY``, outside the migration's transaction, so
producers and workers keep writing while it is built (a minute or so per ten million rows);
the counts' backfill is one grouped scan that blocks nobody but recording workers, which wait
for it (seconds). Run it with the new workers (or none): older workers do not maintain counts.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

UTCDateTime = sa.DateTime(timezone=True)  # = dispatcher.db.UTCDateTime's column type

LIVE_WHERE = "status IN ('pending', 'in_flight', 'retrying')"  # = dispatcher.schema.LIVE_WHERE


def upgrade() -> None:
    op.create_table(
        "dispatcher_counts",
        sa.Column("queue", sa.String(64), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("jobs", sa.BigInteger, nullable=False, server_default="0"),
        sa.PrimaryKeyConstraint("queue", "status", name="pk_dispatcher_counts"),
    )
    _backfill_counts()
    op.create_table(
        "dispatcher_activity",
        sa.Column("queue", sa.String(64), nullable=False),
        sa.Column("step_seconds", sa.Integer, nullable=False),
        sa.Column("start", UTCDateTime, nullable=False),
        sa.Column("delivered", sa.Integer, nullable=False),
        sa.Column("retried", sa.Integer, nullable=False),
        sa.Column("dead", sa.Integer, nullable=False),
        sa.Column("paused", sa.Integer, nullable=False),
        sa.Column("p50_ms", sa.Float),
        sa.Column("p99_ms", sa.Float),
        sa.PrimaryKeyConstraint("queue", "step_seconds", "start", name="pk_dispatcher_activity"),
    )
    op.create_table(
        "dispatcher_activity_marks",
        sa.Column("queue", sa.String(64), nullable=False),
        sa.Column("step_seconds", sa.Integer, nullable=False),
        sa.Column("since", UTCDateTime, nullable=False),
        sa.Column("through", UTCDateTime, nullable=False),
        sa.PrimaryKeyConstraint("queue", "step_seconds", name="pk_dispatcher_activity_marks"),
    )
    postgresql = op.get_bind().dialect.name == "postgresql"
    if postgresql:
        with op.get_context().autocommit_block():
            op.execute("DROP INDEX IF EXISTS ix_dispatcher_jobs_live")  # a failed earlier try
            op.create_index(
                "ix_dispatcher_jobs_live",
                "dispatcher_jobs",
                ["status", "queue"],
                postgresql_where=sa.text(LIVE_WHERE),
                postgresql_include=["next_attempt_at"],
                postgresql_concurrently=True,
            )
    else:
        op.create_index(
            "ix_dispatcher_jobs_live",
            "dispatcher_jobs",
            ["status", "queue"],
            sqlite_where=sa.text(LIVE_WHERE),
        )


def downgrade() -> None:
    op.drop_index("ix_dispatcher_jobs_live", table_name="dispatcher_jobs")
    op.drop_table("dispatcher_activity_marks")
    op.drop_table("dispatcher_activity")
    op.drop_table("dispatcher_counts")


def _backfill_counts() -> None:
    """Count the finished jobs per queue and status (0005's finished statuses: delivered and
    dead). On PostgreSQL the counts table is locked first, so a worker recording meanwhile waits
    for this commit."""
    if op.get_bind().dialect.name == "postgresql":
        op.execute("LOCK TABLE dispatcher_counts IN EXCLUSIVE MODE")
    op.execute("DELETE FROM dispatcher_counts")
    op.execute(
        "INSERT INTO dispatcher_counts (queue, status, jobs) "
        "SELECT queue, status, count(*) FROM dispatcher_jobs "
        "WHERE status IN ('delivered', 'dead') GROUP BY queue, status"
    )
