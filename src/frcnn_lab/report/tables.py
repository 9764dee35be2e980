"""The report's Markdown tables: configurations, runs, comparisons, accuracy against cost, TIDE errors."""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from frcnn_lab.metrics.tide import DESCRIPTIONS as TIDE_DESCRIPTIONS
from frcnn_lab.report.convergence import Convergence, summary
from frcnn_lab.report.runs import TIDE_TYPES, Run, run_figures
from frcnn_lab.report.statistics import Difference, Estimate, Interaction, MainEffect, format_interval, power

LEARNING_SPEED = "ranks learning speed in this budget, not final accuracy"
UNSETTLED_MARK = "⚠ learning speed"
UNSETTLED_BANNER = "> **⚠"  # opens report.md's warning when any run has not plateaued


def mean_std(values: list[float]) -> str:
    if not values:
        return "–"
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


def mean_of(values: list[float | None], digits: int = 3) -> str:
    present = [v for v in values if v is not None and not math.isnan(v)]
    return f"{statistics.mean(present):.{digits}f}" if present else "–"


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    return "\n".join([*lines, *("| " + " | ".join(row) + " |" for row in rows)])


def count_statuses(runs: list[Run]) -> str:
    done = [r for r in runs if r.best_epoch is not None]
    text = f"{len(done)}/{len(runs)}"
    problems = [(s, sum(r.status == s for r in runs)) for s in ("failed", "interrupted")]
    problems.append(("without val mAP", sum(r.best_epoch is None and r.status not in ("failed", "interrupted")
                                              for r in runs)))
    details = [f"{n} {s}" for s, n in problems if n]
    return text + (f" ({', '.join(details)})" if details else "")


def configuration_table(groups: dict[str, list[Run]], convergence: Mapping[Path, Convergence]) -> str:
    rows = []
    for label, runs in groups.items():
        scored = [r for r in runs if r.best_epoch is not None]
        figures = [run_figures(r) for r in scored]
        sources = sorted({f["source"] for f in figures})
        rows.append([
            f"`{label}`", count_statuses(runs),
            ", ".join(str(r.best_epoch + 1) for r in scored) or "–",
            mean_std([r.at_best("val/map_50") for r in scored]),
            mean_std([r.at_best("val/map") for r in scored if r.at_best("val/map") is not None]),
            mean_of([f["fn"] for f in figures]), mean_of([f["fp"] for f in figures]),
            mean_of([f["ms"] for f in figures], 1), mean_of([r.train_time_s for r in scored], 1),
            " + ".join(sources) or "–", summary([convergence[r.path] for r in scored]) if scored else "–",
        ])
    return table(["configuration", "runs", "best epoch", "mAP@0.5", "mAP@[.5:.95]", "FN share", "FP share",
                  "ms/img", "training time (s)", "source", "convergence"], rows)


def runs_table(groups: dict[str, list[Run]], root: Path, convergence: Mapping[Path, Convergence],
               over_images: Mapping[Path, str]) -> str:
    """One row per run; ``over_images``: its mAP@0.5 with the interval over validation images, as text."""
    rows = []
    for label, runs in groups.items():
        for run in runs:
            best, map_50, verdict = run.best_epoch, run.at_best("val/map_50"), convergence[run.path]
            rows.append([
                f"`{run.path.relative_to(root) if run.path != root else '.'}`", f"`{label}`", str(run.seed),
                run.status, str(len(run.epochs)), "–" if best is None else str(best + 1),
                "–" if map_50 is None else f"{map_50:.3f}", verdict.verdict if map_50 is not None else "–",
                "–" if verdict.gain is None else f"{verdict.gain:+.3f} / {verdict.tolerance:.3f}",
                over_images[run.path], run.note.replace("|", "/").replace("\n", " "),
            ])
    return table(["run", "configuration", "seed", "status", "epochs", "best epoch", "mAP@0.5", "convergence",
                  "gain of the last window / tolerance", "mAP@0.5 of the saved detections [95 % over images]",
                  "note"], rows)


def estimate_cells(estimate: Estimate, unsettled: bool, target: float) -> list[str]:
    """Δ [adjusted CI], Holm p, matters, d_z, detectable difference, seeds for ``target``, test, budget warning."""
    effect = estimate.effect_size
    detectable, seeds_needed = power(estimate, target)
    return [
        format_interval(estimate),
        "–" if estimate.p is None else f"{estimate.p:.3f}",
        "**yes**" if estimate.matters else "no",
        "–" if effect is None else f"{effect:+.1f}",
        "–" if detectable is None else f"{detectable:.3f}",
        "–" if seeds_needed is None else str(seeds_needed),
        f"{estimate.method} ({estimate.counts[0]}/{estimate.counts[1]})",
        UNSETTLED_MARK if unsettled else "settled",
    ]


