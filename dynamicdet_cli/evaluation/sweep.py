"""Accuracy-latency sweep over the hard-route share, composed from stored results.

Each detector has been run once over the validation set; routing only decides, per image,
whose detections count. So the AP of any split is a composition of the two stored runs,
and the whole curve costs two per-image evaluations plus one accumulate per point
(see evaluation/coco.py: mixed_stats); a segmenting model's mask AP is composed the same way, from
two per-image mask evaluations (`masks=True`). Random routing of the same number of images is the baseline
the router must beat (docs/method.md: random recovers about half the gain at 50% hard).

Whether the router beats random routing is a claim about images not yet seen, so each row
carries a paired bootstrap 95% interval of router AP minus random AP: each replicate draws
the validation images with replacement and one random routing of as many hard images, and
scores both routings on the same drawn images.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import torch
from pycocotools.coco import COCO

from dynamicdet_cli.core.atomic import atomic_path, write_json, write_text
from dynamicdet_cli.speed.calibrate import expected_latency, threshold_for_hard_ratio
from dynamicdet_cli.evaluation.coco import ResampledAP, evaluate_images, mixed_stats
from dynamicdet_cli.core.errors import DynamicDetError
from dynamicdet_cli.core.stats import percentile_interval

SWEEP_COLUMNS = ("k", "tau", "hard_share", "AP", "AP50", "latency_ms", "random_AP", "random_AP_std",
                 "gain_vs_random", "gain_lo", "gain_hi")
MASK_COLUMNS = ("mask_AP", "mask_AP50")  # after the others, in sweeps of segmenting models
BOOTSTRAP_REPLICATES = 200  # enough for a 95% percentile interval; each costs two ResampledAP.ap calls (docs/benchmarks.md)


def compose_sweep(
    coco_gt: COCO,
    image_ids: list[int],
    results_easy: dict[int, list[dict]],
    results_hard: dict[int, list[dict]],
    scores: torch.Tensor,
    ratios: list[float],
    lat1_ms: float | None,
    lat2_ms: float | None,
    random_draws: int = 5,
    seed: int = 0,
    bootstrap: int = BOOTSTRAP_REPLICATES,
    latency_curve: list | None = None,
    masks: bool = False,
) -> list[dict]:
    """One row per hard ratio k: router routing versus random routing of as many images.

    `results_easy` / `results_hard` map image id -> COCO results of that detector (an id
    may be missing: no detections); `scores` holds the router score of each image in
    `image_ids`, same order. For each k: tau = threshold_for_hard_ratio(scores, k), images
    with score > tau take the hard results, the rest the easy ones. Rows hold
    {k, tau, hard_share, AP, AP50, latency_ms, random_AP, random_AP_std}: hard_share is
    the share actually routed hard (below k when scores tie at the cut), latency_ms the
    expected latency at that share (None without both latencies; read off `latency_curve`,
    calibrate's measured mixed-batch points, when given), random_AP the mean AP
    over `random_draws` random routings (seeded) with the same number of hard images
    (None when random_draws is 0), random_AP_std their population std. gain_vs_random =
    AP - random_AP, and [gain_lo, gain_hi] its paired bootstrap 95% interval over images
    from `bootstrap` replicates (None when 0, without random draws, or at k where every
    routing is the same: no image or every image hard). APs use evaluation/coco.py's convention
    (-1 when the images have no ground-truth objects). With `masks` (every result carries a
    `segmentation`), rows also hold mask_AP and mask_AP50 of the same routing, composed from
    the two detectors' per-image mask evaluations.
    """
    scores = torch.as_tensor(scores).detach().cpu().flatten()
    if scores.numel() != len(image_ids):
        raise DynamicDetError(
            f"{scores.numel()} router scores for {len(image_ids)} images: the stored scores "
            "belong to another validation set; rerun the evaluation"
        )
    if len(set(image_ids)) != len(image_ids):
        raise DynamicDetError("duplicate image ids in the validation set")
    if (lat1_ms is None) != (lat2_ms is None):
        raise DynamicDetError("give both route latencies or neither")
    if random_draws < 0 or bootstrap < 0:
        raise DynamicDetError(f"random draws and bootstrap replicates must be >= 0, got {random_draws}, {bootstrap}")

    easy = evaluate_images(coco_gt, _flatten(results_easy, image_ids), image_ids)
    hard = evaluate_images(coco_gt, _flatten(results_hard, image_ids), image_ids)
    if masks:
        easy_segm = evaluate_images(coco_gt, _flatten(results_easy, image_ids), image_ids, "segm")
        hard_segm = evaluate_images(coco_gt, _flatten(results_hard, image_ids), image_ids, "segm")
    generator = torch.Generator().manual_seed(seed)
    n_images = len(image_ids)
    resampled = ResampledAP(easy, hard) if bootstrap and random_draws else None

    rows = []
    for k in ratios:
        tau = threshold_for_hard_ratio(scores, k)
        routed = (scores > tau).nonzero().flatten().tolist()
        stats = mixed_stats(easy, hard, (image_ids[i] for i in routed), headline_only=True)
        n_hard = len(routed)
        hard_share = n_hard / n_images
        random_ap, random_std = _random_baseline(
            easy, hard, image_ids, n_hard, random_draws, generator, stats["AP"]
        )
        latency = None if lat1_ms is None else expected_latency(hard_share, lat1_ms, lat2_ms, latency_curve)
        gain = None if random_ap is None else stats["AP"] - random_ap
        lo = hi = None
        if gain is not None and bootstrap and 0 < n_hard < n_images:
            lo, hi = _bootstrap_gain(resampled, {image_ids[i] for i in routed}, bootstrap, generator)
        rows.append(
            {
                "k": float(k),
                "tau": tau,
                "hard_share": hard_share,
                "AP": stats["AP"],
                "AP50": stats["AP50"],
                "latency_ms": latency,
                "random_AP": random_ap,
                "random_AP_std": random_std,
                "gain_vs_random": gain,
                "gain_lo": lo,
                "gain_hi": hi,
            }
        )
        if masks:
            segm = mixed_stats(easy_segm, hard_segm, (image_ids[i] for i in routed), headline_only=True)
            rows[-1].update(mask_AP=segm["AP"], mask_AP50=segm["AP50"])
    return rows


def write_sweep(rows: list[dict], out_dir: Path) -> dict[str, Path | None]:
    """Write sweep.json, sweep.csv and, if matplotlib is installed, sweep.png into `out_dir`.

    Each file is written to a temporary file and renamed, so a reader never sees half a
    file. Returns {"json": path, "csv": path, "plot": path or None}; None means matplotlib
    is missing (the caller suggests `pip install 'dynamicdet[plot]'`).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path | None] = {}

    paths["json"] = out_dir / "sweep.json"
    write_json(paths["json"], rows, indent=2)

    buffer = io.StringIO()
    columns = SWEEP_COLUMNS + (MASK_COLUMNS if rows and "mask_AP" in rows[0] else ())
    writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="ignore")
    writer.writeheader()
    for row in rows:  # None (no latency / no random draws) -> empty cell
        writer.writerow({key: "" if row.get(key) is None else row[key] for key in columns})
    paths["csv"] = out_dir / "sweep.csv"
    write_text(paths["csv"], buffer.getvalue())

    paths["plot"] = _plot(rows, out_dir / "sweep.png")
    return paths


