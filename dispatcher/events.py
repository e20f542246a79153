"""Event models for the ECDP scenario custom-events API: validation and the documented JSON.

Pure, no I/O. Everything a caller can get wrong is checked when the event is constructed, and
all problems are reported at once, so a bad event fails in the caller's code (and transaction)
instead of becoming a dead letter after a 400 from the API.

Two spellings of field names exist: Python snake_case (``customer_email``, used in errors from
the constructors) and the API's camelCase (``customerEmail``, used in errors from
``event_from_body``/``event_from_json``, which read bodies shaped as the API documents them).

Lengths are counted in UTF-16 code units, as the vendor's .NET API presumably counts them (its
400 answers are ASP.NET ProblemDetails). For text without emoji or other characters outside the
Basic Multilingual Plane this is simply the number of characters.

Limits the vendor documents: customEventId and segments are int32; customerEmail 320,
customerEmailMd5 32, customerEmailSha256 64, customerPhone 20, customerCrmId 128 characters.
Limits that are ours (generous caps so one event stays bounded; the vendor documents none):
customerId int64, data-field name 255, String 4000, Text 65536, URL 2048 characters, numbers
400 digits, 1 MiB per serialized body, the first 100 problems reported.

Customer identifiers and data-field values are never echoed in error messages: they are
personal data and error messages end up in logs.
"""

from __future__ import annotations

import contextlib
import json
import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Any, ClassVar, Final, TypeAlias
from urllib.parse import urlsplit

__all__ = [
    "CUSTOMER_KEYS",
    "DATA_FIELD_TYPES",
    "MAX_BODY_BYTES",
    "CustomEvent",
    "DataField",
    "Event",
    "SegmentEvent",
    "ValidationError",
    "event_from_body",
    "event_from_json",
    "key_problem",
]

MAX_BODY_BYTES: Final = 1024 * 1024
MAX_REPORTED_ERRORS: Final = 100
DATA_FIELD_TYPES: Final = (
    "String",
    "Text",
    "Number",
    "Money",
    "Date",
    "DateTime",
    "Boolean",
    "URL",
)

_INT32: Final = (-(2**31), 2**31 - 1)
_INT64: Final = (-(2**63), 2**63 - 1)
_MAX_NUMBER_DIGITS: Final = 400

_HEX = re.compile(r"[0-9a-fA-F]*")
_PHONE = re.compile(r"[0-9+\-() ]*")
_PLAIN_DECIMAL = re.compile(r"-?[0-9]+(\.[0-9]+)?")
_ISO_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
_SURROGATE = re.compile("[\ud800-\udfff]")
_CONTROL_OR_SPACE = re.compile(r"[\x00-\x20\x7f]|\s")
_PLAIN_KEY = re.compile(r"[A-Za-z0-9_-]{1,64}")


# --- errors -----------------------------------------------------------------------------------


class ValidationError(ValueError):
    """All problems of one input at once.

    ``errors`` holds one ``"field: message"`` string per problem; ``str(exc)`` joins them with
    ``"; "``. Only the first 100 problems are listed, followed by ``"errors: N more not shown"``.
    """

    errors: tuple[str, ...]
    _problems: tuple[_Problem, ...]

    def __init__(self, errors: str | Iterable[str]) -> None:
        self.errors = (errors,) if isinstance(errors, str) else tuple(errors)
        self._problems = ()
        super().__init__("; ".join(self.errors))

    def __reduce__(self) -> tuple[Any, ...]:
        # The default would re-create the exception from the joined message: keep the tuple.
        return (type(self), (self.errors,))


class _Raw(str):
    """A key exactly as the caller wrote it: never translated to its camelCase spelling."""

    __slots__ = ()


