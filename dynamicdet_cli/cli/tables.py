"""Rich tables the commands print. Presentation only: every number comes from elsewhere.

Rich reads cell text as markup; text that comes from users or files (class names, paths,
point names) goes through `escape` so that `[red]` in a name is shown, not applied.
"""

from __future__ import annotations

from rich.console import Group
from rich.markup import escape
from rich import box
from rich.table import Table

from dynamicdet_cli.checkpoint.types import Checkpoint, LatencyRecord, OperatingPoint
from dynamicdet_cli.config.recipe import ONE_STAGE_FAMILIES, BackboneConfig, ModelConfig, Recipe
from dynamicdet_cli.speed.regime import Regime


def _ap(x) -> str:
    """A COCO metric: COCOeval's -1 (no ground truth of that size or kind) shown as "-"."""
    return "-" if isinstance(x, float) and x < 0 else _fmt(x)


def _fmt(x, digits: int = 3) -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        return f"{x:.{digits}f}"
    return str(x)


def _backbone_text(b: BackboneConfig) -> str:
    if b.kind == "csp":
        return f"CSP (width {b.width_multiple}, depth {b.depth_multiple})"
    return f"ResNet-{b.depth}" if b.kind == "resnet" else f"RegNet (widths {list(b.widths)})"


def _neck_text(m: ModelConfig) -> str:
    if m.family == "yolo":
        return "SPPF + PAN"
    return f"FPN {m.neck.out_channels}"


def _model_rows(table: Table, m: ModelConfig, model, count_flops: bool, image_size: int | None) -> None:
    """Family, architecture, input size, and parameters and FLOPs of each route (route_cost.py)."""
    from dynamicdet_cli.model.cost import route_flops, route_params

    params = route_params(model)
    side = image_size or m.transform.min_size[-1]
    flops = route_flops(model, side, side) if count_flops else None
    b = m.backbone
    extra = " + P6, P7" if m.family in ONE_STAGE_FAMILIES else ""
    table.add_row("family", m.family)
    table.add_row("detector", f"Dy-{m.family}: 2 x {_backbone_text(b)}, {_neck_text(m)} over "
                              f"stages {list(b.stages)}{extra}, shared stem: {b.share_stem}")
    table.add_row("input size", f"min {list(m.transform.min_size)}, max {m.transform.max_size}")
    for route, parts in (("easy", "backbone 1 + router + head 1"),
                         ("hard", "backbone 1 + router + composite + backbone 2 + head 2")):
        cost = f"{params[route] / 1e6:.2f} M params"
        if flops:
            # torchvision and the papers quote multiply-adds as "GFLOPs"; show both
            cost += f", {flops[route] / 2e9:.2f} GMACs ({flops[route] / 1e9:.2f} GFLOPs) at {side}x{side}"
        table.add_row(f"{route} route", f"{cost} ({parts})")
    table.add_row("total parameters", f"{params['total'] / 1e6:.2f} M")


def recipes_table() -> Table:
    """The shipped recipes (config/recipe.py's shipped_recipes): name, family, backbones, input, classes, epochs."""
    from dynamicdet_cli.config.recipe import SHIPPED, load_recipe, shipped_recipes

    table = Table(title="recipes shipped with dynamicdet", box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True,
                  caption=f"in {SHIPPED.resolve()}. Backbone: each of the two; CSP xW/D: width / depth "
                          "multiples; RegNet A-B: its first and last stage widths. Input: the shorter side.")
    for column in ("name", "family", "backbone", "input", "classes", "epochs"):
        table.add_column(column, no_wrap=True)
    for name, path in shipped_recipes().items():
        recipe = load_recipe(path)
        b = recipe.model.backbone
        backbone = {"resnet": f"ResNet-{b.depth}", "regnet": f"RegNet {b.widths[0]}-{b.widths[-1]}",
                    "csp": f"CSP x{b.width_multiple:g}/{b.depth_multiple:g}"}[b.kind]
        table.add_row(name, recipe.model.family, backbone, str(recipe.model.transform.min_size[-1]),
                      str(recipe.model.num_classes), str(recipe.train.epochs))
    return table


def recipe_info_table(recipe: Recipe, count_flops: bool = True, image_size: int | None = None) -> Table:
    """What a recipe builds and what each route costs, on fresh weights (the recipe's num_classes)."""
    from dynamicdet_cli.model.build import build_model

    table = Table(title="dynamicdet recipe", show_header=False)
    table.add_column("what", style="bold")
    table.add_column("value")
    _model_rows(table, recipe.model, build_model(recipe.model), count_flops, image_size)
    table.add_row("classes", str(recipe.model.num_classes))
    return table


