"""The outbox's tables as Django migrations: ``manage.py migrate`` runs our Alembic revisions.

The tables are Alembic's (``dispatcher migrate`` creates the same ones, with its own version
table, ``dispatcher_alembic_version``). Each Alembic revision has a Django migration in
``dispatcher/contrib/django/migrations`` that upgrades to it, so a plain ``migrate`` creates and
upgrades the outbox and ``migrate ecdp_dispatcher <name>`` reverses it; a test holds the last one
at Alembic's head. Database routers are honoured (``RunPython`` asks ``allow_migrate``).
"""

from __future__ import annotations

from typing import Any

from django.db import migrations

from dispatcher.contrib.django.management.commands.dispatcher_migrate import database_url
from dispatcher.migrate import downgrade, upgrade


def alembic_step(revision: str, previous: str) -> migrations.RunPython:
    """A Django operation that upgrades the database being migrated to Alembic ``revision``,
    and reversed, downgrades it to ``previous`` (``"base"``: no outbox tables)."""

    def forward(apps: Any, schema_editor: Any) -> None:
        upgrade(database_url(schema_editor.connection.alias), revision)

    def backward(apps: Any, schema_editor: Any) -> None:
        downgrade(database_url(schema_editor.connection.alias), previous)

    return migrations.RunPython(forward, backward, elidable=False)
