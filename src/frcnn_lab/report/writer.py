"""``report.md`` and its plots, assembled from the runs, their convergence and the study's statistics."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from frcnn_lab.report import convergence as plateau
from frcnn_lab.report.budget import BUDGETS, COST, STEPS, equal_cost
from frcnn_lab.report.budget import step_costs as step_costs_of
from frcnn_lab.report.failures import failed
from frcnn_lab.report.nonparametric import BOOTSTRAP, BOOTSTRAP_SEED, ROPE
from frcnn_lab.report.plots import (
    plot_ablation,
    plot_curves,
    plot_estimates,
    plot_map_per_epoch,
    plot_pareto,
    plot_tide,
)
from frcnn_lab.report.runs import (
    RUN_LENGTH_KEYS,
    Run,
    class_figures,
    configuration_scores,
    expected_jobs,
    figure_means,
    find_runs,
    finite_mean,
    group_runs,
    natural_key,
    run_figures,
    size_figures,
    tide_means,
)
from frcnn_lab.report.sections import (
    NO_DETECTIONS,
    budget_section,
    count_failures,
    failures_section,
    learned_section,
    reference_configuration,
    robust_section,
    schedule_text,
)
from frcnn_lab.report.statistics import (
    LEVEL,
    POWER,
    Difference,
    Factorial,
    Ranking,
    dominated_main_effects,
    factorial_analysis,
    format_interval,
    one_key_differences,
    pareto_front,
    rank,
)
from frcnn_lab.report.study import read_study, study_section
from frcnn_lab.report.tables import (
    LEARNING_SPEED,
    UNSETTLED_BANNER,
    UNSETTLED_MARK,
    configuration_table,
    context,
    design_text,
    differences_table,
    interactions_table,
    main_effects_table,
    pareto_table,
    runs_table,
    spread_table,
    tide_table,
)
from frcnn_lab.report.validation_set import OverImages, over_images

TARGET = 0.05  # the difference of best val mAP@0.5 whose seed count the report gives


def write_report(root: Path, output: Path, overwrite: bool = False, window: int = plateau.WINDOW,
                 tolerance: float = plateau.TOLERANCE, target: float = TARGET, floor: float = plateau.FLOOR, *,
                 rope: float = ROPE, budget: str = STEPS, step_costs: Path | None = None,
                 cost_budget: float | None = None, reference: list[str] | None = None) -> Path:
    """Read the runs below ``root``; write ``output/report.md`` and the plots; return the report's path."""
    if budget not in BUDGETS:
        raise ValueError(f"budget={budget!r} is unknown; choose one of {list(BUDGETS)}")
    runs = find_runs(root)
    if output.exists() and any(output.iterdir()) and not overwrite:
        raise FileExistsError(f"{output} exists and is not empty; pass --output DIR or --overwrite")
    groups = group_runs(runs)
    configurations, scores = configuration_scores(groups)
    outcomes = {run.path: failed(run.curve, window, floor) for run in runs}
    found = count_failures(groups, outcomes, reference_configuration(groups, configurations, reference))
    output.mkdir(parents=True, exist_ok=True)
    verdicts = {run.path: plateau.judge(run.curve, window, tolerance, floor) for run in runs}
    not_settled = {label for label, group in groups.items()
                   if any(r.best_epoch is not None and not verdicts[r.path].settled for r in group)}

    def unsettled(labels: list[str]) -> bool:
        return any(label in not_settled for label in labels)

    scored = [r for r in runs if r.best_epoch is not None]
    any_unsettled = unsettled(list(groups))
    plots = [plot_ablation(groups, output / "ablation_map50.png", any_unsettled),
             plot_map_per_epoch(groups, output / "map_per_epoch.png", any_unsettled)]
    curves = [plot_curves(label, group, output / f"curves_{index:02d}.png")
              for index, (label, group) in enumerate(groups.items(), start=1)]
    expected = expected_jobs(root)
    lines = [f"# Report: `{root}`", ""]
    lines.append(f"{len(runs)} runs in {len(groups)} configurations; seeds: "
                 f"{', '.join(sorted({str(r.seed) for r in runs}, key=natural_key))}.")
    if expected is not None and expected != len(runs):
        lines.append(f"**The sweep has {expected} jobs; {expected - len(runs)} of them have no run folder "
                     "(never started).**")
    unsettled_runs = [r for r in scored if not verdicts[r.path].settled]
    if unsettled_runs:
        lines += ["", f"{UNSETTLED_BANNER} {len(unsettled_runs)} of {len(scored)} runs have not plateaued** (still "
                  "learning, flat at the floor or too short to judge; see Convergence). Every comparison that "
                  f"involves them {LEARNING_SPEED}."]
    lines += [
        "", configuration_table(groups, verdicts), "",
        "Runs: with a val mAP / all (failed, interrupted, without val mAP: no metrics, or no GT box in val). "
        "Best epoch: 1-based, per run, by val mAP@0.5 (the epoch `best.ckpt` holds). "
        "mAP: at each run's best epoch, mean ± std over runs. "
        "FN share: images with objects where nothing scores at or above `eval.score_threshold`; "
        "FP share: negative images with such a detection; ms/img: median inference time. Source `evaluate`: "
        "from the run's latest `frcnn_lab.evaluate` (its split and negatives set, batch of one); `val`: from "
        "the best epoch's validation (FP over the val images without objects; ms/img per image of a val "
        "batch). Training time: the fit's time, validations included, summed over the processes of a resumed "
        "run (`status.json` `train_time_s`; runs without it: the sum of their epoch times), mean over the runs. "
        "Convergence: see below.",
        "", "## Convergence", "",
        f"A run has **plateaued** when the best of its last {window} validations beats the best before them by "
        f"at most the tolerance: {tolerance:.3f} mAP@0.5 at a best mAP@0.5 p of 0.5, times 2 sqrt(p (1 - p)) "
        "at the run's own p (about the noise of mAP@0.5 on a validation set of a few hundred boxes, which "
        "shrinks near 0 and 1); it is **still learning** when that gain is larger (with fewer validations: "
        f"when the last ones rise by more than the tolerance), **flat at the floor** when it does not rise and its "
        f"best mAP@0.5 stays below {floor:.3f} (it has not learned the task yet: an untrained head's level, not an "
        f"accuracy it converged to), and **too short to judge** with fewer than {window + 1} validations and no "
        "such rise; all three count as not plateaued (`--plateau-window`, `--plateau-tolerance`, "
        f"`--plateau-floor`). A run is **past its peak** when its last {window} validations all stay below its "
        "best by more than twice the tolerance: it rose and fell (few training images for the steps, or a "
        "learning rate too high late in the schedule); it counts as settled like a plateau, as more steps would "
        "not raise its best (which `best.ckpt` holds), but its later epochs are worse. "
        f"{sum(v.settled for r, v in verdicts.items() if r in {s.path for s in scored})} of {len(scored)} "
        "runs with a validation curve have plateaued or are past their peak; per run in the runs table, per "
        f"configuration above. **Plateaued means settled under the run's own schedule** ({schedule_text(runs)}), "
        "not converged: a decaying rate makes the last steps small, so a curve can flatten where a longer schedule "
        "would still rise.",
    ]
    lines += failures_section(groups, outcomes, found, verdicts, root, window, floor)
    run_of = {label: {r.seed: r for r in group if r.best_epoch is not None} for label, group in groups.items()}
    detections = {run.path: run.detections for run in runs if run.detections is not None}
    images = over_images(detections, BOOTSTRAP, BOOTSTRAP_SEED) if detections else None
    compared_images, why_not = images, NO_DETECTIONS
    if budget == COST:
        configurations, _ = configuration_scores(groups, ignored=RUN_LENGTH_KEYS)
        spent = equal_cost(groups, step_costs_of(groups, step_costs), cost_budget)
        lines += budget_section(groups, spent)
        if spent.cost is not None:
            scores = {label: seeds for label, seeds in spent.scores.items() if seeds}
            configurations = {label: configurations[label] for label in scores}
            run_of = {label: {seed: run_of[label][seed] for seed in seeds} for label, seeds in scores.items()}
            compared_images, why_not = None, "n/a (the saved detections are of the whole run's best checkpoint)"
    differences = one_key_differences(configurations, scores)
    analysis = factorial_analysis(configurations, scores)
    if differences or analysis.main_effects:
        lines += comparison_sections(configurations, differences, analysis, unsettled, output, plots, target)
        lines += robust_section(differences, analysis, configurations, scores, run_of, compared_images, rope, why_not)
        lines += learned_section(configurations, scores, found.failed, unsettled, target)
    lines += pareto_section(groups, output, plots, unsettled)
    if (study := read_study(root)) is not None:
        lines += study_section(study, runs, root)
    lines += ["", "## Runs", "", runs_table(groups, root, verdicts, {run.path: over_images_text(images, run.path)
                                                                     for run in runs}), "", "## Plots", ""]
    lines += [f"![{p.stem}]({p.name})" for p in plots]
    lines += [f"- `{label}`: [{p.name}]({p.name})" for label, p in zip(groups, curves, strict=True)]
    lines += tide_section(groups, output)
    lines += class_and_size_section(groups, runs)
    path = output / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def over_images_text(images: OverImages | None, run: Path) -> str:
    """A run's mAP@0.5 on its saved detections with its interval over the validation images."""
    found = None if images is None else images.interval(run, LEVEL)
    if found is None:
        return NO_DETECTIONS
    return f"{found[0]:.3f} [{found[1]:.3f}, {found[2]:.3f}] ({images.images[run]} images)"


