"""A job an operator cancels takes the finished status ``cancelled``; ``dispatcher forget`` keeps
an audit row per erasure in ``dispatcher_erasures`` (what kind of identifier, how many rows; never
the identifier itself).

The status CHECK is widened (every existing row passes it). On PostgreSQL the new CHECK is added
``NOT VALID`` and validated afterwards, so the table is not scanned under the exclusive lock the
ALTER takes (producers and workers wait only for the catalog change); a partitioned outbox
(``dispatcher partition``) gets it in one step, since its parent cannot hold a NOT VALID CHECK.
SQLite cannot alter a CHECK: batch mode copies the jobs table.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"  # the lead re-points this at "0006" when merging
branch_labels = None
depends_on = None

UTCDateTime = sa.DateTime(timezone=True)  # = dispatcher.db.UTCDateTime's column type

NAME = "ck_dispatcher_jobs_status"  # dispatcher.schema's name for it
# What 0001 actually called it (the naming convention was applied to a full name): replaced here.
OLD_NAME = "ck_dispatcher_jobs_ck_dispatcher_jobs_status"
OLD = "status IN ('pending', 'in_flight', 'retrying', 'delivered', 'dead')"
NEW = "status IN ('pending', 'in_flight', 'retrying', 'delivered', 'dead', 'cancelled')"


def _set_check(check: str, name: str) -> None:
    """Replace the jobs' status CHECK (under either name) with ``check`` called ``name``."""
    bind = op.get_bind()
    if bind.dialect.name != "postgresql":
        checks = sa.inspect(bind).get_check_constraints("dispatcher_jobs")
        found = {str(c["name"]) for c in checks if c["name"]}
        with op.batch_alter_table("dispatcher_jobs", recreate="always") as batch:
            for old in sorted(found & {NAME, OLD_NAME}):
                batch.drop_constraint(op.f(old), type_="check")
            batch.create_check_constraint(op.f(name), sa.text(check))
        return
    partitioned = bind.exec_driver_sql(
        "SELECT relkind = 'p' FROM pg_class WHERE oid = 'dispatcher_jobs'::regclass"
    ).scalar()
    for old in (NAME, OLD_NAME):
        op.execute(f"ALTER TABLE dispatcher_jobs DROP CONSTRAINT IF EXISTS {old}")
    if partitioned:
        op.execute(f"ALTER TABLE dispatcher_jobs ADD CONSTRAINT {name} CHECK ({check})")
        return
    op.execute(f"ALTER TABLE dispatcher_jobs ADD CONSTRAINT {name} CHECK ({check}) NOT VALID")
    op.execute(f"ALTER TABLE dispatcher_jobs VALIDATE CONSTRAINT {name}")


def upgrade() -> None:
    _set_check(NEW, NAME)
    op.create_table(
        "dispatcher_erasures",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("at", UTCDateTime, nullable=False),
        sa.Column("identifier_kind", sa.String(32), nullable=False),
        sa.Column("jobs", sa.Integer, nullable=False),
        sa.Column("cancelled", sa.Integer, nullable=False),
        sa.Column("in_flight", sa.Integer, nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("mentions", sa.Integer, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_dispatcher_erasures"),
    )


def downgrade() -> None:
    op.drop_table("dispatcher_erasures")
    # Cancelled jobs cannot stay under the old CHECK: they become dead (final, replayable), and
    # their counts move with them.
    op.execute(
        "UPDATE dispatcher_counts SET jobs = jobs + COALESCE((SELECT sum(c.jobs) FROM "
        "dispatcher_counts AS c WHERE c.queue = dispatcher_counts.queue AND "
        "c.status = 'cancelled'), 0) WHERE status = 'dead'"
    )
    op.execute(
        "INSERT INTO dispatcher_counts (queue, status, jobs) SELECT queue, 'dead', jobs "
        "FROM dispatcher_counts AS c WHERE status = 'cancelled' AND NOT EXISTS (SELECT 1 FROM "
        "dispatcher_counts AS d WHERE d.queue = c.queue AND d.status = 'dead')"
    )
    op.execute("DELETE FROM dispatcher_counts WHERE status = 'cancelled'")
    op.execute("UPDATE dispatcher_jobs SET status = 'dead' WHERE status = 'cancelled'")
    _set_check(OLD, OLD_NAME)
