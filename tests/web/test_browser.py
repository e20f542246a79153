"""The admin page in real headless Chromium (Debian's chromium + chromium-driver via Selenium):
log in, find a customer's event by email, open its attempts, pause a queue (and confirm) and
resume one, see a queue's charts and the overview's sparklines, replay a filtered set of dead
jobs. ``SCREENSHOTS_DIR=docs`` also rewrites the screenshots of docs/operations/admin.md."""

from __future__ import annotations

import math
import random
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
import sqlalchemy as sa

from dispatcher import admin
from dispatcher.db import utcnow
from dispatcher.outbox import recount
from dispatcher.schema import attempts, jobs

from .conftest import OUTAGE, TOKEN, Outbox, screenshot_dir, set_circuit

pytestmark = pytest.mark.slow


@pytest.fixture
def browser(chromium: Any, site: str) -> Iterator[Any]:
    """The session's Chromium, logged out, pointed at this test's site."""
    chromium.get(f"{site}/login")
    chromium.delete_all_cookies()
    yield chromium


def by_id(browser: Any, element_id: str) -> Any:
    from selenium.webdriver.common.by import By

    return browser.find_element(By.ID, element_id)


def click(browser: Any, element_id: str) -> None:
    """Click something that loads a page, and wait until the new page replaced the old one."""
    from selenium.common.exceptions import WebDriverException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.wait import WebDriverWait

    old = browser.find_element(By.TAG_NAME, "html")
    by_id(browser, element_id).click()

    def replaced(_: Any) -> bool:
        # Mid-navigation ChromeDriver may answer "stale element" or a raw inspector error
        # ("Node ... does not belong to the document"): either way the old page is gone.
        try:
            old.is_enabled()
        except WebDriverException:
            return browser.execute_script("return document.readyState") == "complete"
        return False

    WebDriverWait(browser, 20, ignored_exceptions=(WebDriverException,)).until(replaced)


def texts(browser: Any, css: str) -> list[str]:
    from selenium.webdriver.common.by import By

    return [e.text for e in browser.find_elements(By.CSS_SELECTOR, css)]


def log_in(browser: Any, site: str, path: str = "/") -> None:
    browser.get(site + path)
    assert browser.current_url.startswith(f"{site}/login?next=")
    by_id(browser, "token").send_keys("wrong-token-000000")
    click(browser, "login")
    assert "That is not the token." in by_id(browser, "error").text
    by_id(browser, "token").send_keys(TOKEN)
    click(browser, "login")
    assert browser.current_url == site + path


def test_find_a_customers_event_and_its_attempts(browser: Any, site: str, outbox: Outbox) -> None:
    log_in(browser, site, "/jobs")
    by_id(browser, "customer_email").send_keys("anna.smith@EXAMPLE.com")
    click(browser, "search")
    assert texts(browser, "a.job-link") == [outbox.anna]
    click(browser, f"job-{outbox.anna}")
    assert browser.current_url == f"{site}/jobs/{outbox.anna}"
    payload = by_id(browser, "payload").text
    assert payload == '{"customEventId":101,"customerEmail":"A***@Example.com"}'
    assert texts(browser, "tr.attempt td.status-code") == ["201"]
    click(browser, "reveal")
    assert "Anna.Smith@Example.com" in by_id(browser, "payload").text

    # A dead job: every attempt with its status code, duration, error and response body.
    browser.get(f"{site}/jobs/{outbox.outage[0]}")
    assert texts(browser, "tr.attempt td.status-code") == ["503", "503"]
    rows = texts(browser, "tr.attempt")
    assert "retry" in rows[0] and "dead" in rows[1] and " ms" in rows[0]
    assert "max attempts exceeded" in rows[1]

    browser.get(f"{site}/jobs/{outbox.flaky}")  # retried once, then delivered
    assert texts(browser, "tr.attempt td.status-code") == ["500", "201"]
    assert "m***@example.com" in by_id(browser, "payload").text
    _screenshot(browser, "admin-job.png")


