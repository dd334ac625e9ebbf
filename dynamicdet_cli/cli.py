"""The `dynamicdet` command line: each command parses, calls one library function, prints.

User errors (DynamicDetError) print one line and exit with status 2; never a traceback.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

from dynamicdet_cli.errors import DynamicDetError

typer_app = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
                  help="DynamicDet: one cascaded detector whose average speed you choose at inference time.")
console = Console()
err_console = Console(stderr=True)


class _App:
    """Registers commands on the typer app so that a user error (DynamicDetError) in any of
    them prints one line and exits with status 2 instead of showing a traceback."""

    def command(self, name: str | None = None):
        def register(fn):
            @functools.wraps(fn)
            def friendly(*args, **kwargs):
                try:
                    return fn(*args, **kwargs)
                except DynamicDetError as err:
                    err_console.print(f"[red]error:[/] {err}", highlight=False, soft_wrap=True)
                    raise typer.Exit(2) from None
            return typer_app.command(name)(friendly)
        return register


app = _App()

# Shared option types.
SetOpt = Annotated[Optional[list[str]], typer.Option("--set", help="override one recipe key, e.g. model.router.reduction=8 (repeatable)")]
OutOpt = Annotated[Path, typer.Option("--output", "-o", help="checkpoint to write")]


@app.command()
def build(
    recipe: Annotated[Path, typer.Argument(help="recipe YAML, e.g. recipes/shapes-tiny.yaml")],
    output: OutOpt,
    overrides: SetOpt = None,
    backbone_weights: Annotated[Optional[Path], typer.Option(help="local torchvision ResNet state dict for both backbones")] = None,
    classes: Annotated[Optional[str], typer.Option(help="comma-separated class names (default: class1..classN)")] = None,
):
    """Build a model with fresh weights from a recipe and write it as a checkpoint."""
    from dynamicdet_cli.checkpoint import new_checkpoint, save_checkpoint
    from dynamicdet_cli.model.build import build_model
    from dynamicdet_cli.recipe import load_recipe, recipe_to_dict

    cfg = load_recipe(recipe, overrides or [])
    names = [c.strip() for c in classes.split(",")] if classes else None
    num_classes = len(names) if names else cfg.model.num_classes
    names = names or [f"class{i}" for i in range(1, num_classes + 1)]
    model = build_model(cfg.model, num_classes, str(backbone_weights) if backbone_weights else None)
    ckpt = new_checkpoint(recipe_to_dict(cfg), names, list(range(1, num_classes + 1)), model)
    console.print(f"wrote [bold]{save_checkpoint(ckpt, output)}[/]")


@app.command()
def info(
    checkpoint: Annotated[Path, typer.Argument(help="a dynamicdet checkpoint")],
    flops: Annotated[bool, typer.Option(help="count FLOPs of each route (runs the model once per route)")] = True,
    image_size: Annotated[Optional[int], typer.Option(help="square image side for the FLOP count (default: the recipe's test size)")] = None,
):
    """Show what a checkpoint holds: recipe essentials, cost per route, router, latencies, operating points."""
    from dynamicdet_cli.checkpoint import load_checkpoint
    from dynamicdet_cli.tables import info_table

    console.print(info_table(load_checkpoint(checkpoint), flops, image_size))


@app.command("make-shapes")
def make_shapes(
    out: Annotated[Path, typer.Argument(help="folder to write the dataset into")],
    train: Annotated[int, typer.Option(min=1, help="training images")] = 512,
    val: Annotated[int, typer.Option(min=1, help="validation images")] = 128,
    size: Annotated[int, typer.Option(min=32, max=2048, help="image side in pixels")] = 128,
    seed: Annotated[int, typer.Option(help="random seed (same seed, same dataset)")] = 0,
):
    """Write the built-in synthetic COCO-format dataset of shapes, from easy to hard images."""
    from dynamicdet_cli.data.shapes import make_shapes as _make
    data_yaml = _make(out, n_train=train, n_val=val, size=size, seed=seed)
    console.print(f"wrote {train} train and {val} val images; data file: [bold]{data_yaml}[/]")


def main() -> None:
    """Console-script entry point."""
    typer_app()
