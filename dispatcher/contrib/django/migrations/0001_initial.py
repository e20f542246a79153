"""The outbox's models for the Django admin. ``managed = False``: Django never creates, alters or
drops these tables (``dispatcher_migrate`` does); this migration only records the models, so that
a project's ``makemigrations --check`` stays clean."""

from django.db import migrations, models


class Migration(migrations.Migration):
    initial = True

    dependencies = ()

    operations = (
        migrations.CreateModel(
            name="Attempt",
            fields=[
                ("id", models.BigAutoField(primary_key=True, serialize=False)),
                ("started_at", models.DateTimeField()),
                ("duration_ms", models.IntegerField()),
                ("status_code", models.IntegerField(null=True)),
                ("error", models.TextField(null=True)),
                ("response_body", models.TextField(null=True)),
                ("outcome", models.CharField(max_length=16)),
                ("counted", models.BooleanField()),
            ],
            options={
                "db_table": "dispatcher_attempts",
                "ordering": ("id",),
                "managed": False,
            },
        ),
        migrations.CreateModel(
            name="Job",
            fields=[
                ("id", models.BigAutoField(primary_key=True, serialize=False)),
                ("queue", models.CharField(max_length=64)),
                ("endpoint", models.CharField(max_length=64)),
                ("custom_event_id", models.IntegerField()),
                ("customer_email", models.CharField(max_length=320, null=True)),
                ("payload", models.TextField()),
                ("status", models.CharField(max_length=16)),
                ("attempts", models.IntegerField(help_text="counted attempts")),
                ("next_attempt_at", models.DateTimeField()),
                ("dedupe_key", models.CharField(max_length=255, null=True)),
                ("last_status_code", models.IntegerField(null=True)),
                ("last_error", models.TextField(null=True)),
                ("replays", models.IntegerField()),
                ("replayed_at", models.DateTimeField(null=True)),
                ("created_at", models.DateTimeField()),
                ("updated_at", models.DateTimeField()),
                ("delivered_at", models.DateTimeField(null=True)),
            ],
            options={
                "verbose_name": "outbox job",
                "db_table": "dispatcher_jobs",
                "ordering": ("-id",),
                "managed": False,
            },
        ),
    )
