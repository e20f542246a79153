"""``manage.py migrate`` creates the outbox's tables: Alembic's revisions up to 0007, on the
database being migrated (the same tables ``dispatcher migrate`` creates; an outbox already there
is left as it is). Not atomic: Alembic uses a connection of its own, with its own transaction."""

from django.db import migrations

from dispatcher.contrib.django.outbox_schema import alembic_step

OUTBOX_REVISION = "0007"  # a later Alembic revision gets a Django migration of its own


class Migration(migrations.Migration):
    atomic = False

    dependencies = (("ecdp_dispatcher", "0001_initial"),)

    operations = (alembic_step(OUTBOX_REVISION, previous="base"),)
