"""The outbox in the Django admin: jobs (filter by status and queue, find a customer's email),
each with its body and every attempt, an action that replays the selected dead or cancelled jobs
(the same replay as ``dispatcher replay``: one UPDATE, attempt history kept) and one that cancels
the selected waiting jobs (``dispatcher cancel``: jobs in flight are left alone).

Customer emails are shown masked (``a***@example.com``, :func:`dispatcher.masking.mask_emails`)
in the list, the job's page and its attempts, as on the dispatcher's own admin page: a search by
the exact address still finds the job."""

from __future__ import annotations

from typing import Any

from django.contrib import admin, messages

from dispatcher.contrib.django.models import Attempt, Job
from dispatcher.masking import mask_emails

# Fields that may hold a customer's email: each is shown through a masked_<name> method.
_MASKED = ("customer_email", "payload", "last_error", "error", "response_body")


def _shown(names: list[str]) -> list[str]:
    return [f"masked_{n}" if n in _MASKED else n for n in names]


def _masked(name: str) -> Any:
    def show(self: Any, obj: Any) -> str | None:
        return mask_emails(getattr(obj, name))

    show.short_description = name.replace("_", " ")  # type: ignore[attr-defined]
    show.__name__ = f"masked_{name}"
    return show


_JOB_FIELDS = _shown([f.name for f in Job._meta.fields])
_ATTEMPT_FIELDS = _shown([f.name for f in Attempt._meta.fields if f.name != "job"])


class AttemptInline(admin.TabularInline):
    model = Attempt
    fields = readonly_fields = _ATTEMPT_FIELDS
    extra = 0
    can_delete = False

    masked_error = _masked("error")
    masked_response_body = _masked("response_body")

    def has_add_permission(self, request: Any, obj: Any = None) -> bool:
        return False


@admin.register(Job)
class JobAdmin(admin.ModelAdmin):
    list_display = (
        "id",
        "queue",
        "status",
        "custom_event_id",
        "masked_customer_email",
        "attempts",
        "last_status_code",
        "created_at",
    )
    list_filter = ("status", "queue")
    search_fields = ("=customer_email", "=dedupe_key")
    fields = readonly_fields = _JOB_FIELDS
    inlines = (AttemptInline,)
    actions = ("replay_dead_jobs", "cancel_waiting_jobs")
    masked_customer_email = _masked("customer_email")
    masked_payload = _masked("payload")
    masked_last_error = _masked("last_error")

    def has_add_permission(self, request: Any) -> bool:
        return False

    def has_delete_permission(self, request: Any, obj: Any = None) -> bool:
        return False  # retention is `dispatcher purge`'s

    def get_search_results(self, request: Any, queryset: Any, search_term: str) -> Any:
        # Emails are stored lower-cased.
        return super().get_search_results(request, queryset, search_term.strip().lower())

    @admin.action(  # type: ignore[untyped-decorator]
        description="Replay the selected dead (or cancelled) jobs", permissions=["change"]
    )
    def replay_dead_jobs(self, request: Any, queryset: Any) -> None:
        from dispatcher import admin as operations
        from dispatcher.contrib.django.management.commands.dispatcher_migrate import (
            database_url,
        )
        from dispatcher.db import get_engine, utcnow
        from dispatcher.producer import signal_workers

        finished = ("dead", "cancelled")
        ids = list(queryset.filter(status__in=finished).values_list("id", flat=True))
        if not ids:
            self.message_user(
                request, "No dead or cancelled job among those selected.", messages.WARNING
            )
            return
        result = operations.replay(get_engine(database_url(queryset.db)), job_ids=ids, now=utcnow())
        signal_workers(result.queues)
        self.message_user(request, f"Replayed {result.count} dead job(s).", messages.SUCCESS)

    @admin.action(  # type: ignore[untyped-decorator]
        description="Cancel the selected waiting jobs (never sent)", permissions=["change"]
    )
    def cancel_waiting_jobs(self, request: Any, queryset: Any) -> None:
        from dispatcher import admin as operations
        from dispatcher.contrib.django.management.commands.dispatcher_migrate import (
            database_url,
        )
        from dispatcher.db import get_engine, utcnow

        selected = queryset.filter(status__in=("scheduled", "pending", "retrying", "in_flight"))
        ids = list(selected.values_list("id", flat=True))
        if not ids:
            self.message_user(request, "No waiting job among those selected.", messages.WARNING)
            return
        engine = get_engine(database_url(queryset.db))
        try:
            result = operations.cancel(engine, job_ids=ids, now=utcnow())
        except operations.AdminError as exc:  # one finished meanwhile: nothing was cancelled
            self.message_user(request, exc.message, messages.ERROR)
            return
        text = f"Cancelled {result.count} waiting job(s)."
        if result.in_flight:
            text += (
                f" {result.in_flight} in flight could not be cancelled: a request may be on "
                "the wire."
            )
        self.message_user(request, text, messages.SUCCESS)
