"""Text that leaves the process: credentials redacted, terminal control characters escaped.

:func:`scrub` removes every form of database or broker password that SQLAlchemy and libpq accept
from any text (an error message, a log line, a traceback): the user-info password of a URL
(``postgresql://user:secret@host/db``), a ``password=`` or ``sslpassword=`` parameter in a URL's
query (``?password=secret``) or in a libpq conninfo string (``password=secret`` or
``password='se cret'``). A ``passfile=`` path is not a secret and stays.

:func:`terminal_safe` is for human output on a terminal: every control character (C0, DEL, C1)
and the bidirectional overrides are shown escaped (``\\x1b``, ``\\u202e``), so text from a hostile
API cannot set a terminal's title, clear its screen or rewrite a line. ``--json`` output is never
passed through it: it stays exact.
"""

from __future__ import annotations

import re

__all__ = ["REDACTED", "redact_url", "scrub", "terminal_safe"]

REDACTED = "***"

# scheme://user:password@host  (the password may hold anything but '@' and '/'; the user no ':')
_USERINFO = re.compile(r"(?P<head>\b[a-zA-Z][a-zA-Z0-9+.\-]*://[^:/@\s]*:)(?P<pw>[^@/\s]*)@")
# password=… in a query string (up to '&', '#', a blank or a quote) or a conninfo string (a
# quoted value may hold blanks and escaped quotes). Both names libpq reads.
_PARAM = re.compile(
    r"(?P<head>(?<![A-Za-z0-9_])(?:ssl)?password\s*=\s*)"
    r"(?P<pw>'(?:[^'\\]|\\.)*'?|[^\s&#'\"]*)",
    re.IGNORECASE,
)
_DONE = re.compile(r"\*\*\*[:;,.)]?")
# Control characters, and the bidi controls that reorder what a terminal shows.
_UNSAFE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")
_UNSAFE_NO_NEWLINE = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def scrub(text: str) -> str:
    """``text`` with every password a database or broker URL (or conninfo) can carry replaced by
    ``***``."""
    if "password" not in text.lower() and "@" not in text:
        return text
    text = _USERINFO.sub(lambda m: f"{m['head']}{REDACTED}@", text)
    # A URL-encoded %40 in the password cannot be told from the host part here; the user-info
    # rule above stopped at the first '@', so whatever followed is already masked or the host.
    return _PARAM.sub(_param, text)


def _param(match: re.Match[str]) -> str:
    if _DONE.fullmatch(match["pw"]):  # redacted before ("***", maybe with the sentence's ':')
        return match[0]
    return f"{match['head']}{REDACTED}"


def redact_url(url: object) -> str:
    """A database or broker URL as it may be shown: every password form replaced by ``***``."""
    render = getattr(url, "render_as_string", None)
    text = render(hide_password=True) if callable(render) else str(url)
    return scrub(text)


def _escape(match: re.Match[str]) -> str:
    code = ord(match[0])
    return f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}"


def terminal_safe(text: str, *, newlines: bool = False) -> str:
    """``text`` with control characters shown as escapes; ``newlines=True`` keeps ``\\n`` (and
    tabs) for multi-line output, anything else (``\\r`` included) is escaped."""
    return (_UNSAFE if newlines else _UNSAFE_NO_NEWLINE).sub(_escape, text)
