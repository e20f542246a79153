"""``python manage.py dispatcher COMMAND [ARGS]``: any ``dispatcher`` command (``worker``,
``sweeper``, ``stats``, ``web`` …) on the outbox in Django's database, without copying its URL.

The environment comes first, as everywhere; what it lacks comes from Django's settings:
``DISPATCHER_DATABASE_URL`` from ``DATABASES[--database]`` (default ``default``; its ``OPTIONS``
such as ``sslmode`` included), and any ``DISPATCHER_*`` or ``ECDP_*`` name set in ``settings.py``
(``ECDP_API_KEY = env("ECDP_API_KEY")``). The command then replaces this process (``exec``), so
the worker receives SIGTERM itself and Django stays out of its way.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from dispatcher.contrib.django.management.commands.dispatcher_migrate import database_url

PREFIXES = ("DISPATCHER_", "ECDP_")


def environment(alias: str, env: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment a ``dispatcher`` command gets from a Django project (see the module)."""
    from django.conf import settings

    env = dict(os.environ if env is None else env)
    for name in dir(settings):
        if name.startswith(PREFIXES) and name not in env:
            value = getattr(settings, name)
            if isinstance(value, str | int | float) and not isinstance(value, bool):
                env[name] = str(value)
            elif isinstance(value, bool):
                env[name] = "true" if value else "false"
    if not env.get("DISPATCHER_DATABASE_URL"):
        env["DISPATCHER_DATABASE_URL"] = database_url(alias)
    return env


def split_database(argv: Sequence[str]) -> tuple[str, list[str]]:
    """``--database ALIAS`` (or ``--database=ALIAS``) before the command; the rest is passed."""
    args, alias = list(argv), "default"
    if args and args[0].startswith("--database="):
        alias = args.pop(0).partition("=")[2]
    elif args[:1] == ["--database"]:
        if len(args) < 2:
            raise CommandError("--database: expected a database alias")
        alias = args[1]
        del args[:2]
    return alias, args


class Command(BaseCommand):
    help = (
        "Run a `dispatcher` command (worker, sweeper, stats, web, …) on the outbox in Django's "
        "database: [--database ALIAS] COMMAND [ARGS]."
    )
    command: tuple[str, ...] = ()  # dispatcher_worker and dispatcher_sweeper name theirs

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--database", default="default", help="Django database alias.")
        parser.add_argument("args", nargs="*", help="The dispatcher command and its options.")

    def run_from_argv(self, argv: list[str]) -> None:
        # Every option after ours belongs to the dispatcher command (and to Celery's worker).
        if argv[2:3] in (["-h"], ["--help"]):
            super().run_from_argv(argv)
            return
        alias, args = split_database(argv[2:])
        try:
            run([*self.command, *args], alias)
        except CommandError as exc:
            self.stderr.write(f"CommandError: {exc}")
            sys.exit(exc.returncode)

    def handle(self, *args: Any, **options: Any) -> None:
        run([*self.command, *args], options.get("database") or "default")


def run(args: Sequence[str], alias: str) -> None:
    """Replace this process with ``python -m dispatcher ARGS`` in Django's environment."""
    if not args:
        raise CommandError("name a dispatcher command: worker, sweeper, stats, web, …")
    env = environment(alias)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, "-m", "dispatcher", *args], env)
