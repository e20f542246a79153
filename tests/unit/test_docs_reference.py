"""The documentation's generated reference (tools/docs/reference.py) renders from today's code,
and every marker a page uses names a generator: pytest says so before `mkdocs build` does."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from types import ModuleType

import pytest

from dispatcher.config import VARIABLES

ROOT = Path(__file__).resolve().parents[2]


def load() -> ModuleType:
    path = ROOT / "tools" / "docs" / "reference.py"
    spec = importlib.util.spec_from_file_location("docs_reference", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


reference = load()


@pytest.mark.parametrize("name", sorted(reference.GENERATORS))
def test_each_generator_renders(name: str) -> None:
    assert reference.GENERATORS[name]().strip()


def test_every_marker_in_the_pages_names_a_generator() -> None:
    used = {
        name
        for page in (ROOT / "docs").rglob("*.md")
        for name in re.findall(r"<!-- generated: ([a-z-]+) -->", page.read_text())
    }
    assert used <= set(reference.GENERATORS)
    assert {"configuration", "processes", "http-api", "metrics", "alerts"} <= used


def test_the_configuration_reference_lists_every_variable() -> None:
    text = reference.configuration()
    assert all(f"`{v.name}`" in text for v in VARIABLES)


def test_the_metrics_reference_lists_what_the_exporter_serves() -> None:
    text = reference.metrics()
    for name in ("dispatcher_jobs{queue,status}", "dispatcher_queue_pause_info{queue,cause}"):
        assert f"`{name}`" in text
    assert "`dispatcher_delivery_attempts_total{queue,code_class}`" in text
