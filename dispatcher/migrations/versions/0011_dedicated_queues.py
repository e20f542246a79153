"""A queue's dedication (its own Celery queue, ``dispatcher.<name>``) is kept in its row, so that
every process (producers, the sweeper, workers) routes its signals alike without each being told
``DISPATCHER_DEDICATED_QUEUES``: see dispatcher.routing.

A column with a constant default: a catalogue change on PostgreSQL 11+, no table rewrite; the
queues table is small anyway.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-08
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("dispatcher_queues") as batch:
        batch.add_column(
            sa.Column("dedicated", sa.Boolean, nullable=False, server_default=sa.false())
        )


def downgrade() -> None:
    with op.batch_alter_table("dispatcher_queues") as batch:
        batch.drop_column("dedicated")
