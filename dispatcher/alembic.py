"""Keep a host application's Alembic autogenerate away from the outbox's tables.

The outbox has its own migrations (``dispatcher migrate``, version table
``dispatcher_alembic_version``). An application that shares the database and runs
``alembic revision --autogenerate`` would otherwise be offered a migration that drops the
outbox's tables (``dispatcher_jobs``, ``dispatcher_attempts``, ``dispatcher_queues``, …) and that
version table. In the application's ``env.py``::

    from dispatcher.alembic import include_name

    context.configure(..., target_metadata=Base.metadata, include_name=include_name)

(or ``include_object=include_object``; to combine with a filter of your own, call ours from it).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from dispatcher.migrate import VERSION_TABLE
from dispatcher.schema import metadata

# Every table of the outbox's model (so a table added later is covered without a change here),
# and the version table of its own migrations.
TABLES = frozenset({*metadata.tables, VERSION_TABLE})


def is_dispatcher_table(name: str | None) -> bool:
    return name in TABLES


def include_name(name: str | None, type_: str, parent_names: Mapping[str, Any]) -> bool:
    """Alembic's ``include_name`` hook: False for the outbox's tables and what belongs to them."""
    if type_ == "table":
        return not is_dispatcher_table(name)
    if type_ == "schema":
        return True
    return not is_dispatcher_table(parent_names.get("table_name"))


def include_object(
    obj: Any, name: str | None, type_: str, reflected: bool, compare_to: Any
) -> bool:
    """Alembic's ``include_object`` hook: False for the outbox's tables and their columns,
    indexes and constraints."""
    if type_ == "table":
        return not is_dispatcher_table(name)
    table = getattr(obj, "table", None)
    return not is_dispatcher_table(getattr(table, "name", None))