@dataclass(frozen=True, slots=True)
class _Problem:
    """One problem, with a structured path so it can be named in Python or JSON spelling."""

    path: tuple[str | int, ...]
    message: str
    json_message: str | None = None  # only when the message itself names fields

    def under(self, *prefix: str | int) -> _Problem:
        return _Problem((*prefix, *self.path), self.message, self.json_message)

    def render(self, json_names: bool) -> str:
        name = ""
        for part in self.path:
            if isinstance(part, int):
                name += f"[{part}]"
                continue
            if json_names and not isinstance(part, _Raw):
                part = _JSON_NAMES.get(part, part)
            name = f"{name}.{part}" if name else part
        message = self.json_message if json_names and self.json_message else self.message
        return f"{name}: {message}"


def _error(problems: Sequence[_Problem], *, json_names: bool = False) -> ValidationError:
    lines = [p.render(json_names) for p in problems[:MAX_REPORTED_ERRORS]]
    if len(problems) > MAX_REPORTED_ERRORS:
        lines.append(f"errors: {len(problems) - MAX_REPORTED_ERRORS} more not shown")
    exc = ValidationError(lines)
    exc._problems = tuple(problems)
    return exc


class _Invalid(Exception):
    """Raised by a value converter; its message becomes the problem's message."""


_KINDS: Final[Mapping[type, str]] = {
    type(None): "null",
    bool: "boolean",
    int: "integer",
    float: "float",
    str: "string",
    list: "list",
    dict: "object",
}


def _kind(value: object) -> str:
    return _KINDS.get(type(value), type(value).__name__)


