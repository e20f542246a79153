"""Settings read from an environment mapping: the values that need parsing, and the errors."""

from __future__ import annotations

import dataclasses

import pytest

from dispatcher.breaker import BreakerPolicy
from dispatcher.config import (
    ConfigError,
    Secret,
    Settings,
    check_base_url,
    check_lease,
    proxy_for,
)


def reveal(base_url: str, env: dict[str, str]) -> str | None:
    proxy = proxy_for(base_url, env)
    return None if proxy is None else proxy.reveal()


@pytest.mark.parametrize(
    ("base_url", "env", "expected"),
    [
        ("https://api.ecdp.app", {}, None),
        ("https://api.ecdp.app", {"HTTPS_PROXY": "http://p:3128"}, "http://p:3128"),
        ("https://api.ecdp.app", {"https_proxy": "http://p:3128"}, "http://p:3128"),
        ("https://api.ecdp.app", {"HTTP_PROXY": "http://p:3128"}, None),  # other scheme
        ("http://api.ecdp.app", {"HTTP_PROXY": "http://p:3128"}, "http://p:3128"),
        ("https://api.ecdp.app", {"ALL_PROXY": "http://p"}, "http://p"),
        ("https://api.ecdp.app", {"HTTPS_PROXY": "http://a", "ALL_PROXY": "http://b"}, "http://a"),
        ("https://api.ecdp.app", {"HTTPS_PROXY": "http://p", "NO_PROXY": "*"}, None),
        ("https://api.ecdp.app", {"HTTPS_PROXY": "http://p", "no_proxy": "ecdp.app"}, None),
        ("https://api.ecdp.app", {"HTTPS_PROXY": "http://p", "NO_PROXY": ".ecdp.app"}, None),
        ("https://api.ecdp.app", {"HTTPS_PROXY": "http://p", "NO_PROXY": "*.ecdp.app"}, None),
        ("https://api.ecdp.app", {"HTTPS_PROXY": "http://p", "NO_PROXY": "x, api.ecdp.app"}, None),
        ("https://api.ecdp.app", {"HTTPS_PROXY": "http://p", "NO_PROXY": "p.app"}, "http://p"),
        (
            "https://api.ecdp.app:8443/v2",
            {"HTTPS_PROXY": "http://p", "NO_PROXY": "api.ecdp.app"},
            None,
        ),
        ("http://[::1]:8080", {"HTTP_PROXY": "http://p", "NO_PROXY": "::1"}, None),
        ("http://127.0.0.1:80", {"HTTP_PROXY": "http://p", "NO_PROXY": "127.0.0.1"}, None),
        ("http://10.1.2.3", {"HTTP_PROXY": "http://p", "NO_PROXY": "10.0.0.0/8"}, None),
        ("http://10.1.2.3", {"HTTP_PROXY": "http://p", "NO_PROXY": "2.3"}, "http://p"),
        ("http://[::1]:8080", {"HTTP_PROXY": "http://p", "NO_PROXY": "[::1]:8080"}, None),
        ("http://[::1]:8080", {"HTTP_PROXY": "http://p", "NO_PROXY": "[::1]:9"}, "http://p"),
        ("https://api.ecdp.app", {"HTTPS_PROXY": "http://p", "NO_PROXY": "api.ecdp.app:443"}, None),
        (
            "https://api.ecdp.app",
            {"HTTPS_PROXY": "http://p", "NO_PROXY": "api.ecdp.app:80"},
            "http://p",
        ),
        ("https://api.ecdp.app", {"HTTPS_PROXY": "proxy.corp:3128"}, "http://proxy.corp:3128"),
        ("https://api.ecdp.app", {"HTTPS_PROXY": "https://u:pw@p"}, "https://u:pw@p"),
    ],
)
def test_proxy_for(base_url: str, env: dict[str, str], expected: str | None) -> None:
    assert reveal(base_url, env) == expected


def test_a_proxy_url_never_shows_itself() -> None:
    settings = Settings.from_env({"HTTPS_PROXY": "http://user:hunter2@proxy:3128"})
    assert "hunter2" not in repr(settings)


