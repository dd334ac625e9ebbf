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
