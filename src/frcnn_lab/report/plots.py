"""The report's PNG plots (matplotlib, Agg): learning curves, ablation bars, comparisons, accuracy against cost,
TIDE errors. A plot that compares runs which have not plateaued says so on its face."""

from __future__ import annotations

import itertools
import statistics
from collections.abc import Mapping
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from frcnn_lab.metrics.tide import DESCRIPTIONS as TIDE_DESCRIPTIONS  # noqa: E402
from frcnn_lab.metrics.tide import ERROR_TYPES as TIDE_ERROR_TYPES  # noqa: E402
from frcnn_lab.report.runs import Run  # noqa: E402
from frcnn_lab.report.statistics import Estimate  # noqa: E402
from frcnn_lab.report.tables import LEARNING_SPEED  # noqa: E402

CURVES = (  # (title, [(CSV column, legend)]): the thesis's figures 12-17, with the val losses where logged
    ("mean overlapping proposals (IoU >= 0.5)", [("diag/rpn_overlapping_proposals_epoch", "")]),
    ("classifier accuracy", [("diag/cls_accuracy_epoch", "all"), ("diag/cls_accuracy_fg_epoch", "fg")]),
    ("RPN losses", [("train/rpn_cls_epoch", "cls"), ("train/rpn_reg_epoch", "reg"),
                    ("val/loss_rpn_cls", "val cls"), ("val/loss_rpn_reg", "val reg")]),
    ("head losses", [("train/roi_cls_epoch", "cls"), ("train/roi_reg_epoch", "reg"),
                     ("val/loss_roi_cls", "val cls"), ("val/loss_roi_reg", "val reg")]),
    ("total loss", [("train/loss_epoch", "train"), ("val/loss", "val")]),
    ("epoch time (s)", [("train/epoch_time_s", "")]),
)



def save(figure: plt.Figure, path: Path, unsettled: bool = False) -> Path:
    """Write ``figure`` as a PNG; ``unsettled``: it compares runs that have not plateaued, and says so in red."""
    if unsettled:
        figure.suptitle(f"runs not plateaued: this {LEARNING_SPEED}", color="red", fontsize=10, y=0.995)
        figure.tight_layout(rect=(0, 0, 1, 0.96))
    else:
        figure.tight_layout()
    figure.savefig(path, dpi=80)
    plt.close(figure)
    return path


def plot_curves(label: str, runs: list[Run], path: Path) -> Path:
    """The thesis's figures 12-17 for one configuration, one line per run (seed)."""
    figure, axes = plt.subplots(2, 3, figsize=(14, 7.5))
    for axis, (title, columns) in zip(axes.flat, CURVES, strict=True):
        drawn = False
        for run, (column, legend) in itertools.product(runs, columns):
            epochs, values = run.series(column)
            if values:
                axis.plot(epochs, values, marker="o", label=" ".join(x for x in (f"seed {run.seed}", legend) if x))
                drawn = True
        axis.set_title(title)
        axis.set_xlabel("epoch")
        if drawn:
            axis.legend(fontsize=7)
        else:
            axis.text(0.5, 0.5, "not logged", ha="center", va="center", transform=axis.transAxes)
    figure.suptitle(label, fontsize=10)
    return save(figure, path)


def plot_map_per_epoch(groups: dict[str, list[Run]], path: Path, unsettled: bool) -> Path:
    """val mAP@0.5 per epoch: the mean over each configuration's runs, with their range shaded."""
    figure, axis = plt.subplots(figsize=(9, 5))
    for label, runs in groups.items():
        by_epoch: dict[int, list[float]] = {}
        for run in runs:
            for epoch, value in zip(*run.series("val/map_50"), strict=True):
                by_epoch.setdefault(epoch, []).append(value)
        if not by_epoch:
            continue
        epochs = sorted(by_epoch)
        axis.plot(epochs, [statistics.mean(by_epoch[e]) for e in epochs], marker="o", label=label)
        axis.fill_between(epochs, [min(by_epoch[e]) for e in epochs], [max(by_epoch[e]) for e in epochs], alpha=0.2)
    axis.set_xlabel("epoch")
    axis.set_ylabel("val mAP@0.5")
    axis.legend(fontsize=7)
    return save(figure, path, unsettled)


def short_ticks(labels: list[str]) -> list[str]:
    """"backbone.name=vgg16 roi_head.bg_iou_lo=0.1" -> "name=vgg16\nbg_iou_lo=0.1": short enough to sit side by
    side."""
    return ["\n".join(f"{key.rsplit('.', 1)[-1]}={value}" if value else key
                      for key, _, value in (part.partition("=") for part in label.split(" ")))
            for label in labels]


