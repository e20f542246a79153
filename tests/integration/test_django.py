"""``dispatcher.contrib.django`` in a real Django project (run in a child process: Django's
settings are process-wide), on SQLite and PostgreSQL: plain ``manage.py migrate`` creates the
tables (Alembic's, the same as ``dispatcher migrate``; ``dispatcher_migrate`` still works);
inside ``transaction.atomic()`` a rolled-back block leaves neither the order nor the job
and signals nothing, a committed one signals once on commit; outside a block the job commits at
once; ``dedupe_key`` works; invalid input writes nothing. The jobs that committed are delivered.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import sqlalchemy as sa

from dispatcher.config import Settings
from dispatcher.db import dispose_engines, get_engine
from dispatcher.delivery import Deliverer
from dispatcher.sandbox import Sandbox
from dispatcher.schema import jobs
from tests.docs_examples import example
from tests.support import settle

pytest.importorskip("django")

ROOT = Path(__file__).resolve().parents[2]

SETTINGS = """
SECRET_KEY = "test"
USE_TZ = True
INSTALLED_APPS = ["django.contrib.contenttypes", "dispatcher.contrib.django", "shop"]
DATABASES = {{"default": {database}}}
DEFAULT_AUTO_FIELD = "django.db.models.AutoField"
"""

MODELS = """
from django.db import models


class Order(models.Model):
    email = models.TextField()
"""

# What a view would do, step by step; prints what it saw as JSON.
SCENARIO = """
import json

import django

django.setup()

from django.core.management import call_command
from django.db import transaction

from datetime import datetime, timezone

from dispatcher import CustomEvent, ValidationError
from dispatcher.contrib.django import enqueue, enqueue_many
from dispatcher.signals import signaller
from shop.models import Order

call_command("migrate", run_syncdb=True, verbosity=0)  # the outbox's tables and the project's

sent = []
signaller._send = sent.append  # record signals instead of publishing them
out = {}


def event(n):
    return CustomEvent(9, customer_id=n)


class Rollback(Exception):
    pass


try:
    with transaction.atomic():
        Order.objects.create(email="a@example.com")
        enqueue(event(1))
        enqueue_many([event(10), event(11)])
        raise Rollback
except Rollback:
    pass
signaller.flush()
out["after_rollback"] = {"orders": Order.objects.count(), "signals": list(sent)}

with transaction.atomic():
    order = Order.objects.create(email="b@example.com")
    ids = [enqueue(event(2), dedupe_key=f"order-{order.pk}")]
    ids += enqueue_many([event(3), event(4)], ordering_key="customer-b")
    signaller.flush()
    out["signals_before_commit"] = list(sent)
signaller.flush()
out["signals_after_commit"] = list(sent)
out["ids"] = ids

with transaction.atomic():  # a savepoint that rolls back takes only its own job along
    enqueue(event(7))
    try:
        with transaction.atomic():
            enqueue(event(8))
            raise Rollback
    except Rollback:
        pass

out["again"] = enqueue(event(2), dedupe_key=f"order-{order.pk}")  # no block: autocommit
out["autocommit"] = enqueue(event(5), queue="eu-shop")
later = datetime(2099, 6, 1, 12, 0, tzinfo=timezone.utc)
with transaction.atomic():
    out["scheduled"] = [enqueue(event(12), deliver_at=later, queue="later")]
    out["scheduled"] += enqueue_many([event(13)], deliver_at=later, queue="later")
errors = []
for bad in (
    lambda: enqueue(event(6), queue="Not A Queue"),
    lambda: enqueue_many([event(6), "no event"]),
    lambda: enqueue(event(6), deliver_at=datetime(2099, 6, 1)),
):
    try:
        with transaction.atomic():
            bad()
    except ValidationError as exc:
        errors.append(str(exc))
out["errors"] = errors
signaller.flush()
out["signals_end"] = sorted(set(sent))
print(json.dumps(out))
"""


# The Django guide's example (docs/guides/django.md), run as a view on a request, once with an
# event that is refused.
GUIDE_SCENARIO = """
import json
import pathlib