def comparison_sections(configurations: Mapping[str, Mapping[str, Any]], differences: list[Difference],
                        analysis: Factorial, unsettled, output: Path, plots: list[Path], target: float) -> list[str]:
    """"Which choice mattered": main effects, interactions, the ranking and the one-key pairs."""
    level = f"{LEVEL * 100:.0f} %"
    lines = [
        "", "## Which choice mattered", "",
        f"Differences of best val mAP@0.5 over seeds. **Intervals are adjusted for multiplicity**: Bonferroni "
        f"intervals at level 1 − {1 - LEVEL:.2f}/m for the m tests of their family (the factorial terms are one "
        f"family, the one-key pairs another); p-values are Holm-adjusted within the family (statsmodels "
        f"`multipletests`), and a comparison *matters* when its Holm p < {1 - LEVEL:.2f}. d: Cohen's d_z, the mean "
        "over the standard deviation of the per-seed differences (Welch pairs: over sqrt((s1² + s2²)/2)). "
        f"Detectable: the smallest difference this many seeds would detect with {POWER * 100:.0f} % power at the "
        "family's Bonferroni level given the observed sd (statsmodels `TTestPower`; Welch pairs: `TTestIndPower`); "
        f"seeds for {target:.2f}: how many seeds a difference of {target:.2f} would need for that."
        + (f" Budget: {UNSETTLED_MARK} marks a comparison that involves runs which have not plateaued: "
           f"it {LEARNING_SPEED}." if unsettled(list(configurations)) else ""),
    ]
    if analysis.main_effects:
        lines += factorial_section(analysis, unsettled, target)
        rows = [(f"{e.key} {e.first}→{e.second} | {design_text(e.design.fixed)}", e.estimate)
                for e in sorted(analysis.main_effects, key=lambda e: e.key)]
        rows += [(f"{i.key} × {i.by} | {i.by.rsplit('.', 1)[-1]} {i.first}→{i.second}", i.estimate)
                 for i in analysis.interactions]
        plots.append(plot_estimates(rows, f"main effects and interactions, Δ best val mAP@0.5 ({level} intervals "
                                    "adjusted; filled: matters)", output / "main_effects.png",
                                    unsettled(list(configurations))))
    if differences:
        lines += [
            "", "### One-key pairs", "",
            "Every two configurations that differ in one key: the second value's minus the first's, paired by seed "
            "when both have the same seeds (t-test on the per-seed differences), Welch's otherwise; no interval "
            "with fewer than two results a side.", "",
            differences_table(differences, configurations, unsettled, target),
        ]
        ordered = sorted(differences, key=lambda d: (d.key, context(d, configurations)))
        rows = [(f"{d.key} {d.first_value}→{d.second_value} | {context(d, configurations)}", d.estimate)
                for d in ordered]
        plots.append(plot_estimates(rows, f"one-key differences of best val mAP@0.5 ({level} intervals adjusted; "
                                    "filled: matters)", output / "differences.png",
                                    unsettled([label for d in differences for label in (d.first, d.second)])))
    return lines