def test_resume_a_paused_queue(
    browser: Any, site: str, outbox: Outbox, signalled: list[tuple[str, ...]], busy_day: None
) -> None:
    log_in(browser, site)
    row = by_id(browser, "queue-eu-shop").text
    assert "paused" in row and "401 Unauthorized: The API key is missing or invalid." in row
    _screenshot(browser, "admin-overview.png")
    click(browser, "resume-eu-shop")
    assert "Queue eu-shop resumed" in by_id(browser, "notice").text
    assert "running" in by_id(browser, "queue-eu-shop").text
    assert signalled == [("eu-shop",)]


def test_pause_a_queue_from_the_page(
    browser: Any, site: str, outbox: Outbox, engine: sa.Engine
) -> None:
    log_in(browser, site)
    assert "running" in by_id(browser, "queue-default").text
    by_id(browser, "reason-default").send_keys("key rotation")
    click(browser, "pause-default")
    # The confirmation step: nothing has changed yet.
    assert browser.find_element("tag name", "h1").text == "Pause queue default?"
    assert by_id(browser, "reason").get_attribute("value") == "key rotation"
    assert not admin.stats(engine, utcnow())["default"].paused
    click(browser, "cancel")
    assert "running" in by_id(browser, "queue-default").text

    by_id(browser, "reason-default").send_keys("key rotation")
    click(browser, "pause-default")
    reason = by_id(browser, "reason")
    reason.clear()
    reason.send_keys("rotating the key, back at 03:00")
    click(browser, "confirm")
    assert "Queue default paused" in by_id(browser, "notice").text
    row = by_id(browser, "queue-default").text
    assert "paused since" in row and "rotating the key, back at 03:00" in row
    assert by_id(browser, "resume-default").text == "Resume"
    state = admin.stats(engine, utcnow())["default"]
    assert state.paused and state.pause_reason == "rotating the key, back at 03:00"


@pytest.fixture
def busy_day(engine: sa.Engine) -> None:
    """A day of traffic on queue ``us-shop``, written as the workers would have: a daily wave,
    a few retries and dead letters, and a short outage six hours ago (for the charts)."""
    rng = random.Random(15)
    now = utcnow()
    job_rows: list[dict[str, Any]] = []
    attempt_rows: list[dict[str, Any]] = []
    for minute in range(24 * 60, 0, -1):
        at = now - timedelta(minutes=minute)
        rate = 9 + 5 * math.sin(2 * math.pi * (minute / 1440 + 0.2))
        outage = 355 <= minute <= 370
        for _ in range(max(1, round(rng.gauss(rate, 2)))):
            started = at + timedelta(seconds=rng.uniform(0, 59))
            job_id = 100_000 + len(job_rows)
            tries = ["retry"] * (rng.random() < 0.06 or outage) + [
                "dead" if rng.random() < 0.01 else "delivered"
            ]
            for n, outcome in enumerate(tries):
                slow = 4000 if outage and outcome == "retry" else 0
                attempt_rows.append(
                    {
                        "job_id": job_id,
                        "started_at": started + timedelta(seconds=n),
                        "duration_ms": int(slow or 60 * rng.lognormvariate(0.3, 0.45)),
                        "outcome": outcome,
                        "counted": True,
                    }
                )
            job_rows.append(
                {
                    "id": job_id,
                    "queue": "us-shop",
                    "endpoint": "/scenariocustomevents",
                    "custom_event_id": 301,
                    "payload": "{}",
                    "status": tries[-1],
                    "attempts": len(tries),
                    "next_attempt_at": started,
                    "created_at": started,
                    "updated_at": started,
                    "delivered_at": started if tries[-1] == "delivered" else None,
                }
            )
    attempt_rows.sort(key=lambda r: r["started_at"])
    with engine.begin() as conn:
        conn.execute(jobs.insert(), job_rows)
        conn.execute(attempts.insert(), attempt_rows)
        recount(conn)  # the per-queue counts of finished jobs, as record() keeps them


