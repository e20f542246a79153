"""Hostile and bad input: clear errors naming the field, nothing written, nothing crashes, and the
API key never shows up anywhere."""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dispatcher import CustomEvent, SegmentEvent, ValidationError, enqueue, enqueue_many
from dispatcher.cli import main
from dispatcher.config import Settings
from dispatcher.delivery import Deliverer
from dispatcher.policy import RetryPolicy
from dispatcher.sandbox import Reply, Sandbox
from dispatcher.schema import attempts, jobs, metadata

pytestmark = [pytest.mark.faults, pytest.mark.usefixtures("env")]
FIXTURES = [HealthCheck.function_scoped_fixture, HealthCheck.too_slow]


def count(engine: sa.Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(sa.select(sa.func.count()).select_from(jobs)).scalar_one())


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner),
    max_leaves=12,
)
keys = st.sampled_from(
    [
        "customEventId",
        "customerId",
        "customerEmail",
        "customerPhone",
        "customerCrmId",
        "customerEmailMd5",
        "customerEmailSha256",
        "segments",
        "dataFields",
        "unknown",
    ]
)


@settings(max_examples=80, deadline=None, suppress_health_check=FIXTURES)
@given(st.dictionaries(keys, json_values, max_size=6) | json_values)
def test_property_cli_file_rejects_or_writes_exactly_one(
    engine: sa.Engine, tmp_path: Path, body: object
) -> None:
    path = tmp_path / "events.jsonl"
    path.write_text(json.dumps(body) + "\n")
    before = count(engine)
    result = CliRunner().invoke(main, ["enqueue", "--file", str(path)])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    if result.exit_code == 0:
        assert count(engine) == before + 1
    else:
        assert result.exit_code == 1
        assert "line 1: " in result.output
        assert count(engine) == before


@settings(max_examples=40, deadline=None, suppress_health_check=FIXTURES)
@given(st.binary(max_size=300))
def test_property_cli_file_with_random_bytes(engine: sa.Engine, tmp_path: Path, raw: bytes) -> None:
    path = tmp_path / "events.jsonl"
    path.write_bytes(raw.replace(b"\n", b" ") + b"\n")
    before = count(engine)
    result = CliRunner().invoke(main, ["enqueue", "--file", str(path)])
    assert isinstance(result.exception, SystemExit | None)
    if result.exit_code != 0:
        assert count(engine) == before
        assert "line 1: " in result.output or not raw.strip()


@pytest.mark.parametrize(
    ("line", "message"),
    [
        (b"\xff\xfe not utf-8\n", "line 1: body: not valid UTF-8"),
        (b'{"customEventId": 1, "customerEmail": "' + b"a" * 10_000_000 + b'"}\n', "line 1: body"),
        (b"[1, 2, 3]\n", "line 1: body: expected a JSON object"),
        (b'{"customEventId": 1, "customerId": 1}\n{"customEventId": "x"}\n', "line 2: "),
    ],
)
def test_cli_file_bad_lines_write_nothing(
    engine: sa.Engine, tmp_path: Path, line: bytes, message: str
) -> None:
    path = tmp_path / "events.jsonl"
    path.write_bytes(line)
    result = CliRunner().invoke(main, ["enqueue", "--file", str(path)])
    assert result.exit_code == 1
    assert message in result.output
    assert count(engine) == 0


@settings(max_examples=60, deadline=None, suppress_health_check=FIXTURES)
@given(
    st.one_of(
        st.builds(dict, customer_email=st.text(max_size=500)),
        st.builds(dict, customer_phone=st.text(max_size=40)),
        st.builds(dict, customer_crm_id=st.text(max_size=200)),
        st.builds(dict, customer_id=st.integers() | st.text() | st.floats()),
        st.builds(dict, data_fields=st.lists(json_values, max_size=3)),
    ),
    st.integers(min_value=-(2**33), max_value=2**33) | st.text(max_size=5) | st.none(),
)
def test_property_constructors_and_enqueue(engine: sa.Engine, kwargs: dict, event_id) -> None:
    before = count(engine)
    try:
        event = CustomEvent(event_id, **kwargs)
    except ValidationError as exc:
        assert all(": " in e for e in exc.errors)  # every message names its field
        assert count(engine) == before
        return
    enqueue_many([event, event])
    assert count(engine) == before + 2