def test_the_proxy_follows_the_base_url_it_is_asked_for() -> None:
    settings = Settings.from_env({"HTTPS_PROXY": "http://p:3128", "NO_PROXY": "127.0.0.1"})
    assert settings.proxy_url() == Secret("http://p:3128")
    local = dataclasses.replace(settings, base_url="http://127.0.0.1:8025")
    assert local.proxy_url() is None


@pytest.mark.parametrize(
    "value", ["socks5://u:hunter2@p:1080", "http://", "http://u:hunter2@p:port", "ftp://p"]
)
def test_a_proxy_we_cannot_use_is_refused_by_name(value: str) -> None:
    with pytest.raises(ConfigError, match="HTTPS_PROXY") as caught:
        Settings.from_env({"https_proxy": value})
    assert "hunter2" not in str(caught.value)


@pytest.mark.parametrize(
    "url",
    [
        "ftp://example.com",
        "api.ecdp.app",
        "https://",
        "  ",
        "https:///x",
        "http://:80",
        "http://h:port",
        "https://h/?q=1",
        "https://h/#f",
    ],
)
def test_a_base_url_we_cannot_send_to_is_refused_by_name(url: str) -> None:
    with pytest.raises(ConfigError, match="ECDP_BASE_URL"):
        Settings.from_env({"ECDP_BASE_URL": url})


def test_a_base_url_with_a_password_is_refused_without_showing_it() -> None:
    with pytest.raises(ConfigError, match="ECDP_BASE_URL") as caught:
        Settings.from_env({"ECDP_BASE_URL": "https://user:hunter2@api.ecdp.app"})
    assert "hunter2" not in str(caught.value)


def test_a_base_url_is_kept_without_its_trailing_slash() -> None:
    assert Settings.from_env({"ECDP_BASE_URL": " https://x.example/v2/ "}).base_url == (
        "https://x.example/v2"
    )


def test_the_old_name_of_max_in_flight_is_refused_with_the_new_one() -> None:
    with pytest.raises(ConfigError, match="DISPATCHER_MAX_IN_FLIGHT"):
        Settings.from_env({"DISPATCHER_WORKER_THREADS": "4"})


def test_max_in_flight() -> None:
    assert Settings.from_env({}).max_in_flight == 256
    assert Settings.from_env({"DISPATCHER_MAX_IN_FLIGHT": "16"}).max_in_flight == 16
    with pytest.raises(ConfigError, match="DISPATCHER_MAX_IN_FLIGHT"):
        Settings.from_env({"DISPATCHER_MAX_IN_FLIGHT": "0"})


def test_api_keys_lose_surrounding_whitespace_and_refuse_control_characters() -> None:
    settings = Settings.from_env({"ECDP_API_KEY": " k1\n", "ECDP_API_KEY_EU_SHOP": "k2"})
    assert settings.api_key("default") == Secret("k1")
    assert settings.api_key("eu-shop") == Secret("k2")
    for bad in ("se\ncret", "sécret", "se\x00cret"):
        with pytest.raises(ConfigError, match="ECDP_API_KEY_X") as caught:
            Settings.from_env({"ECDP_API_KEY_X": bad})
        assert bad not in str(caught.value)


# --------------------------------------------------------------------------- the circuit breaker


def test_the_breaker_defaults_without_any_variable() -> None:
    assert Settings.from_env({}).breaker == BreakerPolicy()
    assert Settings.from_env({}).breaker.enabled


