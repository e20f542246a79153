"""Settings, read once from the environment (12-factor).

Every knob the dispatcher has is a field of :class:`Settings`; nothing else in the package reads
``os.environ``. API keys are held in :class:`Secret` so that a stray ``repr``/log line shows
``'***'`` rather than the key.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from functools import lru_cache
from typing import TypeVar
from urllib.parse import urlsplit

from dispatcher.breaker import BreakerPolicy
from dispatcher.policy import RetryPolicy
from dispatcher.scrub import remember
from dispatcher.times import parse_age

DEFAULT_DATABASE_URL = "sqlite:///dispatcher.db"
DEFAULT_BROKER_URL = "sqla+sqlite:///dispatcher-broker.db"
DEFAULT_BASE_URL = "https://api.ecdp.app"
DEFAULT_QUEUE = "default"

# Every connection to the broker has these bounds, so a broker that accepts connections and never
# answers (hung, SIGSTOPped, a dead NAT path) costs a bounded wait, never a hang. Producers publish
# with tighter ones of their own (dispatcher.signals), the readiness probe too (dispatcher.health).
BROKER_CONNECT_TIMEOUT = 2.0  # seconds to open a connection
BROKER_SOCKET_TIMEOUT = 5.0  # seconds one command may wait for its answer (worker, sweeper)

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


def broker_timeouts(url: str, seconds: float = BROKER_SOCKET_TIMEOUT) -> dict[str, object]:
    """kombu transport options that bound every wait on the broker at ``url`` to ``seconds``
    (connecting: at most :data:`BROKER_CONNECT_TIMEOUT`) for Redis; ``{}`` for the others (the
    embedded SQLAlchemy broker hands every option to ``create_engine()``; AMQP connects within
    Celery's ``broker_connection_timeout``).

    ``retry_on_timeout`` stays off: a command that timed out may have run (a publish would then
    go out twice), and the callers' own retries decide what happens next."""
    if url.startswith(("redis://", "rediss://", "unix://")):
        return {
            "socket_connect_timeout": min(seconds, BROKER_CONNECT_TIMEOUT),
            "socket_timeout": seconds,
            "retry_on_timeout": False,
        }
    return {}


# The URL an async application already has, and what the dispatcher's own (synchronous) engines
# use for the same database: the CLI, the worker and the sweeper accept either.
_SYNC_DRIVERS = {
    "postgres://": "postgresql+psycopg://",
    "postgresql://": "postgresql+psycopg://",
    "postgresql+asyncpg://": "postgresql+psycopg://",
    "postgresql+psycopg_async://": "postgresql+psycopg://",
    "sqlite+aiosqlite://": "sqlite://",
}


def normalize_database_url(url: str) -> str:
    """Make plain ``postgresql://`` and Heroku's ``postgres://`` use the psycopg 3 driver, and an
    async driver's URL (``postgresql+asyncpg://``, ``+psycopg_async``, ``sqlite+aiosqlite``) its
    synchronous twin: a FastAPI application's URL works for ``dispatcher migrate`` as it is.
    asyncpg's ``?ssl=`` becomes libpq's ``?sslmode=``."""
    for prefix, sync in _SYNC_DRIVERS.items():
        if url.startswith(prefix):
            rest = url[len(prefix) :]
            if prefix == "postgresql+asyncpg://":
                rest = re.sub(r"([?&])ssl=", r"\1sslmode=", rest)
            return sync + rest
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
    breaker: BreakerPolicy = field(default_factory=BreakerPolicy)
    lease_seconds: float = 120.0
    # On SIGTERM a worker waits this long for the answers in flight, then gives the rest back.
    # Celery's own warm shutdown adds about 2 s (billiard's pool children sleep 1 s before they
    # exit, the pool's timer thread up to 1 s more): 5 s ends a worker about 7 s after SIGTERM,
    # under `docker stop`'s 10 s on a loaded machine too (8 s took 10.1 s).
    shutdown_grace_seconds: float = 5.0
    batch_size: int = 100
    max_in_flight: int = 256  # requests in flight per worker process, at most
    # https_proxy, http_proxy, all_proxy and no_proxy as found (either case); see proxy_url().
    proxy_env: Mapping[str, str] = field(default_factory=dict, repr=False)
    # Both by queue_env_suffix(); the key "" holds the ceiling for every queue.
    rate_limits: Mapping[str, float] = field(default_factory=dict)
    concurrency_limits: Mapping[str, int] = field(default_factory=dict)
    sweep_interval_seconds: float = 1.0
    log_format: str = "text"  # or "json": one object per line (dispatcher.logs)
    # Outbox queues whose signals travel on a Celery queue of their own ("dispatcher.<queue>"),
    # so that `dispatcher worker --queues …` can serve only them (see tasks.celery_queue).
    dedicated_queues: frozenset[str] = frozenset()
    # The sweeper removes finished jobs older than this (None: never); see dispatcher.retention.
    retention: timedelta | None = timedelta(days=30)
    response_body_limit: int = 8192
    # The admin page / API / metrics token; without it `dispatcher web` only binds to loopback.
    admin_token: Secret | None = None
    # Tokens that may only enqueue (POST /api/events): what producers get instead of the admin's.
    ingest_tokens: tuple[Secret, ...] = ()
    # Slack-compatible incoming webhook told once per queue pause (its URL holds a secret too).
    alert_webhook_url: Secret | None = None
    # Reverse proxies (addresses or networks) whose X-Forwarded-For/-Proto the web process
    # believes; none by default, so a client cannot pick the address the login throttle counts.
    trusted_proxies: tuple[str, ...] = ()
    # The variables that were not set, so their embedded defaults are used (logs.notice_defaults).
    defaulted: frozenset[str] = field(default=frozenset(), compare=False)

    def api_key(self, queue: str) -> Secret | None:
        return self.api_keys.get(queue_env_suffix(queue))

    def configures(self, queue: str) -> bool:
        """Whether the settings name ``queue``: the default queue, a dedicated queue, or a
        per-queue API key or limit (``…_<QUEUE>``). Operator commands refuse other names that no
        job has used (a typo must not pause a phantom queue: see dispatcher.admin.names)."""
        suffix = queue_env_suffix(queue)
        return (
            queue == DEFAULT_QUEUE
            or queue in self.dedicated_queues
            or suffix in self.api_keys
            or suffix in self.rate_limits
            or suffix in self.concurrency_limits
        )

    def proxy_url(self) -> Secret | None:
        """The egress proxy for ``base_url``, if the environment names one for it."""
        return proxy_for(self.base_url, self.proxy_env)

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
        # First: whatever goes wrong below, no message may show these passwords.
        remember(env.get("DISPATCHER_DATABASE_URL"), env.get("DISPATCHER_BROKER_URL"))
        # Keyed by the variable's suffix, so queue "eu-shop" finds ECDP_API_KEY_EU_SHOP.
        keys = {
            name[len("ECDP_API_KEY_") :]: api_key(name, value)
            for name, value in env.items()
            if name.startswith("ECDP_API_KEY_") and value.strip()
        }
        if (env.get("ECDP_API_KEY") or "").strip():
            keys[queue_env_suffix(DEFAULT_QUEUE)] = api_key("ECDP_API_KEY", env["ECDP_API_KEY"])

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
            if value == float("inf"):
                raise ConfigError(f"{name}: expected a finite number (got {raw!r})")
            return value

        def flag(name: str, default: bool) -> bool:
            raw = (env.get(name) or "").strip().lower()
            if not raw:
                return default
            if raw in ("1", "true", "yes", "on"):
                return True
            if raw in ("0", "false", "no", "off"):
                return False
            raise ConfigError(f"{name}: expected true or false (got {raw!r})")

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
                if kind is int and not value.is_integer():  # 0.5 would become 0: no sending
                    raise ConfigError(f"{name}: expected a whole number (got {value:g})")
                if value > 0:
                    found[name[len(prefix) + 1 :]] = kind(value)
            return found

        if env.get("DISPATCHER_WORKER_THREADS"):
            raise ConfigError(
                "DISPATCHER_WORKER_THREADS: renamed DISPATCHER_MAX_IN_FLIGHT (requests in flight "
                "per worker process); set that instead"
            )
        base_url = check_base_url(env.get("ECDP_BASE_URL") or DEFAULT_BASE_URL)
        proxy_env = {
            name: value
            for name in PROXY_VARIABLES
            if (value := (env.get(name) or env.get(name.upper()) or "").strip())
        }
        proxy_for(base_url, proxy_env)  # a proxy URL we cannot use is refused now, by name
        retry = RetryPolicy(
            base_seconds=num("DISPATCHER_RETRY_BASE_SECONDS", 1.0),
            max_seconds=num("DISPATCHER_RETRY_MAX_SECONDS", 3600.0),
            max_attempts=int(num("DISPATCHER_MAX_ATTEMPTS", 12, minimum=1)),
            retry_after_cap_seconds=num("DISPATCHER_RETRY_AFTER_MAX_SECONDS", 3600.0),
        )
        min_requests = int(num("DISPATCHER_BREAKER_MIN_REQUESTS", 20, minimum=1))
        try:
            breaker = BreakerPolicy(
                enabled=flag("DISPATCHER_BREAKER_ENABLED", True),
                min_requests=min_requests,
                failure_ratio=num("DISPATCHER_BREAKER_FAILURE_RATIO", 0.8, minimum=0.01),
                window_seconds=num("DISPATCHER_BREAKER_WINDOW_SECONDS", 60.0, minimum=0.1),
                probe_min_seconds=num("DISPATCHER_BREAKER_PROBE_MIN_SECONDS", 1.0, minimum=0.01),
                probe_max_seconds=num("DISPATCHER_BREAKER_PROBE_MAX_SECONDS", 15.0, minimum=0.01),
                poison_seconds=num("DISPATCHER_BREAKER_POISON_SECONDS", 600.0, minimum=0.01),
                # not a setting: the window must hold at least min_requests answers
                window_size=max(BreakerPolicy().window_size, min_requests),
            )
        except ValueError as exc:
            message = str(exc)  # names the policy's fields: name the variables instead
            for name in (
                "min_requests",
                "failure_ratio",
                "window_seconds",
                "probe_min_seconds",
                "probe_max_seconds",
                "poison_seconds",
            ):
                message = message.replace(name, f"DISPATCHER_BREAKER_{name.upper()}")
            raise ConfigError(message) from None
        log_format = (env.get("DISPATCHER_LOG_FORMAT") or "text").strip().lower()
        if log_format not in LOG_FORMATS:
            raise ConfigError(f"DISPATCHER_LOG_FORMAT: text or json (got {log_format!r})")
        dedicated = frozenset(
            name.strip() for name in (env.get("DISPATCHER_DEDICATED_QUEUES") or "").split(",")
        ) - {""}
        for name in sorted(dedicated):
            if not QUEUE_NAME.fullmatch(name):
                raise ConfigError(
                    f"DISPATCHER_DEDICATED_QUEUES: {name!r} is not a queue name (lower-case "
                    "letters, digits, '-' and '_', at most 64, starting with a letter or digit)"
                )
        settings = cls(
            defaulted=frozenset(
                name
                for name in ("DISPATCHER_DATABASE_URL", "DISPATCHER_BROKER_URL")
                if not env.get(name)
            ),
            dedicated_queues=dedicated,
            log_format=log_format,
            retention=retention_from(env.get("DISPATCHER_RETENTION")),
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
            breaker=breaker,
            shutdown_grace_seconds=num("DISPATCHER_SHUTDOWN_GRACE_SECONDS", 5.0),
            lease_seconds=num("DISPATCHER_LEASE_SECONDS", 120.0, minimum=1.0),
            batch_size=int(num("DISPATCHER_BATCH_SIZE", 100, minimum=1)),
            max_in_flight=int(num("DISPATCHER_MAX_IN_FLIGHT", 256, minimum=1)),
            proxy_env=proxy_env,
            rate_limits=per_queue("DISPATCHER_RATE_LIMIT", float),
            concurrency_limits=per_queue("DISPATCHER_CONCURRENCY", int),
            sweep_interval_seconds=num("DISPATCHER_SWEEP_INTERVAL_SECONDS", 1.0, minimum=0.01),
            response_body_limit=int(num("DISPATCHER_RESPONSE_BODY_LIMIT", 8192, minimum=256)),
            admin_token=secret("DISPATCHER_ADMIN_TOKEN", min_length=16),
            ingest_tokens=ingest_tokens(env.get("DISPATCHER_INGEST_TOKENS")),
            alert_webhook_url=secret("DISPATCHER_ALERT_WEBHOOK_URL"),
            trusted_proxies=trusted_proxies(env.get("DISPATCHER_TRUSTED_PROXIES")),
        )
        check_lease(settings)
        return settings


LOG_FORMATS = ("text", "json")


def log_format_despite(error: ConfigError, env: Mapping[str, str] | None = None) -> str:
    """The log format to report ``error`` (another setting's) in: ``DISPATCHER_LOG_FORMAT`` if
    it is valid, so a JSON log pipeline gets a JSON line; else text."""
    env = os.environ if env is None else env
    wanted = (env.get("DISPATCHER_LOG_FORMAT") or "text").strip().lower()
    return wanted if wanted in LOG_FORMATS else "text"


def retention_from(raw: str | None) -> timedelta | None:
    """``DISPATCHER_RETENTION``: an age (``30d``, ``12h``, ``4w``), or ``off``; default 30 days."""
    text = (raw or "").strip()
    if not text:
        return timedelta(days=30)
    if text.lower() in ("off", "0", "none", "never"):
        return None
    try:
        age = parse_age(text)
    except ValueError as exc:
        raise ConfigError(f"DISPATCHER_RETENTION: {exc}, or off") from None
    if age < timedelta(hours=1):
        raise ConfigError(f"DISPATCHER_RETENTION: at least 1h, or off (got {text!r})")
    return age


def ingest_tokens(raw: str | None, name: str = "DISPATCHER_INGEST_TOKENS") -> tuple[Secret, ...]:
    """Comma-separated tokens of 16+ characters (several, so one producer's can be rotated)."""
    tokens = [t.strip() for t in (raw or "").split(",") if t.strip()]
    for n, token in enumerate(tokens, 1):
        if len(token) < 16:
            raise ConfigError(f"{name}: token {n} is too short: use at least 16 characters")
    return tuple(Secret(t) for t in tokens)


def trusted_proxies(raw: str | None, name: str = "DISPATCHER_TRUSTED_PROXIES") -> tuple[str, ...]:
    """Comma-separated addresses or networks (``10.0.0.5``, ``10.0.0.0/8``, ``::1``). ``*`` is
    refused: trusting every sender lets any client choose the address the throttle counts."""
    found: list[str] = []
    for entry in (raw or "").split(","):
        entry = entry.strip()
        if not entry:
            continue
        try:
            network = ipaddress.ip_network(entry, strict=False)
        except ValueError:
            raise ConfigError(
                f"{name}: {entry!r} is not an IP address or network (list your proxies' "
                "addresses, comma-separated)"
            ) from None
        found.append(str(network.network_address) if network.num_addresses == 1 else str(network))
    return tuple(found)


def check_lease(settings: Settings) -> None:
    """Refuse a lease that cannot cover the worst request: a worker renews its leases every third
    of their length, and must still hold them after a whole request during which it could not
    (a busy machine, a slow database write)."""
    need = 2 * settings.http_timeout_seconds
    if settings.lease_seconds < need:
        raise ConfigError(
            f"DISPATCHER_LEASE_SECONDS ({settings.lease_seconds:g}) must be at least twice "
            f"DISPATCHER_HTTP_TIMEOUT_SECONDS ({settings.http_timeout_seconds:g}), the longest a "
            f"request may take: raise the lease to {need:g} or lower the timeout"
        )


def api_key(name: str, raw: str) -> Secret:
    """An API key as a header can carry it: surrounding whitespace (a secrets file's newline)
    dropped, anything else that is not printable ASCII refused. Never shown in the error."""
    value = raw.strip()
    if not (value.isascii() and value.isprintable()):
        raise ConfigError(f"{name}: an API key must be printable ASCII (the value is not shown)")
    return Secret(value)


def plain_http_warning(base_url: str) -> str | None:
    """What to say once at a worker's start when ``ECDP_BASE_URL`` is ``http://`` to a host
    that is not this machine: the API key and every customer's data would cross the network in
    clear text. None for https, and for loopback (a local stub or sidecar)."""
    parts = urlsplit(base_url)
    if parts.scheme.lower() != "http":
        return None
    host = (parts.hostname or "").lower()
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = host == "localhost" or host.endswith(".localhost")
    if loopback:
        return None
    return (
        f"ECDP_BASE_URL is plain http:// to {host}: the API key and customer data are sent "
        "unencrypted; use https:// unless a TLS proxy on this machine's network does it"
    )


def check_base_url(raw: str) -> str:
    """``ECDP_BASE_URL`` as ``http(s)://host[:port][/path]``, without a trailing slash."""
    url = raw.strip().rstrip("/")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises for a port that is not a number
        if parts.hostname:
            parts.hostname.encode("idna")
    except (ValueError, UnicodeError):
        raise ConfigError(f"ECDP_BASE_URL: not a URL we can send to (got {url!r})") from None
    if parts.username is not None or parts.password is not None:
        raise ConfigError(
            "ECDP_BASE_URL: must not hold a user name or password (the key is sent as x-api-key)"
        )
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"ECDP_BASE_URL: expected http(s)://host[:port][/path] (got {url!r})")
    if parts.query or parts.fragment:
        raise ConfigError(f"ECDP_BASE_URL: must not have a query or fragment (got {url!r})")
    return url


