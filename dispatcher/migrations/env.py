"""Alembic environment: the URL comes from the Alembic config or, failing that, our settings."""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection

from dispatcher.config import get_settings, normalize_database_url
from dispatcher.db import create_engine
from dispatcher.migrate import VERSION_TABLE
from dispatcher.schema import metadata

config = context.config
url = normalize_database_url(
    config.get_main_option("sqlalchemy.url") or get_settings().database_url
)


def run_offline() -> None:
    context.configure(
        url=url, target_metadata=metadata, literal_binds=True, version_table=VERSION_TABLE
    )
    with context.begin_transaction():
        context.run_migrations()


def run_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            _run(connection)
    finally:
        engine.dispose()


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=metadata,
        version_table=VERSION_TABLE,
        render_as_batch=True,  # SQLite cannot ALTER most things; batch mode copies the table
    )
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    run_offline()
else:
    run_online()
