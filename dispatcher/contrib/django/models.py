"""The outbox's tables as read-only Django models (``managed = False``: the tables belong to the
dispatcher's own migrations, ``manage.py dispatcher_migrate``), for the Django admin."""

from __future__ import annotations

from django.db import models


class Job(models.Model):
    id = models.BigAutoField(primary_key=True)
    queue = models.CharField(max_length=64)
    endpoint = models.CharField(max_length=64)
    custom_event_id = models.IntegerField()
    customer_email = models.CharField(max_length=320, null=True)
    payload = models.TextField()
    status = models.CharField(max_length=16)
    attempts = models.IntegerField(help_text="counted attempts")
    next_attempt_at = models.DateTimeField()
    dedupe_key = models.CharField(max_length=255, null=True)
    ordering_key = models.CharField(max_length=255, null=True)
    last_status_code = models.IntegerField(null=True)
    last_error = models.TextField(null=True)
    replays = models.IntegerField()
    replayed_at = models.DateTimeField(null=True)
    created_at = models.DateTimeField()
    updated_at = models.DateTimeField()
    delivered_at = models.DateTimeField(null=True)

    class Meta:
        managed = False
        db_table = "dispatcher_jobs"
        ordering = ("-id",)
        verbose_name = "outbox job"

    def __str__(self) -> str:
        return f"job {self.pk} ({self.queue}, {self.status})"


class Attempt(models.Model):
    id = models.BigAutoField(primary_key=True)
    job = models.ForeignKey(Job, models.DO_NOTHING, db_column="job_id", related_name="attempt_rows")
    started_at = models.DateTimeField()
    duration_ms = models.IntegerField()
    status_code = models.IntegerField(null=True)
    error = models.TextField(null=True)
    response_body = models.TextField(null=True)
    outcome = models.CharField(max_length=16)
    counted = models.BooleanField()
    sent = models.BooleanField(null=True, help_text="the request's body was completely written")

    class Meta:
        managed = False
        db_table = "dispatcher_attempts"
        ordering = ("id",)

    def __str__(self) -> str:
        return f"attempt {self.pk} of job {self.job_id}"
