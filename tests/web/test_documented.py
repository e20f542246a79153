"""The documentation says what an operator sets and scrapes: every variable any module reads (the
breaker's and the shutdown grace with their real defaults) is in the configuration reference, and
every metric /metrics exports is in the metrics reference. Both pages are generated at build time
(tools/docs/reference.py); these tests read what that generator renders, as `mkdocs build` does."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from types import ModuleType

import sqlalchemy as sa

from dispatcher.config import Settings
from dispatcher.db import utcnow
from dispatcher.outbox import pause
from dispatcher.web.metrics import Metrics

from .conftest import set_circuit

ROOT = Path(__file__).resolve().parents[2]
# Read by config.py but documented otherwise: an old setting, refused by name.
NOT_IN_THE_TABLE = {"DISPATCHER_WORKER_THREADS"}


def reference() -> ModuleType:
    """tools/docs/reference.py, the generator of the reference pages (not a package: load it)."""
    path = ROOT / "tools" / "docs" / "reference.py"
    spec = importlib.util.spec_from_file_location("docs_reference", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def config_rows() -> dict[str, list[str]]:
    """Each variable of the configuration reference's table -> its row's cells."""
    rows: dict[str, list[str]] = {}
    for line in reference().configuration().splitlines():
        if line.startswith("| `DISPATCHER_") or line.startswith("| `ECDP_"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            for name in re.findall(r"`((?:DISPATCHER|ECDP)_[A-Z0-9_]+)`", cells[0]):
                rows[name] = cells
    return rows


def test_every_variable_is_in_the_configuration_table() -> None:
    read = set(
        re.findall(r'"(DISPATCHER_[A-Z0-9_]+)"', (ROOT / "dispatcher/config.py").read_text())
    )
    assert "DISPATCHER_BREAKER_ENABLED" in read
    missing = read - set(config_rows()) - NOT_IN_THE_TABLE
    assert not missing, f"add these to dispatcher.config.VARIABLES: {sorted(missing)}"


def test_every_variable_any_module_reads_is_in_the_configuration_table() -> None:
    """Not only config.py's: the heartbeat folder (health.py), the web host (a click envvar)."""
    pattern = re.compile(
        r'(?:environ|env)(?:\.get)?[\[(]"((?:DISPATCHER|ECDP)_[A-Z0-9_]+)"'
        r'|envvar="((?:DISPATCHER|ECDP)_[A-Z0-9_]+)"'
    )
    read = {
        a or b
        for path in (ROOT / "dispatcher").rglob("*.py")
        for a, b in pattern.findall(path.read_text())
    }
    assert {"DISPATCHER_HEARTBEAT_DIR", "DISPATCHER_WEB_HOST"} <= read
    missing = read - set(config_rows()) - NOT_IN_THE_TABLE
    assert not missing, f"add these to dispatcher.config.VARIABLES: {sorted(missing)}"


def test_the_breaker_and_shutdown_defaults_are_the_real_ones() -> None:
    settings, rows = Settings(), config_rows()
    breaker = settings.breaker

    def default(name: str) -> str:
        return rows[name][1].strip("`")

    assert default("DISPATCHER_BREAKER_ENABLED") == str(breaker.enabled).lower()
    assert default("DISPATCHER_BREAKER_MIN_REQUESTS") == f"{breaker.min_requests}"
    assert default("DISPATCHER_BREAKER_FAILURE_RATIO") == f"{breaker.failure_ratio:g}"
    assert default("DISPATCHER_BREAKER_WINDOW_SECONDS") == f"{breaker.window_seconds:g}"
    assert default("DISPATCHER_BREAKER_PROBE_MIN_SECONDS") == f"{breaker.probe_min_seconds:g}"
    assert default("DISPATCHER_BREAKER_PROBE_MAX_SECONDS") == f"{breaker.probe_max_seconds:g}"
    assert default("DISPATCHER_SHUTDOWN_GRACE_SECONDS") == f"{settings.shutdown_grace_seconds:g}"
    assert Settings.from_env({}) == settings, "the dataclass defaults are the environment's"
    for name, cells in rows.items():
        if name.startswith("DISPATCHER_BREAKER_") or name == "DISPATCHER_SHUTDOWN_GRACE_SECONDS":
            assert len(cells[2]) > 30, f"{name}: say what it means"
    circuit = (ROOT / "docs" / "concepts" / "circuit.md").read_text()
    assert circuit.startswith("# The circuit breaker") or "# Circuit breaker" in circuit


def test_every_exported_metric_is_in_the_metrics_table(engine: sa.Engine) -> None:
    with engine.begin() as conn:
        pause(conn, "eu-shop", "401 Unauthorized", utcnow())
    set_circuit(engine, "default", "open", since=utcnow())  # so every family has a sample
    text = Metrics(engine).render().decode()
    exported = {
        re.sub(r"_(bucket|count|sum)$", "", name)
        for name in re.findall(r"^(dispatcher_[a-z_]+)", text, re.MULTILINE)
    }
    assert "dispatcher_queue_circuit_open" in exported
    assert "dispatcher_queue_circuit_info" in exported
    rendered = reference().metrics()
    table = set(re.findall(r"^\| `(dispatcher_[a-z_]+)[{`]", rendered, re.MULTILINE))
    assert exported <= table, f"not in the metrics reference: {sorted(exported - table)}"
