"""``manage.py migrate`` brings the outbox to Alembic revision 0008:
every status counted by triggers on the jobs table.
Not atomic: Alembic uses a connection of its own."""

from django.db import migrations

from dispatcher.contrib.django.outbox_schema import alembic_step

OUTBOX_REVISION = "0008"


class Migration(migrations.Migration):
    atomic = False

    dependencies = (("ecdp_dispatcher", "0002_outbox_tables"),)

    operations = (alembic_step(OUTBOX_REVISION, previous="0007"),)
