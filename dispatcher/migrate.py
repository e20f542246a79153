"""Apply or revert the outbox schema with Alembic (the scripts ship inside the package)."""

from __future__ import annotations

from alembic import command
from alembic.config import Config

from dispatcher.config import normalize_database_url

VERSION_TABLE = "dispatcher_alembic_version"  # our own, so we never clash with the app's Alembic
# The latest revision, for readiness probes (a test holds it equal to the scripts' head).
HEAD = "0012"


def alembic_config(database_url: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", "dispatcher:migrations")
    # ConfigParser interpolation: a literal % in a password must be doubled.
    cfg.set_main_option("sqlalchemy.url", normalize_database_url(database_url).replace("%", "%%"))
    return cfg


def upgrade(database_url: str, revision: str = "head") -> None:
    command.upgrade(alembic_config(database_url), revision)


def downgrade(database_url: str, revision: str = "base") -> None:
    command.downgrade(alembic_config(database_url), revision)
