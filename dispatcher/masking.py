"""Customer identifiers masked in text that leaves the process (pure: no I/O).

Two rules, for two kinds of output:

- :func:`redact` is for the API's words wherever they are shown without being asked for: log
  lines, the pause and circuit alerts, the reasons of a paused queue or an open circuit on the
  pages, in ``/api/queues`` and ``dispatcher stats``. Email addresses become ``<email>``, hashes
  ``<hash>``, long numbers and phone numbers ``<number>``. An API may escape what it echoes
  (JSON's ``\\u002b``, a URL's ``%2B`` or ``%40``, HTML's ``&#43;``, a fullwidth at sign), so the
  text is unescaped and NFKC-normalised first: an escape cannot hide an address from the mask.
- :func:`mask_emails` is for what an operator looks at on purpose (a job's payload and answers):
  only emails are masked, keeping their first character and domain (``a***@example.com``).
"""

from __future__ import annotations

import html
import json
import re
import unicodedata

__all__ = ["mask_email", "mask_emails", "redact"]

# ------------------------------------------------------------------ redact (the API's words)

_EMAIL = re.compile(r"[^\s@'\"<>(),;:]+@[^\s@'\"<>(),;:]+")
_LONG_NUMBER = re.compile(r"\d{5,}")
_LONG_HEX = re.compile(r"\b[0-9a-fA-F]{32,}\b")
# A phone number written in groups: seven digits or more, a leading '+' and single blanks,
# dashes or parentheses between them ("+48 601-234-567", "(030) 123 4567").
_PHONE = re.compile(r"(?<![\w+])\+?\(?\d(?:[ \-()]{0,2}\d){6,}\)?")
_DATE = re.compile(r"\d{4}-\d\d-\d\d")  # an ISO date (and what follows it) is not a phone
# Escapes an API may echo a value in: JSON/Python \uXXXX and \xXX, URL %XX, HTML &#NN; &#xNN;
# and named entities.
_ESCAPE = re.compile(
    r"\\u(?P<u>[0-9a-fA-F]{4})|\\x(?P<x>[0-9a-fA-F]{2})|%(?P<pct>[0-9a-fA-F]{2})"
    r"|&#[xX](?P<hexref>[0-9a-fA-F]{1,6});|&#(?P<decref>\d{1,7});|&(?P<name>[a-zA-Z]{2,8});"
)
_UNESCAPE_ROUNDS = 3  # "%252B" is "%2B" escaped once more


def redact(text: str | None) -> str | None:
    """The API's words with anything that may identify a customer masked: email addresses,
    hashes, long numbers (ids) and phone numbers; escapes are undone first."""
    if text is None:
        return None
    text = unicodedata.normalize("NFKC", _unescape(text))
    text = _EMAIL.sub("<email>", text)
    text = _LONG_HEX.sub("<hash>", text)
    text = _PHONE.sub(_phone, text)
    return _LONG_NUMBER.sub("<number>", text)


def _unescape(text: str) -> str:
    for _ in range(_UNESCAPE_ROUNDS):
        done = _ESCAPE.sub(_char, text)
        if done == text:
            break
        text = done
    return text


def _char(match: re.Match[str]) -> str:
    """The printable ASCII character an escape stands for; anything else stays escaped."""
    if match["name"] is not None:
        char = html.unescape(match[0])
        return char if len(char) == 1 and " " <= char <= "~" else match[0]
    digits = match["u"] or match["x"] or match["pct"] or match["hexref"]
    code = int(digits, 16) if digits is not None else int(match["decref"])
    return chr(code) if 0x20 <= code <= 0x7E else match[0]


def _phone(match: re.Match[str]) -> str:
    return match[0] if _DATE.match(match[0]) else "<number>"


# ------------------------------------------------------ mask_emails (what an operator opens)

# An email field of a body: the key (any spelling containing "email", but not a hash of one)
# and its JSON string value.
_EMAIL_FIELD = re.compile(
    r'(?P<key>"(?:[^"\\]|\\.)*email(?:[^"\\]|\\.)*"\s*:\s*)(?P<value>"(?:[^"\\]|\\.)*")',
    re.IGNORECASE,
)
# An address in free text (an error, an API's answer): a quoted or unquoted local part (quotes,
# comments and apostrophes included) and a domain, a bare host or an [address literal].
# An escaped character (JSON, URL or HTML) is part of a local part or a domain, and an escaped
# '@' (or a fullwidth one) is an '@': "anna\\u002b1\\u0040example.com" is an address.
_ESCAPED = r"\\u[0-9a-fA-F]{4}|\\x[0-9a-fA-F]{2}|&#[xX]?[0-9a-fA-F]{1,7};"
_AT = r"@|\\u0040|\\x40|%40|&#64;|&#[xX]40;|\uff20"
_LOCAL = rf'"(?:[^"\\\n]|\\.)*"|(?:{_ESCAPED}|[^\s@<>,;:"\[\]\\/{{}}\uff20])+'
_DOMAIN = rf"\[[^\]\s]*\]|(?:{_ESCAPED}|[^\s@<>,;:\"'()\[\]\\/{{}}\uff20])+"
_ADDRESS = re.compile(rf"(?P<local>{_LOCAL})(?:{_AT})(?P<domain>{_DOMAIN})")


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
    return _ADDRESS.sub(lambda m: mask_email(f"{m['local']}@{m['domain']}"), text)
