"""Health probes: liveness by heartbeat files, readiness by asking the database and the broker.

- **Liveness** (``dispatcher check --worker`` / ``--sweeper``): each long-running process writes a
  small heartbeat file, the worker from its consumer loop (every Celery event heartbeat, 2 s) and
  the sweeper after every pass. The probe reads the file's time: no database, no broker, no
  Celery, only the standard library, so a container platform can run it every few seconds for
  next to nothing (``celery inspect ping`` costs seconds of CPU and a broker round trip). The
  files belong to one installation: by default their folder is named by a hash of the outbox
  database's URL (:func:`heartbeat_dir`), so two installations on one host (or a test beside
  production) never read each other's heartbeat.
- **Readiness** (``dispatcher check``, ``GET /readyz``): the outbox database answers, its schema
  is at the latest migration, and the broker answers; each with a short timeout. The answer names
  each component's state and nothing else.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

KINDS = ("worker", "sweeper")
MAX_AGE_SECONDS = 30.0  # a heartbeat older than this: the process is stuck or gone
TIMEOUT_SECONDS = 2.0  # readiness: per component


def heartbeat_dir(env: Mapping[str, str] | None = None) -> Path:
    """``DISPATCHER_HEARTBEAT_DIR``, or ``ecdp-dispatcher-<hash>`` in the system's temporary
    directory, the hash that of the outbox database's URL without its password
    (:func:`installation_id`). Read here from the environment directly (the one exception to
    :mod:`dispatcher.config`), so that the probe imports nothing it does not need."""
    env = os.environ if env is None else env
    explicit = env.get("DISPATCHER_HEARTBEAT_DIR")
    if explicit:
        return Path(explicit)
    name = f"ecdp-dispatcher-{installation_id(env.get('DISPATCHER_DATABASE_URL') or '')}"
    return Path(tempfile.gettempdir()) / name


def installation_id(database_url: str) -> str:
    """12 hex digits that name the installation of ``database_url``: the same for every
    spelling of one database (``postgres://``, ``postgresql+psycopg://``, another password, a
    relative SQLite path from the same folder), different for another database."""
    from dispatcher.config import DEFAULT_DATABASE_URL  # the standard library only, too

    url = (database_url or DEFAULT_DATABASE_URL).strip()
    scheme, sep, rest = url.partition("://")
    scheme = scheme.split("+", 1)[0].lower()
    scheme = "postgresql" if scheme == "postgres" else scheme
    if not sep:  # a libpq conninfo string: its words, but the password's
        words = sorted(w for w in url.split() if not w.lower().startswith(("password", "ssl")))
        canonical = "conninfo:" + " ".join(words)
    elif scheme == "sqlite":
        path = urlsplit(url).path.removeprefix("/")
        canonical = "sqlite:" + (os.path.abspath(path) if path and path != ":memory:" else path)
    else:
        parts = urlsplit(f"{scheme}://{rest}")
        host = parts.netloc.rpartition("@")[2]
        user = parts.netloc.rpartition("@")[0].partition(":")[0]
        query = urlencode(
            sorted(
                (k, v)
                for k, v in parse_qsl(parts.query, keep_blank_values=True)
                if k.lower() not in ("password", "sslpassword")
            )
        )
        canonical = f"{scheme}://{user}@{host.lower()}{parts.path}?{query}"
    return hashlib.sha256(canonical.encode()).hexdigest()[:12]


def beat(kind: str, directory: Path | None = None) -> None:
    """Record that ``kind``'s process is alive now (atomically: a probe never reads half)."""
    folder = directory or heartbeat_dir()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{kind}.heartbeat"
    tmp = folder / f".{kind}.{os.getpid()}.tmp"
    tmp.write_text(json.dumps({"pid": os.getpid(), "at": time.time()}))
    os.replace(tmp, path)