import django

django.setup()

from django.core.management import call_command
from django.test import RequestFactory

from dispatcher import ValidationError
from shop.models import Order

call_command("migrate", run_syncdb=True, verbosity=0)
view = {"Order": Order}
exec(pathlib.Path("example.py").read_text(), view)
placed = view["place_order"](RequestFactory().post("/orders", {"email": "dora@example.com"}))
try:
    view["place_order"](RequestFactory().post("/orders", {"email": "x" * 400 + "@example.com"}))
except ValidationError:
    refused = True
print(json.dumps({"placed": json.loads(placed.content), "refused": refused,
                  "orders": list(Order.objects.values_list("email", flat=True))}))
"""


ADMIN_SETTINGS = """
ALLOWED_HOSTS = ["testserver"]
INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "dispatcher.contrib.django",
    "shop",
]
MIDDLEWARE = [
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
]
TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ]
        },
    }
]
ROOT_URLCONF = "project_urls"
"""

URLS = """
from django.contrib import admin
from django.urls import path

urlpatterns = [path("admin/", admin.site.urls)]
"""

# The outbox in the Django admin: the list, a filter, a search, a job with its attempts, and the
# replay action; and the app's models need no migration of the project's.
ADMIN_SCENARIO = """
import json

import django

django.setup()

from django.contrib.auth.models import User
from django.core.management import call_command
from django.test import Client
from django.utils import timezone

from dispatcher import CustomEvent
from dispatcher.contrib.django import enqueue
from dispatcher.contrib.django.models import Attempt, Job
from dispatcher.signals import signaller

call_command("dispatcher_migrate", verbosity=0)
call_command("migrate", verbosity=0)
call_command("makemigrations", "--check", "--dry-run", verbosity=0)  # exits 1 if not clean

sent = []
signaller._send = sent.append
ok = enqueue(CustomEvent(9, customer_email="Eve@Example.com"))
dead = enqueue(CustomEvent(9, customer_id=2))
Job.objects.filter(pk=dead).update(status="dead", last_status_code=400, last_error="400: bad")
Job.objects.filter(pk=ok).update(last_error="429: slow down, anna.secret@example.com")
Attempt.objects.create(
    job_id=dead, started_at=timezone.now(), duration_ms=7, status_code=400, outcome="dead",
    counted=True, response_body='{"title": "a rejected body", "detail": "bob.secret@example.com"}',
)
User.objects.create_superuser("admin", "admin@example.com", "pw")
client = Client()
client.force_login(User.objects.get())
base = "/admin/ecdp_dispatcher/job/"
listing = client.get(base, {"status__exact": "dead"})
search = client.get(base, {"q": "EVE@example.com"})
page = client.get(f"{base}{dead}/change/")
everything = [client.get(base).content.decode(), search.content.decode(), page.content.decode(),
              client.get(f"{base}{ok}/change/").content.decode()]
