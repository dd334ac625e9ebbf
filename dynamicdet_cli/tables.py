"""Rich tables the commands print. Presentation only: every number comes from elsewhere."""

from __future__ import annotations

from rich.table import Table


def _fmt(x, digits: int = 3) -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        return f"{x:.{digits}f}"
    return str(x)


def info_table(ckpt: dict, count_flops: bool = True, image_size: int | None = None) -> Table:
    """What a checkpoint holds, and the cost of each route."""
    from dynamicdet_cli.checkpoint import model_from_checkpoint
    from dynamicdet_cli.summary import route_flops, route_params

    m = ckpt["recipe"]["model"]
    model = model_from_checkpoint(ckpt)
    params = route_params(model)
    side = image_size or m["transform"]["min_size"][-1]
    flops = route_flops(model, side, side) if count_flops else None

    table = Table(title="dynamicdet checkpoint", show_header=False)
    table.add_column("what", style="bold")
    table.add_column("value")
    b = m["backbone"]
    table.add_row("detector", f"Dy-{m['family']} ResNet-{b['depth']} x2, FPN {m['neck']['out_channels']}, "
                              f"stages {b['stages']}, shared stem: {b['share_stem']}")
    table.add_row("classes", f"{len(ckpt['classes'])}: {', '.join(ckpt['classes'][:8])}"
                             + (" ..." if len(ckpt["classes"]) > 8 else ""))
    table.add_row("input size", f"min {m['transform']['min_size']}, max {m['transform']['max_size']}")
    for route in ("easy", "hard"):
        cost = f"{params[route] / 1e6:.2f} M params"
        if flops:
            # torchvision and the papers quote multiply-adds as "GFLOPs"; show both
            cost += f", {flops[route] / 2e9:.2f} GMACs ({flops[route] / 1e9:.2f} GFLOPs) at {side}x{side}"
        table.add_row(f"{route} route", cost)
    table.add_row("total parameters", f"{params['total'] / 1e6:.2f} M")
    training = ckpt["training"]
    table.add_row("detectors", "fresh weights (not trained)" if not training else
                  f"trained {training.get('epochs', '?')} epochs; " +
                  ", ".join(f"{k} {_fmt(v)}" for k, v in (training.get("val") or {}).items()))
    stats = ckpt["router_stats"]
    table.add_row("router", "not trained" if ckpt["router"] is None else
                  "trained; " + ", ".join(f"{k} {_fmt(v)}" for k, v in stats.items()))
    val = ckpt["validation"]
    table.add_row("validation scores", "none" if not val else f"{len(val['image_ids'])} images ({val.get('dataset', '')})")
    for i, lat in enumerate(ckpt["latency"]):
        table.add_row(f"latency #{i}", f"easy {lat['easy_ms']:.2f} ms, hard {lat['hard_ms']:.2f} ms on {lat['device']} "
                                       f"(batch {lat['batch_size']}, {lat['image_size']} px, {lat['threads']} threads)")
    if not ckpt["latency"]:
        table.add_row("latency", "not measured (run calibrate)")
    for name, p in ckpt["operating_points"].items():
        target = f", target {p['target_ms']:.2f} ms" if p.get("target_ms") is not None else ""
        table.add_row(f"point '{name}'", f"tau {p['tau']:.4f}, {100 * p['hard_ratio']:.0f}% hard{target}")
    if not ckpt["operating_points"]:
        table.add_row("operating points", "none (run calibrate)")
    prov = ckpt["provenance"]
    table.add_row("written by", f"dynamicdet {prov.get('package')}, torch {prov.get('torch')}, {prov.get('saved', prov.get('created'))}")
    return table
