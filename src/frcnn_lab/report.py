"""Results table and plots of a run or a sweep, from the local files alone (no W&B account needed).

``python -m frcnn_lab.report <run or multirun dir> [--output DIR] [--overwrite]`` reads each training run's
``.hydra/config.yaml``, ``csv/metrics.csv``, ``status.json`` and, when ``frcnn_lab.evaluate`` was run on
it, the latest ``evaluate/*/evaluation.json``. Runs are grouped into configurations by the config keys
that differ between them (the seed aside). It writes ``report.md`` (one row per configuration: runs,
best epochs, mAP@0.5 mean ± std over seeds, mAP@[.5:.95], false-negative share, false-positive share,
ms per image, training time; then one row per run with its status) and PNG plots: per configuration the
thesis's figures 12-17 (overlapping proposals, classifier accuracy, RPN and head losses, total loss,
epoch time), mAP@0.5 per epoch, and the ablation bars with error bars. Then "which choice mattered": for
every two configurations that differ in one key, the difference of best val mAP@0.5 with a 95 % confidence
interval over seeds (paired by seed, else Welch; ``frcnn_lab.comparisons``), the keys ranked by effect,
and a plot of the differences; where runs have them, the TIDE error breakdown per configuration (table
and stacked bars). Failed, interrupted or empty runs stay in the report, marked as such.
"""

from __future__ import annotations

import argparse
import csv
import itertools
import json
import math
import re
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402

from frcnn_lab.comparisons import Difference, KeyEffect, format_interval, one_key_differences, rank_keys  # noqa: E402
from frcnn_lab.metrics.tide import DESCRIPTIONS as TIDE_DESCRIPTIONS  # noqa: E402
from frcnn_lab.metrics.tide import ERROR_TYPES as TIDE_ERROR_TYPES  # noqa: E402
from frcnn_lab.metrics.tide import SPECIAL_TYPES as TIDE_SPECIAL_TYPES  # noqa: E402
from frcnn_lab.tracking import flat_config  # noqa: E402

TIDE_TYPES = (*TIDE_ERROR_TYPES, *TIDE_SPECIAL_TYPES)
IGNORED_KEYS = ("seed", "tags", "ckpt_path", "task_name")
IGNORED_PREFIXES = ("paths.", "logger.", "callbacks.progress_bar.", "hydra.", "trainer.default_root_dir")
CURVES = (  # (title, [(CSV column, legend)]): the thesis's figures 12-17
    ("mean overlapping proposals (IoU >= 0.5)", [("diag/rpn_overlapping_proposals_epoch", "")]),
    ("classifier accuracy", [("diag/cls_accuracy_epoch", "all"), ("diag/cls_accuracy_fg_epoch", "fg")]),
    ("RPN losses", [("train/rpn_cls_epoch", "cls"), ("train/rpn_reg_epoch", "reg")]),
    ("head losses", [("train/roi_cls_epoch", "cls"), ("train/roi_reg_epoch", "reg")]),
    ("total loss", [("train/loss_epoch", "")]),
    ("epoch time (s)", [("train/epoch_time_s", "")]),
)


