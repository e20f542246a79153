"""The pause and circuit-open alerts: one structured ERROR line and one webhook notice, never the
key or the URL."""

from __future__ import annotations

import logging
from typing import Any

import httpx
import pytest

from dispatcher.alerts import circuit_notice, notify_circuit_open, notify_pause, pause_notice
from dispatcher.config import Secret, Settings

HOOK = "https://hooks.slack.example/services/T000/B000/very-secret-part"
DETAIL = "401 Unauthorized: The API key is missing or invalid."


class Poster:
    def __init__(self, answer: int = 200, error: Exception | None = None) -> None:
        self.calls: list[tuple[str, dict[str, Any], float]] = []
        self.answer = answer
        self.error = error

    def __call__(self, url: str, *, json: dict[str, Any], timeout: float) -> httpx.Response:
        self.calls.append((url, json, timeout))
        if self.error is not None:
            raise self.error
        return httpx.Response(self.answer, request=httpx.Request("POST", url))


def test_logs_one_structured_error_line(caplog: pytest.LogCaptureFixture) -> None:
    post = Poster()
    with caplog.at_level(logging.INFO, logger="dispatcher.alerts"):
        notify_pause("eu-shop", 401, DETAIL, webhook_url=None, post=post)
    assert post.calls == []
    [record] = caplog.records
    assert record.levelno == logging.ERROR
    assert record.getMessage() == (
        'queue paused queue=eu-shop status_code=401 detail="401 Unauthorized: The API key is '
        'missing or invalid."'
    )
    assert (record.queue, record.status_code, record.detail) == ("eu-shop", 401, DETAIL)  # type: ignore[attr-defined]


def test_posts_a_slack_compatible_notice_once(caplog: pytest.LogCaptureFixture) -> None:
    post = Poster()
    notify_pause("eu-shop", 403, DETAIL, webhook_url=Secret(HOOK), post=post)
    [(url, body, timeout)] = post.calls
    assert url == HOOK and timeout == 5.0
    assert body == pause_notice("eu-shop", 403, DETAIL)
    assert body["text"].startswith(":rotating_light: ecdp-dispatcher: queue `eu-shop` paused")
    assert "after HTTP 403: 401 Unauthorized: The API key is missing" in body["text"]
    assert "dispatcher resume eu-shop" in body["text"]
    assert {k: body[k] for k in ("queue", "status_code", "detail")} == {
        "queue": "eu-shop",
        "status_code": 403,
        "detail": DETAIL,
    }
    assert HOOK not in caplog.text


def test_no_status_code_and_long_details() -> None:
    notice = pause_notice("default", None, "no API key configured (set ECDP_API_KEY)\n")
    assert "paused before sending: no API key configured (set ECDP_API_KEY)." in notice["text"]
    assert notice["status_code"] is None
    assert len(pause_notice("q", 401, "x" * 5000)["detail"]) == 1000
    assert pause_notice("q", 401, None)["detail"] is None


@pytest.mark.parametrize(
    "post",
    [Poster(answer=500), Poster(error=httpx.ConnectError(f"cannot reach {HOOK}"))],
    ids=["http-500", "unreachable"],
)
def test_a_failing_webhook_never_raises_nor_leaks_its_url(
    post: Poster, caplog: pytest.LogCaptureFixture
) -> None:
    notify_pause("eu-shop", 401, DETAIL, webhook_url=HOOK, post=post)
    assert len(post.calls) == 1  # not retried: the log line is the fallback
    [error, warning] = caplog.records
    assert error.levelno == logging.ERROR and warning.levelno == logging.WARNING
    assert warning.getMessage().startswith("pause alert webhook failed for queue eu-shop: ")
    assert HOOK not in caplog.text and "very-secret" not in caplog.text


OUTAGE = "503 Service Unavailable: upstream down (17 of 20 recent answers were outages)"


def test_circuit_open_logs_one_structured_error_line(caplog: pytest.LogCaptureFixture) -> None:
    post = Poster()
    with caplog.at_level(logging.INFO, logger="dispatcher.alerts"):
        notify_circuit_open("eu-shop", OUTAGE, webhook_url=None, post=post)
    assert post.calls == []
    [record] = caplog.records
    assert record.levelno == logging.ERROR
    assert record.getMessage() == (
        'circuit open queue=eu-shop detail="503 Service Unavailable: upstream down (17 of 20 '
        'recent answers were outages)"'
    )
    fields = (record.queue, record.circuit, record.detail)  # type: ignore[attr-defined]
    assert fields == ("eu-shop", "open", OUTAGE)


