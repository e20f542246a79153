"""prometheus/alerts.yml: loads in promtool (and passes its rule unit tests) where promtool is
installed; everywhere, its structure is checked and every metric it uses is one we export."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
import yaml

from dispatcher.db import utcnow
from dispatcher.outbox import pause
from dispatcher.web.metrics import Metrics

from .conftest import set_circuit

RULES = Path(__file__).resolve().parents[2] / "prometheus" / "alerts.yml"
DURATION = re.compile(r"^([0-9]+(ms|s|m|h|d|w|y))+$")


def rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load(RULES.read_text())
    assert set(doc) == {"groups"}
    return [rule for group in doc["groups"] for rule in group["rules"]]


def test_promtool_checks_and_unit_tests_the_rules() -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not installed (Debian package prometheus); see the parsing test")
    for args in (["check", "rules", RULES.name], ["test", "rules", "alerts_test.yml"]):
        done = subprocess.run(
            [promtool, *args], cwd=RULES.parent, capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 0, done.stdout + done.stderr


def test_the_rules_an_operator_needs() -> None:
    found = {r["alert"]: r for r in rules()}
    assert set(found) == {
        "DispatcherQueuePaused",
        "DispatcherCircuitOpen",
        "DispatcherDeliveryLag",
        "DispatcherDeadLettersGrowing",
        "DispatcherNoDeliveries",
        "DispatcherDatabaseDown",
        "DispatcherScrapeFailing",
        "DispatcherMetricsAbsent",
    }
    assert found["DispatcherQueuePaused"]["for"] == "5m"
    assert "dispatcher_queue_paused" in found["DispatcherQueuePaused"]["expr"]
    assert found["DispatcherCircuitOpen"]["for"] == "5m"
    assert "dispatcher_queue_circuit_open" in found["DispatcherCircuitOpen"]["expr"]
    # One alert per cause: an open circuit is not also reported as "no deliveries".
    assert "dispatcher_queue_circuit_open" in found["DispatcherNoDeliveries"]["expr"]
    assert "> 900" in found["DispatcherDeliveryLag"]["expr"]  # 15 minutes
    for rule in found.values():
        assert set(rule) <= {"alert", "expr", "for", "labels", "annotations"}
        assert rule["labels"]["severity"] in ("critical", "warning")
        assert rule["annotations"]["summary"] and rule["annotations"]["description"]
        assert DURATION.match(rule.get("for", "0s")), rule["alert"]
        expr = rule["expr"]
        assert expr.count("(") == expr.count(")") and expr.count("{") == expr.count("}")
        assert expr.count("[") == expr.count("]")


def test_every_metric_the_rules_use_is_exported(engine: sa.Engine) -> None:
    with engine.begin() as conn:
        pause(conn, "eu-shop", "401 Unauthorized", utcnow())
    set_circuit(engine, "default", "open", since=utcnow())  # so its info metric is there too
    text = Metrics(engine).render().decode()
    exported = set(re.findall(r"^(dispatcher_[a-z_]+)", text, re.MULTILINE))
    used = {m for r in rules() for m in re.findall(r"\b(dispatcher_[a-z_]+)", r["expr"])}
    used |= {
        m for r in rules() for m in re.findall(r"\b(dispatcher_[a-z_]+)", str(r["annotations"]))
    }
    assert used and used <= exported, used - exported