def info_table(ckpt: Checkpoint, count_flops: bool = True, image_size: int | None = None) -> Group:
    """What a checkpoint holds and the cost of each route; then the stored latencies and
    operating points, each with its regime, as tables of their own."""
    from dynamicdet_cli.checkpoint.store import model_from_checkpoint

    table = Table(title="dynamicdet checkpoint", show_header=False)
    table.add_column("what", style="bold")
    table.add_column("value")
    _model_rows(table, ckpt.recipe.model, model_from_checkpoint(ckpt), count_flops, image_size)
    table.add_row("classes", f"{ckpt.num_classes}: {escape(', '.join(ckpt.classes[:8]))}"
                             + (" ..." if ckpt.num_classes > 8 else ""))
    training = ckpt.training
    table.add_row("detectors", "fresh weights (not trained)" if training is None else
                  f"trained {training.epochs} epochs; " +
                  ", ".join(f"{k} {_ap(v)}" for k, v in training.val.items()))
    stats = ckpt.router_stats
    shown = {"delta": "Delta", "val_spearman": "val Spearman(phi, L1-L2)", "ap_router_50": "AP at 50% hard",
             "gap_router_50": "gap recovered at 50%"}
    table.add_row("router", "not trained" if ckpt.router is None else
                  "trained; " + ", ".join(f"{name} {_fmt(stats[k])}" for k, name in shown.items() if k in stats)
                  + (f"; targets: {escape(str(stats['targets']))}" if stats.get("targets") else ""))
    val = ckpt.validation
    table.add_row("validation scores", "none" if val is None else
                  f"{len(val.image_ids)} images ({escape(str(val.dataset or ''))}"
                  + (f", images in {escape(str(val.images))})" if val.images else ")"))
    if not ckpt.latency:
        table.add_row("latency", "not measured (run calibrate)")
    if not ckpt.operating_points:
        table.add_row("operating points", "none (run calibrate)")
    prov = ckpt.provenance
    table.add_row("written by", escape(f"dynamicdet {prov.get('package')}, torch {prov.get('torch')}, "
                                       f"{prov.get('saved', prov.get('created'))}"))
    tables = [table]
    if ckpt.latency:
        tables.append(latency_table(ckpt.latency))
    if ckpt.operating_points:
        tables.append(points_table(ckpt.operating_points))
    return Group(*tables)


def latency_table(measurements: tuple[LatencyRecord, ...]) -> Table:
    """The stored route latencies, one row per regime they were measured in. How malloc
    treated freed memory (allocator.py) is a column when CPU rows differ in it, else the caption."""
    table = Table(title="latency per image, by regime (predict / evaluate --latency use their own regime's)")
    mallocs = {m.malloc for m in measurements if m.device == "cpu"}
    columns = ("device", "batch", "px", "threads", "dtype", *(("malloc",) if len(mallocs) > 1 else ()),
               "lat1 ms", "lat2 ms")
    for col in columns:
        table.add_column(col, justify="left" if col in ("device", "dtype", "malloc") else "right", no_wrap=True)
    table.add_column("timed on", overflow="fold")
    for m in measurements:
        malloc = (escape(m.malloc) if m.device == "cpu" else "-",) if len(mallocs) > 1 else ()
        table.add_row(escape(str(m.device)), str(m.batch_size), str(m.image_size), _fmt(m.threads),
                      escape(str(m.dtype)), *malloc, f"{m.easy_ms:.2f}", f"{m.hard_ms:.2f}",
                      escape(f"{m.images or 'random images'}, {m.time or '?'}"))
    if len(mallocs) == 1:
        table.caption = f"CPU rows measured with malloc {escape(mallocs.pop())}"
    return table


def points_table(points: dict[str, OperatingPoint]) -> Table:
    """The stored operating points, with the regime a latency-bound point was calibrated in."""
    table = Table(title="operating points")
    for col in ("name", "tau", "hard on val", "target ms", "expected ms", "calibrated for"):
        table.add_column(col, justify="left" if col in ("name", "calibrated for") else "right")
    for name, p in points.items():
        regime = Regime.of_record(p).describe() if p.has_regime else "-"
        table.add_row(escape(name), f"{p.tau:.4f}", f"{100 * p.hard_ratio:.0f}%", _fmt(p.target_ms, 2),
                      _fmt(p.expected_ms, 2), escape(regime))
    return table


