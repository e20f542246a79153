"""What the pages and the JSON API share: the site's state, and email masking
(:func:`dispatcher.masking.mask_emails`).

Customer emails are masked (``a***@example.com``) everywhere except on a job page (or API answer)
whose viewer asked to reveal them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from starlette.requests import Request
from starlette.responses import Response
from starlette.templating import Jinja2Templates

from dispatcher import admin
from dispatcher.config import Settings
from dispatcher.masking import mask_email, mask_emails
from dispatcher.web.access import Gate
from dispatcher.web.metrics import Metrics

__all__ = ["Site", "mask_email", "mask_emails", "site_of"]


@dataclass
class Site:
    settings: Settings
    engine: sa.Engine
    gate: Gate
    metrics: Metrics
    templates: Jinja2Templates

    def render(self, request: Request, name: str, status: int = 200, **context: Any) -> Response:
        context.update(csrf=self.gate.csrf(request), login=self.gate.token is not None)
        return self.templates.TemplateResponse(request, name, context, status_code=status)

    def pause(self, queue: str, reason: str, *, create: bool = False) -> bool:
        """:func:`dispatcher.admin.pause_queue` (returns once no worker sends for ``queue``)."""
        changed = admin.pause_queue(self.engine, queue, reason, create=create)
        if changed:
            self.metrics.invalidate()
        return changed

    def resume(self, queue: str) -> bool:
        """:func:`dispatcher.admin.resume_queue`; the next scrape shows it."""
        changed = admin.resume_queue(self.engine, queue)
        if changed:
            self.metrics.invalidate()
        return changed


def site_of(request: Request) -> Site:
    site: Site = request.app.state.site
    return site
