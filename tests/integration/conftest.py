"""Fixtures shared by the integration tests (a module's own fixture of the same name wins)."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import pytest

from dispatcher.config import Settings
from dispatcher.delivery import Deliverer
from dispatcher.policy import RetryPolicy
from dispatcher.sandbox import Sandbox


@pytest.fixture
def deliverer(settings: Settings, sandbox: Sandbox) -> Iterator[Deliverer]:
    """A worker against this test's sandbox: quick retries (two attempts), four in flight."""
    d = Deliverer(
        dataclasses.replace(
            settings,
            base_url=sandbox.url,
            retry=RetryPolicy(base_seconds=0.01, max_seconds=0.05, max_attempts=2),
            http_timeout_seconds=2.0,
            max_in_flight=4,
        )
    )
    yield d
    d.close()
