"""The `dynamicdet` command line: each command parses, calls one library function, prints.

User errors print one line and exit with status 2; never a traceback. All of them pass
through one funnel (funnel.py): `DynamicDetError` and file-system errors (OSError) raised by a
command, and typer's usage errors (unknown option, value out of range), are printed as one
`error: ...` line. Text from the user (paths, names) is never read as rich markup.
"""

from __future__ import annotations

import signal
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.text import Text

from dynamicdet_cli import __version__
from dynamicdet_cli.cli.funnel import QUIET as _QUIET, OneLineCommands, OneLineErrors, fail as _fail, warn as _warn
from dynamicdet_cli.core.errors import DynamicDetError

console = Console(quiet=_QUIET)


def _say(*parts) -> None:
    """Print one line on stdout; `parts` are plain strings or (text, style) pairs, never markup."""
    console.print(Text.assemble(*parts), soft_wrap=True)


typer_app = typer.Typer(cls=OneLineErrors, no_args_is_help=True, add_completion=False,
                        pretty_exceptions_enable=False,
                        help="DynamicDet: one cascaded detector whose average speed you choose at inference time.")


def _version(value: bool) -> None:
    if value:
        _say(f"dynamicdet {__version__}")
        raise typer.Exit()


@typer_app.callback()
def _root(version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                                 help="print the version and exit")] = False) -> None:
    """DynamicDet: one cascaded detector whose average speed you choose at inference time."""


app = OneLineCommands(typer_app)

# Shared option types.
SetOpt = Annotated[Optional[list[str]], typer.Option("--set", help="override one recipe key, e.g. model.router.reduction=8 (repeatable)")]
OutOpt = Annotated[Path, typer.Option("--output", "-o", help="checkpoint to write")]


@app.command()
def build(
    recipe: Annotated[Path, typer.Argument(help="recipe YAML (recipes/shapes-tiny.yaml), or a shipped recipe's name (dy-yolo-s; `dynamicdet recipes` lists them)")],
    output: OutOpt,
    overrides: SetOpt = None,
    backbone_weights: Annotated[Optional[str], typer.Option(help="ResNet weights for both backbones: torchvision:NAME (e.g. torchvision:ResNet50_Weights.IMAGENET1K_V2) or a state-dict file; '' = fresh (default: the recipe's model.backbone.weights)")] = None,
    classes: Annotated[Optional[str], typer.Option(help="comma-separated class names (default: class1..classN)")] = None,
):
    """Build a model from a recipe (backbones from its model.backbone.weights or --backbone-weights, the rest fresh) and write it as a checkpoint."""
    from dynamicdet_cli import api
    from dynamicdet_cli.checkpoint.store import save_checkpoint

    ckpt, note = api.build(recipe, classes=classes, backbone_weights=backbone_weights, overrides=overrides or [])
    if note:
        _say(note)
    _say("wrote ", (str(save_checkpoint(ckpt, output)), "bold"))


@app.command()
def info(
    checkpoint: Annotated[Path, typer.Argument(help="a dynamicdet checkpoint, or a recipe (.yaml, or a shipped recipe's name) to cost before building")],
    flops: Annotated[bool, typer.Option(help="count FLOPs of each route (runs the model once per route)")] = True,
    image_size: Annotated[Optional[int], typer.Option(min=16, max=8192, help="square image side for the FLOP count (default: the recipe's test size)")] = None,
    overrides: SetOpt = None,
):
    """Show what a checkpoint holds (family, cost per route, router, latencies, operating points), or what a recipe builds."""
    from dynamicdet_cli.checkpoint.store import load_checkpoint
    from dynamicdet_cli.config.recipe import is_recipe, load_recipe
    from dynamicdet_cli.cli.tables import info_table, recipe_info_table

    if is_recipe(checkpoint):
        console.print(recipe_info_table(load_recipe(checkpoint, overrides or []), flops, image_size))
        return
    if overrides:
        raise DynamicDetError("--set applies to a recipe; a checkpoint's recipe is the one it was trained with")
    console.print(info_table(load_checkpoint(checkpoint), flops, image_size))