@dataclass
class Run:
    """One training run's files, read."""

    path: Path
    config: dict[str, Any]
    status: str                      # completed | failed | interrupted | unknown
    error: str | None = None
    epochs: dict[int, dict[str, float]] = field(default_factory=dict)  # 0-based epoch -> column -> value
    evaluation: dict[str, Any] | None = None
    duration_s: float | None = None

    @property
    def seed(self) -> Any:
        return self.config.get("seed")

    def series(self, column: str) -> tuple[list[int], list[float]]:
        """(1-based epochs, values) where ``column`` was logged."""
        points = [(e + 1, row[column]) for e, row in sorted(self.epochs.items()) if column in row]
        return [p[0] for p in points], [p[1] for p in points]

    @property
    def best_epoch(self) -> int | None:
        """0-based epoch of the highest val/map_50 (the one best.ckpt holds), or None without validation."""
        scored = [(row["val/map_50"], -e) for e, row in self.epochs.items() if "val/map_50" in row]
        return -max(scored)[1] if scored else None

    def at_best(self, column: str) -> float | None:
        best = self.best_epoch
        return None if best is None else self.epochs[best].get(column)

    @property
    def train_time_s(self) -> float | None:
        times = self.series("train/epoch_time_s")[1]
        return sum(times) if times else self.duration_s

    @property
    def note(self) -> str:
        if self.status == "failed":
            return f"failed: {self.error or 'no error recorded'}"
        if self.status == "interrupted":
            return "interrupted (status.json still says running)"
        if not self.epochs:
            return "no metrics (csv/metrics.csv missing or empty)"
        if self.best_epoch is None:
            return "no validation logged"
        return ""


def read_metrics(path: Path) -> dict[int, dict[str, float]]:
    """metrics.csv -> 0-based epoch -> {column: value}, merging the rows Lightning writes per epoch."""
    epochs: dict[int, dict[str, float]] = {}
    if not path.is_file():
        return epochs
    with path.open(newline="") as f:
        for row in csv.DictReader(f):
            if not row.get("epoch"):
                continue
            merged = epochs.setdefault(int(float(row["epoch"])), {})
            for key, value in row.items():
                if key in ("epoch", "step") or value in (None, ""):
                    continue
                number = float(value)
                # torchmetrics reports -1 for an AP without ground truth to measure it on: not a result.
                if not (key.startswith(("val/map", "val/ap_")) and number < 0):
                    merged[key] = number
    return epochs


def read_status(run: Path) -> tuple[str, str | None, float | None]:
    """(status, error, duration) from status.json; "running" there means the process died mid-run."""
    path = run / "status.json"
    if not path.is_file():
        return "unknown", None, None
    try:
        record = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        return "unknown", f"unreadable status.json ({error})", None
    status = {"running": "interrupted"}.get(record.get("status"), record.get("status", "unknown"))
    return status, record.get("error"), record.get("duration_s")


def latest_evaluation(run: Path) -> dict[str, Any] | None:
    files = sorted((run / "evaluate").glob("*/evaluation.json"))
    return json.loads(files[-1].read_text()) if files else None


def read_run(run: Path) -> Run:
    config = OmegaConf.to_container(OmegaConf.load(run / ".hydra" / "config.yaml"), resolve=False)
    status, error, duration = read_status(run)
    return Run(run, flat_config(config), status, error, read_metrics(run / "csv" / "metrics.csv"),
               latest_evaluation(run), duration)


def find_runs(root: Path) -> list[Run]:
    """Training runs at or below ``root``: folders with a ``.hydra/config.yaml`` that has a ``trainer``."""
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such folder")
    runs = []
    for config in sorted(root.rglob(".hydra/config.yaml"), key=lambda p: natural_key(str(p))):
        if "trainer" in (OmegaConf.load(config) or {}):
            runs.append(read_run(config.parent.parent))
    if not runs:
        raise FileNotFoundError(f"{root}: no training run (a folder with .hydra/config.yaml) at or below it")
    return runs


