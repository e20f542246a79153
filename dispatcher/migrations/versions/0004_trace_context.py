"""A job keeps its producer's trace context (OpenTelemetry, optional): see dispatcher.tracing.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # A nullable column without a default: a catalogue change on PostgreSQL, no table rewrite.
    with op.batch_alter_table("dispatcher_jobs") as batch:
        batch.add_column(sa.Column("trace_context", sa.Text))


def downgrade() -> None:
    with op.batch_alter_table("dispatcher_jobs") as batch:
        batch.drop_column("trace_context")