def factorial_section(analysis: Factorial, unsettled, target: float) -> list[str]:
    lines = [
        "", "### Main effects and interactions", "",
        "Each key's main effect comes from the largest full factorial design in the study that varies it (the "
        "other keys of the design crossed in full, the remaining keys fixed as in *with*, every cell with the same "
        "seeds). Marginal means: a level's mean over the other keys' levels. Contrast: second level minus first "
        "(two levels), else the highest marginal mean minus the lowest, a spread that is above zero even without "
        "an effect. p: the F test of the term in `ols(score ~ (C(k1) + C(k2) + ...)**2 + C(seed))` + "
        "`anova_lm(typ=2)` (seed as a block), Holm-adjusted; the interval is the paired t-interval of the contrast "
        "over the seeds. The F test pools the residual of all cells and has more degrees of freedom than the "
        "paired interval, so a term can matter while its adjusted interval still includes 0.", "",
        main_effects_table(analysis.main_effects, unsettled, target),
    ]
    if analysis.interactions:
        lines += [
            "", "Interactions: the first key's contrast at each level of the second, and how much it changes "
            "between the second key's two levels (more levels: between the largest and the smallest).", "",
            interactions_table(analysis.interactions, unsettled, target),
        ]
    for found, effect in dominated_main_effects(analysis):
        where = ", ".join(f"{found.by}={level}: {value:+.3f}" for level, value in found.simple.items())
        lines += ["", f"**The interaction dominates the main effect of `{effect.key}`.** Its effect "
                  f"{effect.first} → {effect.second} depends on `{found.by}` ({where}); the main effect "
                  f"({effect.estimate.mean:+.3f}) averages these and describes none of them: read the effect "
                  f"per level of `{found.by}`."]
    lines += ["", "### Ranking", "", ranking_text(rank(analysis.main_effects), unsettled)]
    return lines


