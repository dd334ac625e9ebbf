"""The recipe key table of docs/recipes.md is generated from the recipe's field help."""

from __future__ import annotations

from pathlib import Path

import pytest

from dynamicdet_cli.config.keys_doc import END, START, main, marked_block, recipe_key_table, recipe_keys, with_key_table
from dynamicdet_cli.config.recipe import Recipe, recipe_to_dict
from dynamicdet_cli.core.errors import DynamicDetError

DOC = Path(__file__).resolve().parents[2] / "docs" / "recipes.md"
REGENERATE = "python -m dynamicdet_cli.config.keys_doc --write docs/recipes.md"


def test_docs_recipes_holds_the_generated_table():
    block = marked_block(DOC.read_text(encoding="utf-8"))
    assert block == recipe_key_table(), f"docs/recipes.md's key table is stale: run {REGENERATE}"


def test_every_recipe_key_has_a_help_text():
    empty = [k.key for k in recipe_keys() if not k.help.strip()]
    assert not empty, f"recipe keys without help in config/recipe.py: {empty}"


def test_the_table_lists_every_key_once_in_the_recipe_order():
    keys = [k.key for k in recipe_keys()]

    def leaves(tree: dict, prefix: str = "") -> list[str]:  # what a recipe file holds, in its order
        return [key for name, value in tree.items()
                for key in (leaves(value, f"{prefix}{name}.") if isinstance(value, dict) else [f"{prefix}{name}"])]

    assert keys == leaves(recipe_to_dict(Recipe()))
    rows = recipe_key_table().splitlines()[2:]
    assert [row.split("`")[1] for row in rows] == keys


def test_writing_replaces_only_the_marked_block(tmp_path):
    doc = tmp_path / "doc.md"
    doc.write_text(f"# before\n{START}\nold table\n{END}\nafter\n", encoding="utf-8")
    assert main(["--write", str(doc)]) == 0
    text = doc.read_text(encoding="utf-8")
    assert text.startswith(f"# before\n{START}\n| key |") and text.endswith(f"{END}\nafter\n")
    assert with_key_table(text) == text


def test_a_file_without_the_markers_is_refused(tmp_path, capsys):
    with pytest.raises(DynamicDetError, match="keys:start"):
        with_key_table("# no block here\n")
    doc = tmp_path / "doc.md"
    doc.write_text("# no block here\n", encoding="utf-8")
    assert main(["--write", str(doc)]) == 2
    assert "keys:start" in capsys.readouterr().err
    assert doc.read_text(encoding="utf-8") == "# no block here\n"
