""" "Max attempts exceeded" as a typed fact: ``dispatcher_jobs.exhausted``.

A job dead because its last counted attempt was the last one allowed was told apart by the head
of its ``last_error`` ("max attempts exceeded: 503 …"), which the circuit breaker matched with
LIKE and cut off with substr when it brought the job back. Now the flag says it and
``last_error`` holds the answer's own reason; the head is only added where a job is shown.

The column has a constant default: a catalogue change on PostgreSQL (a partitioned outbox's
months get it with their parent). The backfill moves the head from the text to the flag in one
UPDATE (one scan of the jobs table); downgrade puts it back.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-08
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

HEAD = "max attempts exceeded: "  # what dispatcher.policy wrote before this version


def upgrade() -> None:
    # Not a copy of the table on SQLite (ADD COLUMN): a copy would lose the count triggers of 0008.
    with op.batch_alter_table("dispatcher_jobs", recreate="never") as batch:
        batch.add_column(
            sa.Column("exhausted", sa.Boolean, nullable=False, server_default=sa.false())
        )
    op.execute(
        sa.text(
            "UPDATE dispatcher_jobs SET exhausted = :yes, last_error = substr(last_error, :cut) "
            "WHERE substr(last_error, 1, :length) = :head"
        ).bindparams(yes=True, cut=len(HEAD) + 1, length=len(HEAD), head=HEAD)
    )


def downgrade() -> None:
    op.execute(
        sa.text(
            "UPDATE dispatcher_jobs SET last_error = :head || COALESCE(last_error, '') "
            "WHERE exhausted = :yes"
        ).bindparams(yes=True, head=HEAD)
    )
    # Not a copy of the table on SQLite (its native DROP COLUMN, 3.35+): a copy would lose the
    # count triggers of 0008.
    with op.batch_alter_table("dispatcher_jobs", recreate="never") as batch:
        batch.drop_column("exhausted")
