"""The documentation's generated parts, rendered from the code's own definitions as Markdown.

Each function returns the Markdown that replaces one ``<!-- generated: NAME -->`` marker in a page
(``hooks.py`` does the replacing at build time), so the reference cannot drift from the code:

- ``configuration``, ``processes``: :data:`dispatcher.config.VARIABLES`;
- ``migrations``: the Alembic revisions in ``dispatcher/migrations/versions``;
- ``http-api``: :data:`dispatcher.web.openapi.OPENAPI`, the document ``/api/openapi.json`` serves;
- ``metrics``: the families :mod:`dispatcher.web.metrics` exports, as its collector builds them;
- ``alerts``: ``prometheus/alerts.yml``.

Pure functions of the code and the repository's files: no database, no network.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]


def _cell(text: str) -> str:
    """Text fit for one cell of a Markdown table."""
    return text.replace("|", "\\|").replace("\n", " ")


def _table(header: Iterable[str], rows: Iterable[Iterable[str]]) -> str:
    head = list(header)
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- configuration


def _variable_name(v: Any) -> str:
    name = f"`{v.name}`"
    return f"{name}, `{v.name}_<QUEUE>`" if v.per_queue else name


def configuration() -> str:
    from dispatcher.config import PROCESSES, VARIABLES

    rows = []
    for v in VARIABLES:
        default = "\N{EN DASH}" if v.default is None else f"`{v.default}`"
        processes = ", ".join(p for p in PROCESSES if p in v.processes)
        rows.append([_variable_name(v), default, v.meaning, processes])
    return _table(["variable", "default", "meaning", "read by"], rows)


def processes() -> str:
    from dispatcher.config import PROCESSES, VARIABLES

    rows = [
        [_variable_name(v), *("✓" if p in v.processes else "" for p in PROCESSES)]
        for v in VARIABLES
    ]
    return _table(["variable", *PROCESSES], rows)


# --------------------------------------------------------------------------- HTTP API


def _schema_type(schema: dict[str, Any]) -> str:
    if "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[-1]
        return f"[{name}](#schema-{name.lower()})"
    kind = schema.get("type", "any")
    kinds = kind if isinstance(kind, list) else [kind]
    text = " or ".join(kinds)
    if "array" in kinds and "items" in schema:
        text = f"array of {_schema_type(schema['items'])}"
    if "object" in kinds and isinstance(schema.get("additionalProperties"), dict):
        text = f"object of {_schema_type(schema['additionalProperties'])}"
    return text


def _constraints(schema: dict[str, Any]) -> str:
    parts = []
    for key, label in (
        ("minimum", "≥"),
        ("maximum", "≤"),
        ("minLength", "length ≥"),
        ("maxLength", "length ≤"),
    ):
        if key in schema:
            parts.append(f"{label} {schema[key]}")
    if "enum" in schema:
        parts.append("one of " + ", ".join(f"`{v}`" for v in schema["enum"]))
    if "const" in schema:
        parts.append(f"always `{schema['const']}`")
    if "pattern" in schema:
        parts.append(f"matches `{schema['pattern']}`")
    if "format" in schema:
        parts.append(schema["format"])
    return "; ".join(parts)


def _properties(schema: dict[str, Any]) -> str:
    required = set(schema.get("required", []))
    rows = [
        [
            f"`{name}`",
            _schema_type(prop),
            "yes" if name in required else "",
            ". ".join(x for x in (_constraints(prop), prop.get("description", "")) if x),
        ]
        for name, prop in schema.get("properties", {}).items()
    ]
    return _table(["field", "type", "required", "notes"], rows) if rows else ""


def _body(schema: dict[str, Any]) -> str:
    """A request's or answer's schema: a link to a named one, or its fields."""
    if "$ref" in schema or "properties" not in schema:
        return _schema_type(schema) + "\n"
    return "\n\n" + _properties(schema)


def http_api() -> str:
    from dispatcher.web.openapi import OPENAPI

    out: list[str] = [OPENAPI["info"]["description"] + "\n"]
    for path, methods in OPENAPI["paths"].items():
        for method, op in methods.items():
            out.append(f"### `{method.upper()} {path}` {{#{op['operationId']}}}\n")
            out.append(op["summary"] + ".\n")
            if op.get("description"):
                out.append(op["description"] + "\n")
            if op.get("security") == []:
                out.append("No token needed.\n")
            if params := op.get("parameters"):
                rows = [
                    [
                        f"`{p['name']}`",
                        p["in"],
                        _schema_type(p["schema"]),
                        "yes" if p.get("required") else "",
                        ". ".join(
                            x for x in (_constraints(p["schema"]), p.get("description", "")) if x
                        ),
                    ]
                    for p in params
                ]
                out.append(_table(["parameter", "in", "type", "required", "notes"], rows))
            if body := op.get("requestBody"):
                schema = body["content"]["application/json"]["schema"]
                needed = "required" if body.get("required") else "optional"
                out.append(f"**Request body** (JSON, {needed}): " + _body(schema))
            rows = []
            for code, answer in sorted(op["responses"].items()):
                schema = answer.get("content", {}).get("application/json", {}).get("schema")
                shape = "" if schema is None else _schema_type(schema)
                if schema is not None and "properties" in schema and "$ref" not in schema:
                    shape = ", ".join(f"`{k}`" for k in schema["properties"])
                rows.append([code, answer["description"], shape])
            out.append("**Answers**\n\n" + _table(["status", "when", "body"], rows))
    out.append("## Schemas\n")
    for name, schema in OPENAPI["components"]["schemas"].items():
        out.append(f"### {name} {{#schema-{name.lower()}}}\n")
        if schema.get("description"):
            out.append(schema["description"] + "\n")
        out.append(_properties(schema) or _schema_type(schema) + "\n")
        if schema.get("minProperties"):
            out.append(f"At least {schema['minProperties']} field(s).\n")
        if schema.get("additionalProperties") is False:
            out.append("No other field is accepted.\n")
    return "\n".join(out)


def openapi_json() -> str:
    from dispatcher.web.openapi import OPENAPI

    return json.dumps(OPENAPI, indent=2) + "\n"


# --------------------------------------------------------------------------- metrics and alerts


def _families() -> list[Any]:
    """What the exporter's collector builds, from one queue's worth of sample state (no
    database): the names, types, help texts and labels /metrics serves."""
    from dispatcher.web import metrics

    queue = SimpleNamespace(
        counts=Counter(),
        oldest_due_age_seconds=0.0,
        paused=True,
        pause_cause="operator",
        circuit_open=True,
        circuit="open",
        circuit_cause="outage",
        window=2,
        maybe_twice=0,
    )
    state = SimpleNamespace(
        _stats={"default": queue},
        _latency={},
        _attempts=Counter(),
        _dead=Counter(),
        database_up=True,
    )
    return list(metrics._Collector(state).collect())  # type: ignore[arg-type]


_SUFFIX = {"counter": "_total", "info": "_info"}


def metrics() -> str:
    rows = []
    for family in _families():
        name = family.name + _SUFFIX.get(family.type, "")
        labels = dict.fromkeys(k for s in family.samples for k in s.labels if k != "le")
        label_text = "{" + ",".join(labels) + "}" if labels else ""
        rows.append([f"`{name}{label_text}`", family.type, family.documentation])
    return _table(["metric", "type", "what"], rows)


def alerts(path: Path = ROOT / "prometheus" / "alerts.yml") -> str:
    document = yaml.safe_load(path.read_text())
    out = []
    for group in document["groups"]:
        for rule in group["rules"]:
            severity = rule.get("labels", {}).get("severity", "")
            wait = rule.get("for", "at once")
            out.append(f"### {rule['alert']}\n")
            out.append(f"*{severity}*, after {wait}: {rule['annotations']['summary']}\n")
            out.append(rule["annotations"].get("description", "").strip() + "\n")
            out.append("```promql\n" + rule["expr"].strip() + "\n```\n")
    return "\n".join(out)


# --------------------------------------------------------------------------- migrations


def migrations(folder: Path = ROOT / "dispatcher" / "migrations" / "versions") -> str:
    """Every Alembic revision the package ships: its id, what it follows, its docstring's first
    paragraph."""
    rows = []
    for path in sorted(folder.glob("[0-9]*.py")):
        text = path.read_text()
        revision = re.search(r'^revision[^=]*= *"([^"]+)"', text, re.M)
        down = re.search(r'^down_revision[^=]*= *"?([^"\n]+)"?', text, re.M)
        doc = re.match(r'\s*"""(.*?)(?:\n\n|""")', text, re.S)
        if revision is None:
            raise ValueError(f"{path.name}: no revision")
        rows.append(
            [
                f"`{revision.group(1)}`",
                "\N{EN DASH}" if down is None or down.group(1) == "None" else f"`{down.group(1)}`",
                " ".join(doc.group(1).split()).replace("``", "`") if doc else "",
            ]
        )
    return _table(["revision", "after", "what it does"], rows)


GENERATORS: dict[str, Callable[[], str]] = {
    "migrations": migrations,
    "configuration": configuration,
    "processes": processes,
    "http-api": http_api,
    "metrics": metrics,
    "alerts": alerts,
}
MARKER = re.compile(r"<!-- generated: ([a-z-]+) -->")


def expand(markdown: str) -> str:
    """Replace every marker with its generated Markdown; an unknown name is an error."""

    def replace(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in GENERATORS:
            raise KeyError(f"no generator {name!r} (have {sorted(GENERATORS)})")
        return GENERATORS[name]()

    return MARKER.sub(replace, markdown)
