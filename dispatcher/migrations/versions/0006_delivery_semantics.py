"""Delivery semantics: ordering keys, whether an attempt's body was sent, the adaptive window,
and the circuit's memory of which kinds of event failed.

- ``dispatcher_jobs.ordering_key``: jobs of one queue that share it are sent one at a time, in
  commit order (``ix_dispatcher_jobs_ordering`` finds a key's live jobs for the claim).
- ``dispatcher_attempts.sent``: whether the request's body was completely written (NULL: an
  attempt made before this version). A timeout before that cannot have reached the API.
- ``dispatcher_queues``: ``send_window`` (the in-flight window a worker last reported),
  ``resent`` (re-sends after a timeout that came after the body was sent: each may have reached
  the API twice), ``circuit_kinds`` (the custom event ids whose failures opened the circuit) and
  ``poison_kinds``/``poison_until`` (kinds that failed while others succeeded: bad payloads,
  not an outage; see dispatcher.breaker).

Every new column is nullable or has a constant default: a catalogue change on PostgreSQL. The
index is built ``CONCURRENTLY`` on an unpartitioned PostgreSQL table (writes go on meanwhile).

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

UTCDateTime = sa.DateTime(timezone=True)  # = dispatcher.db.UTCDateTime's column type

# = dispatcher.schema.ORDERING_WHERE (a migration does not import today's code for its SQL)
ORDERING_WHERE = "ordering_key IS NOT NULL AND status IN ('pending', 'in_flight', 'retrying')"


def upgrade() -> None:
    with op.batch_alter_table("dispatcher_jobs") as batch:
        batch.add_column(sa.Column("ordering_key", sa.String(255)))
    with op.batch_alter_table("dispatcher_attempts") as batch:
        batch.add_column(sa.Column("sent", sa.Boolean))
    with op.batch_alter_table("dispatcher_queues") as batch:
        batch.add_column(sa.Column("send_window", sa.Integer))
        batch.add_column(sa.Column("resent", sa.BigInteger, nullable=False, server_default="0"))
        batch.add_column(sa.Column("circuit_kinds", sa.Text))
        batch.add_column(sa.Column("poison_kinds", sa.Text))
        batch.add_column(sa.Column("poison_until", UTCDateTime))
    bind = op.get_bind()
    columns = ["queue", "ordering_key", "id"]
    if bind.dialect.name == "postgresql":
        partitioned = bind.exec_driver_sql(
            "SELECT relkind = 'p' FROM pg_class WHERE oid = to_regclass('dispatcher_jobs')"
        ).scalar()
        if partitioned:  # an index on a partitioned parent cannot be built concurrently
            op.create_index(
                "ix_dispatcher_jobs_ordering",
                "dispatcher_jobs",
                columns,
                postgresql_where=sa.text(ORDERING_WHERE),
            )
            return
        with op.get_context().autocommit_block():
            op.execute("DROP INDEX IF EXISTS ix_dispatcher_jobs_ordering")  # a failed try
            op.create_index(
                "ix_dispatcher_jobs_ordering",
                "dispatcher_jobs",
                columns,
                postgresql_where=sa.text(ORDERING_WHERE),
                postgresql_concurrently=True,
            )
        return
    op.create_index(
        "ix_dispatcher_jobs_ordering",
        "dispatcher_jobs",
        columns,
        sqlite_where=sa.text(ORDERING_WHERE),
    )


def downgrade() -> None:
    op.drop_index("ix_dispatcher_jobs_ordering", table_name="dispatcher_jobs")
    with op.batch_alter_table("dispatcher_queues") as batch:
        batch.drop_column("poison_until")
        batch.drop_column("poison_kinds")
        batch.drop_column("circuit_kinds")
        batch.drop_column("resent")
        batch.drop_column("send_window")
    with op.batch_alter_table("dispatcher_attempts") as batch:
        batch.drop_column("sent")
    with op.batch_alter_table("dispatcher_jobs") as batch:
        batch.drop_column("ordering_key")