def _show(value: object) -> str:
    """A short, ASCII-only rendering for messages (keys and enum values, never personal data)."""
    if isinstance(value, str):
        return ascii(value[:40]) + ("..." if len(value) > 40 else "")
    text = ascii(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _key_text(key: object) -> str:
    return key if isinstance(key, str) and _PLAIN_KEY.fullmatch(key) else _show(key)


# --- scalar checks: value -> problem message or None --------------------------------------------

_Check: TypeAlias = Callable[[object], "str | None"]


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


# The checks are small frozen objects rather than closures so that their parameters can be read:
# dispatcher.enqueue_sql generates the SQL function's checks from this same table.


@dataclass(frozen=True, slots=True)
class _Integer:
    bounds: tuple[int, int]
    label: str

    def __call__(self, value: object) -> str | None:
        if not isinstance(value, int) or isinstance(value, bool):
            return f"expected an integer (got {_kind(value)})"
        low, high = self.bounds
        if not low <= value <= high:
            return f"must be an {self.label} ({low}..{high})"
        return None


def _integer(bounds: tuple[int, int], label: str) -> _Check:
    return _Integer(bounds, label)


def _length(text: str) -> int:
    return len(text.encode("utf-16-le", "surrogatepass")) // 2


@dataclass(frozen=True, slots=True)
class _Text:
    """A string check: type, emptiness, NUL, lone surrogates, length, then `shape`."""

    max_len: int | None
    shape: Callable[[str], str | None] | None = None
    empty_ok: bool = False

    def __call__(self, value: object) -> str | None:
        if not isinstance(value, str):
            return f"expected a string (got {_kind(value)})"
        if not value and not self.empty_ok:
            return "must not be empty"
        if "\x00" in value:
            return "must not contain NUL characters"
        if _SURROGATE.search(value):
            return "must be valid Unicode (contains a lone surrogate, not encodable as UTF-8)"
        if self.max_len is not None and (n := _length(value)) > self.max_len:
            return f"at most {self.max_len} characters (got {n})"
        return self.shape(value) if self.shape else None


def _text(
    max_len: int | None,
    shape: Callable[[str], str | None] | None = None,
    *,
    empty_ok: bool = False,
) -> _Check:
    return _Text(max_len, shape, empty_ok)


def key_problem(value: object, max_len: int) -> str | None:
    """Why ``value`` cannot be a dedupe or ordering key, or None: a string of 1 to ``max_len``
    characters that PostgreSQL's text can hold (no NUL, no lone surrogate: the driver would
    refuse them with an error that is not a :class:`ValidationError`)."""
    if not isinstance(value, str) or not 0 < len(value) <= max_len:
        return f"must be a string of 1-{max_len} characters"
    if "\x00" in value:
        return "must not contain NUL characters"
    if _SURROGATE.search(value):
        return "must be valid Unicode (contains a lone surrogate, not encodable as UTF-8)"
    return None


@dataclass(frozen=True, slots=True)
class _HexShape:
    digits: int

    def __call__(self, text: str) -> str | None:
        if len(text) != self.digits:
            return f"must be {self.digits} hexadecimal characters (got {len(text)})"
        if not _HEX.fullmatch(text):
            return f"must be {self.digits} hexadecimal characters (got a non-hexadecimal one)"
        return None


def _hex(digits: int) -> _Check:
    return _text(None, _HexShape(digits))


def _email_shape(text: str) -> str | None:
    if _CONTROL_OR_SPACE.search(text):
        return "must not contain whitespace or control characters"
    local, _, domain = text.partition("@")
    if text.count("@") != 1 or not local or not domain:
        return "must look like local-part@domain (exactly one '@')"
    return None


def _phone_shape(text: str) -> str | None:
    if not _PHONE.fullmatch(text):
        return "may contain only digits, '+', '-', '(', ')' and spaces"
    if not any(c.isdigit() for c in text):
        return "must contain at least one digit"
    return None


# --- data-field values: value -> the API's string, or _Invalid ----------------------------------


@dataclass(frozen=True, slots=True)
class _PlainText:
    check: _Text

    def __call__(self, value: object) -> str:
        if (problem := self.check(value)) is not None:
            raise _Invalid(problem)
        assert isinstance(value, str)
        return value


def _plain_text(max_len: int) -> Callable[[object], str]:
    return _PlainText(_Text(max_len, empty_ok=True))


def _decimal(value: object) -> str:
    """A plain decimal with a dot and no exponent: what a form field or a spreadsheet shows."""
    number: Decimal
    if isinstance(value, bool):
        raise _Invalid("expected a number (got boolean)")
    if isinstance(value, int):
        if value.bit_length() > _MAX_NUMBER_DIGITS * 4:  # before str(): huge ints are slow
            raise _Invalid(f"at most {_MAX_NUMBER_DIGITS} digits")
        number = Decimal(value)
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise _Invalid("must be a finite number")
        number = Decimal(repr(value))  # repr: the shortest decimal that round-trips
    elif isinstance(value, Decimal):
        if not value.is_finite():
            raise _Invalid("must be a finite number")
        number = value
    elif isinstance(value, str):
        if len(value) > _MAX_NUMBER_DIGITS + 2 or not _PLAIN_DECIMAL.fullmatch(value):
            raise _Invalid("must be a plain decimal number such as -12.50 (no exponent)")
        number = Decimal(value)
    else:
        raise _Invalid(f"expected a number or a decimal string (got {_kind(value)})")
    exponent = number.as_tuple().exponent
    assert isinstance(exponent, int)  # finite
    if max(number.adjusted(), 0) + 1 + max(-exponent, 0) > _MAX_NUMBER_DIGITS:
        raise _Invalid(f"at most {_MAX_NUMBER_DIGITS} digits")
    return format(number, "f")


def _date(value: object) -> str:
    if isinstance(value, datetime):
        raise _Invalid("expected a date, not a datetime (use type DateTime)")
    if isinstance(value, date):
        return value.isoformat()
    if not isinstance(value, str):
        raise _Invalid(f"expected a date or a 'YYYY-MM-DD' string (got {_kind(value)})")
    if _ISO_DATE.fullmatch(value):
        try:
            return date.fromisoformat(value).isoformat()
        except ValueError:
            pass
    raise _Invalid("must be a date written YYYY-MM-DD")


def _datetime(value: object) -> str:
    moment: datetime | None = None
    if isinstance(value, datetime):
        moment = value
    elif not isinstance(value, str):
        raise _Invalid(f"expected a datetime or an ISO 8601 string (got {_kind(value)})")
    elif len(value) <= 64 and value.isascii():
        with contextlib.suppress(ValueError):
            moment = datetime.fromisoformat(value)
    if moment is None:
        raise _Invalid("must be an ISO 8601 date-time such as 2024-05-01T12:30:00+02:00")
    # Offsets in seconds are legal in Python but not in ISO 8601 or .NET (and Python 3.11 even
    # mis-parses some of its own): the API would not understand them.
    offset = moment.utcoffset()
    if offset is not None and offset % timedelta(minutes=1):
        raise _Invalid("UTC offset must be a whole number of minutes")
    return moment.isoformat()


def _boolean(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str) and value.isascii() and value.lower() in ("true", "false"):
        return value.lower()
    raise _Invalid("expected a boolean or the string 'true' or 'false'")


_URL_TEXT = _text(2048)


def _url(value: object) -> str:
    if (problem := _URL_TEXT(value)) is not None:
        raise _Invalid(problem)
    assert isinstance(value, str)
    if _CONTROL_OR_SPACE.search(value):
        raise _Invalid("must not contain whitespace or control characters")
    try:
        parts = urlsplit(value)
        host, _ = parts.hostname, parts.port
    except ValueError:
        raise _Invalid("not a valid URL") from None
    if parts.scheme not in ("http", "https") or not host:
        raise _Invalid("must be an http:// or https:// URL with a host")
    return value


_VALUE_RULES: Final[Mapping[str, Callable[[object], str]]] = {
    "String": _plain_text(4000),
    "Text": _plain_text(65536),
    "Number": _decimal,
    "Money": _decimal,
    "Date": _date,
    "DateTime": _datetime,
    "Boolean": _boolean,
    "URL": _url,
}
_DATA_FIELD_KEYS: Final = ("name", "type", "value")
_NAME_CHECK: Final = _text(255)
_ABSENT: Final = object()  # a data-field key the mapping did not have


def _data_field_problems(
    name: object, type_: object, value: object, *, strict: bool
) -> tuple[str | None, list[_Problem]]:
    """Check one data field; return the value as the API's string (if valid) and the problems.

    `strict` is for JSON bodies, where the API documents the value as a string.
    """
    problems: list[_Problem] = []
    normalized: str | None = None
    if name is _ABSENT:
        problems.append(_Problem(("name",), "required"))
    elif (problem := _NAME_CHECK(name)) is not None:
        problems.append(_Problem(("name",), problem))
    if type_ is _ABSENT:
        problems.append(_Problem(("type",), "required"))
    elif not isinstance(type_, str):
        problems.append(_Problem(("type",), f"expected a string (got {_kind(type_)})"))
    elif type_ not in _VALUE_RULES:
        allowed = ", ".join(DATA_FIELD_TYPES)
        problems.append(_Problem(("type",), f"must be one of {allowed} (got {_show(type_)})"))
    elif value is _ABSENT:
        problems.append(_Problem(("value",), "required"))
    elif strict and not isinstance(value, str):
        problems.append(_Problem(("value",), f"expected a string (got {_kind(value)})"))
    else:
        try:
            normalized = _VALUE_RULES[type_](value)
        except _Invalid as exc:
            problems.append(_Problem(("value",), str(exc)))
    return normalized, problems


# --- models -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DataField:
    """One ``{name, type, value}`` entry of ``dataFields``.

    ``value`` may be given as a natural Python value (int, Decimal, date, bool, ...) or as a
    string; after construction it is always the string the API expects, so two fields that mean
    the same compare equal.
    """

    name: str
    type: str
    value: object

    def __post_init__(self) -> None:
        value, problems = _data_field_problems(self.name, self.type, self.value, strict=False)
        if problems:
            raise _error(problems)
        object.__setattr__(self, "value", value)

    def to_body(self) -> dict[str, str]:
        return {"name": self.name, "type": self.type, "value": str(self.value)}


@dataclass(frozen=True, slots=True)
class CustomEvent:
    """A custom event for one customer, named by at least one identifier."""

    custom_event_id: int
    customer_id: int | None = None
    customer_email: str | None = None
    customer_email_md5: str | None = None
    customer_email_sha256: str | None = None
    customer_phone: str | None = None
    customer_crm_id: str | None = None
    data_fields: Sequence[DataField] = ()  # stored as a tuple

    endpoint: ClassVar[str] = "/scenariocustomevents"

    def __post_init__(self) -> None:
        _validate_instance(self, _CUSTOM_EVENT_RULES)

    def to_body(self) -> dict[str, Any]:
        body: dict[str, Any] = {"customEventId": self.custom_event_id}
        for rule in _CUSTOMER_RULES:
            if (value := getattr(self, rule.attr)) is not None:
                body[rule.key] = value
        if self.data_fields:
            body["dataFields"] = [f.to_body() for f in self.data_fields]
        return body

    def to_json(self) -> str:
        return _dumps(self.to_body())


@dataclass(frozen=True, slots=True)
class SegmentEvent:
    """A custom event for every customer in the given segments."""

    custom_event_id: int
    segments: Sequence[int]  # stored as a tuple
    data_fields: Sequence[DataField] = ()  # stored as a tuple

    endpoint: ClassVar[str] = "/scenariocustomevents/withsegments"

    def __post_init__(self) -> None:
        _validate_instance(self, _SEGMENT_EVENT_RULES)

    def to_body(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "customEventId": self.custom_event_id,
            "segments": list(self.segments),
        }
        if self.data_fields:
            body["dataFields"] = [f.to_body() for f in self.data_fields]
        return body

    def to_json(self) -> str:
        return _dumps(self.to_body())


Event: TypeAlias = CustomEvent | SegmentEvent


def _dumps(body: dict[str, Any]) -> str:
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False)