def test_huge_segment_lists_and_values_are_refused_cleanly(engine: sa.Engine) -> None:
    with pytest.raises(ValidationError, match="segments"):
        enqueue(SegmentEvent(1, list(range(2**31, 2**31 + 300_000))))
    with pytest.raises(ValidationError, match="customer_crm_id"):
        enqueue(CustomEvent(1, customer_crm_id="x" * 10_000_000))
    assert count(engine) == 0


@pytest.fixture
def deliverer(settings: Settings, sandbox: Sandbox) -> Iterator[Deliverer]:
    d = Deliverer(
        dataclasses.replace(
            settings,
            base_url=sandbox.url,
            retry=RetryPolicy(base_seconds=0.01, max_seconds=0.02, max_attempts=2),
        )
    )
    yield d
    d.close()


def test_huge_or_non_json_response_bodies_are_stored_truncated(
    deliverer: Deliverer, sandbox: Sandbox, engine: sa.Engine
) -> None:
    sandbox.script(1, Reply(400, b"<html>" + b"x" * 5_000_000, {"Content-Type": "text/html"}))
    sandbox.script(2, Reply(503, b"\xff\xfe\x00 binary \x00"), Reply(503, b"not json"))
    sandbox.script(3, Reply(201, b"z" * 3_000_000))
    for event_id in (1, 2, 3):
        enqueue(CustomEvent(event_id, customer_id=event_id))
    for _ in range(20):
        deliverer.drain("default")
        with engine.connect() as conn:
            waiting = conn.execute(
                sa.select(sa.func.count()).where(jobs.c.status.in_(("pending", "retrying")))
            ).scalar_one()
        if not waiting:
            break
        time.sleep(0.05)  # the retry's scheduled time, not an assertion
    with engine.connect() as conn:
        rows = {r.custom_event_id: r for r in conn.execute(sa.select(jobs))}
        bodies = list(conn.execute(sa.select(attempts.c.response_body)).scalars())
    assert rows[1].status == "dead" and rows[2].status == "dead" and rows[3].status == "delivered"
    limit = deliverer.settings.response_body_limit
    assert all(b is None or len(b.encode()) <= limit + 200 for b in bodies)
    assert any("truncated" in (b or "") for b in bodies)


def test_api_key_appears_nowhere(
    deliverer: Deliverer,
    sandbox: Sandbox,
    engine: sa.Engine,
    api_key: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    sandbox.script(11, Reply(400, {"detail": "bad"}))
    sandbox.script(12, Reply(500))
    ids = [enqueue(CustomEvent(e, customer_email=f"k{e}@example.com")) for e in (10, 11, 12)]
    deliverer.drain("default")
    sandbox.api_key = "rotated"  # a 401 pauses the queue: its reason is stored and printed
    enqueue(CustomEvent(13, customer_id=1))
    deliverer.drain("default")

    dump = []
    with engine.connect() as conn:
        for table in metadata.sorted_tables:
            dump.extend(str(tuple(row)) for row in conn.execute(sa.select(table)))
    assert dump and not [row for row in dump if api_key in row]

    runner = CliRunner()
    outputs = [
        runner.invoke(main, args).output
        for args in (
            ["history"],
            ["history", "--json"],
            ["stats"],
            ["stats", "--json"],
            *(["show", i] for i in ids),
            *(["show", i, "--json"] for i in ids),
        )
    ]
    assert all(outputs)
    assert not [o for o in outputs if api_key in o]
    assert api_key not in caplog.text
    assert repr(deliverer.settings).count(api_key) == 0
