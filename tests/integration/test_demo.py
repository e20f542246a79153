"""The README's first quick-start line, for real: a fresh virtual environment, `pip install .`,
`dispatcher demo`, exit 0."""

from __future__ import annotations

import os
import subprocess
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow


def test_readme_install_line_then_demo_in_a_fresh_venv(tmp_path: Path) -> None:
    readme = (ROOT / "README.md").read_text()
    assert "pip install . && dispatcher demo" in readme
    venv.create(tmp_path / "venv", with_pip=True)
    bin_dir = tmp_path / "venv" / "bin"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DISPATCHER_", "ECDP_"))}
    env.pop("VIRTUAL_ENV", None)
    env["PATH"] = f"{bin_dir}{os.pathsep}{env['PATH']}"
    # A copy of the checkout, so the build leaves nothing behind in the work tree.
    src = tmp_path / "src"
    files = subprocess.run(
        ["git", "-C", str(ROOT), "ls-files", "-co", "--exclude-standard", "-z"],
        check=True,
        capture_output=True,
    ).stdout.split(b"\0")
    for name in filter(None, files):
        target = src / name.decode()
        if (ROOT / name.decode()).is_file():
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes((ROOT / name.decode()).read_bytes())
    install = subprocess.run(
        [str(bin_dir / "pip"), "install", "-q", "."],
        cwd=src,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert install.returncode == 0, install.stderr[-3000:]
    work = tmp_path / "work"
    work.mkdir()
    demo = subprocess.run(
        [str(bin_dir / "dispatcher"), "demo"],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert demo.returncode == 0, demo.stdout[-3000:] + demo.stderr[-3000:]
    out = demo.stdout
    assert "delivery history" in out and "QUEUE" in out
    assert " dead " in out and " delivered " in out
    assert "demo-key" not in out + demo.stderr  # the API key is never printed