def test_every_breaker_variable_is_read() -> None:
    breaker = Settings.from_env(
        {
            "DISPATCHER_BREAKER_ENABLED": "false",
            "DISPATCHER_BREAKER_MIN_REQUESTS": "7",
            "DISPATCHER_BREAKER_FAILURE_RATIO": "0.5",
            "DISPATCHER_BREAKER_WINDOW_SECONDS": "30",
            "DISPATCHER_BREAKER_PROBE_MIN_SECONDS": "0.25",
            "DISPATCHER_BREAKER_PROBE_MAX_SECONDS": "20",
            "DISPATCHER_BREAKER_POISON_SECONDS": "120",
        }
    ).breaker
    assert breaker.enabled is False
    assert breaker.min_requests == 7
    assert breaker.failure_ratio == 0.5
    assert breaker.window_seconds == 30.0
    assert breaker.probe_min_seconds == 0.25
    assert breaker.probe_max_seconds == 20.0
    assert breaker.poison_seconds == 120.0


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        *[("1", True), ("true", True), ("YES", True), (" on ", True), ("", True)],
        *[("0", False), ("False", False), ("no", False), ("off", False)],
    ],
)
def test_the_breaker_switch(raw: str, expected: bool) -> None:
    assert Settings.from_env({"DISPATCHER_BREAKER_ENABLED": raw}).breaker.enabled is expected


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("DISPATCHER_BREAKER_ENABLED", "maybe"),
        ("DISPATCHER_BREAKER_ENABLED", "2"),
        ("DISPATCHER_BREAKER_MIN_REQUESTS", "many"),
        ("DISPATCHER_BREAKER_MIN_REQUESTS", "0"),
        ("DISPATCHER_BREAKER_MIN_REQUESTS", "-3"),
        ("DISPATCHER_BREAKER_FAILURE_RATIO", "80%"),
        ("DISPATCHER_BREAKER_FAILURE_RATIO", "0"),
        ("DISPATCHER_BREAKER_FAILURE_RATIO", "1.5"),
        ("DISPATCHER_BREAKER_FAILURE_RATIO", "nan"),
        ("DISPATCHER_BREAKER_WINDOW_SECONDS", "1m"),
        ("DISPATCHER_BREAKER_WINDOW_SECONDS", "0"),
        ("DISPATCHER_BREAKER_WINDOW_SECONDS", "inf"),
        ("DISPATCHER_BREAKER_PROBE_MIN_SECONDS", "-1"),
        ("DISPATCHER_BREAKER_PROBE_MIN_SECONDS", "x"),
        ("DISPATCHER_BREAKER_PROBE_MAX_SECONDS", "0"),
        ("DISPATCHER_BREAKER_PROBE_MAX_SECONDS", "inf"),
        ("DISPATCHER_BREAKER_PROBE_MAX_SECONDS", "0.5"),  # below the minimum's default (1 s)
        ("DISPATCHER_BREAKER_POISON_SECONDS", "0"),
        ("DISPATCHER_BREAKER_POISON_SECONDS", "nan"),
    ],
)
def test_a_bad_breaker_value_is_refused_by_name(name: str, value: str) -> None:
    with pytest.raises(ConfigError, match=name):
        Settings.from_env({name: value})


def test_probe_bounds_out_of_order_are_refused_naming_both() -> None:
    with pytest.raises(ConfigError) as caught:
        Settings.from_env(
            {
                "DISPATCHER_BREAKER_PROBE_MIN_SECONDS": "10",
                "DISPATCHER_BREAKER_PROBE_MAX_SECONDS": "5",
            }
        )
    assert "DISPATCHER_BREAKER_PROBE_MAX_SECONDS" in str(caught.value)
    assert "DISPATCHER_BREAKER_PROBE_MIN_SECONDS" in str(caught.value)


def test_a_large_min_requests_is_accepted() -> None:
    # The window of answers is not a setting: it has to hold at least min_requests of them.
    breaker = Settings.from_env({"DISPATCHER_BREAKER_MIN_REQUESTS": "500"}).breaker
    assert breaker.min_requests == 500
    assert breaker.window_size >= 500


def test_the_shutdown_grace() -> None:
    assert Settings.from_env({}).shutdown_grace_seconds < 10  # below Docker's stop timeout
    assert Settings.from_env({"DISPATCHER_SHUTDOWN_GRACE_SECONDS": "3"}).shutdown_grace_seconds == 3
    with pytest.raises(ConfigError, match="DISPATCHER_SHUTDOWN_GRACE_SECONDS"):
        Settings.from_env({"DISPATCHER_SHUTDOWN_GRACE_SECONDS": "soon"})


# --------------------------------------------------------------------------- the lease


def test_the_default_lease_covers_the_default_timeout() -> None:
    settings = Settings.from_env({})
    check_lease(settings)
    assert settings.lease_seconds >= 2 * settings.http_timeout_seconds


def test_a_lease_shorter_than_twice_the_timeout_is_refused_naming_both() -> None:
    with pytest.raises(ConfigError) as caught:
        Settings.from_env(
            {"DISPATCHER_LEASE_SECONDS": "10", "DISPATCHER_HTTP_TIMEOUT_SECONDS": "6"}
        )
    message = str(caught.value)
    assert "DISPATCHER_LEASE_SECONDS" in message
    assert "DISPATCHER_HTTP_TIMEOUT_SECONDS" in message
    assert "12" in message  # what the lease would have to be


