"""``manage.py migrate`` brings the outbox to Alembic revision 0009:
"max attempts exceeded" as the flag dispatcher_jobs.exhausted.
Not atomic: Alembic uses a connection of its own."""

from django.db import migrations

from dispatcher.contrib.django.outbox_schema import alembic_step

OUTBOX_REVISION = "0009"


class Migration(migrations.Migration):
    atomic = False

    dependencies = (("ecdp_dispatcher", "0003_outbox_0008"),)

    operations = (alembic_step(OUTBOX_REVISION, previous="0008"),)
