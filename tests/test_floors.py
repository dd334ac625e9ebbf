"""A range pyproject.toml declares is a range `make test` tests: every floor (`>=`) of the core
dependencies and of the extras that .venv-floors installs is the version constraints-floors.txt
pins, and the Makefile installs those extras there."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from packaging.version import Version  # pytest's own dependency

tomllib = pytest.importorskip("tomllib", reason="tomllib is in the standard library from Python 3.11")

ROOT = Path(__file__).resolve().parent.parent
FLOORS_EXTRAS = ("test", "plot", "tensorboard", "export")


def _floors(requirements: list[str]) -> dict[str, str]:
    """{name: floor} of requirements written `name>=X[,<Y]` (markers and other forms left out)."""
    found = {}
    for requirement in requirements:
        match = re.match(r"^\s*([A-Za-z0-9_.-]+)\s*>=\s*([0-9][^,;\s]*)", requirement)
        if match:
            found[match.group(1).lower()] = match.group(2)
    return found


def _pins(path: Path) -> dict[str, str]:
    pins = {}
    for line in path.read_text().splitlines():
        match = re.match(r"^([A-Za-z0-9_.-]+)==([^\s;#]+)\s*$", line)
        if match:
            pins[match.group(1).lower()] = match.group(2)
    return pins


def test_every_declared_floor_is_the_version_the_floors_run_installs():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = _floors(project["dependencies"])
    for extra in FLOORS_EXTRAS:
        declared |= _floors(project["optional-dependencies"][extra])
    pins = _pins(ROOT / "constraints-floors.txt")
    assert declared, "no floors parsed from pyproject.toml"
    wrong = {name: (floor, pins.get(name)) for name, floor in declared.items()
             if name not in pins or Version(pins[name]) != Version(floor)}
    assert not wrong, f"pyproject floor vs constraints-floors.txt pin: {wrong}"


def test_the_floors_venv_installs_the_extras_whose_floors_are_pinned():
    makefile = (ROOT / "Makefile").read_text()
    match = re.search(r"-c constraints-floors\.txt -e '\.\[([a-z,]+)\]'", makefile)
    assert match, "the Makefile's floors install line was not found"
    assert set(match.group(1).split(",")) == set(FLOORS_EXTRAS)
