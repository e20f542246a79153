"""Settings, read once from the environment (12-factor).

Every knob the dispatcher has is a field of :class:`Settings`; nothing else in the package reads
``os.environ``. API keys are held in :class:`Secret` so that a stray ``repr``/log line shows
``'***'`` rather than the key.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from typing import TypeVar

from dispatcher.policy import RetryPolicy

DEFAULT_DATABASE_URL = "sqlite:///dispatcher.db"
DEFAULT_BROKER_URL = "sqla+sqlite:///dispatcher-broker.db"
DEFAULT_BASE_URL = "https://api.ecdp.app"
DEFAULT_QUEUE = "default"

T = TypeVar("T", int, float)
QUEUE_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")


class ConfigError(ValueError):
    """A setting in the environment has a value we cannot use; the message names the variable."""


class Secret:
    """A string that never shows itself in ``repr``/``str``.

    :meth:`reveal` is called at the one place that sends it (the request header).
    """

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


def normalize_database_url(url: str) -> str:
    """Make plain ``postgresql://`` and Heroku's ``postgres://`` use the psycopg 3 driver."""
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


def queue_env_suffix(queue: str) -> str:
    """``ECDP_API_KEY_<QUEUE>``: queue ``eu-shop`` reads ``ECDP_API_KEY_EU_SHOP``."""
    return queue.upper().replace("-", "_")


@dataclass(frozen=True, slots=True)
class QueueLimits:
    """Requests per second and requests in flight for one queue across all workers (None: no
    ceiling)."""

    rate: float | None = None
    concurrency: int | None = None

    @property
    def any(self) -> bool:
        return self.rate is not None or self.concurrency is not None