replay = client.post(base, {"action": "replay_dead_jobs", "_selected_action": [ok, dead]})
signaller.flush()
job = Job.objects.get(pk=dead)
waiting = enqueue(CustomEvent(9, customer_id=3))
leased = enqueue(CustomEvent(9, customer_id=4))
Job.objects.filter(pk=leased).update(status="in_flight")
cancel = client.post(
    base, {"action": "cancel_waiting_jobs", "_selected_action": [waiting, leased]}, follow=True
)
print(json.dumps({
    "listing": [listing.status_code, f"{base}{dead}/" in listing.content.decode(),
                f"{base}{ok}/" in listing.content.decode()],
    "search": [search.status_code, f"{base}{ok}/" in search.content.decode(),
               f"{base}{dead}/" in search.content.decode()],
    "page": [page.status_code, "a rejected body" in page.content.decode()],
    "unmasked": [s for s in ("Eve@", "eve@", "anna.secret", "bob.secret")
                 if any(s in text for text in everything)],
    "masked": [s for s in ("e***@example.com", "E***@Example.com", "a***@example.com",
                           "b***@example.com")
               if any(s in text for text in everything)],
    "replay": replay.status_code,
    "after": [job.status, job.replays, Attempt.objects.filter(job_id=dead).count()],
    "cancel": [cancel.status_code, Job.objects.get(pk=waiting).status,
               Job.objects.get(pk=leased).status,
               "Cancelled 1 waiting job(s). 1 in flight could not be cancelled: a request may "
               "be on the wire." in cancel.content.decode()],
    "sent": sorted(set(sent)),
}))
"""


def run_project(
    tmp_path: Path,
    database: dict[str, object],
    env: dict[str, str],
    scenario: str = SCENARIO,
    extra_settings: str = "",
) -> dict:
    (tmp_path / "shop").mkdir()
    (tmp_path / "shop" / "__init__.py").write_text("")
    (tmp_path / "shop" / "models.py").write_text(MODELS)
    (tmp_path / "project_settings.py").write_text(
        SETTINGS.format(database=repr(database)) + extra_settings
    )
    (tmp_path / "project_urls.py").write_text(URLS)
    (tmp_path / "scenario.py").write_text(textwrap.dedent(scenario))
    (tmp_path / "example.py").write_text(example("django"))
    child_env = {k: v for k, v in os.environ.items() if not k.startswith("DISPATCHER_")}
    child_env.update(env)
    child_env.update(
        DJANGO_SETTINGS_MODULE="project_settings",
        PYTHONPATH=f"{tmp_path}{os.pathsep}{ROOT}",
        DISPATCHER_BROKER_URL="memory://",
    )
    done = subprocess.run(
        [sys.executable, str(tmp_path / "scenario.py")],
        cwd=tmp_path,
        env=child_env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.fixture
def django_database(db_url: str, tmp_path: Path) -> Iterator[tuple[dict[str, object], str]]:
    """Django's DATABASES entry for a fresh, empty database (``migrate`` creates the outbox
    there), and that outbox's SQLAlchemy URL."""
    if db_url.startswith("sqlite"):
        path = tmp_path / "django.db"
        yield {"ENGINE": "django.db.backends.sqlite3", "NAME": str(path)}, f"sqlite:///{path}"
        return
    url = sa.make_url(db_url)
    name = f"{url.database}_django"
    admin = sa.create_engine(url, isolation_level="AUTOCOMMIT", poolclass=sa.pool.NullPool)
    with admin.connect() as conn:
        conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    yield (
        {
            "ENGINE": "django.db.backends.postgresql",
            "NAME": name,
            "USER": url.username or "",
            "PASSWORD": url.password or "",
            "HOST": url.host or "",
            "PORT": str(url.port or ""),
        },
        url.set(database=name).render_as_string(hide_password=False),
    )
    dispose_engines()
    with admin.connect() as conn:
        conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    admin.dispose()


def deliver(settings: Settings, outbox_url: str, sandbox: Sandbox) -> None:
    deliverer = Deliverer(
        dataclasses.replace(settings, database_url=outbox_url, base_url=sandbox.url)
    )
    try:
        settle(deliverer, get_engine(outbox_url))
    finally:
        deliverer.close()


