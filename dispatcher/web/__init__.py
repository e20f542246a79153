"""``dispatcher web``: the operators' page, its JSON API and ``/metrics``.

One module per concern:

- :mod:`~dispatcher.web.access`: the admin token, the login cookie, CSRF, the loopback-only rule
  without a token (host check against DNS rebinding) and the security headers.
- :mod:`~dispatcher.web.pages`: the server-rendered pages (templates in ``templates/``).
- :mod:`~dispatcher.web.api`: the JSON API under ``/api``.
- :mod:`~dispatcher.web.openapi`: its OpenAPI document, whose limits come from the service.
- :mod:`~dispatcher.web.metrics`: ``/metrics`` for Prometheus, read from the outbox.
- :mod:`~dispatcher.web.site`: what pages and API share (the site's state, email masking).
- :mod:`~dispatcher.web.app`: the app factory and the server.

Operator rules (filters and their limits, resume, replay with an expected count) are not here:
the pages and the API call :mod:`dispatcher.admin`, as the CLI does.
"""

from __future__ import annotations

from dispatcher.web.access import BindError, check_bind
from dispatcher.web.app import create_app, serve
from dispatcher.web.site import mask_emails

__all__ = ["BindError", "check_bind", "create_app", "mask_emails", "serve"]