def natural_key(text: str) -> list[Any]:
    """Sort "10" after "9"."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", text)]


def expected_jobs(root: Path) -> int | None:
    """Number of jobs the sweep in ``root/multirun.yaml`` launches, or None when there is none."""
    path = root / "multirun.yaml"
    if not path.is_file():
        return None
    from hydra.core.override_parser.overrides_parser import OverridesParser

    hydra_cfg = OmegaConf.load(path).hydra
    arguments = [f"{k}={v}" for k, v in (OmegaConf.select(hydra_cfg, "sweeper.params") or {}).items()]
    arguments += list(hydra_cfg.overrides.task)
    sizes: dict[str, int] = {}
    for override in OverridesParser.create().parse_overrides(arguments):
        values = list(override.sweep_string_iterator()) if override.is_sweep_override() else [None]
        sizes[override.get_key_element()] = len(values)  # a command-line sweep replaces the preset's
    return math.prod(sizes.values())


def configuration_keys(runs: list[Run]) -> list[str]:
    """The config keys whose values differ between the runs, apart from the seed and bookkeeping."""
    keys: list[str] = []
    for run in runs:
        keys += [k for k in run.config if k not in keys]
    return [
        k for k in keys
        if k not in IGNORED_KEYS and not k.startswith(IGNORED_PREFIXES)
        and len({json.dumps(r.config.get(k), sort_keys=True, default=str) for r in runs}) > 1
    ]


def group_runs(runs: list[Run]) -> dict[str, list[Run]]:
    """Configuration label ("backbone.name=vgg16 rpn.num_rois=4") -> its runs (seeds), in first-seen order."""
    keys = configuration_keys(runs)
    groups: dict[str, list[Run]] = {}
    for run in runs:
        label = " ".join(f"{k}={run.config.get(k)}" for k in keys) or "all runs"
        groups.setdefault(label, []).append(run)
    return groups


def mean_std(values: list[float]) -> str:
    if not values:
        return "–"
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


def mean_of(values: list[float | None], digits: int = 3) -> str:
    present = [v for v in values if v is not None and not math.isnan(v)]
    return f"{statistics.mean(present):.{digits}f}" if present else "–"


def run_figures(run: Run) -> dict[str, float | None]:
    """FN share, FP share and ms/img of a run: from its evaluation when there is one, else its best epoch."""
    evaluation = run.evaluation
    if evaluation:
        negatives = evaluation.get("negatives") or {}
        return {"fn": evaluation.get("fn_rate"), "fp": negatives.get("fp_image_rate", evaluation.get("fp_image_rate")),
                "ms": evaluation.get("ms_per_image_median"), "source": "evaluate"}
    return {"fn": run.at_best("val/fn_rate"), "fp": run.at_best("val/fp_image_rate"),
            "ms": run.at_best("val/ms_per_image"), "source": "val"}


def count_statuses(runs: list[Run]) -> str:
    done = [r for r in runs if r.best_epoch is not None]
    text = f"{len(done)}/{len(runs)}"
    problems = [(s, sum(r.status == s for r in runs)) for s in ("failed", "interrupted")]
    problems.append(("without val mAP", sum(r.best_epoch is None and r.status not in ("failed", "interrupted")
                                              for r in runs)))
    details = [f"{n} {s}" for s, n in problems if n]
    return text + (f" ({', '.join(details)})" if details else "")


def configuration_table(groups: dict[str, list[Run]]) -> str:
    header = ("| configuration | runs | best epoch | mAP@0.5 | mAP@[.5:.95] | FN share | FP share | ms/img "
              "| training time (s) | source |")
    lines = [header, "|" + " --- |" * 10]
    for label, runs in groups.items():
        scored = [r for r in runs if r.best_epoch is not None]
        figures = [run_figures(r) for r in scored]
        sources = sorted({f["source"] for f in figures})
        lines.append("| " + " | ".join([
            f"`{label}`", count_statuses(runs),
            ", ".join(str(r.best_epoch + 1) for r in scored) or "–",
            mean_std([r.at_best("val/map_50") for r in scored]),
            mean_std([r.at_best("val/map") for r in scored if r.at_best("val/map") is not None]),
            mean_of([f["fn"] for f in figures]), mean_of([f["fp"] for f in figures]),
            mean_of([f["ms"] for f in figures], 1), mean_of([r.train_time_s for r in scored], 1),
            " + ".join(sources) or "–",
        ]) + " |")
    return "\n".join(lines)


def runs_table(groups: dict[str, list[Run]], root: Path) -> str:
    lines = ["| run | configuration | seed | status | epochs | best epoch | mAP@0.5 | note |", "|" + " --- |" * 8]
    for label, runs in groups.items():
        for run in runs:
            best = run.best_epoch
            map_50 = run.at_best("val/map_50")
            lines.append("| " + " | ".join([
                f"`{run.path.relative_to(root) if run.path != root else '.'}`", f"`{label}`", str(run.seed),
                run.status, str(len(run.epochs)), "–" if best is None else str(best + 1),
                "–" if map_50 is None else f"{map_50:.3f}", run.note.replace("|", "/").replace("\n", " "),
            ]) + " |")
    return "\n".join(lines)


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
    figure.tight_layout()
    figure.savefig(path, dpi=80)
    plt.close(figure)
    return path


def plot_map_per_epoch(groups: dict[str, list[Run]], path: Path) -> Path:
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
    figure.tight_layout()
    figure.savefig(path, dpi=80)
    plt.close(figure)
    return path


def short_ticks(labels: list[str]) -> list[str]:
    """"backbone.name=vgg16 rpn.num_rois=4" -> "name=vgg16\nnum_rois=4": short enough to sit side by side."""
    return ["\n".join(part.rsplit(".", 1)[-1] for part in label.split(" ")) for label in labels]


def plot_ablation(groups: dict[str, list[Run]], path: Path) -> Path:
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
    figure.tight_layout()
    figure.savefig(path, dpi=80)
    plt.close(figure)
    return path


def configuration_scores(groups: dict[str, list[Run]]) -> tuple[dict[str, dict[str, Any]], dict[str, dict]]:
    """label -> {key: value} of the keys that tell the configurations apart, and label -> {seed: best mAP@0.5}."""
    runs = [run for group in groups.values() for run in group]
    keys = configuration_keys(runs)
    configurations = {label: {k: group[0].config.get(k) for k in keys} for label, group in groups.items()}
    scores = {label: {r.seed: r.at_best("val/map_50") for r in group if r.best_epoch is not None}
              for label, group in groups.items()}
    return configurations, scores


def context(diff: Difference, configurations: dict[str, dict[str, Any]]) -> str:
    """The keys a difference holds fixed, e.g. ``data.image_size=600``."""
    fixed = {k: v for k, v in configurations[diff.first].items() if k != diff.key}
    return " ".join(f"{k}={v}" for k, v in fixed.items()) or "–"


def differences_table(differences: list[Difference], configurations: dict[str, dict[str, Any]]) -> str:
    lines = ["| key | from → to | with | Δ mAP@0.5 [95 % CI] | test | results | CI excludes 0 | abs Δ / seed std |",
             "|" + " --- |" * 8]
    for diff in sorted(differences, key=lambda d: (d.key, context(d, configurations))):
        lines.append("| " + " | ".join([
            f"`{diff.key}`", f"{diff.first_value} → {diff.second_value}", f"`{context(diff, configurations)}`",
            format_interval(diff), diff.method, f"{diff.counts[0]} / {diff.counts[1]}",
            "**yes**" if diff.excludes_zero else "no",
            "–" if diff.in_seed_stds is None else f"{diff.in_seed_stds:.1f}",
        ]) + " |")
    return "\n".join(lines)


def ranking_table(effects: list[KeyEffect], configurations: dict[str, dict[str, Any]]) -> str:
    lines = ["| rank | key | largest Δ mAP@0.5 [95 % CI] | at | pairs with CI excluding 0 | mean abs Δ |",
             "|" + " --- |" * 6]
    for rank, effect in enumerate(effects, start=1):
        diff = effect.largest
        lines.append("| " + " | ".join([
            str(rank), f"`{effect.key}`", f"{diff.first_value} → {diff.second_value}: {format_interval(diff)}",
            f"`{context(diff, configurations)}`", f"{effect.clear} / {effect.pairs}", f"{effect.mean_abs:.3f}",
        ]) + " |")
    return "\n".join(lines)


def plot_differences(differences: list[Difference], configurations: dict[str, dict[str, Any]], path: Path) -> Path:
    """Each one-key difference as a dot with its 95 % interval; the zero line marks "no effect"."""
    ordered = sorted(differences, key=lambda d: (d.key, context(d, configurations)))
    figure, axis = plt.subplots(figsize=(9, max(2.5, 0.35 * len(ordered) + 1)))
    colours = {key: f"C{i}" for i, key in enumerate(dict.fromkeys(d.key for d in ordered))}
    for y, diff in enumerate(ordered):
        if diff.low is not None:
            axis.plot([diff.low, diff.high], [y, y], color=colours[diff.key], linewidth=2)
        axis.plot([diff.mean], [y], "o", color=colours[diff.key], markerfacecolor="white" if not diff.excludes_zero
                  else colours[diff.key])
    axis.axvline(0, color="black", linewidth=0.8)
    labels = [f"{d.key.rsplit('.', 1)[-1]} {d.first_value}→{d.second_value} | {context(d, configurations)}"
              for d in ordered]
    axis.set_yticks(range(len(ordered)), labels, fontsize=7)
    axis.invert_yaxis()
    axis.set_xlabel("difference of best val mAP@0.5 (95 % CI; filled: excludes 0)")
    figure.tight_layout()
    figure.savefig(path, dpi=80)
    plt.close(figure)
    return path


def tide_figures(run: Run) -> tuple[dict[str, float | None], str] | None:
    """A run's TIDE dAPs ({type: dAP}) and their source: its latest evaluation's ``error_analysis``, else
    the best epoch's ``val/tide_<type>``; None when neither has them."""
    analysis = (run.evaluation or {}).get("error_analysis")
    if analysis:
        return dict(analysis["delta_ap"]), "evaluate"
    values = {key: run.at_best(f"val/tide_{key}") for key in TIDE_TYPES}
    return (values, "val") if any(v is not None for v in values.values()) else None


