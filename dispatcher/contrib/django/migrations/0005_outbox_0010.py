"""``manage.py migrate`` brings the outbox to Alembic revision 0010:
the SQL function dispatcher_enqueue (PostgreSQL).
Not atomic: Alembic uses a connection of its own."""

from django.db import migrations

from dispatcher.contrib.django.outbox_schema import alembic_step

OUTBOX_REVISION = "0010"


class Migration(migrations.Migration):
    atomic = False

    dependencies = (("ecdp_dispatcher", "0004_outbox_0009"),)

    operations = (alembic_step(OUTBOX_REVISION, previous="0009"),)