PROXY_VARIABLES = ("https_proxy", "http_proxy", "all_proxy", "no_proxy")


def proxy_for(base_url: str, env: Mapping[str, str]) -> Secret | None:
    """The proxy that ``base_url`` should go through, read as curl and httpx read it:
    ``<scheme>_proxy`` or ``all_proxy`` (either case), unless ``no_proxy`` covers the host. A
    proxy without a scheme is taken as ``http://``. A Secret: proxy URLs often carry a password.
    """

    def get(name: str) -> str:
        return (env.get(name) or env.get(name.upper()) or "").strip()

    parts = urlsplit(base_url)
    scheme = parts.scheme.lower()
    port = parts.port or (443 if scheme == "https" else 80)
    if _no_proxy(parts.hostname or "", port, get("no_proxy")):
        return None
    name = f"{scheme}_proxy" if get(f"{scheme}_proxy") else "all_proxy"
    proxy = get(name)
    if not proxy:
        return None
    proxy = proxy if "://" in proxy else "http://" + proxy
    try:
        parts = urlsplit(proxy)
        usable = parts.scheme.lower() in ("http", "https") and bool(parts.hostname)
        parts.port  # noqa: B018 - raises for a port that is not a number
    except ValueError:
        usable = False
    if not usable:  # the value may hold a password: not shown
        raise ConfigError(f"{name.upper()}: expected an http:// or https:// proxy URL")
    return Secret(proxy)


