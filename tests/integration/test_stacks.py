"""The guides' examples (docs/guides/*.md) for FastAPI (AsyncSession), Flask-SQLAlchemy and plain
psycopg, run as written (the Django one runs in ``test_django.py``): a request that commits leaves
its order and its job, which is delivered; one that fails leaves neither."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from dispatcher import ValidationError
from dispatcher.config import Settings
from dispatcher.db import get_engine
from dispatcher.delivery import Deliverer
from dispatcher.sandbox import Sandbox
from dispatcher.schema import jobs
from tests.docs_examples import example
from tests.support import settle

pytestmark = pytest.mark.usefixtures("env")

TOO_LONG = "x" * 400 + "@example.com"  # the event refuses it: the request fails


@pytest.fixture
def orders(db_url: str) -> Iterator[sa.Table]:
    """The application's own table (each example maps it its own way)."""
    meta = sa.MetaData()
    table = sa.Table(
        "orders",
        meta,
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("email", sa.Text, nullable=False),  # longer than an event allows
    )
    engine = get_engine(db_url)
    meta.drop_all(engine)
    meta.create_all(engine)
    yield table
    meta.drop_all(engine)


def emails(db_url: str, orders: sa.Table) -> tuple[list[str], list[str]]:
    """(orders' emails, jobs' emails)"""
    with get_engine(db_url).connect() as conn:
        placed = conn.execute(sa.select(orders.c.email).order_by(orders.c.id)).scalars().all()
        queued = [
            json.loads(p)["customerEmail"]
            for p in conn.execute(sa.select(jobs.c.payload).order_by(jobs.c.id)).scalars()
        ]
    return list(placed), queued


def delivered(settings: Settings, sandbox: Sandbox, db_url: str) -> list[str]:
    deliverer = Deliverer(dataclasses.replace(settings, base_url=sandbox.url))
    try:
        settle(deliverer, get_engine(db_url))
    finally:
        deliverer.close()
    return sorted(json.loads(b)["customerEmail"] for b in sandbox.bodies())


class Base(DeclarativeBase):
    pass


class Order(Base):  # what the FastAPI example's application maps
    __tablename__ = "orders"
    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str] = mapped_column(sa.String(320))


def test_fastapi_async_session(
    db_url: str, orders: sa.Table, settings: Settings, sandbox: Sandbox
) -> None:
    if db_url.startswith("sqlite"):
        url = db_url.replace("sqlite://", "sqlite+aiosqlite://", 1)
    else:
        url = db_url.replace("postgresql+psycopg://", "postgresql+asyncpg://", 1)
    app: dict[str, Any] = {"DATABASE_URL": url, "Order": Order}
    exec(example("fastapi"), app)

    async def requests() -> None:
        transport = httpx.ASGITransport(app=app["app"])
        async with httpx.AsyncClient(transport=transport, base_url="http://shop") as client:
            placed = await client.post("/orders", params={"email": "anna@example.com"})
            assert placed.json() == {"order": 1}
            with pytest.raises(ValidationError, match="customer_email"):
                await client.post("/orders", params={"email": TOO_LONG})
        await app["engine"].dispose()

    asyncio.run(requests())

    assert emails(db_url, orders) == (["anna@example.com"], ["anna@example.com"])
    assert delivered(settings, sandbox, db_url) == ["anna@example.com"]


def test_flask_sqlalchemy(
    db_url: str, orders: sa.Table, settings: Settings, sandbox: Sandbox
) -> None:
    app: dict[str, Any] = {"DATABASE_URL": db_url, "__name__": "shop"}
    exec(example("flask"), app)
    flask_app = app["app"]
    flask_app.testing = True

    client = flask_app.test_client()
    assert client.post("/orders", data={"email": "ben@example.com"}).json == {"order": 1}
    with pytest.raises(ValidationError, match="customer_email"):
        client.post("/orders", data={"email": TOO_LONG})
    with flask_app.app_context():
        app["db"].engine.dispose()

    assert emails(db_url, orders) == (["ben@example.com"], ["ben@example.com"])
    assert delivered(settings, sandbox, db_url) == ["ben@example.com"]


def test_plain_psycopg(db_url: str, orders: sa.Table, settings: Settings, sandbox: Sandbox) -> None:
    if not db_url.startswith("postgresql"):
        pytest.skip("psycopg is PostgreSQL only")
    dsn = sa.make_url(db_url).set(drivername="postgresql").render_as_string(hide_password=False)
    exec(example("psycopg"), {"DSN": dsn})

    assert emails(db_url, orders) == (["anna@example.com"], ["anna@example.com"])
    assert delivered(settings, sandbox, db_url) == ["anna@example.com"]
