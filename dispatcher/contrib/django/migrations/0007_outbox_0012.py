"""``manage.py migrate`` brings the outbox to Alembic revision 0012:
scheduled jobs (the status ``scheduled``).
Not atomic: Alembic uses a connection of its own."""

from django.db import migrations

from dispatcher.contrib.django.outbox_schema import alembic_step

OUTBOX_REVISION = "0012"


class Migration(migrations.Migration):
    atomic = False

    dependencies = (("ecdp_dispatcher", "0006_outbox_0011"),)

    operations = (alembic_step(OUTBOX_REVISION, previous="0011"),)