def test_circuit_open_posts_a_slack_compatible_notice(caplog: pytest.LogCaptureFixture) -> None:
    post = Poster()
    notify_circuit_open("eu-shop", OUTAGE, webhook_url=Secret(HOOK), post=post)
    [(url, body, timeout)] = post.calls
    assert url == HOOK and timeout == 5.0
    assert body == circuit_notice("eu-shop", OUTAGE)
    assert body["text"].startswith(
        f":warning: ecdp-dispatcher: circuit of queue `eu-shop` opened: {OUTAGE}. "
    )
    assert "delivery resumes by itself" in body["text"]
    assert {k: body[k] for k in ("event", "queue", "circuit", "detail")} == {
        "event": "circuit_open",
        "queue": "eu-shop",
        "circuit": "open",
        "detail": OUTAGE,
    }
    assert HOOK not in caplog.text


def test_circuit_notice_without_or_with_a_long_reason() -> None:
    notice = circuit_notice("default", None)
    assert notice["text"].startswith(
        ":warning: ecdp-dispatcher: circuit of queue `default` opened. "
    )
    assert notice["detail"] is None
    assert len(circuit_notice("q", "x" * 5000)["detail"]) == 1000
    assert circuit_notice("q", "Timeout:\n  no answer ")["detail"] == "Timeout: no answer"


@pytest.mark.parametrize(
    "post",
    [Poster(answer=404), Poster(error=httpx.ConnectTimeout(f"timed out posting to {HOOK}"))],
    ids=["http-404", "timeout"],
)
def test_a_failing_circuit_webhook_never_raises_nor_leaks_its_url(
    post: Poster, caplog: pytest.LogCaptureFixture
) -> None:
    notify_circuit_open("eu-shop", OUTAGE, webhook_url=Secret(HOOK), post=post)
    assert len(post.calls) == 1
    [error, warning] = caplog.records
    assert error.levelno == logging.ERROR and warning.levelno == logging.WARNING
    assert warning.getMessage().startswith("circuit alert webhook failed for queue eu-shop: ")
    assert HOOK not in caplog.text and "very-secret" not in caplog.text


def test_settings_read_the_token_and_webhook_as_secrets() -> None:
    settings = Settings.from_env(
        {"DISPATCHER_ADMIN_TOKEN": "t" * 16, "DISPATCHER_ALERT_WEBHOOK_URL": HOOK}
    )
    assert settings.admin_token == Secret("t" * 16)
    assert settings.alert_webhook_url == Secret(HOOK)
    assert "t" * 16 not in repr(settings) and HOOK not in repr(settings)
    assert Settings.from_env({}).admin_token is None
    assert Settings.from_env({"DISPATCHER_ADMIN_TOKEN": " "}).admin_token is None
    with pytest.raises(ValueError, match="DISPATCHER_ADMIN_TOKEN: use at least 16 characters"):
        Settings.from_env({"DISPATCHER_ADMIN_TOKEN": "short"})


HOSTILE = "<!channel> revoked & <https://evil.example|click to fix> now <@U123>"


@pytest.mark.parametrize("notice", [pause_notice, circuit_notice], ids=["pause", "circuit"])
def test_slack_markup_in_the_apis_words_is_escaped_and_kept_raw_in_detail(notice: Any) -> None:
    body = notice("eu-shop", 401, HOSTILE) if notice is pause_notice else notice("eu-shop", HOSTILE)
    text = body["text"]
    # Slack's rules: & < > escaped; nothing the API wrote can become a mention or a link.
    assert "<!channel>" not in text and "<https://" not in text and "<@" not in text
    assert (
        "&lt;!channel&gt; revoked &amp; &lt;https://evil.example|click to fix&gt; now "
        "&lt;@U123&gt;" in text
    )
    assert body["detail"] == HOSTILE  # the raw words, for machines


def test_a_webhook_that_trickles_its_answer_does_not_hold_the_worker(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """httpx's timeout is per read: one byte every 0.2 s never trips it. The post has a total
    deadline instead (shortened here; the margins are for a loaded machine)."""
    import socket
    import threading
    import time

    from dispatcher import alerts

    monkeypatch.setattr(alerts, "WEBHOOK_DEADLINE_SECONDS", 1.0)
    server = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def trickle() -> None:
        conn, _ = server.accept()
        with conn:
            conn.recv(65536)
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n")
            while not stop.is_set():
                try:
                    conn.sendall(b"x")
                except OSError:
                    return
                time.sleep(0.2)

    thread = threading.Thread(target=trickle, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.getsockname()[1]}/hook"
    began = time.monotonic()
    try:
        notify_pause("eu-shop", 401, DETAIL, webhook_url=url)  # httpx.post: the real client
        took = time.monotonic() - began
    finally:
        stop.set()
        server.close()
        thread.join(10)
    assert took < 30, took  # it trickles for as long as it is read: without a deadline, forever
    assert "TimeoutError" in caplog.text and url not in caplog.text