def _no_proxy(host: str, port: int, no_proxy: str) -> bool:
    """Whether ``no_proxy`` covers ``host``: ``*``, a name or a parent domain (``.x.com`` or
    ``x.com``), an IP address or network (CIDR); each optionally with ``:port``."""
    host = host.lower()
    try:
        address: ipaddress.IPv4Address | ipaddress.IPv6Address | None = ipaddress.ip_address(host)
    except ValueError:
        address = None
    for entry in no_proxy.lower().split(","):
        entry = entry.strip()
        if entry == "*":
            return True
        want_port = ""
        if entry.startswith("["):  # [v6]:port
            entry, _, rest = entry[1:].partition("]")
            want_port = rest.removeprefix(":")
        elif entry.count(":") == 1:  # name:port or v4:port
            entry, _, want_port = entry.partition(":")
        if not entry or (want_port and want_port != str(port)):
            continue
        try:
            network = ipaddress.ip_network(entry, strict=False)
        except ValueError:
            network = None
        if network is not None:
            if address is not None and address in network:
                return True
            continue
        entry = entry.removeprefix("*").lstrip(".")  # "*.x.com", ".x.com" and "x.com" alike
        if address is None and (host == entry or host.endswith("." + entry)):
            return True
    return False


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read on first use (tests call ``get_settings.cache_clear()``)."""
    return Settings.from_env()


# --------------------------------------------------------------------------- the variables, as data

# The processes of an installation, as the documentation's checklist names them: the application
# that enqueues, `dispatcher worker`, `dispatcher sweeper`, `dispatcher web` (or `dispatcher
# metrics`) and Flower (`celery -A dispatcher.tasks flower`).
PROCESSES = ("app", "worker", "sweeper", "web", "flower")


@dataclass(frozen=True, slots=True)
class Variable:
    """One environment variable the dispatcher reads, described for people: the documentation's
    configuration reference and its per-process checklist are generated from :data:`VARIABLES`
    (a test checks it against what :meth:`Settings.from_env` reads and its defaults). Data only:
    nothing reads the environment through it."""

    name: str
    default: str | None  # as it would be written in the environment; None: unset by default
    meaning: str
    processes: frozenset[str]  # which of PROCESSES act on it
    read_in: str = "dispatcher.config"  # the module that reads it
    per_queue: bool = False  # also ``NAME_<QUEUE>`` (see queue_env_suffix)


_WORKER = frozenset({"worker"})
_SIGNALLERS = frozenset(PROCESSES)  # every process that sends or reads the signals

VARIABLES: tuple[Variable, ...] = (
    Variable(
        "DISPATCHER_DATABASE_URL",
        DEFAULT_DATABASE_URL,
        "The outbox database: PostgreSQL or SQLite (another database is refused). "
        "`postgresql://` and `postgres://` URLs use psycopg 3; an async application's URL "
        "(`+asyncpg`, `+psycopg_async`, `+aiosqlite`) works as it is.",
        frozenset({"app", "worker", "sweeper", "web"}),
    ),
    Variable(
        "DISPATCHER_BROKER_URL",
        DEFAULT_BROKER_URL,
        "The Celery broker that carries the 'queue X has work' signals; `redis://…` in "
        "production. Set it alike in every process.",
        _SIGNALLERS,
    ),
    Variable(
        "ECDP_API_KEY",
        None,
        "The `default` queue's API key, sent only in the `x-api-key` header.",
        _WORKER,
    ),
    Variable(
        "ECDP_API_KEY_<QUEUE>",
        None,
        "Further queues' keys (one per ECDP business unit): queue `eu-shop` reads "
        "`ECDP_API_KEY_EU_SHOP`. A queue without a key is paused, naming the variable to set.",
        _WORKER,
    ),
    Variable(
        "ECDP_BASE_URL",
        DEFAULT_BASE_URL,
        "The API's address; plain `http://` to anything but loopback gets a WARNING at each "
        "worker's start.",
        _WORKER,
    ),
    Variable(
        "HTTPS_PROXY",
        None,
        "An egress proxy for the API (also `HTTP_PROXY`, `ALL_PROXY`, and `NO_PROXY` for "
        "exceptions, in either case), read as curl and httpx read them.",
        _WORKER,
    ),
    Variable(
        "DISPATCHER_HTTP_TIMEOUT_SECONDS",
        "10",
        "Each request's deadline, from connecting to the last byte of the answer.",
        _WORKER,
    ),
    Variable(
        "DISPATCHER_HTTP_CONNECT_TIMEOUT_SECONDS",
        "5",
        "The deadline for connecting to the API.",
        _WORKER,
    ),
    Variable(
        "DISPATCHER_RETRY_BASE_SECONDS",
        "1",
        "Backoff: the first retry's delay, doubling per attempt (±20 % jitter).",
        _WORKER,
    ),
    Variable("DISPATCHER_RETRY_MAX_SECONDS", "3600", "Backoff: the longest delay.", _WORKER),
    Variable(
        "DISPATCHER_RETRY_AFTER_MAX_SECONDS",
        "3600",
        "The cap on an honoured `Retry-After`.",
        _WORKER,
    ),
    Variable("DISPATCHER_MAX_ATTEMPTS", "12", "Counted attempts before a job is `dead`.", _WORKER),
    Variable("DISPATCHER_BATCH_SIZE", "100", "Jobs per claim.", _WORKER),
    Variable(
        "DISPATCHER_MAX_IN_FLIGHT",
        "256",
        "The most requests in flight per worker process (a closed-loop window adapts below it).",
        _WORKER,
    ),
    Variable(
        "DISPATCHER_RATE_LIMIT",
        None,
        "Requests per second for a queue, shared by every worker on every machine (a token "
        "bucket in the queue's row); `_<QUEUE>` for one queue. Unset or 0: no ceiling.",
        _WORKER,
        per_queue=True,
    ),
    Variable(
        "DISPATCHER_CONCURRENCY",
        None,
        "Requests in flight for a queue, shared by every worker; `_<QUEUE>` for one queue. "
        "Unset or 0: no ceiling.",
        _WORKER,
        per_queue=True,
    ),
    Variable(
        "DISPATCHER_LEASE_SECONDS",
        "120",
        "A claimed job returns to `pending` if its worker is silent this long; at least twice "
        "`DISPATCHER_HTTP_TIMEOUT_SECONDS` (checked at start).",
        _WORKER,
    ),
    Variable(
        "DISPATCHER_SHUTDOWN_GRACE_SECONDS",
        "5",
        "On SIGTERM a worker stops claiming, waits this long for the answers in flight, records "
        "them and gives back the rest (uncounted). Keep it 3 s or more below the platform's kill "
        "timeout (Docker's is 10 s).",
        _WORKER,
    ),
    Variable(
        "DISPATCHER_BREAKER_ENABLED",
        "true",
        "The per-queue circuit breaker; `false` (`0`, `no`, `off`) lets each job retry on its "
        "own schedule through an outage.",
        _WORKER,
    ),
    Variable(
        "DISPATCHER_BREAKER_MIN_REQUESTS",
        "20",
        "Answers a worker process must have seen for a queue within the window before it may "
        "open the circuit.",
        _WORKER,
    ),
    Variable(
        "DISPATCHER_BREAKER_FAILURE_RATIO",
        "0.8",
        "The share of those answers that must be outages (5xx, 408, timeouts, connection "
        "errors; never another 4xx) to open it.",
        _WORKER,
    ),
    Variable(
        "DISPATCHER_BREAKER_WINDOW_SECONDS",
        "60",
        "How far back answers count (at most the last 100 per queue and worker process).",
        _WORKER,
    ),
    Variable(
        "DISPATCHER_BREAKER_POISON_SECONDS",
        "600",
        "How long kinds of event that failed while another kind got through are taken for bad "
        "payloads (their failures count and never open the circuit).",
        _WORKER,
    ),
    Variable(
        "DISPATCHER_BREAKER_PROBE_MIN_SECONDS",
        "1",
        "While open, the first probe after this long; the interval doubles per failed probe.",
        _WORKER,
    ),
    Variable(
        "DISPATCHER_BREAKER_PROBE_MAX_SECONDS",
        "15",
        "The longest interval between probes: delivery resumes within about this long of the "
        "API coming back.",
        _WORKER,
    ),
    Variable(
        "DISPATCHER_SWEEP_INTERVAL_SECONDS", "1", "The sweeper's period.", frozenset({"sweeper"})
    ),
    Variable(
        "DISPATCHER_DEDICATED_QUEUES",
        None,
        "Outbox queues (comma-separated) whose signals travel on a Celery queue of their own, "
        "`dispatcher.<queue>`, so that `dispatcher worker --queues eu-shop` serves only them. "
        "Optional: `worker --queues` records the dedication in the database, where every "
        "process reads it.",
        _SIGNALLERS,
    ),
    Variable(
        "DISPATCHER_LOG_FORMAT",
        "text",
        "`json`: one JSON object per line (`ts`, `level`, `logger`, `message`, and `queue`, "
        "`job_id`, `status_code`, … where they apply), Celery's records included.",
        frozenset({"worker", "sweeper", "web"}),
    ),
    Variable(
        "DISPATCHER_RETENTION",
        "30d",
        "The sweeper deletes finished jobs (and their attempts) last changed longer ago than "
        "this (`12h`, `7d`, `4w`, …; at least `1h`), or `off`.",
        frozenset({"sweeper"}),
    ),
    Variable(
        "DISPATCHER_RESPONSE_BODY_LIMIT",
        "8192",
        "Bytes of each response body kept (at least 256).",
        _WORKER,
    ),
    Variable(
        "DISPATCHER_ADMIN_TOKEN",
        None,
        "The token of the admin page, its API and `/metrics` (16+ characters); without it "
        "`dispatcher web` binds to loopback only.",
        frozenset({"web"}),
    ),
    Variable(
        "DISPATCHER_INGEST_TOKENS",
        None,
        "Comma-separated tokens (16+ characters each) that may only enqueue, through `POST "
        "/api/events`: give these to producers, never the admin token; every other route answers "
        "them 403.",
        frozenset({"web"}),
    ),
    Variable(
        "DISPATCHER_TRUSTED_PROXIES",
        None,
        "Reverse proxies (addresses or networks, comma-separated) whose `X-Forwarded-For` and "
        "`X-Forwarded-Proto` `dispatcher web` believes; none by default.",
        frozenset({"web"}),
    ),
    Variable(
        "DISPATCHER_ALERT_WEBHOOK_URL",
        None,
        "A Slack-compatible incoming webhook, told once per queue pause and once per circuit "
        "opening.",
        _WORKER,
    ),
    Variable(
        "DISPATCHER_HEARTBEAT_DIR",
        "<temp>/ecdp-dispatcher-<hash of the database URL>",
        "Where the worker and the sweeper write the heartbeat files that `dispatcher check "
        "--worker`/`--sweeper` read; one folder per installation.",
        frozenset({"worker", "sweeper"}),
        read_in="dispatcher.health",
    ),
    Variable(
        "DISPATCHER_WEB_HOST",
        "127.0.0.1",
        "The default of `dispatcher web --host`.",
        frozenset({"web"}),
        read_in="dispatcher.cli",
    ),
)