def test_django_enqueue_inside_atomic(
    django_database: tuple[dict[str, object], str],
    tmp_path: Path,
    sandbox: Sandbox,
    settings: Settings,
) -> None:
    database, outbox_url = django_database
    out = run_project(tmp_path, database, {})

    assert out["after_rollback"] == {"orders": 0, "signals": []}
    assert out["signals_before_commit"] == []
    assert out["signals_after_commit"] == ["default"]
    assert out["again"] == out["ids"][0]
    assert out["signals_end"] == ["default", "eu-shop"]
    assert len(out["errors"]) == 3
    assert "queue" in out["errors"][0] and "events[1]" in out["errors"][1]
    assert "deliver_at: must be timezone-aware" in out["errors"][2]

    engine = get_engine(outbox_url)
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(
                jobs.c.queue, jobs.c.payload, jobs.c.ordering_key, jobs.c.next_attempt_at
            ).order_by(jobs.c.id)
        ).all()
    got = [(r.queue, json.loads(r.payload)["customerId"]) for r in rows]
    assert got == [
        ("default", 2),
        ("default", 3),
        ("default", 4),
        ("default", 7),
        ("eu-shop", 5),
        ("later", 12),
        ("later", 13),
    ]
    assert [r.ordering_key for r in rows] == [None, "customer-b", "customer-b", *[None] * 4]
    scheduled = [r.next_attempt_at for r in rows[-2:]]
    later = datetime(2099, 6, 1, 12, 0, tzinfo=UTC)
    assert [t if t.tzinfo else t.replace(tzinfo=UTC) for t in scheduled] == [later, later]

    deliver(settings, outbox_url, sandbox)
    assert sorted(json.loads(b)["customerId"] for b in sandbox.bodies()) == [2, 3, 4, 7]


def test_readme_django_example(
    django_database: tuple[dict[str, object], str],
    tmp_path: Path,
    sandbox: Sandbox,
    settings: Settings,
) -> None:
    database, outbox_url = django_database
    out = run_project(tmp_path, database, {}, GUIDE_SCENARIO)
    assert out == {"placed": {"order": 1}, "refused": True, "orders": ["dora@example.com"]}
    engine = get_engine(outbox_url)
    with engine.connect() as conn:
        payloads = conn.execute(sa.select(jobs.c.payload)).scalars().all()
    assert [json.loads(p)["customerEmail"] for p in payloads] == ["dora@example.com"]
    deliver(settings, outbox_url, sandbox)
    assert [json.loads(b)["customerEmail"] for b in sandbox.bodies()] == ["dora@example.com"]


def test_django_admin_lists_shows_replays_and_cancels(
    django_database: tuple[dict[str, object], str], tmp_path: Path
) -> None:
    database, _ = django_database
    out = run_project(tmp_path, database, {}, ADMIN_SCENARIO, ADMIN_SETTINGS)
    assert out["listing"] == [200, True, False]  # the status filter
    assert out["search"] == [200, True, False]  # an email, whatever its case
    assert out["page"] == [200, True]  # the job with its attempts
    assert out["unmasked"] == []  # no customer email in the list, a search, a job or an attempt
    assert len(out["masked"]) == 4  # the list, the payload, an error, an answer
    assert out["replay"] == 302
    assert out["after"] == ["pending", 1, 1]  # replayed, its history kept
    # The one in flight is left alone, and the message says so.
    assert out["cancel"] == [200, "cancelled", "in_flight", True]
    assert out["sent"] == ["default"]


