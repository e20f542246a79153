"""``python manage.py dispatcher_sweeper [--database ALIAS] [ARGS]``: ``dispatcher sweeper`` on
the outbox in Django's database (see the ``dispatcher`` management command)."""

from dispatcher.contrib.django.management.commands import dispatcher


class Command(dispatcher.Command):
    help = "Start the dispatcher's sweeper on the outbox in Django's database."
    command = ("sweeper",)
