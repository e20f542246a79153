"""``python manage.py dispatcher_worker [--database ALIAS] [ARGS]``: ``dispatcher worker ARGS``
on the outbox in Django's database (see the ``dispatcher`` management command)."""

from dispatcher.contrib.django.management.commands import dispatcher


class Command(dispatcher.Command):
    help = "Start a dispatcher worker on the outbox in Django's database (ARGS go to the worker)."
    command = ("worker",)