@app.command()
def recipes():
    """List the recipes shipped with dynamicdet: any command that takes a recipe takes one by name."""
    from dynamicdet_cli.cli.tables import recipes_table

    console.print(recipes_table())


@app.command("make-shapes")
def make_shapes(
    out: Annotated[Path, typer.Argument(help="folder to write the dataset into")],
    train: Annotated[int, typer.Option(min=1, help="training images")] = 2048,
    val: Annotated[int, typer.Option(min=1, help="validation images")] = 512,
    router: Annotated[int, typer.Option(min=0, help="images of a router split (router_ann/router_images) the detectors never train on; 0 = none")] = 0,
    size: Annotated[int, typer.Option(min=32, max=2048, help="image side in pixels")] = 128,
    seed: Annotated[int, typer.Option(min=0, help="random seed (same seed, same dataset)")] = 0,
    force: Annotated[bool, typer.Option("--force", help="replace the dataset in a folder that is not empty")] = False,
    val_difficulty: Annotated[Optional[str], typer.Option("--val-difficulty", help="the val split as a stream unlike the training data: LOW-HIGH draws every image's difficulty in that range (e.g. 0.6-1: hard-ish), drift rises from easy to hard along the file order (drift:LOW-HIGH within a range); default: uniform in 0-1")] = None,
):
    """Write the built-in synthetic COCO-format dataset of shapes, from easy to hard images."""
    from dynamicdet_cli.data.shapes import make_shapes as _make
    from dynamicdet_cli.data.shapes import parse_difficulty
    spec = None if val_difficulty is None else parse_difficulty(val_difficulty)
    data_yaml = _make(out, n_train=train, n_val=val, size=size, seed=seed, n_router=router, force=force,
                      val_difficulty=spec)
    extra = f", {router} router" if router else ""
    shaped = "" if spec is None else f" (difficulty {'drifting over ' if spec.drift else 'in '}{spec.low:g}-{spec.high:g})"
    _say(f"wrote {train} train{extra} and {val} val images{shaped}; data file: ", (str(data_yaml), "bold"))


# ----------------------------------------------------------------------------- data options
DataOpt = Annotated[Optional[Path], typer.Option("--data", help="data YAML with train_ann, train_images, val_ann, val_images (and optionally router_ann, router_images), or a YOLO-format one (path, train, val, names)")]
TrainAnnOpt = Annotated[Optional[Path], typer.Option("--train-ann", help="training annotations (COCO JSON)")]
TrainImgOpt = Annotated[Optional[Path], typer.Option("--train-images", help="training image folder")]
ValAnnOpt = Annotated[Optional[Path], typer.Option("--val-ann", help="validation annotations (COCO JSON)")]
ValImgOpt = Annotated[Optional[Path], typer.Option("--val-images", help="validation image folder")]
SkipBadOpt = Annotated[bool, typer.Option("--skip-bad-images", help="skip unreadable images (counted) instead of stopping")]
DeviceOpt = Annotated[str, typer.Option("--device", help="auto (a GPU where there is one, else the CPU; $DYNAMICDET_DEVICE overrides), cpu, cuda or cuda:N")]
ThreadsOpt = Annotated[Optional[int], typer.Option("--threads", min=1, help="CPU threads for torch (default: torch's choice); latencies are stored per thread count")]
TrainThreadsOpt = Annotated[Optional[int], typer.Option("--threads", min=1, help="CPU threads for torch (under torchrun: per process; default: torch's choice)")]


def _set_threads(threads: int | None) -> None:
    if threads:
        import torch
        torch.set_num_threads(threads)


