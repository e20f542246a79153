"""Credentials redacted from any text in every form SQLAlchemy and libpq accept; terminal control
characters escaped for human output."""

from __future__ import annotations

import logging

import pytest
import sqlalchemy as sa

from dispatcher import logs
from dispatcher.problems import OutboxSchemaMissing, OutboxUnavailable
from dispatcher.scrub import redact_url, remember, scrub, terminal_safe

SECRET = "hunter2-S3cr3t"

FORMS = [
    # user-info, as SQLAlchemy and libpq URLs write it
    f"postgresql://app:{SECRET}@db.example:5432/shop",
    f"postgresql+psycopg://app:{SECRET}@db.example/shop?sslmode=require",
    f"redis://:{SECRET}@cache:6379/0",
    f"sqla+postgresql://app:{SECRET}@db/shop",
    # ?password= and &password= query parameters (libpq reads them; SQLAlchemy passes them on)
    f"postgresql://app@db.example/shop?password={SECRET}",
    f"postgresql://app@db.example/shop?sslmode=require&password={SECRET}&connect_timeout=3",
    f"postgresql://app@db.example/shop?sslpassword={SECRET}",
    f"postgresql:///shop?host=/run/postgresql&password={SECRET}",
    # libpq conninfo strings (key=value), plain and quoted
    f"host=db.example dbname=shop user=app password={SECRET}",
    f"host=db.example password='{SECRET} with blanks' dbname=shop",
    f"host=db PASSWORD = {SECRET} dbname=shop",
]


@pytest.mark.parametrize("text", FORMS)
def test_every_credential_form_is_redacted(text: str) -> None:
    shown = scrub(f"could not connect to {text}: connection refused")
    assert SECRET not in shown and "hunter2" not in shown
    assert "***" in shown
    assert "connection refused" in shown
    assert SECRET not in redact_url(text)


def test_a_passfile_path_and_other_parameters_stay() -> None:
    url = "postgresql://app@db/shop?passfile=/etc/app/pgpass&sslmode=require"
    assert scrub(url) == url
    assert scrub("postgresql://app@db/shop") == "postgresql://app@db/shop"


def test_redact_url_takes_sqlalchemy_urls() -> None:
    url = sa.make_url(f"postgresql+psycopg://app:{SECRET}@db/shop?password={SECRET}")
    assert SECRET not in redact_url(url)


@pytest.mark.parametrize("text", FORMS[:8])
def test_outbox_unavailable_never_shows_a_password(text: str) -> None:
    cause = sa.exc.OperationalError("connect", {}, Exception(f"cannot reach {text}"))
    message = str(OutboxUnavailable(text, cause))
    assert SECRET not in message and "***" in message
    assert SECRET not in str(OutboxSchemaMissing(text))


def test_log_lines_and_their_tracebacks_are_redacted(capsys: pytest.CaptureFixture[str]) -> None:
    for fmt in ("text", "json"):
        logs.configure(fmt=fmt)
        log = logging.getLogger("dispatcher.test")
        try:
            raise RuntimeError(f"failed on postgresql://app@db/shop?password={SECRET}")
        except RuntimeError:
            log.exception("database at %s is down", f"postgresql://app:{SECRET}@db/shop")
        err = capsys.readouterr().err
        assert "database at" in err
        assert "Traceback" in err
        assert SECRET not in err
    logging.getLogger().handlers.clear()


def test_terminal_control_characters_are_escaped() -> None:
    hostile = "ok\x1b]0;pwned\x07\x1b[2J\r\x9bX\u202eevil\nnext\tcol"
    one_line = terminal_safe(hostile)
    assert one_line == "ok\\x1b]0;pwned\\x07\\x1b[2J\\x0d\\x9bX\\u202eevil\\x0anext\\x09col"
    assert not any(ord(c) < 32 or 0x7F <= ord(c) <= 0x9F for c in one_line)
    multi = terminal_safe(hostile, newlines=True)
    assert "\n" in multi and "\t" in multi and "\x1b" not in multi and "\r" not in multi
    assert terminal_safe("plain text, é and 日本") == "plain text, é and 日本"


def test_text_log_lines_escape_control_characters(capsys: pytest.CaptureFixture[str]) -> None:
    logs.configure(fmt="text")
    logging.getLogger("dispatcher.test").warning("reason=%s", "\x1b]0;pwned\x07\rOK")
    err = capsys.readouterr().err
    assert "reason=\\x1b]0;pwned\\x07\\x0dOK" in err and "\x1b" not in err
    logging.getLogger().handlers.clear()


# Passwords a pattern cannot find the end of: a blank, an unescaped '@' (or both), a '/'.
PARSED = [
    "postgresql://app:se cret-Pw9@127.0.0.1:1/shop",
    "postgresql://app:p@ss-Pw9@127.0.0.1:1/shop",
    "postgresql://app:p@ss w/rd-Pw9@127.0.0.1:1/shop",
    "postgresql://app@127.0.0.1:1/shop?password=se%20cret-Pw9",
]


@pytest.mark.parametrize("url", PARSED)
def test_a_password_with_a_blank_or_an_at_is_never_printed_by_the_cli(
    url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from click.testing import CliRunner

    from dispatcher.cli import main
    from dispatcher.config import get_settings

    monkeypatch.setenv("DISPATCHER_DATABASE_URL", url)
    get_settings.cache_clear()
    try:
        for args in (["stats"], ["-v", "stats"], ["history"]):
            done = CliRunner().invoke(main, args)
            assert done.exit_code != 0
            shown = done.output
            assert "cannot reach the outbox database" in shown, shown
            assert not [p for p in ("cret", "ss-Pw9", "rd-Pw9", "Pw9") if p in shown], shown
            assert "127.0.0.1" in shown  # the host stays: it is what to check
    finally:
        get_settings.cache_clear()


@pytest.mark.parametrize("url", PARSED)
def test_redact_url_parses_the_url(url: str) -> None:
    shown = redact_url(url)
    assert "Pw9" not in shown and "***" in shown and "127.0.0.1:1/shop" in shown
    assert "Pw9" not in redact_url(sa.make_url(url))


@pytest.mark.parametrize(
    "conninfo",
    [
        "host=db user=app password='se cret@Pw9' dbname=shop",
        "host=db password=se@cret-Pw9 dbname=shop",
    ],
)
def test_a_conninfo_password_is_parsed_by_libpq_rules(conninfo: str) -> None:
    assert "Pw9" not in redact_url(conninfo)
    remember(conninfo)
    password = "se cret@Pw9" if "'" in conninfo else "se@cret-Pw9"
    assert "Pw9" not in scrub(f"driver said: authentication failed for {password!r}")
