"""Reproducible installs (issue 26): constraints.txt pins every dependency pyproject.toml declares,
within its ranges; every range stops below the next major version; the Dockerfile starts from an
exact Python release and installs with the pins; CI and the README use them too."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
UNBOUNDED = {"certifi"}  # a CA bundle must stay current


def requirements() -> list[Requirement]:
    found = [Requirement(r) for r in PROJECT["dependencies"]]
    for extra in PROJECT["optional-dependencies"].values():
        found += [Requirement(r) for r in extra]
    return [r for r in found if canonicalize_name(r.name) != "ecdp-dispatcher"]


def pins() -> dict[str, str]:
    found = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, _, version = line.partition("==")
            assert version, f"constraints.txt: {line!r} is not an exact pin"
            found[canonicalize_name(name)] = version
    return found


def test_every_dependency_is_pinned_within_its_range() -> None:
    pinned = pins()
    for requirement in requirements():
        name = canonicalize_name(requirement.name)
        assert name in pinned, f"constraints.txt: no pin for {requirement.name}"
        assert requirement.specifier.contains(pinned[name], prereleases=True), (
            f"constraints.txt pins {name}=={pinned[name]}, outside {requirement}"
        )


def test_every_range_has_an_upper_bound() -> None:
    for requirement in requirements():
        if canonicalize_name(requirement.name) in UNBOUNDED:
            continue
        assert any(s.operator in ("<", "<=", "~=", "==") for s in requirement.specifier), (
            f"pyproject.toml: {requirement} has no upper bound"
        )


def test_the_project_names_its_urls() -> None:
    urls = PROJECT["urls"]
    assert {"Homepage", "Repository", "Issues", "Changelog"} <= set(urls)
    assert all(url.startswith("https://") for url in urls.values())


def test_the_image_and_ci_install_the_pins() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    (base,) = re.findall(r"^FROM (\S+)", dockerfile, re.MULTILINE)
    assert re.fullmatch(r"python:3\.\d+\.\d+-slim", base), f"not an exact release: {base}"
    installs = re.findall(r"pip install [^\n]*", dockerfile)
    assert installs and all("-c constraints.txt" in line for line in installs), installs
    assert "COPY pyproject.toml constraints.txt" in dockerfile  # the dependency layer comes first
    assert dockerfile.index("constraints.txt") < dockerfile.index("COPY dispatcher")
    ci = (ROOT / ".ci" / "run").read_text()
    assert "pip install -q -c constraints.txt -e '.[dev]' && pytest" in ci
    readme = (ROOT / "README.md").read_text()
    assert "pip install -c constraints.txt -e '.[dev]' && pytest" in readme


def test_compose_names_every_variable_it_requires_in_the_readme() -> None:
    compose = (ROOT / "docker-compose.yml").read_text()
    required = set(re.findall(r"\$\{([A-Z_]+):\?", compose))
    assert required == {"ECDP_API_KEY", "DISPATCHER_ADMIN_TOKEN"}
    for page in ("README.md", "docs/operations/running.md"):
        text = (ROOT / page).read_text()
        (line,) = [x for x in text.split("\n\n") if "docker compose up" in x and "production" in x]
        for name in required:
            assert name in line, f"{page}'s `docker compose up` line does not name {name}"