def check_heartbeat(
    kind: str,
    *,
    directory: Path | None = None,
    max_age: float = MAX_AGE_SECONDS,
    now: Callable[[], float] = time.time,
) -> tuple[bool, str]:
    """``(alive, one line saying why)`` for the process of ``kind`` on this machine."""
    path = (directory or heartbeat_dir()) / f"{kind}.heartbeat"
    try:
        at = float(json.loads(path.read_text())["at"])
    except FileNotFoundError:
        return False, f"{kind}: no heartbeat yet at {path}"
    except (OSError, ValueError, KeyError, TypeError):
        return False, f"{kind}: unreadable heartbeat at {path}"
    age = now() - at
    if age > max_age:
        return False, f"{kind}: last heartbeat {age:.0f}s ago (more than {max_age:.0f}s)"
    return True, f"{kind}: alive (heartbeat {max(age, 0.0):.1f}s ago)"


def readiness(database_url: str, broker_url: str) -> dict[str, str]:
    """Each component's state: ``ok``, or a few words on what is wrong (never a URL or data)."""
    return {**_database(database_url), "broker": _broker(broker_url)}


def is_ready(components: dict[str, str]) -> bool:
    return all(state == "ok" for state in components.values())


def _database(url: str) -> dict[str, str]:
    import sqlalchemy as sa

    from dispatcher.db import get_engine
    from dispatcher.migrate import HEAD, VERSION_TABLE

    try:
        with get_engine(url).connect() as conn:
            if conn.dialect.name == "postgresql":
                conn.exec_driver_sql(f"SET LOCAL statement_timeout = {int(TIMEOUT_SECONDS * 1000)}")
            try:
                version = conn.execute(sa.text(f"SELECT version_num FROM {VERSION_TABLE}")).scalar()
            except sa.exc.ProgrammingError:
                version = None
            except sa.exc.OperationalError as exc:
                if "no such table" not in str(exc):
                    raise
                version = None
            conn.rollback()
    except sa.exc.SQLAlchemyError:
        return {"database": "unreachable", "schema": "unknown"}
    if version is None:
        return {"database": "ok", "schema": "missing: run dispatcher migrate"}
    if version != HEAD:
        return {"database": "ok", "schema": f"at {version}, not {HEAD}: run dispatcher migrate"}
    return {"database": "ok", "schema": "ok"}


def _broker(url: str) -> str:
    if url.startswith("memory://"):
        return "ok"
    from kombu import connection

    from dispatcher.config import broker_timeouts

    connect: Any = connection.Connection  # kombu is untyped
    options = broker_timeouts(url, TIMEOUT_SECONDS)
    try:
        with connect(url, connect_timeout=TIMEOUT_SECONDS, transport_options=options) as conn:
            conn.ensure_connection(max_retries=1, timeout=TIMEOUT_SECONDS)
            if url.startswith(("redis://", "rediss://")):
                conn.default_channel.client.ping()
    except Exception:  # any transport's failure: it did not answer
        return "unreachable"
    return "ok"


USAGE = """usage: dispatcher check [--worker | --sweeper] [--max-age SECONDS]

Without a flag: readiness (the outbox database answers, its schema is at the latest migration,
the broker answers). --worker / --sweeper: liveness of that process on this machine, from its
heartbeat file. Exit 0 when healthy, 1 when not, 2 for a usage error."""


def check_command(argv: list[str]) -> int:
    """``dispatcher check``: one line on stdout, the exit code for the probe."""
    kind: str | None = None
    max_age = MAX_AGE_SECONDS
    args = list(argv)
    while args:
        arg = args.pop(0)
        if arg in ("--worker", "--sweeper") and kind is None:
            kind = arg[2:]
        elif arg == "--max-age" and args:
            try:
                max_age = float(args.pop(0))
            except ValueError:
                print(USAGE, file=sys.stderr)
                return 2
        elif arg.startswith("--max-age="):
            try:
                max_age = float(arg.partition("=")[2])
            except ValueError:
                print(USAGE, file=sys.stderr)
                return 2
        elif arg in ("-h", "--help"):
            print(USAGE)
            return 0
        else:
            print(USAGE, file=sys.stderr)
            return 2
    if kind is not None:
        alive, line = check_heartbeat(kind, max_age=max_age)
        print(line)
        return 0 if alive else 1
    from dispatcher.config import ConfigError, get_settings

    try:
        settings = get_settings()
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    components = readiness(settings.database_url, settings.broker_url)
    print(json.dumps({"ready": is_ready(components), **components}))
    return 0 if is_ready(components) else 1