@app.command("train-detectors")
def train_detectors(
    recipe: Annotated[Optional[Path], typer.Argument(help="recipe YAML, or a shipped recipe's name (dy-yolo-s); not needed with --resume")] = None,
    out: Annotated[Path, typer.Option("--out", help="run folder, e.g. runs/NAME")] = Path("runs/train"),
    data: DataOpt = None, train_ann: TrainAnnOpt = None, train_images: TrainImgOpt = None,
    val_ann: ValAnnOpt = None, val_images: ValImgOpt = None,
    overrides: SetOpt = None,
    epochs: Annotated[Optional[int], typer.Option(min=1, help="override train.epochs")] = None,
    batch_size: Annotated[Optional[int], typer.Option(min=1, help="override train.batch_size")] = None,
    lr: Annotated[Optional[float], typer.Option(min=0.0, help="override train.lr")] = None,
    image_size: Annotated[Optional[int], typer.Option(min=16, max=8192, help="override the input size (shorter and longer side)")] = None,
    router_holdout: Annotated[Optional[float], typer.Option(min=0.0, max=0.9, help="override train.router_holdout: share of training images kept out for the router's targets")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="continue the run in --out where it stopped")] = False,
    force: Annotated[bool, typer.Option("--force", help="start a new run in an --out that holds one (its checkpoints and metrics are replaced)")] = False,
    init: Annotated[Optional[str], typer.Option(help="start from a dynamicdet checkpoint, a torchvision detector/ResNet state-dict file, or torchvision:NAME (e.g. torchvision:fasterrcnn_resnet50_fpn); replaces the recipe's model.backbone.weights")] = None,
    device: DeviceOpt = "auto", threads: TrainThreadsOpt = None,
    amp: Annotated[bool, typer.Option("--amp", help="mixed precision: float16 on CUDA, bfloat16 on CPU")] = False,
    skip_bad_images: SkipBadOpt = False,
    max_steps: Annotated[Optional[int], typer.Option(min=1, help="stop after this many steps (smoke runs)")] = None,
    progress: Annotated[bool, typer.Option(help="show progress bars")] = True,
):
    """Step 1: train both detectors jointly (loss = w1 L1 + w2 L2) into the run folder --out."""
    _set_threads(threads)
    from dynamicdet_cli import api
    from dynamicdet_cli.cli.tables import epoch_table
    from dynamicdet_cli.train.distributed import leave_distributed
    from dynamicdet_cli.train.loop import TrainingInterrupted

    try:
        result = api.train_detectors(recipe, data, out, overrides=overrides or (), epochs=epochs,
                                     batch_size=batch_size, lr=lr, image_size=image_size,
                                     router_holdout=router_holdout, resume=resume, force=force, init=init,
                                     device=device, amp=amp, skip_bad_images=skip_bad_images, max_steps=max_steps,
                                     progress=progress, train_ann=train_ann, train_images=train_images,
                                     val_ann=val_ann, val_images=val_images,
                                     on_epoch=lambda record: console.print(epoch_table(record)),
                                     on_note=lambda note: _say(f"note: {note}"), on_start=_say)
    except TrainingInterrupted as stop:
        how = "interrupted" if stop.signum == signal.SIGINT else f"stopped by {signal.Signals(stop.signum).name}"
        _fail(f"{how} in epoch {stop.epoch + 1}; " + _saved(stop.run, stop.epochs_done), 128 + stop.signum)
    leave_distributed()
    if result.complete:
        from dynamicdet_cli.train.run_plot import PLOT_NAME
        plot = f", {PLOT_NAME}" if (result.run / PLOT_NAME).exists() else ""
        _say(f"done: {result.epochs} epoch(s); run folder ", (str(result.run), "bold"), f" (best.pt, last.pt, metrics.jsonl{plot})")
    else:
        _say(f"stopped early (--max-steps {max_steps}) in epoch {result.epochs + 1}: " + _saved(result.run, result.epochs))


def _saved(run: Path, epochs: int) -> str:
    """What a train-detectors run folder holds, and how to go on (a resumed run keeps its own
    recipe and options: only the data is given again)."""
    if epochs == 0:
        return f"no epoch was complete, so {run} holds no checkpoint; start the run again"
    return (f"{run} holds {epochs} complete epoch(s) (best.pt, last.pt, metrics.jsonl); to continue: "
            f"dynamicdet train-detectors --resume --out {run} with the same data options")