def test_the_queue_page_shows_its_charts(
    browser: Any, site: str, outbox: Outbox, busy_day: None
) -> None:
    from selenium.webdriver.common.by import By

    log_in(browser, site)
    sparklines = browser.find_elements(By.CSS_SELECTOR, "a.spark svg.sparkline")
    assert len(sparklines) == 3  # default, eu-shop, us-shop
    assert "3 delivered in the last hour" in by_id(browser, "spark-default").get_attribute(
        "innerHTML"
    )
    click(browser, "spark-us-shop")
    assert browser.current_url == f"{site}/queues/us-shop"
    assert browser.find_element("tag name", "h1").text == "Queue us-shop"
    for chart in ("counts-1h", "times-1h", "counts-24h", "times-24h"):
        svg = by_id(browser, chart)
        assert svg.get_attribute("role") == "img" and svg.size["width"] > 300, chart
        assert svg.find_element(By.TAG_NAME, "title").get_attribute("textContent")
    assert len(browser.find_elements(By.CSS_SELECTOR, "#counts-1h rect.bar-delivered")) >= 59
    assert len(browser.find_elements(By.CSS_SELECTOR, "#counts-24h rect.bar-delivered")) >= 95
    assert browser.find_elements(By.CSS_SELECTOR, "#times-24h .line-p99")
    _screenshot(browser, "admin-queue.png")

    # The numbers behind the bars, for those who cannot see them.
    browser.get(f"{site}/queues/default")
    browser.find_element(By.CSS_SELECTOR, "#numbers-1h summary").click()
    rows = texts(browser, "#numbers-1h tbody tr")
    assert len(rows) == 1 and " 3 4 5 0 " in f" {rows[0]} "


def test_an_open_circuit_shows_on_the_overview(
    browser: Any, site: str, outbox: Outbox, engine: sa.Engine
) -> None:
    now = utcnow()
    set_circuit(engine, "default", "open", since=now, retry_at=now + timedelta(seconds=15))
    log_in(browser, site)
    row = by_id(browser, "queue-default").text
    assert "circuit open since" in row and "next probe" in row and OUTAGE in row
    assert "running" not in row
    assert "dead-letters none of them" in by_id(browser, "circuit-help").text
    assert "circuit" not in by_id(browser, "queue-eu-shop").text  # paused, its circuit closed


def test_replay_a_filtered_set_of_dead_jobs(
    browser: Any, site: str, outbox: Outbox, engine: sa.Engine, signalled: list[tuple[str, ...]]
) -> None:
    log_in(browser, site, "/dead")
    assert by_id(browser, "replay").text == "Replay 5 jobs"
    by_id(browser, "event_id").send_keys("103")
    click(browser, "filter")
    assert sorted(texts(browser, "a.job-link")) == sorted(outbox.outage)
    click(browser, "replay")
    assert browser.find_element("tag name", "h1").text == "Replay 3 dead jobs?"

    # Meanwhile another job matching the filter dies: the confirmed count no longer holds.
    with engine.begin() as conn:
        conn.exec_driver_sql(
            "UPDATE dispatcher_jobs SET status = 'dead', custom_event_id = 103 WHERE id = "
            + str(int(outbox.anna))
        )
    click(browser, "confirm")
    assert "it now matches 4" in by_id(browser, "changed").text
    assert signalled == [] and len(admin.history(engine, admin.Filter(status="dead"))) == 6
    click(browser, "confirm")
    assert "Replayed 4 jobs" in by_id(browser, "notice").text
    assert signalled == [("default",)]
    dead = {j.id for j in admin.history(engine, admin.Filter(status="dead"))}
    assert dead == {outbox.ghost, outbox.other_dead}, "only what the filter showed was replayed"


def _screenshot(browser: Any, name: str) -> None:
    target = screenshot_dir()
    if target is None:
        return
    target.mkdir(parents=True, exist_ok=True)
    size = browser.get_window_size()
    height = browser.execute_script("return document.documentElement.scrollHeight")
    browser.set_window_size(size["width"], min(1400, height + (size["height"] - 700)))
    try:
        browser.save_screenshot(str(target / name))
    finally:
        browser.set_window_size(size["width"], size["height"])