def plot_ablation(groups: dict[str, list[Run]], path: Path, unsettled: bool) -> Path:
    """Best val mAP@0.5 per configuration: mean with ± std error bars, each seed as a dot."""
    labels = list(groups)
    values = [[r.at_best("val/map_50") for r in groups[label] if r.best_epoch is not None] for label in labels]
    figure, axis = plt.subplots(figsize=(max(6, 1.2 * len(labels)), 5))
    positions = range(len(labels))
    means = [statistics.mean(v) if v else 0.0 for v in values]
    errors = [statistics.stdev(v) if len(v) > 1 else 0.0 for v in values]
    axis.bar(positions, means, yerr=errors, capsize=4, color="lightsteelblue", edgecolor="black")
    for x, v in zip(positions, values, strict=True):
        axis.scatter([x] * len(v), v, color="black", s=12, zorder=3)
        if not v:
            axis.text(x, 0, "no result", ha="center", va="bottom", rotation=90, fontsize=8)
    ticks = short_ticks(labels)
    axis.set_xticks(list(positions), ticks, fontsize=7)
    axis.set_ylabel("best val mAP@0.5 (mean ± std over seeds)")
    return save(figure, path, unsettled)


def plot_tide(means: dict[str, tuple[dict[str, float | None], str]], path: Path) -> Path:
    """Stacked bars per configuration: the mean dAP of each of the six TIDE error types."""
    labels = list(means)
    figure, axis = plt.subplots(figsize=(max(6, 1.2 * len(labels)), 5))
    bottom = [0.0] * len(labels)
    for key in TIDE_ERROR_TYPES:
        heights = [means[label][0][key] or 0.0 for label in labels]
        axis.bar(range(len(labels)), heights, bottom=bottom, label=f"{key} ({TIDE_DESCRIPTIONS[key]})",
                 edgecolor="black", linewidth=0.5)
        bottom = [b + h for b, h in zip(bottom, heights, strict=True)]
    ticks = short_ticks(labels)
    axis.set_xticks(list(range(len(labels))), ticks, fontsize=7)
    axis.set_ylabel("mAP@0.5 lost per error type (TIDE dAP, mean over runs)")
    axis.legend(fontsize=7)
    return save(figure, path)




def plot_estimates(rows: list[tuple[str, Estimate]], xlabel: str, path: Path, unsettled: bool) -> Path:
    """Each (label, estimate) as a dot with its adjusted interval; filled: it matters (Holm); the zero line is
    "no effect"."""
    figure, axis = plt.subplots(figsize=(9, max(2.5, 0.35 * len(rows) + 1)))
    colours = {key: f"C{i}" for i, key in enumerate(dict.fromkeys(label.split(" ")[0] for label, _ in rows))}
    for y, (label, estimate) in enumerate(rows):
        colour = colours[label.split(" ")[0]]
        low, high = estimate.adjusted_interval
        if low is not None:
            axis.plot([low, high], [y, y], color=colour, linewidth=2)
        axis.plot([estimate.mean], [y], "o", color=colour, markerfacecolor=colour if estimate.matters else "white")
    axis.axvline(0, color="black", linewidth=0.8)
    axis.set_yticks(range(len(rows)), [label for label, _ in rows], fontsize=7)
    axis.invert_yaxis()
    axis.set_xlabel(xlabel)
    return save(figure, path, unsettled)


def plot_pareto(points: Mapping[str, dict[str, float | None]], fronts: Mapping[str, set[str]], path: Path,
                unsettled: bool) -> Path:
    """Best val mAP@0.5 against ms/image and against training time per run; the Pareto front joined and filled."""
    figure, axes = plt.subplots(1, 2, figsize=(13, 5))
    for axis, (cost, xlabel) in zip(axes, (("ms", "inference ms/image"), ("time", "training time per run (s)")),
                                    strict=True):
        placed = {label: (p[cost], p["map"]) for label, p in points.items() if p[cost] is not None}
        for label, (x, y) in placed.items():
            on_front = label in fronts[cost]
            axis.plot([x], [y], "o", color="C3" if on_front else "grey", markerfacecolor="C3" if on_front else "white")
            axis.annotate(short_ticks([label])[0], (x, y), fontsize=6,
                          xytext=(3, 3), textcoords="offset points")
        front = sorted(placed[label] for label in fronts[cost] if label in placed)
        if front:
            axis.step(*zip(*front, strict=True), where="post", color="C3", label="Pareto front")
            axis.legend(fontsize=7)
        if not placed:
            axis.text(0.5, 0.5, "not logged", ha="center", va="center", transform=axis.transAxes)
        axis.set_xlabel(xlabel)
        axis.set_ylabel("best val mAP@0.5 (mean over seeds)")
    return save(figure, path, unsettled)