def ranking_text(ranking: Ranking, unsettled) -> str:
    """A sentence: the key that mattered most, or why no key is named."""
    if ranking.verdict == "none":
        return ("No key is ranked: the largest main effect does not matter after the adjustment "
                f"({', '.join(f'`{e.key}` {format_interval(e.estimate)}' for e in ranking.order[:2])}).")
    first = ranking.order[0]
    involved = list(first.design.cells.values())
    if len(ranking.order) > 1:
        involved += list(ranking.order[1].design.cells.values())
    warning = f" ⚠ Runs involved have not plateaued: this {LEARNING_SPEED}." if unsettled(involved) else ""
    if len(ranking.order) == 1:
        return f"`{first.key}` is the only key with a main effect: {format_interval(first.estimate)}.{warning}"
    second = ranking.order[1]
    gap = "no seeds in common" if ranking.gap is None else format_interval(ranking.gap, adjusted=False)
    if ranking.verdict == "tied":
        return (f"**The top keys cannot be told apart**: `{first.key}` ({format_interval(first.estimate)}) and "
                f"`{second.key}` ({format_interval(second.estimate)}); |#1| − |#2| paired per seed: {gap} "
                f"(95 %), so no order is given.{warning}")
    return (f"**`{first.key}` mattered most** over the ranges swept: {format_interval(first.estimate)}, ahead of "
            f"`{second.key}` ({format_interval(second.estimate)}); |#1| − |#2| paired per seed: {gap} (95 %)."
            f"{warning}")


def pareto_section(groups: dict[str, list[Run]], output: Path, plots: list[Path], unsettled) -> list[str]:
    """Best val mAP@0.5 against inference time and training time per configuration, with the Pareto fronts."""
    points = {}
    for label, runs in groups.items():
        scored = [r for r in runs if r.best_epoch is not None]
        if scored:
            points[label] = {"map": finite_mean([r.at_best("val/map_50") for r in scored]),
                             "ms": finite_mean([run_figures(r)["ms"] for r in scored]),
                             "time": finite_mean([r.train_time_s for r in scored])}
    if not points:
        return []
    fronts = {cost: pareto_front({label: (p["map"], p[cost]) for label, p in points.items() if p[cost] is not None})
              for cost in ("ms", "time")}
    warn = unsettled(list(points))
    plots.append(plot_pareto(points, fronts, output / "pareto.png", warn))
    return [
        "", "## Accuracy against cost", "",
        *([f"⚠ Runs here have not plateaued: this view {LEARNING_SPEED}.", ""] if warn else []),
        "Per configuration, mean over its runs: best val mAP@0.5, inference ms/image (as in the first table) and "
        "training time per run (as in the first table). On the Pareto front: no "
        "other configuration is at least as accurate and at most as costly, and better in one of the two.", "",
        pareto_table(points, fronts),
    ]


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



def class_and_size_section(groups: dict[str, list[Run]], runs: list[Run]) -> list[str]:
    """AP@0.5 per class and AP@[.5:.95] per object size, mean ± std over each configuration's runs; nothing when
    no run has them."""
    classes = list(dict.fromkeys(name for run in runs for name in (run.config.get("data.classes") or [])))
    per_class = figure_means(groups, lambda run: class_figures(run, classes))
    per_size = figure_means(groups, size_figures)
    if not per_class and not per_size:
        return []
    lines = ["", "## AP by class and object size", ""]
    if per_class:
        lines += ["AP@0.5 per class, mean ± std over the runs (a rare class's AP shows what sampling did for it).",
                  "", spread_table(per_class, "configuration"), ""]
    if per_size:
        lines += ["AP@[.5:.95] per object size, mean ± std over the runs: COCO's areas (box side < 32, 32-96, "
                  ">= 96 px) and the tertiles of the train boxes' side (each run's own edges, in its data summary "
                  "`size_bins_px`), all measured at the model's input.", "", spread_table(per_size, "configuration"),
                  ""]
    lines.append("Source `evaluate`: the run's latest `frcnn_lab.evaluate`; `val`: the best epoch's validation.")
    return lines