def estimate_header(target: float) -> list[str]:
    return ["Δ mAP@0.5 [adjusted CI]", "p (Holm)", "matters", "d", "detectable at 80 % power",
            f"seeds for {target:.2f}", "test (results)", "budget"]


def context(diff: Difference, configurations: Mapping[str, Mapping[str, Any]]) -> str:
    """The keys a difference holds fixed, e.g. ``data.image_size=600``."""
    fixed = {k: v for k, v in configurations[diff.first].items() if k != diff.key}
    return " ".join(f"{k}={v}" for k, v in fixed.items()) or "–"


def differences_table(differences: list[Difference], configurations: Mapping[str, Mapping[str, Any]],
                      unsettled: Callable[[list[str]], bool], target: float,
                      extra: tuple[str, Callable[[Difference], str]] | None = None) -> str:
    """One row per pair; ``extra``: (header, pair -> cell) of one more column."""
    rows = [[f"`{d.key}`", f"{d.first_value} → {d.second_value}", f"`{context(d, configurations)}`",
             *estimate_cells(d.estimate, unsettled([d.first, d.second]), target), *([extra[1](d)] if extra else [])]
            for d in sorted(differences, key=lambda d: (d.key, context(d, configurations)))]
    return table(["key", "from → to", "with", *estimate_header(target), *([extra[0]] if extra else [])], rows)


def design_text(fixed: Mapping[str, Any]) -> str:
    return " ".join(f"{k}={v}" for k, v in fixed.items()) or "–"


def main_effects_table(effects: list[MainEffect], unsettled: Callable[[list[str]], bool], target: float) -> str:
    rows = [[f"`{e.key}`", ", ".join(f"{level}: {mean:.3f}" for level, mean in e.means.items()),
             f"{e.first} → {e.second}", f"`{design_text(e.design.fixed)}`",
             *estimate_cells(e.estimate, unsettled(list(e.design.cells.values())), target)]
            for e in sorted(effects, key=lambda e: e.key)]
    return table(["key", "marginal means", "contrast", "with", *estimate_header(target)], rows)


def interactions_table(interactions: list[Interaction], unsettled: Callable[[list[str]], bool],
                       target: float) -> str:
    rows = [[f"`{i.key}` × `{i.by}`",
             ", ".join(f"{i.by.rsplit('.', 1)[-1]}={level}: {value:+.3f}" for level, value in i.simple.items()),
             f"{i.first} → {i.second}",
             *estimate_cells(i.estimate, unsettled(list(i.design.cells.values())), target)]
            for i in interactions]
    return table(["keys", "first key's contrast at each level of the second", "second key", *estimate_header(target)],
                 rows)


def pareto_table(points: Mapping[str, dict[str, float | None]], fronts: Mapping[str, set[str]]) -> str:
    """``points``: label -> {"map": ..., "ms": ..., "time": ...}; ``fronts``: "ms" / "time" -> labels on the front."""
    def cell(value: float | None, digits: int) -> str:
        return "–" if value is None else f"{value:.{digits}f}"

    rows = [[f"`{label}`", cell(p["map"], 3), cell(p["ms"], 1), "**yes**" if label in fronts["ms"] else "no",
             cell(p["time"], 0), "**yes**" if label in fronts["time"] else "no"] for label, p in points.items()]
    return table(["configuration", "best val mAP@0.5 (mean)", "ms/img", "on the front (ms/img)",
                  "wall time per run (s)", "on the front (time)"], rows)


def tide_table(means: dict[str, tuple[dict[str, float | None], str]]) -> str:
    """One row per configuration: the mean dAP of each TIDE type (mAP@0.5 points lost to it)."""
    rows = [[f"`{label}`", *("–" if values[k] is None else f"{values[k]:.3f}" for k in TIDE_TYPES), source]
            for label, (values, source) in means.items()]
    return table(["configuration", *(f"{key} ({TIDE_DESCRIPTIONS[key]})" for key in TIDE_TYPES), "source"], rows)


def spread_table(values: dict[str, tuple[dict[str, list[float]], str]], first: str) -> str:
    """One row per configuration, one column per figure: mean ± std over its runs (``runs.figure_means``)."""
    columns = list(dict.fromkeys(key for found, _ in values.values() for key in found))
    rows = [[f"`{label}`", *(mean_std(found.get(key, [])) for key in columns), source]
            for label, (found, source) in values.items()]
    return table([first, *columns, "source"], rows)
