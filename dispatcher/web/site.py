"""What the pages and the JSON API share: the site's state, and email masking.

Customer emails are masked (``a***@example.com``) everywhere except on a job page (or API answer)
whose viewer asked to reveal them.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from starlette.requests import Request
from starlette.responses import Response
from starlette.templating import Jinja2Templates

from dispatcher import admin
from dispatcher.config import Settings
from dispatcher.web.access import Gate
from dispatcher.web.metrics import Metrics

__all__ = ["Site", "mask_email", "mask_emails", "site_of"]

# An email field of a body: the key (any spelling containing "email", but not a hash of one)
# and its JSON string value.
_EMAIL_FIELD = re.compile(
    r'(?P<key>"(?:[^"\\]|\\.)*email(?:[^"\\]|\\.)*"\s*:\s*)(?P<value>"(?:[^"\\]|\\.)*")',
    re.IGNORECASE,
)
# An address in free text (an error, an API's answer): a quoted or unquoted local part (quotes,
# comments and apostrophes included) and a domain, a bare host or an [address literal].
_LOCAL = r'"(?:[^"\\\n]|\\.)*"|[^\s@<>,;:"\[\]\\/{}]+'
_DOMAIN = r"\[[^\]\s]*\]|[^\s@<>,;:\"'()\[\]\\/{}]+"
_ADDRESS = re.compile(rf"(?P<local>{_LOCAL})@(?P<domain>{_DOMAIN})")


def mask_email(value: str) -> str:
    """The one rule for a value of an email field, with no exceptions: its first character,
    ``***``, and what follows its last ``@`` (the domain), if there is an ``@`` after the first
    character. ``anna@example.com`` -> ``a***@example.com``; ``"a b"@[127.0.0.1]`` ->
    ``"***@[127.0.0.1]``; a value without an ``@`` -> its first character and ``***``."""
    if not value:
        return value
    _local, at, domain = value[1:].rpartition("@")
    return f"{value[0]}***" + (f"@{domain}" if at else "")


def _mask_field(match: re.Match[str]) -> str:
    key = match["key"]
    if "md5" in key.lower() or "sha" in key.lower():
        return match[0]
    try:
        value = json.loads(match["value"])
    except ValueError:
        return f'{key}"***"'
    return key + json.dumps(mask_email(value), ensure_ascii=False)


def mask_emails(text: str | None) -> str | None:
    """Customer emails in ``text`` masked by :func:`mask_email`: every value of an email field
    of a JSON body (``"customerEmail": "…"``), whatever it holds, and any other address found
    in free text (``anna@example.com`` -> ``a***@example.com``)."""
    if text is None:
        return None
    out: list[str] = []
    done = 0
    for field in _EMAIL_FIELD.finditer(text):  # fields by the rule; the text between them too
        out += [_mask_free(text[done : field.start()]), _mask_field(field)]
        done = field.end()
    out.append(_mask_free(text[done:]))
    return "".join(out)


def _mask_free(text: str) -> str:
    return _ADDRESS.sub(lambda m: mask_email(m[0]), text)


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
