"""Recipes: loading, one level of inheritance, key and value checks, overrides, documentation."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from dynamicdet_cli.core.errors import DynamicDetError
from dynamicdet_cli.config.keys_doc import recipe_keys
from dynamicdet_cli.config.recipe import Recipe, load_recipe, recipe_from_dict, recipe_to_dict, with_overrides

RECIPES = Path(__file__).resolve().parents[2] / "recipes"
BASE = RECIPES / "dy-faster-rcnn-r50-fpn.yaml"
TINY = RECIPES / "shapes-tiny.yaml"


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


@pytest.mark.parametrize("path", [BASE, TINY], ids=lambda p: p.name)
def test_shipped_recipes_load(path):
    recipe = load_recipe(path)
    assert isinstance(recipe, Recipe)
    assert recipe_from_dict(recipe_to_dict(recipe)) == recipe


def test_base_recipe_matches_the_defaults():
    # Except its ImageNet starting weights: the default is none, which is what a checkpoint
    # written before the key existed means.
    base = load_recipe(BASE)
    assert base.model.backbone.weights == "torchvision:ResNet50_Weights.IMAGENET1K_V1"
    assert with_overrides(base, ['model.backbone.weights=""']) == Recipe()


def test_base_inheritance_merges_section_by_section():
    base, tiny = load_recipe(BASE), load_recipe(TINY)
    assert tiny.model.num_classes == 5 and tiny.model.backbone.kind == "regnet"
    assert tiny.model.rpn.anchor_sizes == (12, 24, 48, 96)
    # keys the child does not name keep the base's values, even inside a section it overrides
    assert tiny.model.rpn.aspect_ratios == base.model.rpn.aspect_ratios
    assert tiny.model.rpn.nms_thresh == base.model.rpn.nms_thresh
    assert tiny.model.backbone.share_stem is base.model.backbone.share_stem
    assert tiny.model.transform.image_mean == base.model.transform.image_mean
    assert tiny.train.momentum == base.train.momentum
    assert tiny.router.loss_draws == base.router.loss_draws


def test_a_base_may_have_a_base_and_the_nearest_value_wins(tmp_path):
    write(tmp_path / "grand.yaml", "model:\n  num_classes: 3\n  router:\n    reduction: 2\ntrain:\n  epochs: 7\n")
    (tmp_path / "sub").mkdir()
    write(tmp_path / "sub" / "parent.yaml", "_base_: ../grand.yaml\nmodel:\n  num_classes: 4\n")
    child = write(tmp_path / "sub" / "child.yaml", "_base_: parent.yaml\nmodel:\n  router:\n    reduction: 8\n")
    recipe = load_recipe(child)
    # each _base_ is relative to the file that names it; the child's value beats the parent's,
    # the parent's the grandparent's, and keys no one overrides come from the farthest base
    assert recipe.model.num_classes == 4 and recipe.model.router.reduction == 8 and recipe.train.epochs == 7


def test_a_base_chain_that_comes_back_is_refused(tmp_path):
    write(tmp_path / "a.yaml", "_base_: b.yaml\n")
    write(tmp_path / "b.yaml", "_base_: c.yaml\n")
    write(tmp_path / "c.yaml", "_base_: a.yaml\n")
    with pytest.raises(DynamicDetError, match=r"c.yaml: the _base_ chain comes back .*\(a.yaml -> b.yaml -> c.yaml -> a.yaml\)"):
        load_recipe(tmp_path / "a.yaml")
    write(tmp_path / "self.yaml", "_base_: self.yaml\n")
    with pytest.raises(DynamicDetError, match=r"\(self.yaml -> self.yaml\)"):
        load_recipe(tmp_path / "self.yaml")


def test_missing_base_is_refused(tmp_path):
    child = write(tmp_path / "child.yaml", "_base_: nowhere.yaml\n")
    with pytest.raises(DynamicDetError, match=r"child.yaml: _base_ 'nowhere.yaml' names no recipe file \(.*nowhere.yaml does not exist.*relative to its recipe's folder"):
        load_recipe(child)


def test_typo_in_a_file_suggests_the_key(tmp_path):
    path = write(tmp_path / "typo.yaml", f"_base_: {BASE}\nmodel:\n  rooter:\n    reduction: 8\n")
    with pytest.raises(DynamicDetError, match="did you mean model.router") as err:
        load_recipe(path)
    assert "\n" not in str(err.value) and str(path) in str(err.value)


@pytest.mark.parametrize("override, message", [
    ("model.rooter.reduction=8", "did you mean model.router"),
    ("model.router.reductoin=8", "did you mean model.router.reduction"),
    ("model.router.reduction=0", "model.router.reduction: 0 is below the minimum 1"),
    ("model.rpn.nms_thresh=1.5", "model.rpn.nms_thresh: 1.5 is above the maximum 1.0"),
    ("model.backbone.depth=42", "model.backbone.depth: 42 is not one of"),
    ("model.router.reduction=four", "model.router.reduction: expected an integer"),
    ("model.router.reduction=4.5", "model.router.reduction: expected an integer"),
    ("model.backbone.share_stem=maybe", "expected true or false"),
    ("train.lr=fast", "train.lr: expected a number"),
    ("model.rpn.anchor_sizes=[]", "expected a non-empty list"),
    ("model.rpn.anchor_sizes=[8, 16]", "anchor_sizes: 2 sizes given"),
    ("model.router=8", "expected a mapping, got 8"),
    ("model.router.reduction", "expected KEY=VALUE"),
])
def test_overrides_are_checked_both_ways(override, message):
    with pytest.raises(DynamicDetError, match=re.escape(message)):
        with_overrides(Recipe(), [override])
    with pytest.raises(DynamicDetError, match=re.escape(message)):
        load_recipe(TINY, [override])


def test_overrides_apply_with_yaml_types():
    overrides = ["model.router.reduction=8", "model.backbone.share_stem=true",
                 "model.transform.min_size=96", "train.lr=0.001", "model.loss_weight2=2"]
    recipe = with_overrides(load_recipe(TINY), overrides)
    assert recipe.model.router.reduction == 8 and recipe.model.backbone.share_stem is True
    assert recipe.model.transform.min_size == (96,)  # one number where a list is expected
    assert recipe.train.lr == 0.001
    assert recipe.model.loss_weight2 == 2.0 and isinstance(recipe.model.loss_weight2, float)
    assert load_recipe(TINY, overrides) == recipe


def test_exponent_without_dot_is_a_number(tmp_path):
    assert with_overrides(Recipe(), ["train.lr=1e-3"]).train.lr == pytest.approx(1e-3)
    path = write(tmp_path / "wd.yaml", f"_base_: {BASE}\ntrain:\n  weight_decay: 5e-4\n")
    assert load_recipe(path).train.weight_decay == pytest.approx(5e-4)


@pytest.mark.parametrize("override", ["train.lr=.nan", "model.loss_weight1=.inf", "train.grad_clip=.nan"])
def test_non_finite_numbers_are_refused(override):
    with pytest.raises(DynamicDetError, match="train.lr|loss_weight1|grad_clip"):
        with_overrides(Recipe(), [override])


def test_bad_yaml_names_the_line(tmp_path):
    path = write(tmp_path / "bad.yaml", "model:\n  num_classes: [1,\n")
    with pytest.raises(DynamicDetError, match="not valid YAML"):
        load_recipe(path)


def _documented_keys(path: Path) -> dict[str, bool]:
    """Dotted key -> whether its line carries a '#' comment, from the YAML's indentation."""
    keys, stack = {}, []
    for line in path.read_text().splitlines():
        m = re.match(r"^( *)([A-Za-z_]\w*):(.*)$", line)
        if not m:
            continue
        depth = len(m.group(1)) // 2
        stack = stack[:depth] + [m.group(2)]
        keys[".".join(stack)] = "#" in m.group(3)
    return keys


def test_every_key_is_commented_in_the_base_recipe():
    documented = _documented_keys(BASE)
    leaves = [k.key for k in recipe_keys()]
    assert len(leaves) > 50
    missing = [k for k in leaves if k not in documented]
    uncommented = [k for k in leaves if k in documented and not documented[k]]
    assert not missing, f"keys missing from {BASE.name}: {missing}"
    assert not uncommented, f"keys without a comment in {BASE.name}: {uncommented}"
