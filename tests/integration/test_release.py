"""Release hygiene: the wheel carries what the package needs at run time (migrations, templates,
``py.typed``, the licence), builds without a deprecation warning, and reports one version."""

from __future__ import annotations

import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import dispatcher
from tests.support import ROOT

pytestmark = [pytest.mark.slow, pytest.mark.network]


def test_the_wheel_holds_what_runs_and_builds_without_warnings(
    source: Path,
    tmp_path: Path,
) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--outdir", str(tmp_path), str(source)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    output = done.stdout + done.stderr
    assert not re.search(r"(?i)deprecat", output), output[-3000:]
    (wheel,) = tmp_path.glob("*.whl")
    assert wheel.name.startswith(f"ecdp_dispatcher-{dispatcher.__version__}-")
    names = set(zipfile.ZipFile(wheel).namelist())
    for migration in (ROOT / "dispatcher/migrations/versions").glob("0*.py"):
        assert f"dispatcher/migrations/versions/{migration.name}" in names
    assert "dispatcher/migrations/script.py.mako" in names
    templates = {p.name for p in (ROOT / "dispatcher/web/templates").glob("*.html")}
    assert templates and all(f"dispatcher/web/templates/{t}" in names for t in templates)
    assert "dispatcher/py.typed" in names
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names), sorted(names)[-10:]
    metadata = next(n for n in names if n.endswith(".dist-info/METADATA"))
    text = zipfile.ZipFile(wheel).read(metadata).decode()
    assert "License-Expression: MIT" in text


def test_one_version_everywhere() -> None:
    from click.testing import CliRunner

    from dispatcher.cli import main

    result = CliRunner().invoke(main, ["--version"])
    assert result.exit_code == 0 and dispatcher.__version__ in result.output
    changelog = (ROOT / "CHANGELOG.md").read_text()
    assert f"## [{dispatcher.__version__}]" in changelog
    assert "MIT License" in (ROOT / "LICENSE").read_text()
