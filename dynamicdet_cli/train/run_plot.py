"""results.png: a run folder's metrics.jsonl drawn as one figure, as Ultralytics' results.png.

Panels, each against the epoch:
    training loss     d1/total and d2/total (the mean per step) and the weighted sum the optimizer saw
    one per loss part d1 and d2 of that part (loss_classifier, loss_box_reg, ... whatever the family logs)
    validation AP     COCO box AP (and AP50, mask AP when logged) of route easy (d1) and route hard (d2),
                      on the epochs that were evaluated
    learning rate     at the end of the epoch

The figure is redrawn from the whole metrics.jsonl each time, so a resumed run's plot shows
the whole run. matplotlib is an optional extra (`pip install 'dynamicdet[plot]'`): without it
there is no plot and no error. The figure is drawn on `matplotlib.figure.Figure` directly (no
pyplot), so the process-wide backend of a user who set another is left alone.

`RunPlot` is what training calls after each epoch: a failure to draw warns once and never
stops the run.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from dynamicdet_cli.core.atomic import atomic_path
from dynamicdet_cli.core.errors import user_message, warn

PLOT_NAME = "results.png"
DETECTORS = (("d1", "d1 (route easy)"), ("d2", "d2 (route hard)"))
VAL_METRICS = (("AP", "-"), ("AP50", ":"), ("mask_AP", "--"))  # metric, line style


def epoch_records(metrics_path: str | Path) -> list[dict]:
    """The epoch lines of a metrics.jsonl, one per epoch (the last written wins), in epoch order.

    Lines that are not JSON objects with an integer "epoch" (a torn line, an `init` event,
    anything a person typed into the file) are left out, so a damaged file still plots.
    """
    by_epoch: dict[int, dict] = {}
    for line in Path(metrics_path).read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and _is_int(record.get("epoch")):
            by_epoch[record["epoch"]] = record
    return [by_epoch[epoch] for epoch in sorted(by_epoch)]


def plot_run(metrics_path: str | Path, out_path: str | Path) -> Path | None:
    """Draw `metrics_path` (a metrics.jsonl) into the PNG `out_path`, written atomically.

    Returns `out_path`, or None when there is nothing to draw: matplotlib is not installed, or
    the file holds no epoch yet. File errors (unreadable metrics, unwritable folder) raise.
    """
    try:
        from matplotlib.figure import Figure  # no pyplot: no GUI backend, no global state
        from matplotlib.ticker import MaxNLocator
    except ImportError:
        return None
    records = epoch_records(metrics_path)
    if not records:
        return None
    panels = [_loss_panel] + [_part_panel(part) for part in _loss_parts(records)] + [_ap_panel, _lr_panel]
    cols = math.ceil(len(panels) / 2)
    fig = Figure(figsize=(3.4 * cols, 6.4), layout="constrained")
    axes = fig.subplots(2, cols, squeeze=False, sharex=True).ravel()  # AP on some epochs lines up with the rest
    for ax, draw in zip(axes, panels):
        draw(ax, records)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.tick_params(labelbottom=True)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize="x-small")
    for ax in axes[len(panels):]:
        ax.set_visible(False)
    fig.suptitle(Path(metrics_path).resolve().parent.name)
    with atomic_path(out_path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    return Path(out_path)


class RunPlot:
    """The results.png of a run folder, redrawn after each epoch while training.

    Drawing never stops training: the first failure warns (once per run), and later epochs
    try again without warning, so a passing problem (a full disk) heals by itself.
    """

    def __init__(self, run: str | Path):
        self.run = Path(run)
        self.warned = False

    def update(self) -> Path | None:
        try:
            return plot_run(self.run / "metrics.jsonl", self.run / PLOT_NAME)
        except Exception as err:  # a plot is never worth a training run; Ctrl-C still passes
            if not self.warned:
                self.warned = True
                warn(f"{self.run / PLOT_NAME}: the run's plot was not drawn ({user_message(err)}); "
                     "training goes on, metrics.jsonl holds every number")
            return None


# ----------------------------------------------------------------------------- panels

def _loss_panel(ax, records: list[dict]) -> None:
    for d, label in DETECTORS:
        _line(ax, records, lambda r, d=d: r.get(f"{d}/total"), label)
    _line(ax, records, lambda r: r.get("loss"), "weighted sum", color="grey", linestyle="--")
    ax.set_title("training loss")


def _part_panel(part: str):
    def draw(ax, records: list[dict]) -> None:
        for d, label in DETECTORS:
            _line(ax, records, lambda r, d=d: r.get(f"{d}/{part}"), label)
        ax.set_title(part)
    return draw


def _ap_panel(ax, records: list[dict]) -> None:
    drawn = 0
    for (d, label), color in zip(DETECTORS, ("C0", "C1")):
        for metric, style in VAL_METRICS:
            drawn += _line(ax, records, lambda r, d=d, m=metric: _val(r, d, m),
                           label if metric == "AP" else f"{d} {metric}", color=color, linestyle=style)
    if not drawn:  # trained without validation data, or not evaluated yet
        ax.text(0.5, 0.5, "not evaluated", ha="center", va="center", transform=ax.transAxes, color="grey")
    ax.set_title("validation AP")


def _lr_panel(ax, records: list[dict]) -> None:
    _line(ax, records, lambda r: r.get("lr"), None, color="C2")
    ax.set_title("learning rate")
    ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 3))


def _line(ax, records: list[dict], value, label: str | None, **style) -> int:
    """Plot value(record) against the epoch where it is a finite number; returns the points drawn."""
    points = [(r["epoch"], v) for r in records if finite_number(v := value(r))]
    if points:
        xs, ys = zip(*points)
        ax.plot(xs, ys, marker=".", label=label, **style)
    return len(points)


def _loss_parts(records: list[dict]) -> list[str]:
    """The loss part names logged for either detector (d1/loss_classifier -> loss_classifier), in first-seen order."""
    parts: dict[str, None] = {}
    for record in records:
        for key in record:
            head, _, part = key.partition("/")
            if head in ("d1", "d2") and part and part != "total":
                parts[part] = None
    return list(parts)


def _val(record: dict, detector: str, metric: str):
    scores = record.get("val")
    scores = scores.get(detector) if isinstance(scores, dict) else None
    value = scores.get(metric) if isinstance(scores, dict) else None
    return value if finite_number(value) and value >= 0 else None  # COCOeval's -1: no such objects


def finite_number(value) -> bool:
    """A JSON number that is neither NaN nor infinite (true and false are not numbers here)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