def epoch_table(record: dict) -> Table:
    """One epoch of train-detectors: losses, speed, and each detector's COCO metrics."""
    table = Table(title=f"epoch {record['epoch']} (step {record['step']})")
    val = record.get("val") or {}
    with_masks = any("mask_AP" in m for m in val.values())
    for col in ("", "loss", "AP", "AP50", "AP75", "APs", "APm", "APl", *(("mask AP",) if with_masks else ())):
        table.add_column(col, justify="right")
    for d, name in (("d1", "detector 1 (easy)"), ("d2", "detector 2 (hard)")):
        m = val.get(d, {})
        table.add_row(name, _fmt(record.get(f"{d}/total")),
                      *[_ap(m.get(k)) for k in ("AP", "AP50", "AP75", "APs", "APm", "APl")],
                      *((_ap(m.get("mask_AP")),) if with_masks else ()))
    table.caption = f"lr {record['lr']:.2e}, {record['images_per_s']:.1f} images/s, {record['seconds']:.0f} s"
    return table


def calibrate_table(latency: LatencyRecord | None, point: OperatingPoint | None, name: str) -> Table:
    """lat1, lat2 and the regime and images they were measured in; target, k, tau and
    expected latency of the stored operating point (None: the latency was only measured)."""
    table = Table(title=f"operating point '{escape(name)}'" if point else "route latencies", show_header=False)
    table.add_column("what", style="bold")
    table.add_column("value", justify="right")
    if latency is not None:
        table.add_row("lat1 (easy route)", f"{latency.easy_ms:.2f} ms per image")
        table.add_row("lat2 (hard route)", f"{latency.hard_ms:.2f} ms per image")
        table.add_row("regime", escape(Regime.of_record(latency).describe()))
        table.add_row("timed on", escape(str(latency.images or "random images")))
        if latency.spread_pct is not None:
            table.add_row("passes disagree by", f"{latency.spread_pct:.1f}% ({latency.repeats} passes)")
    if point is None:
        return table
    table.add_row("target", "-" if point.target_ms is None else f"{point.target_ms:.2f} ms")
    table.add_row("k (share routed hard on val)", f"{point.hard_ratio:.3f}")
    table.add_row("tau", f"{point.tau:.4f}")
    table.add_row("expected latency", "-" if point.expected_ms is None else f"{point.expected_ms:.2f} ms")
    return table


def evaluate_table(evaluation, route_text: str) -> Table:
    m = evaluation.metrics
    with_masks = "mask_AP" in m
    table = Table(title=f"COCO {'box and mask' if with_masks else 'box'} metrics ({escape(route_text)})")
    for col in ("", "AP", "AP50", "AP75", "APs", "APm", "APl", "hard", "ms/image"):
        table.add_column(col, justify="right")
    keys = ("AP", "AP50", "AP75", "APs", "APm", "APl")
    table.add_row("box", *[_ap(m[k]) for k in keys],
                  f"{100 * evaluation.hard_share:.0f}%", f"{evaluation.latency_ms:.2f}")
    if with_masks:
        table.add_row("mask", *[_ap(m["mask_" + k]) for k in keys], "", "")
    table.caption = f"{evaluation.n_images} image{'s' * (evaluation.n_images != 1)}; detections: {escape(str(evaluation.detections_path))}"
    return table


def sweep_table(rows: list[dict]) -> Table:
    table = Table(title="accuracy-latency sweep (router vs the same share routed at random)")
    with_masks = bool(rows) and "mask_AP" in rows[0]
    for col in ("k", "tau", "AP", "AP50", *(("mask AP", "mask AP50") if with_masks else ()),
                "latency ms", "random AP", "router - random [95% CI]"):
        table.add_column(col, justify="right")
    for r in rows:
        rand = "-" if r["random_AP"] is None else f"{r['random_AP']:.3f} ± {r['random_AP_std']:.3f}"
        gain = "-" if r.get("gain_vs_random") is None else f"{r['gain_vs_random']:+.4f}"
        if r.get("gain_lo") is not None:
            gain += f" [{r['gain_lo']:+.4f}, {r['gain_hi']:+.4f}]"
        masks = (f"{r['mask_AP']:.3f}", f"{r['mask_AP50']:.3f}") if with_masks else ()
        table.add_row(f"{r['hard_share']:.2f}", f"{r['tau']:.4f}", f"{r['AP']:.3f}", f"{r['AP50']:.3f}", *masks,
                      _fmt(r["latency_ms"], 2), rand, gain)
    table.caption = "interval: paired bootstrap over the validation images (router vs one random routing per replicate)"
    return table
