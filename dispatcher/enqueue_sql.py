"""The SQL function ``dispatcher_enqueue``: its text, generated from :mod:`dispatcher.events`.

Pure, no I/O. PostgreSQL clients in any language (and triggers) enqueue with::

    SELECT dispatcher_enqueue(queue, body, dedupe_key, ordering_key, deliver_at)

One source of truth: the field table, limits, JSON names, order and messages come from the
rules in :mod:`dispatcher.events` (``_CUSTOM_EVENT_RULES``, ``_SEGMENT_EVENT_RULES``,
``_VALUE_RULES``); each kind of check there has one SQL twin here, and a rule of a kind this module
does not know makes :func:`function_sql` fail. ``tests/integration/test_sql_enqueue.py`` feeds the
validation cases of the Python tests to both and compares what they accept and the errors.

A migration freezes the text it installs (``dispatcher/migrations/versions/0010_sql_enqueue.py``)
and a test holds it equal to :func:`function_sql`: a change of the rules needs a new migration.

Differences that cannot be removed: a ``jsonb`` value has already lost duplicate keys (the last
wins), exponent spellings (``1e2`` is the number 100) and cannot hold NUL or a lone surrogate;
``DateTime`` values accept the ISO 8601 extended forms (``2024-05-01T12:30:00.5+02:00``, a space
or any one character between date and time, ``Z``), not the basic or week forms Python's
``datetime.fromisoformat`` also reads. The SQL function reports every problem at once, like
:class:`dispatcher.events.ValidationError`, in an exception with SQLSTATE 22023 whose message is
the problems joined by ``"; "``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from dispatcher import events as ev
from dispatcher.config import QUEUE_NAME
from dispatcher.outbox import ORDERING_LOCK_CLASS, ORDERING_SLOTS
from dispatcher.producer import MAX_DEDUPE_KEY, MAX_ORDERING_KEY

__all__ = ["ERRCODE", "FUNCTIONS", "NOTIFY_CHANNEL", "drop_sql", "function_sql"]

NOTIFY_CHANNEL = "dispatcher_enqueued"  # payload: the queue; see dispatcher.listener
ERRCODE = "22023"  # invalid_parameter_value
# Every function the migration creates, with its argument types (for DROP FUNCTION).
FUNCTIONS = (
    "dispatcher_enqueue(text, jsonb, text, text, timestamptz)",
    "dispatcher_event_check(jsonb)",
    "dispatcher_iso_datetime(text)",
    "dispatcher_url_problem(text)",
    "dispatcher_show(text)",
)


def _lit(text: str) -> str:
    """A SQL string literal (standard_conforming_strings: only quotes are doubled)."""
    return "'" + text.replace("'", "''") + "'"


def _class_of(pattern: re.Pattern[str]) -> str:
    """A PostgreSQL bracket expression for the characters ``pattern`` matches on its own: computed
    from the Python pattern itself, so ``\\s`` means exactly what it means to Python."""
    points = [
        c for c in range(1, 0x110000) if not 0xD800 <= c <= 0xDFFF and pattern.fullmatch(chr(c))
    ]
    ranges: list[tuple[int, int]] = []
    for c in points:
        if ranges and ranges[-1][1] == c - 1:
            ranges[-1] = (ranges[-1][0], c)
        else:
            ranges.append((c, c))

    def esc(c: int) -> str:
        return f"\\u{c:04x}" if c <= 0xFFFF else f"\\U{c:08x}"

    return "[" + "".join(esc(a) if a == b else f"{esc(a)}-{esc(b)}" for a, b in ranges) + "]"


def _full(pattern: re.Pattern[str]) -> str:
    """A Python ``fullmatch`` pattern as an anchored PostgreSQL regular expression (the patterns
    used here are written in the syntax both share)."""
    return _lit(f"^(?:{pattern.pattern})$")


def _kind(v: str) -> str:
    """``events._kind`` of a jsonb value: a number with a point is a float."""
    return (
        f"CASE jsonb_typeof({v}) WHEN 'number' THEN CASE WHEN {v}::text ~ '[.eE]' THEN 'float' "
        f"ELSE 'integer' END WHEN 'array' THEN 'list' WHEN 'object' THEN 'object' "
        f"WHEN 'string' THEN 'string' WHEN 'boolean' THEN 'boolean' ELSE 'null' END"
    )


_UTF16 = "(length(s) + length(regexp_replace(s, '[^\\U00010000-\\U0010ffff]', '', 'g')))"


@dataclass(frozen=True)
class _Steps:
    """A check in SQL: ``setup`` statements, then (condition, message expression) pairs tried in
    order (the first true one is the problem), and ``ok`` statements when none is."""

    setup: tuple[str, ...]
    steps: tuple[tuple[str, str], ...]

    def render(self, path: str, ok: Sequence[str] = ()) -> list[str]:
        lines = list(self.setup)
        for i, (cond, message) in enumerate(self.steps):
            lines.append(f"{'IF' if i == 0 else 'ELSIF'} ({cond}) THEN")
            lines.append(f"  p := p || ({path} || ': ' || {message});")
        if ok:
            lines.append("ELSE" if self.steps else "IF true THEN")
            lines += [f"  {line}" for line in ok]
        if self.steps or ok:
            lines.append("END IF;")
        return lines


def _integer_steps(check: ev._Integer, v: str) -> _Steps:
    low, high = check.bounds
    return _Steps(
        (),
        (
            (
                f"jsonb_typeof({v}) IS DISTINCT FROM 'number' OR {v}::text ~ '[.eE]'",
                f"'expected an integer (got ' || {_kind(v)} || ')'",
            ),
            (
                f"{v}::text::numeric NOT BETWEEN {low} AND {high}",
                _lit(f"must be an {check.label} ({low}..{high})"),
            ),
        ),
    )


# The shapes' messages are Python's own: each is what the Python check says about an example that
# fails at that step.


def _email_steps() -> list[tuple[str, str]]:
    return [
        (f"s ~ {_lit(_class_of(ev._CONTROL_OR_SPACE))}", _lit(ev._email_shape(" @") or "")),
        (
            "length(s) - length(replace(s, '@', '')) <> 1 OR left(s, 1) = '@' OR right(s, 1) = '@'",
            _lit(ev._email_shape("a") or ""),
        ),
    ]


def _phone_steps() -> list[tuple[str, str]]:
    return [
        (f"s !~ {_full(ev._PHONE)}", _lit(ev._phone_shape("x") or "")),
        ("s !~ '[0-9]'", _lit(ev._phone_shape("+") or "")),
    ]


def _hex_steps(shape: ev._HexShape) -> list[tuple[str, str]]:
    d = shape.digits
    return [
        (f"length(s) <> {d}", f"'must be {d} hexadecimal characters (got ' || length(s) || ')'"),
        (f"s !~ {_full(ev._HEX)}", _lit(shape("x" * d) or "")),
    ]


_SHAPES: dict[object, Callable[[], list[tuple[str, str]]]] = {
    ev._email_shape: _email_steps,
    ev._phone_shape: _phone_steps,
}


def _text_steps(check: ev._Text, v: str) -> _Steps:
    steps = [
        (
            f"jsonb_typeof({v}) IS DISTINCT FROM 'string'",
            f"'expected a string (got ' || {_kind(v)} || ')'",
        )
    ]
    if not check.empty_ok:
        steps.append(("s = ''", _lit("must not be empty")))
    # NUL and lone surrogates cannot be in a jsonb string: PostgreSQL refuses them on input.
    if check.max_len is not None:
        m = check.max_len
        steps.append(
            (
                f"octet_length(s) > {m} AND {_UTF16} > {m}",
                f"'at most {m} characters (got ' || {_UTF16} || ')'",
            )
        )
    if check.shape is not None:
        if isinstance(check.shape, ev._HexShape):
            steps += _hex_steps(check.shape)
        elif check.shape in _SHAPES:
            steps += _SHAPES[check.shape]()
        else:
            raise NotImplementedError(f"no SQL for the shape {check.shape!r}")
    return _Steps((f"s := {v} #>> '{{}}';",), tuple(steps))


def _scalar_steps(check: object, v: str) -> _Steps:
    if isinstance(check, ev._Integer):
        return _integer_steps(check, v)
    if isinstance(check, ev._Text):
        return _text_steps(check, v)
    raise NotImplementedError(f"no SQL for the check {check!r}")


def _value_sql(rule: object) -> tuple[_Steps, str]:
    """A data field's value rule (on the jsonb ``fv``, a string by then): steps and the normalized
    text expression."""
    if isinstance(rule, ev._PlainText):
        return _text_steps(rule.check, "fv"), "s"
    setup = ("s := fv #>> '{}';",)  # a string by now (JSON bodies are strict)
    if rule is ev._decimal:
        most = ev._MAX_NUMBER_DIGITS
        plain = _lit("must be a plain decimal number such as -12.50 (no exponent)")
        digits = (
            "greatest(length(ltrim(split_part(ltrim(s, '-'), '.', 1), '0')), 1) "
            "+ length(split_part(s, '.', 2))"
        )
        return _Steps(
            setup,
            (
                (f"length(s) > {most + 2} OR s !~ {_full(ev._PLAIN_DECIMAL)}", plain),
                (f"{digits} > {most}", _lit(f"at most {most} digits")),
            ),
        ), (
            "CASE WHEN left(s, 1) = '-' THEN '-' ELSE '' END || coalesce(nullif(ltrim("
            "split_part(ltrim(s, '-'), '.', 1), '0'), ''), '0') || CASE WHEN s LIKE '%.%' "
            "THEN '.' || split_part(s, '.', 2) ELSE '' END"
        )
    if rule is ev._date:
        bad = (
            f"CASE WHEN s !~ {_full(ev._ISO_DATE)} THEN true "
            "WHEN substr(s, 1, 4)::int < 1 OR substr(s, 6, 2)::int NOT BETWEEN 1 AND 12 "
            "THEN true ELSE substr(s, 9, 2)::int NOT BETWEEN 1 AND extract(day FROM "
            "make_date(substr(s, 1, 4)::int, substr(s, 6, 2)::int, 1) "
            "+ interval '1 month - 1 day')::int END"
        )
        return _Steps(setup, ((bad, _lit("must be a date written YYYY-MM-DD")),)), "s"
    if rule is ev._datetime:
        iso = _lit("must be an ISO 8601 date-time such as 2024-05-01T12:30:00+02:00")
        minutes = _lit("UTC offset must be a whole number of minutes")
        return _Steps(
            (*setup, "t := dispatcher_iso_datetime(s);"),
            (("t IS NULL", iso), ("t = '!'", minutes)),
        ), "t"
    if rule is ev._boolean:
        message = _lit("expected a boolean or the string 'true' or 'false'")
        bad = "octet_length(s) <> length(s) OR lower(s) NOT IN ('true', 'false')"
        return _Steps(setup, ((bad, message),)), "lower(s)"
    if rule is ev._url:
        text = _text_steps(ev._URL_TEXT, "fv")  # type: ignore[arg-type]
        space = (f"s ~ {_lit(_class_of(ev._CONTROL_OR_SPACE))}", _lit(ev._email_shape(" @") or ""))
        return _Steps(
            (*text.setup, "t := dispatcher_url_problem(s);"),
            (*text.steps, space, ("t IS NOT NULL", "t")),
        ), "s"
    raise NotImplementedError(f"no SQL for the value rule {rule!r}")


def _data_fields_sql(rule: ev._Rule) -> list[str]:
    path = _lit(rule.key)
    item = f"{path} || '[' || i || ']'"
    types = list(ev._VALUE_RULES)
    allowed = ", ".join(ev.DATA_FIELD_TYPES)
    name_steps = _scalar_steps(ev._NAME_CHECK, "fn")
    known = _lit("{" + ",".join(ev._DATA_FIELD_KEYS) + "}") + "::text[]"
    lines = [
        "IF jsonb_typeof(v) IS DISTINCT FROM 'array' THEN",
        f"  p := p || ({path} || ': expected a list of data fields (got ' || {_kind('v')} || ')');",
        "ELSE",
        "  fields := '{}';",
        "  FOR i IN 0 .. jsonb_array_length(v) - 1 LOOP",
        "    it := v -> i;",
        "    n := coalesce(array_length(p, 1), 0);",
        "    IF jsonb_typeof(it) IS DISTINCT FROM 'object' THEN",
        f"      p := p || ({item} || ': expected a data field {{name, type, value}} (got ' "
        f"|| {_kind('it')} || ')');",
        "      CONTINUE;",
        "    END IF;",
        f"    IF it - {known} <> '{{}}'::jsonb THEN",  # a plain expression first: quicker
        f"      p := p || ARRAY(SELECT {item} || '.' || CASE WHEN k ~ {_full(ev._PLAIN_KEY)} "
        f"THEN k ELSE dispatcher_show(k) END || ': unknown field' FROM jsonb_object_keys(it) "
        f"AS k WHERE k <> ALL ({known}));",
        "    END IF;",
        "    fn := it -> 'name'; ft := it -> 'type'; fv := it -> 'value';",
        f"    IF fn IS NULL THEN p := p || ({item} || '.name: required'); ELSE",
        *(f"      {line}" for line in name_steps.render(f"{item} || '.name'")),
        "    END IF;",
        "    IF ft IS NULL THEN",
        f"      p := p || ({item} || '.type: required');",
        "    ELSIF jsonb_typeof(ft) IS DISTINCT FROM 'string' THEN",
        f"      p := p || ({item} || '.type: expected a string (got ' || {_kind('ft')} || ')');",
        f"    ELSIF ft #>> '{{}}' <> ALL ({_lit('{' + ','.join(types) + '}')}::text[]) THEN",
        f"      p := p || ({item} || '.type: must be one of {allowed} (got ' || "
        "dispatcher_show(ft #>> '{}') || ')');",
        "    ELSIF fv IS NULL THEN",
        f"      p := p || ({item} || '.value: required');",
        "    ELSIF jsonb_typeof(fv) IS DISTINCT FROM 'string' THEN",
        f"      p := p || ({item} || '.value: expected a string (got ' || {_kind('fv')} || ')');",
    ]
    for type_name, value_rule in ev._VALUE_RULES.items():
        steps, normalized = _value_sql(value_rule)
        lines.append(f"    ELSIF ft #>> '{{}}' = {_lit(type_name)} THEN")
        ok = [f"t := {normalized};"] if normalized != "t" else []
        ok.append(
            f"IF coalesce(array_length(p, 1), 0) = n THEN fields := fields || ("
            "'{\"name\":' || to_json(fn #>> '{}')::text || ',\"type\":' || "
            f"to_json({_lit(type_name)}::text)::text || ',\"value\":' || to_json(t)::text "
            "|| '}'); END IF;"
        )
        lines += [f"      {line}" for line in steps.render(f"{item} || '.value'", ok)]
    lines += [
        "    END IF;",
        "  END LOOP;",
        "  IF cardinality(fields) > 0 THEN",
        f"    parts := parts || ('\"{rule.key}\":[' || array_to_string(fields, ',') || ']');",
        "  END IF;",
        "END IF;",
    ]
    return lines


def _segments_sql(rule: ev._Rule) -> list[str]:
    path = _lit(rule.key)
    item = ev._SEGMENT_CHECK
    assert isinstance(item, ev._Integer)
    steps = _integer_steps(item, "it")
    return [
        "IF jsonb_typeof(v) IS DISTINCT FROM 'array' THEN",
        f"  p := p || ({path} || ': expected a list of segment ids (got ' || {_kind('v')} || ')');",
        "ELSIF jsonb_array_length(v) = 0 THEN",
        f"  p := p || ({path} || ': at least one segment id is required');",
        "ELSE",
        "  FOR i IN 0 .. jsonb_array_length(v) - 1 LOOP",
        "    it := v -> i;",
        *(f"    {line}" for line in steps.render(f"{path} || '[' || i || ']'")),
        "  END LOOP;",
        f"  parts := parts || ('\"{rule.key}\":' || replace(v::text, ' ', ''));",
        "END IF;",
    ]


def _rules_sql(rules: Sequence[ev._Rule], *, custom: bool) -> list[str]:
    known = _lit("{" + ",".join(r.key for r in rules) + "}") + "::text[]"
    lines = [
        f"IF body - {known} <> '{{}}'::jsonb THEN",  # a plain expression first: quicker
        f"  p := p || ARRAY(SELECT CASE WHEN k ~ {_full(ev._PLAIN_KEY)} THEN k ELSE "
        "dispatcher_show(k) END || ': unknown field' FROM jsonb_object_keys(body) AS k "
        f"WHERE k <> ALL ({known}));",
        "END IF;",
    ]
    for rule in rules:
        path = _lit(rule.key)
        lines.append(f"v := body -> {path};")
        if rule.required:
            lines.append(f"IF v IS NULL THEN p := p || ({path} || ': required'); ELSE")
        else:
            lines.append("IF v IS NOT NULL AND jsonb_typeof(v) <> 'null' THEN")
        if rule.check is ev._data_fields:
            body = _data_fields_sql(rule)
        elif rule.check is ev._segments:
            body = _segments_sql(rule)
        elif isinstance(rule.check, ev._Scalar):
            steps = _scalar_steps(rule.check.check, "v")
            value = "to_json(s)::text" if isinstance(rule.check.check, ev._Text) else "v::text"
            body = steps.render(path, [f"parts := parts || ('\"{rule.key}\":' || {value});"])
            if custom and rule in ev._CUSTOMER_RULES:
                body.append("given := true;")
        else:
            raise NotImplementedError(f"no SQL for the field check {rule.check!r}")
        lines += [f"  {line}" for line in body]
        lines.append("END IF;")
    if custom:
        no_customer = ev._no_customer().render(json_names=True)
        lines.append(f"IF NOT given THEN p := p || {_lit(no_customer)}::text; END IF;")
    return lines


def _check_function() -> str:
    custom = _rules_sql(ev._CUSTOM_EVENT_RULES, custom=True)
    segment = _rules_sql(ev._SEGMENT_EVENT_RULES, custom=False)
    most, limit = ev.MAX_REPORTED_ERRORS, ev.MAX_BODY_BYTES
    body = [
        "IF body IS NULL OR jsonb_typeof(body) <> 'object' THEN",
        f"  problems := ARRAY['body: expected a JSON object (got ' || {_kind('body')} || ')'];",
        "  RETURN;",
        "END IF;",
        "IF body ? 'segments' THEN",
        *(f"  {line}" for line in segment),
        "ELSE",
        *(f"  {line}" for line in custom),
        "END IF;",
        "IF cardinality(p) = 0 THEN",
        "  payload := '{' || array_to_string(parts, ',') || '}';",
        f"  IF octet_length(payload) > {limit} THEN",
        "    p := ARRAY['body: serialized event is ' || octet_length(payload) || "
        f"' bytes, at most {limit} allowed'];",
        "    payload := NULL;",
        "  END IF;",
        "END IF;",
        f"IF cardinality(p) > {most} THEN",
        f"  p := p[1:{most}] || ('errors: ' || (cardinality(p) - {most}) || ' more not shown');",
        "END IF;",
        "problems := p;",
    ]
    return (
        "CREATE OR REPLACE FUNCTION dispatcher_event_check(body jsonb, OUT payload text, "
        "OUT problems text[])\nLANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $fn$\n"
        "DECLARE\n  p text[] := '{}';\n  parts text[] := '{}';\n  fields text[];\n"
        "  given boolean := false;\n  v jsonb; it jsonb; fn jsonb; ft jsonb; fv jsonb;\n"
        "  s text; t text; i int; n int;\nBEGIN\n"
        + "".join(f"  {line}\n" for line in body)
        + "END\n$fn$;\n"
    )


# Python's ascii() of a str, as events._show renders keys and type names in messages.
_SHOW = r"""CREATE OR REPLACE FUNCTION dispatcher_show(value text) RETURNS text
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $fn$
DECLARE
  head text := left(value, 40);
  quote text := CASE WHEN strpos(head, '''') > 0 AND strpos(head, '"') = 0 THEN '"' ELSE '''' END;
  out text := '';
  c text;
  code int;
BEGIN
  FOREACH c IN ARRAY regexp_split_to_array(head, '') LOOP
    code := ascii(c);
    out := out || CASE
      WHEN c = '\' THEN '\\'
      WHEN c = quote THEN '\' || c
      WHEN c = E'\t' THEN '\t' WHEN c = E'\n' THEN '\n' WHEN c = E'\r' THEN '\r'
      WHEN code < 32 OR code BETWEEN 127 AND 255 THEN '\x' || lpad(to_hex(code), 2, '0')
      WHEN code > 65535 THEN '\U' || lpad(to_hex(code), 8, '0')
      WHEN code > 255 THEN '\u' || lpad(to_hex(code), 4, '0')
      ELSE c END;
  END LOOP;
  RETURN quote || out || quote || CASE WHEN length(value) > 40 THEN '...' ELSE '' END;
END
$fn$;
"""

# datetime.fromisoformat(...).isoformat() for the ISO 8601 extended forms; NULL: not one of them
# (or not a real date-time), '!': an offset that is not a whole number of minutes.
_ISO_DATETIME = r"""CREATE OR REPLACE FUNCTION dispatcher_iso_datetime(value text) RETURNS text
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $fn$
DECLARE
  m text[];
  y int; mo int; d int; h int := 0; mi int := 0; se int := 0;
  oh int; om int; os int; micro text; offset_text text := '';
BEGIN
  IF length(value) > 64 OR octet_length(value) <> length(value) THEN
    RETURN NULL;
  END IF;
  m := regexp_match(value, '^([0-9]{4})-([0-9]{2})-([0-9]{2})(?:.([0-9]{2})(?::([0-9]{2})'
    '(?::([0-9]{2})(?:[.,]([0-9]+))?)?)?(?:(Z)|([+-])([0-9]{2})(?::([0-9]{2})(?::([0-9]{2})'
    '(?:\.([0-9]{1,6}))?)?)?)?)?$');
  IF m IS NULL THEN
    RETURN NULL;
  END IF;
  y := m[1]::int; mo := m[2]::int; d := m[3]::int;
  IF y < 1 OR mo NOT BETWEEN 1 AND 12 THEN
    RETURN NULL;
  END IF;
  IF d NOT BETWEEN 1 AND extract(day FROM make_date(y, mo, 1) + interval '1 month - 1 day') THEN
    RETURN NULL;
  END IF;
  h := coalesce(m[4]::int, 0); mi := coalesce(m[5]::int, 0); se := coalesce(m[6]::int, 0);
  IF h > 23 OR mi > 59 OR se > 59 THEN
    RETURN NULL;
  END IF;
  micro := rpad(left(coalesce(m[7], ''), 6), 6, '0');
  IF m[8] IS NOT NULL THEN
    offset_text := '+00:00';
  ELSIF m[9] IS NOT NULL THEN
    oh := m[10]::int; om := coalesce(m[11]::int, 0); os := coalesce(m[12]::int, 0);
    IF oh > 23 OR om > 59 OR os > 59 THEN
      RETURN NULL;
    END IF;
    IF os <> 0 OR coalesce(m[13], '') ~ '[1-9]' THEN
      RETURN '!';
    END IF;
    offset_text := CASE WHEN oh = 0 AND om = 0 THEN '+' ELSE m[9] END
      || lpad(oh::text, 2, '0') || ':' || lpad(om::text, 2, '0');
  END IF;
  RETURN m[1] || '-' || m[2] || '-' || m[3] || 'T' || lpad(h::text, 2, '0') || ':'
    || lpad(mi::text, 2, '0') || ':' || lpad(se::text, 2, '0')
    || CASE WHEN micro = '000000' THEN '' ELSE '.' || micro END || offset_text;
END
$fn$;
"""

# What events._url's urlsplit() would refuse ("not a valid URL"), or the missing scheme or host;
# NULL: a good URL. Whitespace and control characters are refused before this is called.
_URL_PROBLEM = r"""CREATE OR REPLACE FUNCTION dispatcher_url_problem(value text) RETURNS text
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $fn$
DECLARE
  scheme text := lower(substring(value FROM '^([A-Za-z][A-Za-z0-9+.-]*):'));
  rest text := value;
  netloc text;
  hostinfo text;
  host text;
  port text;
BEGIN
  IF scheme IS NOT NULL THEN
    rest := substr(value, length(scheme) + 2);
  END IF;
  IF left(rest, 2) = '//' THEN
    netloc := substring(substr(rest, 3) FROM '^[^/?#]*');
    IF (strpos(netloc, '[') > 0) <> (strpos(netloc, ']') > 0) THEN
      RETURN 'not a valid URL';
    END IF;
    hostinfo := regexp_replace(netloc, '^.*@', '');
    IF strpos(netloc, '[') > 0 THEN
      host := split_part(split_part(netloc, '[', 2), ']', 1);
      IF host !~ '^v[a-fA-F0-9]+\..+$' AND (host !~ '^[0-9A-Fa-f:.]+(%.+)?$'
          OR host !~ ':') THEN
        RETURN 'not a valid URL';
      END IF;
    END IF;
    IF strpos(hostinfo, '[') > 0 THEN
      host := split_part(split_part(hostinfo, '[', 2), ']', 1);
      port := substring(split_part(hostinfo, ']', 2) FROM ':(.*)$');
    ELSE
      host := split_part(hostinfo, ':', 1);
      port := CASE WHEN strpos(hostinfo, ':') > 0
        THEN substr(hostinfo, strpos(hostinfo, ':') + 1) END;
    END IF;
    IF coalesce(port, '') <> '' THEN
      IF port !~ '^[0-9]+$' OR length(ltrim(port, '0')) > 5 OR port::int > 65535 THEN
        RETURN 'not a valid URL';
      END IF;
    END IF;
  END IF;
  IF coalesce(scheme, '') NOT IN ('http', 'https') OR coalesce(host, '') = '' THEN
    RETURN 'must be an http:// or https:// URL with a host';
  END IF;
  RETURN NULL;
END
$fn$;
"""


def _enqueue_function() -> str:
    queue_message = (
        "queue: must be 1-64 characters of a-z, 0-9, '_' or '-', starting with a letter or digit"
    )
    lock = "'dispatcher:' || queue || ':' || ordering_key"
    return f"""CREATE OR REPLACE FUNCTION dispatcher_enqueue(
  queue text, body jsonb, dedupe_key text DEFAULT NULL, ordering_key text DEFAULT NULL,
  deliver_at timestamptz DEFAULT NULL) RETURNS bigint
LANGUAGE plpgsql VOLATILE AS $fn$
#variable_conflict use_variable
DECLARE
  checked record;
  p text[] := '{{}}';
  job bigint;
  due timestamptz := greatest(deliver_at, now());  -- as NewJob.due: a past time means now
BEGIN
  IF queue IS NULL OR queue !~ {_lit(QUEUE_NAME.pattern)} THEN
    p := p || ({_lit(queue_message)} || ' (got '
      || CASE WHEN queue IS NULL THEN 'NULL' ELSE dispatcher_show(queue) END || ')');
  END IF;
  checked := dispatcher_event_check(body);
  p := p || checked.problems;
  IF dedupe_key IS NOT NULL AND length(dedupe_key) NOT BETWEEN 1 AND {MAX_DEDUPE_KEY} THEN
    p := p || 'dedupe_key: must be a string of 1-{MAX_DEDUPE_KEY} characters'::text;
  END IF;
  IF ordering_key IS NOT NULL AND length(ordering_key) NOT BETWEEN 1 AND {MAX_ORDERING_KEY} THEN
    p := p || 'ordering_key: must be a string of 1-{MAX_ORDERING_KEY} characters'::text;
  END IF;
  IF cardinality(p) > 0 THEN
    RAISE EXCEPTION USING ERRCODE = '{ERRCODE}', MESSAGE = array_to_string(p, '; '),
      HINT = 'dispatcher_enqueue: the body is an ECDP event as the API documents it';
  END IF;
  IF ordering_key IS NOT NULL THEN  -- as dispatcher.outbox.ordering_locks: commit order
    PERFORM pg_advisory_xact_lock({ORDERING_LOCK_CLASS},
      (hashtextextended({lock}, 0) & {ORDERING_SLOTS - 1})::int);
  END IF;
  INSERT INTO dispatcher_jobs AS j (queue, endpoint, custom_event_id, customer_email, payload,
    dedupe_key, trace_context, ordering_key, status, attempts, next_attempt_at, created_at,
    updated_at)
  VALUES (queue, CASE WHEN body ? 'segments' THEN {_lit(ev.SegmentEvent.endpoint)}
      ELSE {_lit(ev.CustomEvent.endpoint)} END,
    (body ->> 'customEventId')::int,
    CASE WHEN body ? 'segments' THEN NULL ELSE lower(body ->> 'customerEmail') END,
    checked.payload, dedupe_key, NULL, ordering_key,
    CASE WHEN due > now() THEN 'scheduled' ELSE 'pending' END, 0, due, now(), now())
  ON CONFLICT DO NOTHING
  RETURNING j.id INTO job;
  IF job IS NULL THEN  -- the key is taken: the existing job's id, as enqueue() returns it
    SELECT j.id INTO job FROM dispatcher_jobs AS j
    WHERE j.queue = queue AND j.dedupe_key = dedupe_key;
    RETURN job;
  END IF;
  IF due <= now() THEN  -- delivered at commit; a scheduled job is left to the sweeper
    PERFORM pg_notify({_lit(NOTIFY_CHANNEL)}, queue);
  END IF;
  RETURN job;
END
$fn$;
"""


def function_sql() -> str:
    """Every statement that creates the functions, in order (run as one script)."""
    return "\n".join([_SHOW, _ISO_DATETIME, _URL_PROBLEM, _check_function(), _enqueue_function()])


def drop_sql() -> str:
    return "".join(f"DROP FUNCTION IF EXISTS {f};\n" for f in FUNCTIONS)