# --- the field table --------------------------------------------------------------------------

# A field check: (value, strict) -> (normalized value, problems with paths relative to the field).
_FieldCheck: TypeAlias = Callable[[object, bool], "tuple[object, list[_Problem]]"]


@dataclass(frozen=True, slots=True)
class _Scalar:
    check: _Check

    def __call__(self, value: object, strict: bool) -> tuple[object, list[_Problem]]:
        if (problem := self.check(value)) is not None:
            return None, [_Problem((), problem)]
        if isinstance(value, int) and type(value) is not int:
            value = int(value)  # an IntEnum or similar: store the plain int
        return value, []


def _scalar(check: _Check) -> _FieldCheck:
    return _Scalar(check)


def _is_list(value: object) -> bool:
    """A sequence of items: str and bytes are sequences too, but never what the caller meant."""
    text_like = str | bytes | bytearray | memoryview
    return isinstance(value, Sequence) and not isinstance(value, text_like)


_SEGMENT_CHECK: Final = _integer(_INT32, "int32")


def _segments(value: object, strict: bool) -> tuple[object, list[_Problem]]:
    if not _is_list(value):
        return None, [_Problem((), f"expected a list of segment ids (got {_kind(value)})")]
    assert isinstance(value, Sequence)
    if not value:
        return None, [_Problem((), "at least one segment id is required")]
    problems = [
        _Problem((i,), problem)
        for i, segment in enumerate(value)
        if (problem := _SEGMENT_CHECK(segment)) is not None
    ]
    return tuple(int(s) for s in value) if not problems else None, problems