def _flatten(results: dict[int, list[dict]], image_ids: list[int]) -> list[dict]:
    """The results of `image_ids` as one list (other images' results are dropped)."""
    return [r for image_id in image_ids for r in results.get(image_id, [])]


def _random_baseline(easy, hard, image_ids, n_hard, draws, generator, router_ap):
    """(mean AP, std AP) over `draws` random choices of `n_hard` hard images."""
    if draws == 0:
        return None, None
    if n_hard in (0, len(image_ids)):
        return router_ap, 0.0  # every routing of 0 or all images is the same routing
    aps = []
    for _ in range(draws):
        pick = torch.randperm(len(image_ids), generator=generator)[:n_hard].tolist()
        hard_ids = (image_ids[i] for i in pick)
        aps.append(mixed_stats(easy, hard, hard_ids, headline_only=True)["AP"])
    return float(torch.tensor(aps).mean()), float(torch.tensor(aps).std(unbiased=False))


def _bootstrap_gain(resampled: ResampledAP, hard_ids: set[int], replicates: int, generator):
    """Paired bootstrap 95% interval of (router AP - random AP) over resampled images."""
    by_router = torch.tensor([int(i) in hard_ids for i in resampled.image_ids])  # the evaluators' image order
    n_images = len(by_router)
    gains = []
    for _ in range(replicates):
        counts = torch.bincount(torch.randint(n_images, (n_images,), generator=generator), minlength=n_images)
        by_chance = torch.zeros(n_images, dtype=torch.bool)
        by_chance[torch.randperm(n_images, generator=generator)[:len(hard_ids)]] = True
        gains.append(resampled.ap(by_router.numpy(), counts.numpy()) - resampled.ap(by_chance.numpy(), counts.numpy()))
    return percentile_interval(gains)


def _plot(rows: list[dict], path: Path) -> Path | None:
    """AP of router vs random routing against latency (or hard share); None without matplotlib."""
    try:
        from matplotlib.figure import Figure  # no pyplot: no GUI backend, no global state
    except ImportError:
        return None
    use_latency = all(row["latency_ms"] is not None for row in rows)
    x_key = "latency_ms" if use_latency else "hard_share"
    rows = sorted(rows, key=lambda row: row[x_key])
    x = [row[x_key] for row in rows]

    fig = Figure(figsize=(6, 6), layout="constrained")
    ax, gain_ax = fig.subplots(2, 1, sharex=True, height_ratios=[2, 1])
    ax.plot(x, [row["AP"] for row in rows], "o-", label="router")
    if all(row["random_AP"] is not None for row in rows):
        ax.errorbar(
            x, [row["random_AP"] for row in rows], yerr=[row["random_AP_std"] for row in rows],
            fmt="s--", capsize=3, label="random routing",
        )
    ax.set_ylabel("COCO box AP")
    ax.grid(alpha=0.3)
    ax.legend()
    # router minus random with its bootstrap interval: above zero = the router pays off
    with_gain = [row for row in rows if row.get("gain_lo") is not None]
    if with_gain:
        gx = [row[x_key] for row in with_gain]
        gain_ax.fill_between(gx, [row["gain_lo"] for row in with_gain], [row["gain_hi"] for row in with_gain],
                             alpha=0.3, label="95% bootstrap interval")
        gain_ax.plot(gx, [row["gain_vs_random"] for row in with_gain], "o-", label="router - random")
        gain_ax.legend(fontsize="small")
    gain_ax.axhline(0.0, color="black", linewidth=0.8)
    gain_ax.set_ylabel("AP gain over random")
    gain_ax.grid(alpha=0.3)
    gain_ax.set_xlabel("expected latency (ms)" if use_latency else "share of images routed hard")

    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    return path
