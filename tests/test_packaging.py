"""What an installed wheel carries: the package and the shipped recipes, found by name there too
(pyproject's package-data; dynamicdet_cli/recipes links to recipes/)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _setuptools_builds_this_project() -> bool:
    try:
        import setuptools
    except ImportError:
        return False
    return int(setuptools.__version__.split(".")[0]) >= 77  # pyproject's build-system floor


@pytest.mark.skipif(not _setuptools_builds_this_project(),
                    reason="needs setuptools>=77 in this environment to build the wheel without the network")
def test_the_wheel_carries_every_shipped_recipe_and_finds_them_by_name(tmp_path):
    # built from a copy: setuptools writes build/ and *.egg-info beside the sources
    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md", "dynamicdet_cli", "recipes"):
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, source / name, symlinks=True, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(REPO / name, source / name)
    assert (source / "dynamicdet_cli" / "recipes").is_symlink()  # the link itself travels, as in a clone
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                           "-w", str(tmp_path / "dist"), str(source)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    wheel = next((tmp_path / "dist").glob("dynamicdet-*.whl"))
    shipped = sorted(REPO.glob("recipes/*.yaml"))
    with zipfile.ZipFile(wheel) as zf:
        for path in shipped:  # the files themselves, not links
            assert zf.read(f"dynamicdet_cli/recipes/{path.name}") == path.read_bytes(), path.name
        zf.extractall(tmp_path / "site")
    code = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(tmp_path / 'site')!r})
        import dynamicdet_cli
        from dynamicdet_cli.config.recipe import find_recipe, load_recipe, shipped_recipes
        assert dynamicdet_cli.__file__.startswith({str(tmp_path / 'site')!r}), dynamicdet_cli.__file__
        print(len(shipped_recipes()), find_recipe("dy-yolo-n").parent, load_recipe("dy-yolo-n").model.backbone.width_multiple)
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert done.returncode == 0, done.stderr
    count, folder, width = done.stdout.split()
    assert int(count) == len(shipped) and width == "0.25"
    assert Path(folder) == tmp_path / "site" / "dynamicdet_cli" / "recipes"
