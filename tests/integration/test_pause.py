"""outbox.pause/resume say whether they changed anything, on every database (a repeated pause must
not be announced again: the webhook and the log are told once per pause)."""

from __future__ import annotations

import sqlalchemy as sa

from dispatcher import outbox
from dispatcher.db import utcnow


def test_pause_and_resume_report_a_change_once(engine: sa.Engine) -> None:
    with engine.begin() as conn:
        assert outbox.pause(conn, "eu-shop", "first", utcnow()) is True
        assert outbox.pause(conn, "eu-shop", "second", utcnow()) is False
        assert outbox.is_paused(conn, "eu-shop")
        assert outbox.resume(conn, "eu-shop", utcnow()) is True
        assert outbox.resume(conn, "eu-shop", utcnow()) is False
        assert outbox.pause(conn, "eu-shop", "third", utcnow()) is True