def _data_field(item: object, strict: bool) -> tuple[DataField | None, list[_Problem]]:
    if isinstance(item, DataField):
        return item, []
    if not isinstance(item, Mapping):
        message = f"expected a data field {{name, type, value}} (got {_kind(item)})"
        return None, [_Problem((), message)]
    problems = [
        _Problem((_Raw(_key_text(key)),), "unknown field")
        for key in item
        if key not in _DATA_FIELD_KEYS
    ]
    name, type_, value = (item.get(key, _ABSENT) for key in _DATA_FIELD_KEYS)
    normalized, field_problems = _data_field_problems(name, type_, value, strict=strict)
    problems += field_problems
    if problems:
        return None, problems
    return DataField(name, type_, normalized), []


def _data_fields(value: object, strict: bool) -> tuple[object, list[_Problem]]:
    if not _is_list(value):
        return None, [_Problem((), f"expected a list of data fields (got {_kind(value)})")]
    assert isinstance(value, Sequence)
    fields: list[DataField] = []
    problems: list[_Problem] = []
    for i, item in enumerate(value):
        field, item_problems = _data_field(item, strict)
        problems += (p.under(i) for p in item_problems)
        if field is not None:
            fields.append(field)
    return tuple(fields), problems


@dataclass(frozen=True, slots=True)
class _Rule:
    attr: str  # Python name
    key: str  # JSON name, as the API documents it
    check: _FieldCheck
    required: bool = False  # optional fields treat None as "not given"