@app.command("train-router")
def train_router(
    checkpoint: Annotated[Path, typer.Argument(help="checkpoint with trained detectors, e.g. runs/NAME/best.pt")],
    data: DataOpt = None, train_ann: TrainAnnOpt = None, train_images: TrainImgOpt = None,
    val_ann: ValAnnOpt = None, val_images: ValImgOpt = None,
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="write here instead of in place")] = None,
    overrides: SetOpt = None,
    epochs: Annotated[Optional[int], typer.Option(min=1, help="override router.epochs")] = None,
    lr: Annotated[Optional[float], typer.Option(min=0.0, help="override router.lr")] = None,
    device: DeviceOpt = "auto", threads: TrainThreadsOpt = None,
    skip_bad_images: SkipBadOpt = False,
    progress: Annotated[bool, typer.Option(help="show progress bars")] = True,
):
    """Step 2: train the router with both detectors frozen; store it with the validation scores."""
    _set_threads(threads)
    from dynamicdet_cli import api
    from dynamicdet_cli.router.summary import summary_table

    path, summary = api.train_router(checkpoint, data, output, overrides=overrides or (), epochs=epochs, lr=lr,
                                     device=device, skip_bad_images=skip_bad_images, progress=progress,
                                     train_ann=train_ann, train_images=train_images, val_ann=val_ann,
                                     val_images=val_images)
    console.print(summary_table(summary))
    _say("router trained; wrote ", (str(path), "bold"))


# ----------------------------------------------------------------------------- inference
def _latency_with_unit(text: str | None) -> str | None:
    """A bare number could be ms or s: ask for the unit rather than guess."""
    if text is not None and text.strip().replace(".", "", 1).isdigit():
        raise typer.BadParameter(f"{text!r} has no unit: write {text.strip()}ms or {text.strip()}s")
    return text


RouteLatency = Annotated[Optional[str], typer.Option("--latency", callback=_latency_with_unit,
                                                     help="target mean latency per image, with its unit (40ms or 0.04s), or a share of the way from the easy route's latency to the hard one's (50%)")]
RouteRatio = Annotated[Optional[float], typer.Option("--hard-ratio", min=0.0, max=1.0, help="share of images routed hard, e.g. 0.3")]
RouteTau = Annotated[Optional[float], typer.Option("--threshold", min=0.0, max=1.0, help="difficulty threshold tau: phi > tau goes hard")]
RoutePoint = Annotated[Optional[str], typer.Option("--point", help="a stored operating point (or easy / hard)")]
BatchOpt = Annotated[int, typer.Option("--batch-size", min=1, help="images per batch")]


class Speed(str, Enum):
    fixed = "fixed"
    held = "held"


SpeedOpt = Annotated[Speed, typer.Option("--speed", help="fixed: route every image at the threshold the route options give (reproducible: the same images take the same routes); held: hold the latency target (--latency, or the point's) over the images sent, moving the threshold after each batch as the measured speed asks")]


