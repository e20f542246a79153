"""The README stays short (issue 26: at most 250 lines) and points into the documentation site: it
keeps the two quick-start lines that CI (.ci/run) and tests/integration/test_demo.py rely on, the
site's home and getting-started pages show the same two lines, and every relative link resolves."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()
QUICK_START = (
    "python3 -m venv .venv && . .venv/bin/activate && pip install . && dispatcher demo\n"
    "pip install -c constraints.txt -e '.[dev]' && pytest\n"
)


def test_the_readme_is_at_most_250_lines() -> None:
    assert len(README.splitlines()) <= 250


def test_the_readme_keeps_its_two_quick_start_lines() -> None:
    assert f"```sh\n{QUICK_START}```" in README


def test_the_site_shows_the_same_two_lines() -> None:
    for page in ("docs/index.md", "docs/getting-started.md"):
        assert f"```sh\n{QUICK_START}```" in (ROOT / page).read_text(), page


def test_the_readme_says_how_to_build_the_site() -> None:
    assert "pip install -e '.[docs]' && mkdocs serve" in README


def test_every_relative_link_of_the_readme_resolves() -> None:
    targets = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", README)
    local = [t for t in targets if not re.match(r"[a-z]+:", t)]
    assert any(t.startswith("docs/") for t in local)
    missing = [t for t in local if not (ROOT / t).exists()]
    assert not missing, f"the README links to files that do not exist: {missing}"
