"""Every third-party module that ``dispatcher/`` imports (inside functions too) is declared in
pyproject.toml, in the base dependencies or an extra: none may arrive only through another
package's requirements (anyio came with Starlette, markupsafe with Jinja2)."""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def imported_top_level_modules() -> set[str]:
    found: set[str] = set()
    for path in (ROOT / "dispatcher").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found.update(alias.name.partition(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                found.add(node.module.partition(".")[0])
    return {m for m in found if m not in sys.stdlib_module_names and m != "dispatcher"}


def declared_distributions() -> set[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    requirements = [*project["dependencies"]]
    for extra in project["optional-dependencies"].values():
        requirements.extend(extra)
    names = {re.split(r"[\s\[<>=!~;]", r, maxsplit=1)[0] for r in requirements}
    return {n.lower().replace("_", "-") for n in names}


def test_every_imported_module_is_declared() -> None:
    providers = packages_distributions()
    declared = declared_distributions()
    undeclared = {
        module: providers.get(module)
        for module in imported_top_level_modules()
        if not {d.lower().replace("_", "-") for d in providers.get(module, [])} & declared
    }
    assert undeclared == {}
