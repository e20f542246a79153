"""Settings read from an environment mapping: the values that need parsing, and the errors."""

from __future__ import annotations

import pytest

from dispatcher.config import ConfigError, Settings, proxy_for


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
        ("https://api.ecdp.app", {"ALL_PROXY": "socks5://p"}, "socks5://p"),
        ("https://api.ecdp.app", {"HTTPS_PROXY": "http://a", "ALL_PROXY": "http://b"}, "http://a"),
        ("https://api.ecdp.app", {"HTTPS_PROXY": "http://p", "NO_PROXY": "*"}, None),
        ("https://api.ecdp.app", {"HTTPS_PROXY": "http://p", "no_proxy": "ecdp.app"}, None),
        ("https://api.ecdp.app", {"HTTPS_PROXY": "http://p", "NO_PROXY": ".ecdp.app"}, None),
        ("https://api.ecdp.app", {"HTTPS_PROXY": "http://p", "NO_PROXY": "x, api.ecdp.app"}, None),
        ("https://api.ecdp.app", {"HTTPS_PROXY": "http://p", "NO_PROXY": "p.app"}, "http://p"),
        (
            "https://api.ecdp.app:8443/v2",
            {"HTTPS_PROXY": "http://p", "NO_PROXY": "api.ecdp.app"},
            None,
        ),
        ("http://[::1]:8080", {"HTTP_PROXY": "http://p", "NO_PROXY": "::1"}, None),
        ("http://u:pw@127.0.0.1:80", {"HTTP_PROXY": "http://p", "NO_PROXY": "127.0.0.1"}, None),
    ],
)
def test_proxy_for(base_url: str, env: dict[str, str], expected: str | None) -> None:
    assert reveal(base_url, env) == expected


def test_a_proxy_url_never_shows_itself() -> None:
    settings = Settings.from_env({"HTTPS_PROXY": "http://user:hunter2@proxy:3128"})
    assert "hunter2" not in repr(settings)


@pytest.mark.parametrize("url", ["ftp://example.com", "api.ecdp.app", "https://", "  "])
def test_a_base_url_that_is_not_http_is_refused_by_name(url: str) -> None:
    with pytest.raises(ConfigError, match="ECDP_BASE_URL"):
        Settings.from_env({"ECDP_BASE_URL": url})


def test_max_in_flight() -> None:
    assert Settings.from_env({}).max_in_flight == 128
    assert Settings.from_env({"DISPATCHER_MAX_IN_FLIGHT": "16"}).max_in_flight == 16
    with pytest.raises(ConfigError, match="DISPATCHER_MAX_IN_FLIGHT"):
        Settings.from_env({"DISPATCHER_MAX_IN_FLIGHT": "0"})
