"""``manage.py migrate`` brings the outbox to Alembic revision 0011:
a queue's dedication kept in its row.
Not atomic: Alembic uses a connection of its own."""

from django.db import migrations

from dispatcher.contrib.django.outbox_schema import alembic_step

OUTBOX_REVISION = "0011"


class Migration(migrations.Migration):
    atomic = False

    dependencies = (("ecdp_dispatcher", "0005_outbox_0010"),)

    operations = (alembic_step(OUTBOX_REVISION, previous="0010"),)