@pytest.mark.parametrize(("lease", "timeout"), [("20", "10"), ("21", "10"), ("2", "1")])
def test_a_lease_of_twice_the_timeout_or_more_is_accepted(lease: str, timeout: str) -> None:
    settings = Settings.from_env(
        {"DISPATCHER_LEASE_SECONDS": lease, "DISPATCHER_HTTP_TIMEOUT_SECONDS": timeout}
    )
    assert settings.lease_seconds == float(lease)


@pytest.mark.parametrize(("lease", "timeout"), [(19.99, 10.0), (1.0, 0.6), (120.0, 61.0)])
def test_check_lease_refuses_settings_built_in_code(lease: float, timeout: float) -> None:
    settings = dataclasses.replace(
        Settings.from_env({}), lease_seconds=lease, http_timeout_seconds=timeout
    )
    with pytest.raises(ConfigError, match=r"DISPATCHER_LEASE_SECONDS.*DISPATCHER_HTTP_TIMEOUT"):
        check_lease(settings)


def test_a_deliverer_refuses_a_lease_that_cannot_cover_a_request() -> None:
    from dispatcher.delivery import Deliverer

    settings = dataclasses.replace(
        Settings.from_env({}), lease_seconds=1.0, http_timeout_seconds=0.6
    )
    with pytest.raises(ConfigError, match="DISPATCHER_LEASE_SECONDS"):
        Deliverer(settings, engine=object())  # type: ignore[arg-type]  # refused before use


@pytest.mark.parametrize(
    ("name", "value", "says"),
    [
        ("DISPATCHER_RATE_LIMIT", "inf", "finite"),
        ("DISPATCHER_RATE_LIMIT_EU_SHOP", "Infinity", "finite"),
        ("DISPATCHER_CONCURRENCY", "0.5", "whole number"),  # silently 0: nothing ever sent
        ("DISPATCHER_CONCURRENCY_EU_SHOP", "2.5", "whole number"),
        ("DISPATCHER_CONCURRENCY", "inf", "finite"),
        ("DISPATCHER_HTTP_TIMEOUT_SECONDS", "inf", "finite"),
    ],
)
def test_settings_that_would_break_every_delivery_are_refused_by_name(
    name: str, value: str, says: str
) -> None:
    with pytest.raises(ConfigError, match=name) as caught:
        Settings.from_env({name: value})
    assert says in str(caught.value)


def test_whole_and_finite_limits_are_kept() -> None:
    settings = Settings.from_env(
        {"DISPATCHER_RATE_LIMIT": "12.5", "DISPATCHER_CONCURRENCY_EU_SHOP": "4.0"}
    )
    assert settings.limits("eu-shop").rate == 12.5
    assert settings.limits("eu-shop").concurrency == 4


@pytest.mark.parametrize(
    ("url", "warned"),
    [
        ("http://api.ecdp.example", True),
        ("http://10.0.0.7:8080/v1", True),
        ("HTTP://API.ECDP.EXAMPLE", True),
        ("https://api.ecdp.app", False),
        ("http://127.0.0.1:9000", False),
        ("http://[::1]:9000", False),
        ("http://localhost:9000", False),
    ],
)
def test_a_plain_http_base_url_is_warned_about_unless_loopback(url: str, warned: bool) -> None:
    from dispatcher.config import plain_http_warning

    warning = plain_http_warning(check_base_url(url))
    assert (warning is not None) == warned
    if warning:
        assert "ECDP_BASE_URL" in warning and "https://" in warning


def test_the_worker_warns_once_at_its_start(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import logging

    from dispatcher import tasks
    from dispatcher.config import get_settings

    for url, expected in (("http://api.ecdp.example", 1), ("https://api.ecdp.app", 0)):
        monkeypatch.setenv("ECDP_BASE_URL", url)
        get_settings.cache_clear()
        caplog.clear()
        try:
            with caplog.at_level(logging.WARNING, logger="dispatcher.tasks"):
                tasks._warn_at_start()
        finally:
            get_settings.cache_clear()
        assert len([r for r in caplog.records if "plain http://" in r.getMessage()]) == expected