@app.command()
def calibrate(
    checkpoint: Annotated[Path, typer.Argument(help="a checkpoint with a trained router")],
    latency: RouteLatency = None, hard_ratio: RouteRatio = None, threshold: RouteTau = None,
    name: Annotated[str, typer.Option("--name", help="name of the stored operating point")] = "default",
    clamp: Annotated[bool, typer.Option("--clamp", help="clamp an unreachable latency target to the nearest end")] = False,
    device: DeviceOpt = "auto", threads: ThreadsOpt = None,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="images per batch, as predict / evaluate will run (latencies hold per batch size)")] = 8,
    images: Annotated[Optional[Path], typer.Option("--images", help="time the routes on this folder's images (default: the validation images the router scores were computed on)")] = None,
    random_images: Annotated[bool, typer.Option("--random-images", help="time random images instead of real ones")] = False,
    image_size: Annotated[Optional[int], typer.Option(min=16, max=8192, help="side of the --random-images (default: the recipe's input size)")] = None,
    max_images: Annotated[int, typer.Option(min=1, help="time at most this many images, spread over the set")] = 128,
    repeats: Annotated[int, typer.Option(min=1, help="timed passes over the images per route (median)")] = 5,
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="write here instead of in place")] = None,
    reuse_latency: Annotated[bool, typer.Option("--reuse-latency", help="use the latency stored for this regime instead of timing again")] = False,
):
    """Measure lat1/lat2 in this regime and store a threshold for a target latency (or hard ratio / threshold).

    With none of --latency, --hard-ratio, --threshold: only measure and store the latency."""
    _set_threads(threads)
    from dynamicdet_cli import api
    from dynamicdet_cli.checkpoint.store import held_for_update
    from dynamicdet_cli.cli.tables import calibrate_table

    with held_for_update(checkpoint, output):
        model = api.load(checkpoint, device)
        result = model.calibrate(latency=latency, hard_ratio=hard_ratio, threshold=threshold, name=name, clamp=clamp,
                                 batch_size=batch_size, repeats=repeats, reuse=reuse_latency, images=images,
                                 random_images=random_images, image_size=image_size, max_images=max_images,
                                 save=False)
        if result.warning:
            _warn(result.warning)
        path = model.save(output or checkpoint)
    console.print(calibrate_table(result.measured, result.point, name))
    _say((f"stored operating point '{name}'" if result.point else "stored the latency") + " in ", (str(path), "bold"))


@app.command()
def evaluate(
    checkpoint: Annotated[Path, typer.Argument(help="a dynamicdet checkpoint")],
    data: DataOpt = None, val_ann: ValAnnOpt = None, val_images: ValImgOpt = None,
    latency: RouteLatency = None, hard_ratio: RouteRatio = None, threshold: RouteTau = None, point: RoutePoint = None,
    do_sweep: Annotated[bool, typer.Option("--sweep", help="the whole accuracy-latency curve instead of one point")] = False,
    ratios: Annotated[str, typer.Option(help="hard ratios of the sweep, comma-separated")] = "0,0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.9,1",
    draws: Annotated[int, typer.Option(min=0, help="random-routing draws per sweep point")] = 5,
    out: Annotated[Optional[Path], typer.Option("--out", help="folder for metrics, detections and sweep files (default: CHECKPOINT's name + -eval, next to it)")] = None,
    device: DeviceOpt = "auto", threads: ThreadsOpt = None, batch_size: BatchOpt = 8,
    skip_bad_images: SkipBadOpt = False,
    progress: Annotated[bool, typer.Option(help="show progress bars")] = True,
):
    """COCO box AP (and mask AP for Mask R-CNN) on the validation data at one operating point, or the accuracy-latency --sweep."""
    _set_threads(threads)
    from dynamicdet_cli import api
    from dynamicdet_cli.cli.tables import evaluate_table, sweep_table

    ks = _sweep_ratios(ratios, latency, hard_ratio, threshold, point) if do_sweep else None
    model = api.load(checkpoint, device)
    report = model.evaluate(data, val_ann=val_ann, val_images=val_images, latency=latency, point=point,
                            hard_ratio=hard_ratio, threshold=threshold, sweep=ks, draws=draws, out=out,
                            batch_size=batch_size, skip_bad_images=skip_bad_images, progress=progress)
    if report.sweep_rows is None:
        console.print(evaluate_table(report.evaluation, report.route_text))
        return
    console.print(sweep_table(report.sweep_rows))
    if report.missing_latency:
        console.print(f"latency column empty: {report.missing_latency}", markup=False, highlight=False, soft_wrap=True)
    plot = report.written.get("plot")
    _say(f"sweep: {report.written['json']}, {report.written['csv']}, " +
         (f"plot: {plot}" if plot else "plot: pip install 'dynamicdet[plot]' to get sweep.png"))


