"""``python manage.py dispatcher_migrate [--database default]``: create or upgrade the outbox's
tables in a Django database, with the same Alembic migrations as ``dispatcher migrate`` (their
own version table, ``dispatcher_alembic_version``, so Django's and your Alembic's stay apart)."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import connections

from dispatcher.migrate import upgrade


def database_url(alias: str = "default") -> str:
    """The SQLAlchemy URL of Django's database ``alias`` (PostgreSQL or SQLite)."""
    config = connections[alias].settings_dict
    engine = str(config["ENGINE"])
    if engine.endswith("sqlite3"):
        name = str(config["NAME"])
        if name in ("", ":memory:") or name.startswith("file:"):
            raise CommandError(f"database {alias!r}: an in-memory SQLite database has no outbox")
        return f"sqlite:///{name}"
    if "postgresql" in engine or "postgis" in engine:
        url = sa.URL.create(
            "postgresql+psycopg",
            username=config.get("USER") or None,
            password=config.get("PASSWORD") or None,
            host=config.get("HOST") or None,
            port=int(config["PORT"]) if config.get("PORT") else None,
            database=config.get("NAME") or None,
        )
        return url.render_as_string(hide_password=False)
    raise CommandError(f"database {alias!r}: the outbox works with PostgreSQL and SQLite")


class Command(BaseCommand):
    help = "Create or upgrade the ECDP dispatcher's outbox tables (Alembic) in a Django database."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--database", default="default", help="Django database alias.")
        parser.add_argument("--revision", default="head")

    def handle(self, *args: Any, **options: Any) -> None:
        upgrade(database_url(options["database"]), options["revision"])
        self.stdout.write(f"outbox schema at {options['revision']} on {options['database']!r}")
