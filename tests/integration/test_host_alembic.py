"""A host application that shares the outbox's database runs its own `alembic revision
--autogenerate`: with :func:`dispatcher.alembic.include_name` (or ``include_object``) in its
``env.py`` the migration is empty; without it, Alembic would offer to drop the outbox."""

from __future__ import annotations

import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.config import Config

from dispatcher.db import get_engine

ENV_PY = textwrap.dedent(
    """
    import sqlalchemy as sa
    from alembic import context

    from dispatcher.alembic import include_name, include_object

    metadata = sa.MetaData()
    sa.Table("orders", metadata, sa.Column("id", sa.Integer, primary_key=True),
             sa.Column("email", sa.String(320)))

    FILTER = {FILTER}
    engine = sa.create_engine(context.config.get_main_option("sqlalchemy.url"))
    with engine.connect() as connection:
        context.configure(connection=connection, target_metadata=metadata, **FILTER)
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()
    """
)


@pytest.fixture
def host_db(db_url: str) -> Iterator[str]:
    """The migrated outbox plus the host's own table, as its first migration left it."""
    meta = sa.MetaData()
    sa.Table(
        "orders",
        meta,
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("email", sa.String(320)),
    )
    engine = get_engine(db_url)
    meta.create_all(engine)
    yield db_url
    meta.drop_all(engine)
    with engine.begin() as conn:  # the host's own version table, left by its Alembic
        conn.exec_driver_sql("DROP TABLE IF EXISTS alembic_version")


def autogenerate(tmp_path: Path, url: str, hook: str) -> str:
    scripts = tmp_path / f"host_{hook or 'none'}"
    (scripts / "versions").mkdir(parents=True)
    filters = {
        "include_name": "{'include_name': include_name}",
        "include_object": "{'include_object': include_object}",
        "": "{}",
    }
    (scripts / "env.py").write_text(ENV_PY.replace("{FILTER}", filters[hook]))
    (scripts / "script.py.mako").write_text(
        Path(command.__file__).parent.joinpath("templates/generic/script.py.mako").read_text()
    )
    cfg = Config()
    cfg.set_main_option("script_location", str(scripts))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    command.revision(cfg, message="host", autogenerate=True)
    [migration] = (scripts / "versions").glob("*.py")
    return migration.read_text()


def upgrade_body(migration: str) -> str:
    body = migration.split("def upgrade()", 1)[1].split("def downgrade()", 1)[0]
    return "\n".join(
        line.strip()
        for line in body.splitlines()[1:]
        if line.strip() and not line.strip().startswith(("#", '"""'))
    )


@pytest.mark.parametrize("hook", ["include_name", "include_object"])
def test_host_autogenerate_leaves_the_outbox_alone(host_db: str, tmp_path: Path, hook: str) -> None:
    migration = autogenerate(tmp_path, host_db, hook)
    assert upgrade_body(migration) == "pass", migration
    assert "dispatcher_" not in migration


def test_without_the_filter_autogenerate_would_drop_the_outbox(
    host_db: str, tmp_path: Path
) -> None:
    migration = upgrade_body(autogenerate(tmp_path, host_db, ""))
    for table in ("dispatcher_jobs", "dispatcher_attempts", "dispatcher_queues"):
        assert f"op.drop_table('{table}')" in migration
