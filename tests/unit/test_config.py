"""Settings read from an environment mapping: the values that need parsing, and the errors."""

from __future__ import annotations

import dataclasses

import pytest

from dispatcher.config import ConfigError, Secret, Settings, proxy_for


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
    assert Settings.from_env({}).max_in_flight == 128
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
