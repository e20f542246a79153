"""A light, well-behaved install, resolved by pip against the package index (``--dry-run``: nothing
is installed): the base install pulls no web stack, and ``[web]`` resolves together with the
current FastAPI, Django and Flask-SQLAlchemy releases. Runs in CI; skipped locally without
network."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import IN_CI

pytestmark = [pytest.mark.slow, pytest.mark.network]

WEB_STACK = {"starlette", "uvicorn", "jinja2", "python-multipart", "prometheus-client", "flower"}


def resolve(*requirements: str) -> dict[str, str]:
    """What pip would install for ``requirements`` into an empty environment: name -> version."""
    done = subprocess.run(
        [
            *(sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "-q"),
            *("--report", "-", *requirements),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"},
    )
    if done.returncode != 0 and not IN_CI and "ResolutionImpossible" not in done.stderr:
        pytest.skip(f"pip could not reach the package index: {done.stderr.strip()[-300:]}")
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout)
    return {
        item["metadata"]["name"].lower().replace("_", "-"): item["metadata"]["version"]
        for item in report["install"]
    }


def test_the_base_install_pulls_no_web_stack(source: Path) -> None:
    resolved = resolve(str(source))
    assert "ecdp-dispatcher" in resolved
    assert "celery" in resolved and "sqlalchemy" in resolved
    assert not WEB_STACK & set(resolved), sorted(WEB_STACK & set(resolved))


def test_web_extra_installs_beside_current_fastapi_django_and_flask_sqlalchemy(
    source: Path,
) -> None:
    resolved = resolve(f"{source}[web]", "fastapi", "django", "flask-sqlalchemy")
    for name in ("ecdp-dispatcher", "starlette", "fastapi", "django", "flask-sqlalchemy"):
        assert name in resolved, name