def tide_means(groups: dict[str, list[Run]]) -> dict[str, tuple[dict[str, float | None], str]]:
    """Configuration -> (mean dAP per TIDE type over its runs, sources); configurations without figures left out."""
    means = {}
    for label, runs in groups.items():
        found = [f for f in (tide_figures(r) for r in runs) if f is not None]
        if found:
            means[label] = ({key: finite_mean([values.get(key) for values, _ in found]) for key in TIDE_TYPES},
                            " + ".join(sorted({source for _, source in found})))
    return means


def finite_mean(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None and not math.isnan(v)]
    return statistics.mean(present) if present else None


def tide_table(means: dict[str, tuple[dict[str, float | None], str]]) -> str:
    """One row per configuration: the mean dAP of each TIDE type (mAP@0.5 points lost to it)."""
    lines = ["| configuration | " + " | ".join(f"{key} ({TIDE_DESCRIPTIONS[key]})" for key in TIDE_TYPES)
             + " | source |", "|" + " --- |" * (len(TIDE_TYPES) + 2)]
    for label, (values, source) in means.items():
        cells = ["–" if values[k] is None else f"{values[k]:.3f}" for k in TIDE_TYPES]
        lines.append(f"| `{label}` | " + " | ".join(cells) + f" | {source} |")
    return "\n".join(lines)


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
    figure.tight_layout()
    figure.savefig(path, dpi=80)
    plt.close(figure)
    return path


