"""outbox.pause/resume say whether they changed anything, on every database (a repeated pause must
not be announced again: the webhook and the log are told once per pause)."""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from click.testing import CliRunner

from dispatcher import admin, outbox
from dispatcher.cli import main
from dispatcher.config import get_settings
from dispatcher.db import utcnow


def test_pause_and_resume_report_a_change_once(engine: sa.Engine) -> None:
    with engine.begin() as conn:
        assert outbox.pause(conn, "eu-shop", "first", utcnow()) is True
        assert outbox.pause(conn, "eu-shop", "second", utcnow()) is False
        assert outbox.is_paused(conn, "eu-shop")
        assert outbox.resume(conn, "eu-shop", utcnow()) is True
        assert outbox.resume(conn, "eu-shop", utcnow()) is False
        assert outbox.pause(conn, "eu-shop", "third", utcnow()) is True


def test_a_pause_reason_has_a_length_limit(
    engine: sa.Engine, db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Shown on every page, in stats and in alerts: at most 500 characters, refused by name."""
    with pytest.raises(admin.AdminError) as caught:
        admin.pause_queue(engine, "eu-shop", "x" * (admin.REASON_MAX + 1))
    assert caught.value.field == "reason"
    monkeypatch.setenv("DISPATCHER_DATABASE_URL", db_url)
    get_settings.cache_clear()
    try:
        done = CliRunner().invoke(main, ["pause", "eu-shop", "--reason", "x" * 501])
    finally:
        get_settings.cache_clear()
    assert done.exit_code == 2 and "reason" in done.output and "500" in done.output
    with engine.connect() as conn:
        assert not outbox.is_paused(conn, "eu-shop")
