"""The package's folders are the pipeline, and imports only go down it: a module imports
from its own stage or an earlier one, never a later one (docs/layout.md)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "dynamicdet_cli"
# Earliest first: core pieces, the recipe, data, the network, the checkpoint that stores it,
# choosing the speed, evaluation, the two training steps, inference on files, export, the
# Python API, and the command line on top.
ORDER = ["core", "config", "data", "model", "checkpoint", "speed", "evaluation", "train", "router",
         "predict", "export", "api", "cli"]
DATA = ["recipes"]  # no code: the link to the repository's recipes/, which the package carries


def _stage(path: Path) -> str | None:
    first = path.relative_to(PACKAGE).with_suffix("").parts[0]
    return first if first in ORDER else None


def test_every_module_belongs_to_a_stage():
    loose = [p.name for p in PACKAGE.glob("*.py") if p.stem not in ("__init__", "__main__") and _stage(p) is None]
    folders = [p.name for p in PACKAGE.iterdir() if p.is_dir() and p.name != "__pycache__" and p.name not in ORDER + DATA]
    assert loose == [] and folders == []
    assert not list((PACKAGE / "recipes").glob("*.py"))


def _imported_stages(node: ast.AST) -> list[str]:
    """The package stages an import statement reaches, in each of its forms:
    `from dynamicdet_cli.X(.y) import z`, `from dynamicdet_cli import X`, `import dynamicdet_cli.X`."""
    if isinstance(node, ast.ImportFrom) and node.module == "dynamicdet_cli":
        return [alias.name for alias in node.names]
    if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("dynamicdet_cli."):
        return [node.module.split(".")[1]]
    if isinstance(node, ast.Import):
        return [alias.name.split(".")[1] for alias in node.names if alias.name.startswith("dynamicdet_cli.")]
    return []


def test_imports_only_go_down_the_pipeline():
    upward = []
    for path in PACKAGE.rglob("*.py"):
        me = _stage(path)
        if me is None:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            for target in _imported_stages(node):
                if target in ORDER and ORDER.index(target) > ORDER.index(me):
                    upward.append(f"{path.relative_to(PACKAGE)}:{node.lineno} ({me} imports {target})")
    assert upward == []


def test_the_import_check_sees_every_form_of_import():
    forms = {"from dynamicdet_cli.api import load": ["api"], "from dynamicdet_cli import api, cli": ["api", "cli"],
             "import dynamicdet_cli.api as a": ["api"], "import os": [], "from . import x": []}
    for code, stages in forms.items():
        assert _imported_stages(ast.parse(code).body[0]) == stages, code
