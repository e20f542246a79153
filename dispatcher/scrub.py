"""Text that leaves the process: credentials redacted, terminal control characters escaped.

:func:`scrub` removes every form of database or broker password that SQLAlchemy and libpq accept
from any text (an error message, a log line, a traceback): the user-info password of a URL
(``postgresql://user:secret@host/db``), a ``password=`` or ``sslpassword=`` parameter in a URL's
query (``?password=secret``) or in a libpq conninfo string (``password=secret`` or
``password='se cret'``). A ``passfile=`` path is not a secret and stays.

The configured URLs' passwords are known by parsing them (:func:`remember`: SQLAlchemy's
``make_url``, libpq's conninfo parser), not guessed by a pattern: a password with a blank, an
unescaped ``@`` or ``/`` is removed wherever it appears, whole, URL-encoded or in the pieces a
driver's message shows (``failed to resolve host 'ss@db'`` for the password ``p@ss``). The
patterns remain for URLs the process never configured (one in an exception's text).

:func:`terminal_safe` is for human output on a terminal: every control character (C0, DEL, C1)
and the bidirectional overrides are shown escaped (``\\x1b``, ``\\u202e``), so text from a hostile
API cannot set a terminal's title, clear its screen or rewrite a line. ``--json`` output is never
passed through it: it stays exact.
"""

from __future__ import annotations

import re
import threading
from urllib.parse import quote, quote_plus, unquote

__all__ = ["REDACTED", "redact_url", "remember", "scrub", "secrets_of", "terminal_safe"]

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


# Literal texts to replace, longest first: the remembered passwords in every spelling.
_known: dict[str, str] = {}
_known_lock = threading.Lock()
_MIN_SECRET = 3  # a one- or two-character "password" cannot be told from the text around it


def secrets_of(url: str) -> dict[str, str]:
    """What to replace in text to hide the passwords of ``url`` (a URL or a libpq conninfo
    string), each with what to show instead, as the URL parses: the user-info password (and the
    rest of it a driver takes for the host when it holds an unescaped ``@``) and the
    ``password``/``sslpassword`` parameters."""
    url = url.strip()
    found: dict[str, str] = {}
    passwords: list[str] = []
    if "://" in url:
        import sqlalchemy as sa

        try:
            parsed = sa.make_url(url)
        except Exception:  # not a URL SQLAlchemy reads: the patterns are all we have
            return found
        if parsed.password:
            passwords.append(str(parsed.password))
        host = parsed.host or ""
        if "@" in host:  # "user:p@ss@db": the parser stopped at the first '@'
            found[host] = f"{REDACTED}@{host.rpartition('@')[2]}"
        # What the user meant: the user-info ends at the last '@' before the query. A password
        # with an unescaped '@' or '/' is split by every parser; a driver's message may show
        # any piece of it, so each piece is a secret too.
        userinfo, at, _ = url.split("://", 1)[1].split("?", 1)[0].rpartition("@")
        if at and ":" in userinfo:
            meant = userinfo.partition(":")[2]
            passwords += [meant, unquote(meant), *re.split(r"[@/]", meant)]
        for name in ("password", "sslpassword"):
            value = parsed.query.get(name)
            passwords += [value] if isinstance(value, str) else list(value or ())
    else:
        try:
            from psycopg.conninfo import conninfo_to_dict

            params = conninfo_to_dict(url)
        except Exception:
            return found
        passwords += [str(params[k]) for k in ("password", "sslpassword") if params.get(k)]
    for password in passwords:
        for spelling in (password, quote(password, safe=""), quote_plus(password)):
            if len(spelling) >= _MIN_SECRET:
                found[spelling] = REDACTED
    return found


def remember(*urls: str | None) -> None:
    """Hide the passwords of these URLs (the configured database and broker) from every text
    :func:`scrub` sees from now on."""
    for url in urls:
        if url:
            found = secrets_of(url)
            with _known_lock:
                _known.update(found)


def _replace_known(text: str, known: dict[str, str] | None = None) -> str:
    """Each secret replaced where it stands alone: a password "postgres" leaves "postgresql"."""
    if known is None:
        with _known_lock:
            known = dict(_known)
    for secret, shown in sorted(known.items(), key=lambda kv: -len(kv[0])):
        if secret in text:
            text = re.sub(
                ("(?<![A-Za-z0-9])" if secret[0].isalnum() else "")
                + re.escape(secret)
                + ("(?![A-Za-z0-9])" if secret[-1].isalnum() else ""),
                shown.replace("\\", "\\\\"),
                text,
            )
    return text


def scrub(text: str) -> str:
    """``text`` with every password a database or broker URL (or conninfo) can carry replaced by
    ``***``: those of :func:`remember`'s URLs wherever they appear, others by their form."""
    text = _replace_known(text)
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
    """A database or broker URL (or conninfo string) as it may be shown: parsed, and every
    password form replaced by ``***``."""
    render = getattr(url, "render_as_string", None)
    if callable(render):
        text = render(hide_password=True)
        url = render(hide_password=False)
    else:
        text = str(url)
    remember(str(url))
    return scrub(_replace_known(text, secrets_of(str(url))))


def _escape(match: re.Match[str]) -> str:
    code = ord(match[0])
    return f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}"


def terminal_safe(text: str, *, newlines: bool = False) -> str:
    """``text`` with control characters shown as escapes; ``newlines=True`` keeps ``\\n`` (and
    tabs) for multi-line output, anything else (``\\r`` included) is escaped."""
    return (_UNSAFE if newlines else _UNSAFE_NO_NEWLINE).sub(_escape, text)
