"""The per-queue circuit breaker's shared state (see dispatcher.breaker).

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

UTCDateTime = sa.DateTime(timezone=True)  # = dispatcher.db.UTCDateTime's column type


def upgrade() -> None:
    # A constant server default: PostgreSQL 11+ adds such a column without rewriting the table.
    with op.batch_alter_table("dispatcher_queues") as batch:
        batch.add_column(
            sa.Column("circuit", sa.String(16), nullable=False, server_default="closed")
        )
        batch.add_column(sa.Column("circuit_since", UTCDateTime))
        batch.add_column(sa.Column("circuit_reason", sa.Text))
        batch.add_column(sa.Column("circuit_retry_at", UTCDateTime))
        batch.add_column(
            sa.Column("circuit_probes", sa.Integer, nullable=False, server_default="0")
        )
        batch.create_check_constraint("circuit", "circuit IN ('closed', 'open', 'half_open')")


def downgrade() -> None:
    with op.batch_alter_table("dispatcher_queues") as batch:
        batch.drop_constraint("circuit", type_="check")
        batch.drop_column("circuit_probes")
        batch.drop_column("circuit_retry_at")
        batch.drop_column("circuit_reason")
        batch.drop_column("circuit_since")
        batch.drop_column("circuit")
