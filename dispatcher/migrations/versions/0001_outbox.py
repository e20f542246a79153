"""The outbox: jobs, delivery attempts, queues.

Revision ID: 0001
Revises:
Create Date: 2026-11-27
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

UTCDateTime = sa.DateTime(timezone=True)  # = dispatcher.db.UTCDateTime's column type

ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def _partial(where: str) -> dict[str, Any]:
    return {"postgresql_where": sa.text(where), "sqlite_where": sa.text(where)}


def upgrade() -> None:
    op.create_table(
        "dispatcher_jobs",
        sa.Column("id", ID, primary_key=True, autoincrement=True),
        sa.Column("queue", sa.String(64), nullable=False),
        sa.Column("endpoint", sa.String(64), nullable=False),
        sa.Column("custom_event_id", sa.Integer, nullable=False),
        sa.Column("customer_email", sa.String(320)),
        sa.Column("payload", sa.Text, nullable=False),
        sa.Column("status", sa.String(16), nullable=False, server_default="pending"),
        sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("next_attempt_at", UTCDateTime, nullable=False),
        sa.Column("lease_token", sa.String(32)),
        sa.Column("lease_expires_at", UTCDateTime),
        sa.Column("dedupe_key", sa.String(255)),
        sa.Column("last_status_code", sa.Integer),
        sa.Column("last_error", sa.Text),
        sa.Column("replays", sa.Integer, nullable=False, server_default="0"),
        sa.Column("replayed_at", UTCDateTime),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.Column("updated_at", UTCDateTime, nullable=False),
        sa.Column("delivered_at", UTCDateTime),
        sa.PrimaryKeyConstraint("id", name="pk_dispatcher_jobs"),
        sa.CheckConstraint(
            "status IN ('pending', 'in_flight', 'retrying', 'delivered', 'dead')",
            name="ck_dispatcher_jobs_status",
        ),
    )
    op.create_index(
        "ix_dispatcher_jobs_due",
        "dispatcher_jobs",
        ["queue", "next_attempt_at", "id"],
        **_partial("status IN ('pending', 'retrying')"),
    )
    op.create_index(
        "ix_dispatcher_jobs_leased",
        "dispatcher_jobs",
        ["lease_expires_at"],
        **_partial("status = 'in_flight'"),
    )
    op.create_index(
        "uq_dispatcher_jobs_dedupe",
        "dispatcher_jobs",
        ["queue", "dedupe_key"],
        unique=True,
        **_partial("dedupe_key IS NOT NULL"),
    )
    op.create_index(
        "ix_dispatcher_jobs_email",
        "dispatcher_jobs",
        ["customer_email"],
        **_partial("customer_email IS NOT NULL"),
    )
    op.create_index(
        "ix_dispatcher_jobs_status_created", "dispatcher_jobs", ["status", "created_at"]
    )
    op.create_index("ix_dispatcher_jobs_event", "dispatcher_jobs", ["custom_event_id"])

    op.create_table(
        "dispatcher_attempts",
        sa.Column("id", ID, primary_key=True, autoincrement=True),
        sa.Column("job_id", sa.BigInteger, nullable=False),
        sa.Column("started_at", UTCDateTime, nullable=False),
        sa.Column("duration_ms", sa.Integer, nullable=False),
        sa.Column("status_code", sa.Integer),
        sa.Column("error", sa.Text),
        sa.Column("response_body", sa.Text),
        sa.Column("outcome", sa.String(16), nullable=False),
        sa.Column("counted", sa.Boolean, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_dispatcher_attempts"),
        sa.ForeignKeyConstraint(
            ["job_id"],
            ["dispatcher_jobs.id"],
            name="fk_dispatcher_attempts_job_id",
            ondelete="CASCADE",
        ),
    )
    op.create_index("ix_dispatcher_attempts_job_id", "dispatcher_attempts", ["job_id", "id"])

    op.create_table(
        "dispatcher_queues",
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("paused", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("pause_reason", sa.Text),
        sa.Column("paused_at", UTCDateTime),
        sa.Column("updated_at", UTCDateTime, nullable=False),
        sa.PrimaryKeyConstraint("name", name="pk_dispatcher_queues"),
    )


def downgrade() -> None:
    op.drop_table("dispatcher_queues")
    op.drop_index("ix_dispatcher_attempts_job_id", table_name="dispatcher_attempts")
    op.drop_table("dispatcher_attempts")
    for name in (
        "ix_dispatcher_jobs_event",
        "ix_dispatcher_jobs_status_created",
        "ix_dispatcher_jobs_email",
        "uq_dispatcher_jobs_dedupe",
        "ix_dispatcher_jobs_leased",
        "ix_dispatcher_jobs_due",
    ):
        op.drop_index(name, table_name="dispatcher_jobs")
    op.drop_table("dispatcher_jobs")
