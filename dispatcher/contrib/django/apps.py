"""The Django app: ``INSTALLED_APPS = [..., "dispatcher.contrib.django"]``."""

from __future__ import annotations

from django.apps import AppConfig


class DispatcherConfig(AppConfig):
    name = "dispatcher.contrib.django"
    label = "ecdp_dispatcher"
    verbose_name = "ECDP dispatcher"