def _sweep_ratios(ratios: str, *route_options) -> list[float]:
    """The sweep's hard ratios; a route option with --sweep is a mistake, not something to ignore."""
    if any(option is not None for option in route_options):
        raise DynamicDetError("--sweep covers every hard ratio: drop --latency / --hard-ratio / --threshold / "
                              "--point, or drop --sweep to evaluate that one point")
    try:
        ks = [float(x) for x in ratios.split(",") if x.strip()]
    except ValueError:
        ks = None
    if not ks or not all(0.0 <= k <= 1.0 for k in ks):
        raise DynamicDetError(f"--ratios {ratios!r}: expected comma-separated numbers in [0, 1], e.g. 0,0.5,1")
    return ks


@app.command()
def predict(
    inputs: Annotated[list[str], typer.Argument(help="image folders, files or glob patterns")],
    checkpoint: Annotated[Path, typer.Option("--checkpoint", "-c", help="a dynamicdet checkpoint")],
    out: Annotated[Path, typer.Option("--out", help="output folder")] = Path("predictions"),
    latency: RouteLatency = None, hard_ratio: RouteRatio = None, threshold: RouteTau = None, point: RoutePoint = None,
    speed: SpeedOpt = Speed.fixed,
    conf: Annotated[float, typer.Option("--conf", min=0.0, max=1.0, help="score threshold of kept detections")] = 0.3,
    render: Annotated[bool, typer.Option("--render/--no-render", help="write pictures with boxes and labels")] = True,
    device: DeviceOpt = "auto", threads: ThreadsOpt = None, batch_size: BatchOpt = 8,
    progress: Annotated[bool, typer.Option(help="show progress bars")] = True,
):
    """Detect objects in images; each image takes the route its difficulty asks for."""
    _set_threads(threads)
    from dynamicdet_cli import api
    from dynamicdet_cli import predict as engine
    from dynamicdet_cli.data.images import list_images

    model = api.load(checkpoint, device)
    chosen = model.route(latency=latency, hard_ratio=hard_ratio, threshold=threshold, point=point,
                         hold=speed is Speed.held, batch_size=batch_size)
    _say(f"route: {chosen.text}")
    summary = engine.predict(model.network, list_images(inputs), chosen.route, out, list(model.classes),
                             list(model.checkpoint.category_ids), batch_size=batch_size, conf=conf, render=render,
                             device=model.device, progress=progress, calibration=model.calibration(batch_size),
                             hold=chosen.hold)
    console.print(engine.summary_table(summary))
    if chosen.hold is None and (drift := engine.calibration_warning(summary)):
        _warn(f"{drift}; re-run `{model.regime(batch_size).calibrate_command(str(checkpoint))}` to measure it again")
    _say("predictions: ", (str(out / "predictions.jsonl"), "bold"), f", pictures: {out / 'render'}" if render else "")


class ExportFormat(str, Enum):
    onnx = "onnx"
    torchscript = "torchscript"
    pt2 = "pt2"


@app.command()
def export(
    checkpoint: Annotated[Path, typer.Argument(help="a dynamicdet checkpoint (onnx: Faster R-CNN or YOLO family; torchscript: Faster R-CNN; pt2: YOLO)")],
    fmt: Annotated[ExportFormat, typer.Option("--format", help="onnx: three graphs a runtime chains per image; torchscript: one module(images, tau); pt2: three torch.export programs")],
    output: Annotated[Path, typer.Option("--output", "-o", help="folder to write the files into")],
):
    """Export both routes for deployment, with the classes, input transform and operating points (dynamicdet.json)."""
    from dynamicdet_cli.export.exporter import export_checkpoint_file, export_table

    result = export_checkpoint_file(checkpoint, fmt.value, output)
    console.print(export_table(result))
    _say("exported to ", (str(result.out_dir), "bold"))


def main_with_args(args: list[str] | None = None) -> None:
    """Run the app on `args` (default: the process's): every command may load a model to train
    or time, so the package's malloc setting is applied first (core/allocator.py)."""
    from dynamicdet_cli.core import allocator
    allocator.keep_freed_memory()
    typer_app(args, prog_name="dynamicdet")


def main() -> None:
    """Console-script entry point."""
    main_with_args()