@dataclass(frozen=True)
class Settings:
    database_url: str = DEFAULT_DATABASE_URL
    broker_url: str = DEFAULT_BROKER_URL
    base_url: str = DEFAULT_BASE_URL
    api_keys: Mapping[str, Secret] = field(default_factory=dict)  # by queue_env_suffix()
    http_timeout_seconds: float = 10.0
    http_connect_timeout_seconds: float = 5.0
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    lease_seconds: float = 120.0
    batch_size: int = 100
    max_in_flight: int = 128  # requests in flight per worker process, at most
    # From HTTPS_PROXY / HTTP_PROXY / ALL_PROXY and NO_PROXY, as httpx and curl read them.
    proxy_url: Secret | None = None
    # Both by queue_env_suffix(); the key "" holds the ceiling for every queue.
    rate_limits: Mapping[str, float] = field(default_factory=dict)
    concurrency_limits: Mapping[str, int] = field(default_factory=dict)
    sweep_interval_seconds: float = 1.0
    response_body_limit: int = 8192
    # The admin page / API / metrics token; without it `dispatcher web` only binds to loopback.
    admin_token: Secret | None = None
    # Slack-compatible incoming webhook told once per queue pause (its URL holds a secret too).
    alert_webhook_url: Secret | None = None

    def api_key(self, queue: str) -> Secret | None:
        return self.api_keys.get(queue_env_suffix(queue))

    def limits(self, queue: str) -> QueueLimits:
        """The queue's ceilings, shared by every worker: ``…_<QUEUE>`` wins over the plain one."""
        suffix = queue_env_suffix(queue)
        return QueueLimits(
            rate=self.rate_limits.get(suffix, self.rate_limits.get("")),
            concurrency=self.concurrency_limits.get(suffix, self.concurrency_limits.get("")),
        )

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        # Keyed by the variable's suffix, so queue "eu-shop" finds ECDP_API_KEY_EU_SHOP.
        keys = {
            name[len("ECDP_API_KEY_") :]: Secret(value)
            for name, value in env.items()
            if name.startswith("ECDP_API_KEY_") and value
        }
        if env.get("ECDP_API_KEY"):
            keys[queue_env_suffix(DEFAULT_QUEUE)] = Secret(env["ECDP_API_KEY"])

        def num(name: str, default: float, *, minimum: float = 0.0) -> float:
            raw = env.get(name)
            if raw is None or raw == "":
                return default
            try:
                value = float(raw)
            except ValueError:
                raise ConfigError(f"{name}: expected a number (got {raw!r})") from None
            if value < minimum or value != value:
                raise ConfigError(f"{name}: must be at least {minimum} (got {raw!r})")
            return value

        def secret(name: str, *, min_length: int = 1) -> Secret | None:
            value = (env.get(name) or "").strip()
            if value and len(value) < min_length:
                raise ConfigError(f"{name}: use at least {min_length} characters")
            return Secret(value) if value else None

        def per_queue(prefix: str, kind: type[T]) -> dict[str, T]:
            """``PREFIX`` (every queue) and ``PREFIX_<QUEUE>``; empty or 0 means no ceiling."""
            found: dict[str, T] = {}
            for name in env or {}:
                if name != prefix and not name.startswith(prefix + "_"):
                    continue
                value = num(name, 0.0)
                if value > 0:
                    found[name[len(prefix) + 1 :]] = kind(value)
            return found

        base_url = (env.get("ECDP_BASE_URL") or DEFAULT_BASE_URL).strip().rstrip("/")
        scheme, _, host = base_url.partition("://")
        if scheme.lower() not in ("http", "https") or not host:
            raise ConfigError(f"ECDP_BASE_URL: expected an http(s):// URL (got {base_url!r})")
        retry = RetryPolicy(
            base_seconds=num("DISPATCHER_RETRY_BASE_SECONDS", 1.0),
            max_seconds=num("DISPATCHER_RETRY_MAX_SECONDS", 3600.0),
            max_attempts=int(num("DISPATCHER_MAX_ATTEMPTS", 12, minimum=1)),
            retry_after_cap_seconds=num("DISPATCHER_RETRY_AFTER_MAX_SECONDS", 3600.0),
        )
        return cls(
            database_url=normalize_database_url(
                env.get("DISPATCHER_DATABASE_URL") or DEFAULT_DATABASE_URL
            ),
            broker_url=env.get("DISPATCHER_BROKER_URL") or DEFAULT_BROKER_URL,
            base_url=base_url,
            api_keys=keys,
            http_timeout_seconds=num("DISPATCHER_HTTP_TIMEOUT_SECONDS", 10.0, minimum=0.001),
            http_connect_timeout_seconds=num(
                "DISPATCHER_HTTP_CONNECT_TIMEOUT_SECONDS", 5.0, minimum=0.001
            ),
            retry=retry,
            lease_seconds=num("DISPATCHER_LEASE_SECONDS", 120.0, minimum=1.0),
            batch_size=int(num("DISPATCHER_BATCH_SIZE", 100, minimum=1)),
            max_in_flight=int(num("DISPATCHER_MAX_IN_FLIGHT", 128, minimum=1)),
            proxy_url=proxy_for(base_url, env),
            rate_limits=per_queue("DISPATCHER_RATE_LIMIT", float),
            concurrency_limits=per_queue("DISPATCHER_CONCURRENCY", int),
            sweep_interval_seconds=num("DISPATCHER_SWEEP_INTERVAL_SECONDS", 1.0, minimum=0.01),
            response_body_limit=int(num("DISPATCHER_RESPONSE_BODY_LIMIT", 8192, minimum=256)),
            admin_token=secret("DISPATCHER_ADMIN_TOKEN", min_length=16),
            alert_webhook_url=secret("DISPATCHER_ALERT_WEBHOOK_URL"),
        )


def proxy_for(base_url: str, env: Mapping[str, str]) -> Secret | None:
    """The proxy that ``base_url`` should go through, read as curl and httpx read it:
    ``<scheme>_proxy`` or ``all_proxy`` (either case), unless ``no_proxy`` lists the host, one
    of its parent domains, or ``*``. A Secret: proxy URLs often carry a password."""

    def get(name: str) -> str:
        return (env.get(name.lower()) or env.get(name.upper()) or "").strip()

    scheme, _, rest = base_url.partition("://")
    host = rest.split("/", 1)[0].rsplit("@", 1)[-1]
    host = host.rsplit(":", 1)[0] if not host.endswith("]") else host
    host = host.strip("[]").lower()
    for entry in get("no_proxy").split(","):
        entry = entry.strip().lower().lstrip(".")
        if entry == "*" or (entry and (host == entry or host.endswith("." + entry))):
            return None
    proxy = get(f"{scheme.lower()}_proxy") or get("all_proxy")
    return Secret(proxy) if proxy else None


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read on first use (tests call ``get_settings.cache_clear()``)."""
    return Settings.from_env()