_EVENT_ID = _Rule("custom_event_id", "customEventId", _scalar(_integer(_INT32, "int32")), True)
_DATA_FIELDS = _Rule("data_fields", "dataFields", _data_fields)
_CUSTOMER_RULES: Final = (
    _Rule("customer_id", "customerId", _scalar(_integer(_INT64, "int64"))),
    _Rule("customer_email", "customerEmail", _scalar(_text(320, _email_shape))),
    _Rule("customer_email_md5", "customerEmailMd5", _scalar(_hex(32))),
    _Rule("customer_email_sha256", "customerEmailSha256", _scalar(_hex(64))),
    _Rule("customer_phone", "customerPhone", _scalar(_text(20, _phone_shape))),
    _Rule("customer_crm_id", "customerCrmId", _scalar(_text(128))),
)
#: The customer identifiers' JSON names, in the documented order.
CUSTOMER_KEYS: Final = tuple(r.key for r in _CUSTOMER_RULES)
_CUSTOM_EVENT_RULES: Final = (_EVENT_ID, *_CUSTOMER_RULES, _DATA_FIELDS)
_SEGMENT_EVENT_RULES: Final = (
    _EVENT_ID,
    _Rule("segments", "segments", _segments, True),
    _DATA_FIELDS,
)
_JSON_NAMES: Final = {r.attr: r.key for r in (*_CUSTOM_EVENT_RULES, *_SEGMENT_EVENT_RULES)}


def _no_customer() -> _Problem:
    def names(spell: Callable[[_Rule], str]) -> str:
        return ", ".join(spell(r) for r in _CUSTOMER_RULES)

    prefix = "at least one identifier is required"
    return _Problem(
        ("customer",),
        f"{prefix} ({names(lambda r: r.attr)})",
        f"{prefix} ({names(lambda r: r.key)})",
    )


def _validate(
    rules: Sequence[_Rule], values: Mapping[str, object], *, strict: bool
) -> tuple[dict[str, object], list[_Problem]]:
    """Check `values` (keyed by Python name) against `rules`; return normalized values, problems."""
    normalized: dict[str, object] = {}
    problems: list[_Problem] = []
    for rule in rules:
        if rule.attr not in values:
            if rule.required:
                problems.append(_Problem((rule.attr,), "required"))
            continue
        value = values[rule.attr]
        if value is None and not rule.required:
            normalized[rule.attr] = () if rule is _DATA_FIELDS else None
            continue
        normalized[rule.attr], field_problems = rule.check(value, strict)
        problems += (p.under(rule.attr) for p in field_problems)
    if rules is _CUSTOM_EVENT_RULES and all(values.get(r.attr) is None for r in _CUSTOMER_RULES):
        problems.append(_no_customer())
    return normalized, problems


