"""Per-queue throttling state shared by all workers: a token bucket and a 429 cool-down.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-27
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

UTCDateTime = sa.DateTime(timezone=True)  # = dispatcher.db.UTCDateTime's column type


def upgrade() -> None:
    with op.batch_alter_table("dispatcher_queues") as batch:
        batch.add_column(sa.Column("tokens", sa.Float))
        batch.add_column(sa.Column("tokens_at", UTCDateTime))
        batch.add_column(sa.Column("cooldown_until", UTCDateTime))


def downgrade() -> None:
    with op.batch_alter_table("dispatcher_queues") as batch:
        batch.drop_column("cooldown_until")
        batch.drop_column("tokens_at")
        batch.drop_column("tokens")