def test_dispatcher_migrate_refuses_an_in_memory_database(tmp_path: Path) -> None:
    (tmp_path / "mem_settings.py").write_text(
        "SECRET_KEY = 'x'\nINSTALLED_APPS = ['dispatcher.contrib.django']\n"
        "DATABASES = {'default': {'ENGINE': 'django.db.backends.sqlite3', 'NAME': ':memory:'}}\n"
    )
    env = dict(os.environ, DJANGO_SETTINGS_MODULE="mem_settings")
    env["PYTHONPATH"] = f"{tmp_path}{os.pathsep}{ROOT}"
    done = subprocess.run(
        [sys.executable, "-m", "django", "dispatcher_migrate"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode != 0
    assert "in-memory SQLite database has no outbox" in done.stderr


UNMIGRATED_SCENARIO = """
import json

import django

django.setup()

from django.db import transaction

from dispatcher import CustomEvent, OutboxSchemaMissing
from dispatcher.contrib.django import enqueue, enqueue_many

out = []
for call in (
    lambda: enqueue(CustomEvent(9, customer_id=1)),
    lambda: enqueue(CustomEvent(9, customer_id=1), dedupe_key="order-1"),
    lambda: enqueue_many([CustomEvent(9, customer_id=2)] * 2),
):
    for atomic in (False, True):
        try:
            if atomic:
                with transaction.atomic():
                    call()
            else:
                call()
        except OutboxSchemaMissing as exc:
            out.append(str(exc))
        except Exception as exc:
            out.append(type(exc).__name__)
print(json.dumps(out))
"""


def test_django_enqueue_before_migrate_raises_outbox_schema_missing(
    tmp_path: Path,
) -> None:
    database = {"ENGINE": "django.db.backends.sqlite3", "NAME": str(tmp_path / "fresh.db")}
    out = run_project(tmp_path, database, {}, scenario=UNMIGRATED_SCENARIO)
    assert len(out) == 6
    assert all(
        "the outbox tables do not exist in the Django database 'default'" in line
        and "python manage.py migrate" in line
        for line in out
    ), out


def test_the_outbox_url_keeps_the_databases_options() -> None:
    """sslmode and every other libpq OPTION reach the outbox's connection as Django's own;
    Django's own keys (isolation_level, …) do not."""
    from dispatcher.contrib.django.management.commands.dispatcher_migrate import url_of

    url = url_of(
        {
            "ENGINE": "django.db.backends.postgresql",
            "NAME": "shop",
            "USER": "app",
            "PASSWORD": "p w@d",
            "HOST": "db.example",
            "PORT": "5432",
            "OPTIONS": {
                "sslmode": "verify-full",
                "sslrootcert": "/etc/ssl/db-ca.pem",
                "connect_timeout": 5,
                "isolation_level": 2,
                "server_side_binding": True,
            },
        }
    )
    parsed = sa.make_url(url)
    assert parsed.password == "p w@d" and parsed.host == "db.example" and parsed.database == "shop"
    assert dict(parsed.query) == {
        "sslmode": "verify-full",
        "sslrootcert": "/etc/ssl/db-ca.pem",
        "connect_timeout": "5",
    }
    # SQLAlchemy hands them to psycopg as connection parameters.
    _, kwargs = sa.create_engine(url).dialect.create_connect_args(parsed)
    assert kwargs["sslmode"] == "verify-full" and kwargs["connect_timeout"] == "5"
    sqlite = url_of({"ENGINE": "django.db.backends.sqlite3", "NAME": "/x/db.sqlite3",
                     "OPTIONS": {"timeout": 20, "init_command": "PRAGMA x"}})  # fmt: skip
    assert sqlite == "sqlite:////x/db.sqlite3?timeout=20"


# --------------------------------------------------------------------------- issue 26

# Plain `migrate` creates the outbox (what Alembic creates, at its head), dispatcher_migrate
# after it changes nothing, migrating the app back removes it; Django's test database (in-memory
# SQLite shared with this process, or test_<name> on PostgreSQL) gets it too.
MIGRATE_SCENARIO = """
import json

import django

django.setup()

import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from django.core.management import call_command
from django.db import connection

from dispatcher import CustomEvent
from dispatcher.contrib.django import enqueue
from dispatcher.contrib.django.management.commands.dispatcher_migrate import database_url
from dispatcher.db import create_engine
from dispatcher.migrate import VERSION_TABLE
from dispatcher.schema import metadata


def ours(name, kind, parent):  # the outbox's tables only: the project's are Django's
    return kind != "table" or name.startswith("dispatcher_")
from dispatcher.signals import signaller

signaller._send = lambda queue: None


def outbox():
    engine = create_engine(database_url())
    try:
        with engine.connect() as conn:
            names = sorted(
                n for n in sa.inspect(conn).get_table_names() if n.startswith("dispatcher_")
            )
            if VERSION_TABLE not in names:
                return {"tables": names}
            context = MigrationContext.configure(
                conn, opts={"version_table": VERSION_TABLE, "include_name": ours}
            )
            return {"tables": names, "version": context.get_current_revision(),
                    "diff": [str(d) for d in compare_metadata(context, metadata)]}
    finally:
        engine.dispose()


out = {"before": outbox()}
call_command("migrate", run_syncdb=True, verbosity=0)
out["migrated"] = outbox()
out["job"] = enqueue(CustomEvent(9, customer_id=1))
from dispatcher.config import get_settings
from dispatcher.routing import outbox_url

# Without DISPATCHER_DATABASE_URL, this producer reads the dedicated queues from Django's database.
out["routing"] = outbox_url(get_settings()) == database_url()
call_command("dispatcher_migrate", verbosity=0)
out["again"] = outbox()
call_command("migrate", "ecdp_dispatcher", "0001", verbosity=0)
out["reversed"] = outbox()
call_command("migrate", verbosity=0)

from django.test.utils import setup_test_environment
from django.test.runner import DiscoverRunner

setup_test_environment()
runner = DiscoverRunner(verbosity=0)
old = runner.setup_databases()
out["test_database"] = [connection.settings_dict["NAME"], outbox().get("version"),
                        enqueue(CustomEvent(9, customer_id=2))]
runner.teardown_databases(old)
print(json.dumps(out))
"""


def test_plain_migrate_creates_the_outbox_as_alembic_does(
    django_database: tuple[dict[str, object], str], tmp_path: Path
) -> None:
    from dispatcher.migrate import HEAD

    database, _ = django_database
    out = run_project(tmp_path, database, {}, MIGRATE_SCENARIO)
    assert out["before"] == {"tables": []}
    migrated = out["migrated"]
    assert migrated["version"] == HEAD and migrated["diff"] == [], migrated
    assert {"dispatcher_jobs", "dispatcher_attempts", "dispatcher_queues"} <= set(
        migrated["tables"]
    )
    assert out["job"] == "1" and out["routing"] is True
    assert out["again"] == migrated  # dispatcher_migrate still works, and changes nothing
    # migrate ecdp_dispatcher 0001: no outbox (Alembic leaves its empty version table)
    assert out["reversed"]["tables"] == ["dispatcher_alembic_version"]
    assert out["reversed"]["version"] is None
    name, version, job = out["test_database"]
    assert name != database["NAME"] and version == HEAD and job == "1", out["test_database"]


def test_the_django_migrations_are_in_step_with_alembic() -> None:
    """The last Django migration upgrades to Alembic's head: a new Alembic revision needs its
    Django migration (copy the last one, name the revision)."""
    import importlib
    import pkgutil

    from alembic.script import ScriptDirectory

    from dispatcher.contrib.django import migrations as django_migrations
    from dispatcher.migrate import HEAD, alembic_config

    names = sorted(m.name for m in pkgutil.iter_modules(django_migrations.__path__))
    last = importlib.import_module(f"{django_migrations.__name__}.{names[-1]}")
    head = ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()
    assert last.OUTBOX_REVISION == HEAD == head


def test_manage_py_runs_dispatcher_commands_on_djangos_database(
    django_database: tuple[dict[str, object], str], tmp_path: Path
) -> None:
    """``manage.py dispatcher stats`` reads DATABASES (and DISPATCHER_*/ECDP_* settings): no URL
    copied into the environment."""
    database, _ = django_database
    run_project(tmp_path, database, {})  # writes the project, migrates, enqueues
    (tmp_path / "project_settings.py").write_text(
        (tmp_path / "project_settings.py").read_text() + "DISPATCHER_LOG_FORMAT = 'json'\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DISPATCHER_", "ECDP_"))}
    env.update(
        DJANGO_SETTINGS_MODULE="project_settings", PYTHONPATH=f"{tmp_path}{os.pathsep}{ROOT}"
    )
    done = subprocess.run(
        [sys.executable, "-m", "django", "dispatcher", "stats", "--json"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert "is not set" not in done.stderr  # the database came from DATABASES
    stats = json.loads(done.stdout)
    assert {"default", "eu-shop"} <= set(stats["queues"]), stats
    refused = subprocess.run(
        [sys.executable, "-m", "django", "dispatcher_worker", "--queues", "Not A Queue"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert refused.returncode != 0
    assert refused.stderr.strip().startswith("{")  # DISPATCHER_LOG_FORMAT from settings.py