def _validate_instance(event: Event, rules: Sequence[_Rule]) -> None:
    values = {rule.attr: getattr(event, rule.attr) for rule in rules}
    normalized, problems = _validate(rules, values, strict=False)
    if problems:
        raise _error(problems)
    for attr, value in normalized.items():
        object.__setattr__(event, attr, value)
    size = len(event.to_json().encode("utf-8"))
    if size > MAX_BODY_BYTES:
        message = f"serialized event is {size} bytes, at most {MAX_BODY_BYTES} allowed"
        raise _error([_Problem(("body",), message)])


# --- parsing ----------------------------------------------------------------------------------


def event_from_body(body: object) -> Event:
    """Parse one JSON object shaped as the API documents it into an event.

    A ``segments`` key makes a SegmentEvent, otherwise a CustomEvent. Errors name fields by
    their camelCase JSON names. ``null`` for an optional field means "not given".
    """
    if not isinstance(body, dict):
        raise ValidationError(f"body: expected a JSON object (got {_kind(body)})")
    is_segment_event = "segments" in body
    rules = _SEGMENT_EVENT_RULES if is_segment_event else _CUSTOM_EVENT_RULES
    by_key = {rule.key: rule for rule in rules}
    problems: list[_Problem] = []
    values: dict[str, object] = {}
    for key, value in body.items():
        rule = by_key.get(key) if isinstance(key, str) else None
        if rule is None:
            problems.append(_Problem((_Raw(_key_text(key)),), "unknown field"))
        else:
            values[rule.attr] = value
    normalized, field_problems = _validate(rules, values, strict=True)
    problems += field_problems
    if problems:
        raise _error(problems, json_names=True)
    try:
        if is_segment_event:
            return SegmentEvent(**normalized)  # type: ignore[arg-type]
        return CustomEvent(**normalized)  # type: ignore[arg-type]
    except ValidationError as exc:  # only the serialized size is left to fail
        raise _error(exc._problems, json_names=True) from None


def _reject_constant(name: str) -> object:
    raise ValueError(f"{name} is not allowed")


def _unique_keys(pairs: list[tuple[str, object]]) -> dict[str, object]:
    """Duplicate keys are ambiguous (json keeps the last, other parsers the first): refuse them."""
    result: dict[str, object] = {}
    for key, value in pairs:
        if key in result:
            raise ValueError(f"duplicate key {_show(key)}")
        result[key] = value
    return result


def event_from_json(text: str | bytes) -> Event:
    """Decode and parse one JSON body (at most MAX_BODY_BYTES of UTF-8) into an event.

    Strict JSON: NaN/Infinity and duplicate keys are rejected. A wrong argument type (neither
    str nor bytes) is a programming error and raises TypeError.
    """
    if isinstance(text, bytes | bytearray | memoryview):
        raw = bytes(text)
        if len(raw) > MAX_BODY_BYTES:
            raise ValidationError(f"body: at most {MAX_BODY_BYTES} bytes (got {len(raw)})")
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ValidationError(f"body: not valid UTF-8 (at byte {exc.start})") from None
    elif isinstance(text, str):
        size = len(text.encode("utf-8", "surrogatepass"))
        if size > MAX_BODY_BYTES:
            raise ValidationError(f"body: at most {MAX_BODY_BYTES} bytes (got {size})")
    else:
        raise TypeError(f"expected str or bytes, got {type(text).__name__}")
    try:
        body = json.loads(text, parse_constant=_reject_constant, object_pairs_hook=_unique_keys)
    except RecursionError:
        raise ValidationError("body: not valid JSON: nested too deeply") from None
    except ValueError as exc:
        raise ValidationError(f"body: not valid JSON: {exc}") from None
    return event_from_body(body)
