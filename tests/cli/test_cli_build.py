"""`dynamicdet build` and `dynamicdet info` through the CLI, and how user errors are shown."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from dynamicdet_cli.cli.app import typer_app

RECIPES = Path(__file__).resolve().parents[2] / "recipes"
TINY = RECIPES / "shapes-tiny.yaml"
pytestmark = pytest.mark.usefixtures("one_thread")
SMALL = ["--set", "model.transform.min_size=64", "--set", "model.transform.max_size=64"]


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


def test_build_then_info(runner, tmp_path):
    out = tmp_path / "tmp" / "m.pt"
    result = runner.invoke(typer_app, ["build", str(TINY), "-o", str(out), *SMALL, "--classes", "a,b,c"])
    assert result.exit_code == 0, result.output
    assert out.is_file()
    result = runner.invoke(typer_app, ["info", str(out), "--no-flops"])
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "not trained" in text
    assert "3: a, b, c" in text
    assert "GMACs" not in text


def test_info_counts_flops(runner, tmp_path):
    out = tmp_path / "m.pt"
    assert runner.invoke(typer_app, ["build", str(TINY), "-o", str(out), *SMALL]).exit_code == 0
    result = runner.invoke(typer_app, ["info", str(out), "--image-size", "64"])
    assert result.exit_code == 0, result.output
    assert "GMACs" in result.output


def _one_line_error(result, *needles: str) -> str:
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    lines = [line for line in result.output.splitlines() if "error:" in line]
    assert len(lines) == 1, result.output
    for needle in needles:
        assert needle in lines[0], result.output
    return lines[0]


def test_recipe_typo_exits_2_with_the_suggestion(runner, tmp_path):
    recipe = tmp_path / "typo.yaml"
    recipe.write_text(f"_base_: {RECIPES / 'dy-faster-rcnn-r50-fpn.yaml'}\nmodel:\n  rooter:\n    reduction: 8\n")
    result = runner.invoke(typer_app, ["build", str(recipe), "-o", str(tmp_path / "m.pt")])
    _one_line_error(result, "did you mean model.router")
    assert not (tmp_path / "m.pt").exists()


def test_override_typo_exits_2_with_the_suggestion(runner, tmp_path):
    result = runner.invoke(typer_app, ["build", str(TINY), "-o", str(tmp_path / "m.pt"),
                                       "--set", "model.router.reductoin=8"])
    _one_line_error(result, "did you mean model.router.reduction")


def test_info_on_a_corrupt_file_exits_2(runner, tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"PK\x03\x04" + b"\x00" * 100)
    _one_line_error(runner.invoke(typer_app, ["info", str(bad)]), "truncated or corrupt")


def test_info_on_a_missing_file_exits_2(runner, tmp_path):
    _one_line_error(runner.invoke(typer_app, ["info", str(tmp_path / "nope.pt")]), "not found")


# ----------------------------------------------------------------------------- shipped recipes by name

def test_shipped_recipes_are_found_by_name_from_any_folder(runner, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no recipes/ here: the names resolve to the package's copies
    out = tmp_path / "m.pt"
    result = runner.invoke(typer_app, ["build", "shapes-tiny", "-o", str(out), *SMALL])
    assert result.exit_code == 0, result.output
    from dynamicdet_cli.checkpoint.store import load_checkpoint
    assert load_checkpoint(out).recipe.model.backbone.widths == (16, 32, 64, 128)  # shapes-tiny's, not the base's
    result = runner.invoke(typer_app, ["info", "dy-yolo-n.yaml", "--no-flops"])
    assert result.exit_code == 0, result.output
    assert "width 0.25, depth 0.33" in " ".join(result.output.split())


def test_a_file_in_the_working_folder_wins_over_a_shipped_recipe_of_that_name(runner, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "shapes-tiny.yaml").write_text(f"_base_: {TINY}\nmodel:\n  num_classes: 3\n")
    result = runner.invoke(typer_app, ["build", "shapes-tiny.yaml", "-o", "m.pt", *SMALL])
    assert result.exit_code == 0, result.output
    from dynamicdet_cli.checkpoint.store import load_checkpoint
    assert load_checkpoint(tmp_path / "m.pt").num_classes == 3


def test_an_unknown_recipe_name_suggests_the_closest_shipped_one(runner, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for command in (["build", "dy-yolo-nn", "-o", "m.pt"], ["info", "dy-yolo-nn"]):
        _one_line_error(runner.invoke(typer_app, command), "dy-yolo-nn: no recipe file of that name here",
                        "did you mean dy-yolo-n?", "dynamicdet recipes")
    assert not (tmp_path / "m.pt").exists()
    # a path with a folder is a file path: no lookup, the old message
    _one_line_error(runner.invoke(typer_app, ["info", "nowhere/dy-yolo-n.yaml"]), "recipe file not found")


def test_recipes_lists_every_shipped_recipe(runner):
    result = runner.invoke(typer_app, ["recipes"], terminal_width=120)
    assert result.exit_code == 0, result.output
    names = [line.split()[0] for line in result.output.splitlines() if line.strip().startswith(("dy-", "shapes-"))]
    assert names == sorted(p.stem for p in RECIPES.glob("*.yaml"))
    row = next(line.split() for line in result.output.splitlines() if line.strip().startswith("dy-yolo-m "))
    assert row[1:] == ["yolo", "CSP", "x0.75/0.67", "640", "80", "300"]
