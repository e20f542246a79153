"""``config.VARIABLES``, the table the documentation's configuration reference and per-process
checklist are generated from, against what the code reads: every variable named, every
documented default the one the code uses."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from dispatcher.config import PROCESSES, VARIABLES, Settings, Variable

PACKAGE = Path(__file__).resolve().parents[2] / "dispatcher"
# Named in the code but not a setting: the old name refused with a pointer to the new one.
RETIRED = {"DISPATCHER_WORKER_THREADS"}


def names_in(module: str) -> set[str]:
    text = (PACKAGE / (module.removeprefix("dispatcher.").replace(".", "/") + ".py")).read_text()
    return set(re.findall(r'"((?:DISPATCHER|ECDP)_[A-Z0-9_]+)"', text))


def documented() -> set[str]:
    names = {v.name for v in VARIABLES}
    return names | {v.name.removesuffix("<QUEUE>") for v in VARIABLES}


def test_every_variable_the_settings_read_is_in_the_table() -> None:
    read = names_in("dispatcher.config") - RETIRED
    read = {name for name in read if not name.endswith("_")}  # prefixes of per-queue names
    missing = read - documented()
    assert not missing, f"add these to config.VARIABLES: {sorted(missing)}"


@pytest.mark.parametrize("variable", [v for v in VARIABLES if v.read_in != "dispatcher.config"])
def test_a_variable_read_elsewhere_is_read_where_the_table_says(variable: Variable) -> None:
    assert variable.name in names_in(variable.read_in)


@pytest.mark.parametrize(
    "variable", [v for v in VARIABLES if v.read_in == "dispatcher.config" and v.default is not None]
)
def test_the_documented_default_is_the_one_the_code_uses(variable: Variable) -> None:
    assert variable.default is not None
    given = Settings.from_env({variable.name: variable.default})
    assert given == Settings.from_env({}), f"{variable.name}={variable.default} is not the default"


def test_every_row_names_its_processes_and_says_what_it_means() -> None:
    assert len({v.name for v in VARIABLES}) == len(VARIABLES)
    for v in VARIABLES:
        assert v.processes and v.processes <= set(PROCESSES), v.name
        assert len(v.meaning) > 10, v.name