def tide_section(groups: dict[str, list[Run]], output: Path) -> list[str]:
    """The report's error-analysis section and its plot, or nothing when no run has TIDE figures."""
    means = tide_means(groups)
    if not means:
        return []
    plot = plot_tide(means, output / "tide_errors.png")
    return [
        "", "## Where the AP is lost (TIDE)", "", tide_table(means), "",
        "dAP: how much mAP@0.5 rises when one error type is fixed by an oracle (Bolya et al., 2020); the types "
        "overlap, so they do not sum to 1 - mAP. fp / fn: all false positives / all false negatives fixed. "
        "Source `evaluate`: the run's latest `frcnn_lab.evaluate`; `val`: the best epoch's validation.",
        "", f"![{plot.stem}]({plot.name})",
    ]


def write_report(root: Path, output: Path, overwrite: bool = False) -> Path:
    """Read the runs below ``root``; write ``output/report.md`` and the plots; return the report's path."""
    runs = find_runs(root)
    if output.exists() and any(output.iterdir()) and not overwrite:
        raise FileExistsError(f"{output} exists and is not empty; pass --output DIR or --overwrite")
    output.mkdir(parents=True, exist_ok=True)
    groups = group_runs(runs)
    plots = [plot_ablation(groups, output / "ablation_map50.png"),
             plot_map_per_epoch(groups, output / "map_per_epoch.png")]
    configurations, scores = configuration_scores(groups)
    differences = one_key_differences(configurations, scores)
    if differences:
        plots.append(plot_differences(differences, configurations, output / "differences.png"))
    curves = [plot_curves(label, group, output / f"curves_{index:02d}.png")
              for index, (label, group) in enumerate(groups.items(), start=1)]
    expected = expected_jobs(root)
    lines = [f"# Report: `{root}`", ""]
    lines.append(f"{len(runs)} runs in {len(groups)} configurations; seeds: "
                 f"{', '.join(sorted({str(r.seed) for r in runs}, key=natural_key))}.")
    if expected is not None and expected != len(runs):
        lines.append(f"**The sweep has {expected} jobs; {expected - len(runs)} of them have no run folder "
                     "(never started).**")
    lines += [
        "", configuration_table(groups), "",
        "Runs: with a val mAP / all (failed, interrupted, without val mAP: no metrics, or no GT box in val). "
        "Best epoch: 1-based, per run, by val mAP@0.5 (the epoch `best.ckpt` holds). "
        "mAP: at each run's best epoch, mean ± std over runs. "
        "FN share: images with objects where nothing scores at or above `eval.score_threshold`; "
        "FP share: negative images with such a detection; ms/img: median inference time. Source `evaluate`: "
        "from the run's latest `frcnn_lab.evaluate` (its split and negatives set, batch of one); `val`: from "
        "the best epoch's validation (FP over the val images without objects; ms/img per image of a val "
        "batch). Training time: sum of a run's epoch times, mean over the runs.",
    ]
    if differences:
        lines += [
            "", "## Which choice mattered", "",
            "Every two configurations that differ in one key: the difference of best val mAP@0.5 (the second "
            "value's minus the first's) with a 95 % confidence interval over seeds — paired by seed when both "
            "have the same seeds (t-test on the per-seed differences), Welch's t-test otherwise; no interval "
            "with fewer than two results a side. Abs Δ / seed std: the difference in units of the larger of the "
            "two configurations' standard deviations over seeds.", "",
            differences_table(differences, configurations), "",
            "Keys ranked by effect: the largest absolute difference among the pairs that vary the key.", "",
            ranking_table(rank_keys(differences), configurations),
        ]
    lines += ["", "## Runs", "", runs_table(groups, root), "", "## Plots", ""]
    lines += [f"![{p.stem}]({p.name})" for p in plots]
    lines += [f"- `{label}`: [{p.name}]({p.name})" for label, p in zip(groups, curves, strict=True)]
    lines += tide_section(groups, output)
    path = output / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m frcnn_lab.report", description=__doc__.split("\n\n")[0])
    parser.add_argument("directory", type=Path, help="a training run's folder, or a multirun (sweep) folder")
    parser.add_argument("--output", type=Path,
                        help="where to write report.md and the plots (default: <directory>/report)")
    parser.add_argument("--overwrite", action="store_true", help="replace the files of an existing report")
    args = parser.parse_args(argv)
    try:
        path = write_report(args.directory, args.output or args.directory / "report", args.overwrite)
    except (FileNotFoundError, FileExistsError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(path.read_text())
    print(f"written: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
