"""``python manage.py dispatcher_migrate [--database default]``: create or upgrade the outbox's
tables in a Django database, with the same Alembic migrations as ``dispatcher migrate`` (their
own version table, ``dispatcher_alembic_version``, so Django's and your Alembic's stay apart).

Plain ``manage.py migrate`` does the same (dispatcher.contrib.django.outbox_schema); this command
stays for scripts that call it, and to upgrade to a given ``--revision``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import sqlalchemy as sa
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import connections

from dispatcher.migrate import upgrade

# OPTIONS keys Django's PostgreSQL backend reads itself; every other one is a libpq parameter
# (sslmode, sslrootcert, connect_timeout, options, target_session_attrs, …) that it passes on.
_DJANGO_ONLY_OPTIONS = frozenset(
    {"isolation_level", "server_side_binding", "pool", "assume_role", "cursor_factory"}
)


def database_url(alias: str = "default") -> str:
    """The SQLAlchemy URL of Django's database ``alias`` (PostgreSQL or SQLite)."""
    return url_of(connections[alias].settings_dict, alias)


def url_of(config: Mapping[str, Any], alias: str = "default") -> str:
    """The SQLAlchemy URL of one ``DATABASES`` entry, its ``OPTIONS`` included: the outbox is
    reached as Django reaches the database (``sslmode=verify-full`` stays verify-full)."""
    engine = str(config["ENGINE"])
    options = dict(config.get("OPTIONS") or {})
    if engine.endswith("sqlite3"):
        name = str(config["NAME"])
        timeout = options.get("timeout")  # the only one of Django's SQLite OPTIONS for the driver
        if name.startswith("file:") and "cache=shared" in name:
            # Django's test database (file:memorydb_default?mode=memory&cache=shared): another
            # connection of this process reaches it while Django's keeps it alive.
            return f"sqlite:///{name}{'&' if '?' in name else '?'}uri=true"
        if name in ("", ":memory:") or name.startswith("file:"):
            raise CommandError(f"database {alias!r}: an in-memory SQLite database has no outbox")
        return f"sqlite:///{name}" + (f"?timeout={float(timeout):g}" if timeout is not None else "")
    if "postgresql" in engine or "postgis" in engine:
        url = sa.URL.create(
            "postgresql+psycopg",
            username=config.get("USER") or None,
            password=config.get("PASSWORD") or None,
            host=config.get("HOST") or None,
            port=int(config["PORT"]) if config.get("PORT") else None,
            database=config.get("NAME") or None,
            query={
                str(k): str(v)
                for k, v in sorted(options.items())
                if k not in _DJANGO_ONLY_OPTIONS and v is not None
            },
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
