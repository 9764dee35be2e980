"""The report's sections on failed runs, equal training cost, comparisons without a normal model and the
validation set's uncertainty."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from statsmodels.stats.multitest import multipletests

from frcnn_lab.report.budget import Budget
from frcnn_lab.report.convergence import Convergence
from frcnn_lab.report.failures import FailureRate, diagnose, failure_rates
from frcnn_lab.report.nonparametric import (
    BOOTSTRAP,
    probability_of_improvement,
    rope_verdict,
    sign_flip,
    smallest_p,
)
from frcnn_lab.report.runs import Run, holds
from frcnn_lab.report.statistics import (
    LEVEL,
    Difference,
    Estimate,
    Factorial,
    format_interval,
    one_key_differences,
    varied_keys,
)
from frcnn_lab.report.tables import context, design_text, differences_table, table
from frcnn_lab.report.validation_set import OverImages

NO_DETECTIONS = "n/a (no saved detections)"


def schedule_text(runs: Sequence[Run]) -> str:
    """The runs' learning-rate schedules in words ("cosine decay to 5 % of the rate at the last step")."""
    found = set()
    for run in runs:
        schedule, ratio = run.config.get("optim.schedule"), run.config.get("optim.min_lr_ratio")
        if schedule == "cosine" and ratio is not None:
            found.add(f"cosine decay to {ratio * 100:g} % of the rate at the last step")
        elif schedule is not None:
            found.add(f"a {schedule} rate")
    return " / ".join(sorted(found)) or "the run's schedule"


def reference_configuration(groups: Mapping[str, list[Run]], configurations: Mapping[str, Mapping[str, Any]],
                            wanted: Sequence[str] | None) -> str | None:
    """The configuration failure rates are compared with: the one whose config has every ``key=value`` of
    ``wanted``, else the one that differs in one key from the most others (the default of a one-key-at-a-time
    study), the first of those on a tie."""
    if wanted:
        found = [label for label, runs in groups.items() if all(holds(runs[0].config, w) for w in wanted)]
        if len(found) != 1:
            raise ValueError(f"--reference {' '.join(wanted)} matches {len(found)} configurations, not one: "
                             f"{found or list(groups)}")
        return found[0]

    def neighbours(label: str) -> int:
        return sum(len(varied_keys(configurations[label], configurations[other])) == 1 for other in configurations)

    return max(configurations, key=neighbours) if len(configurations) > 1 else None


@dataclass(frozen=True)
class Failures:
    rates: dict[str, FailureRate]
    reference: str | None
    failed: dict[str, set]            # label -> seeds of its failed runs


def count_failures(groups: Mapping[str, list[Run]], outcomes: Mapping[Path, bool | None],
                   reference: str | None) -> Failures:
    by_label = {label: [outcomes[r.path] for r in runs if outcomes[r.path] is not None]
                for label, runs in groups.items()}
    failed = {label: {r.seed for r in runs if outcomes[r.path]} for label, runs in groups.items()}
    return Failures(failure_rates(by_label, reference), reference, failed)


def failures_section(groups: Mapping[str, list[Run]], outcomes: Mapping[Path, bool | None], found: Failures,
                     verdicts: Mapping[Path, Convergence], root: Path, window: int, floor: float) -> list[str]:
    if not found.rates:
        return []
    rows = []
    for label, rate in found.rates.items():
        low, high = rate.interval
        against = ("reference" if label == found.reference else "–" if rate.raw_p is None
                   else f"{rate.raw_p:.3f} ({rate.p:.3f})")
        rows.append([f"`{label}`", f"{rate.failures}/{rate.runs}", f"{rate.rate:.2f} [{low:.2f}, {high:.2f}]",
                     against])
    against_text = "" if found.reference not in found.rates else (
        f" Against the reference (`{found.reference}`, `--reference`): Fisher's exact test of failed / learned "
        "against the reference's, two-sided, raw p and, in brackets, Holm-adjusted over the configurations compared "
        "with it.")
    lines = [
        "", "## Failed runs", "",
        f"A run has **failed** when its best val mAP@0.5 stays below the floor ({floor:.3f}) over more than {window} "
        "validations: it did not learn the task in its budget, whether flat there or still creeping up below it. "
        "Runs still below the floor after fewer validations have no outcome and are not counted. Rate: failures / "
        f"runs with an exact (Clopper–Pearson) {LEVEL * 100:.0f} % interval (`scipy.stats.binomtest`)."
        + against_text, "",
        table(["configuration", "failed / runs", f"failure rate [{LEVEL * 100:.0f} % exact]",
               "Fisher p against the reference (Holm)"], rows),
    ]
    failed_runs = [(label, run) for label, runs in groups.items() for run in runs if outcomes[run.path]]
    if failed_runs:
        lines += ["", "What each failed run's logged diagnostics show (`diag/*` per epoch in `csv/metrics.csv`; the "
                  "first stage along RPN → sampled RoIs → box head that fails, and the epoch it went wrong):", ""]
        for label, run in failed_runs:
            diagnosis = diagnose(run.epochs)
            when = f" Went wrong at epoch {diagnosis.epoch}." if diagnosis.epoch is not None else ""
            lines.append(f"- `{run.path.relative_to(root) if run.path != root else '.'}` (`{label}`, seed {run.seed}, "
                         f"best {max(run.curve):.3f}, {verdicts[run.path].verdict}): {diagnosis.text}.{when}")
    return lines


def budget_section(groups: Mapping[str, list[Run]], spent: Budget) -> list[str]:
    """``--budget cost``: the budget, each configuration's cost per step and its scores within the budget."""
    if spent.cost is None:
        return ["", "## Equal training cost", "", "No run has both a cost per step and a validation: nothing to "
                "compare at equal cost; the comparisons below are at equal steps."]
    rows = []
    for label in groups:
        cost, scores = spent.costs[label], spent.scores[label]
        values = list(scores.values())
        rows.append([
            f"`{label}`", "–" if cost is None else f"{cost.seconds:.3f} ({cost.source})",
            "–" if cost is None else f"{spent.cost / cost.seconds:,.0f}",
            ", ".join(f"{spent.steps[label][s]:,}" for s in scores) or "–",
            ", ".join(f"{v:.3f}" for v in values) or "–",
            "; ".join(spent.left_out[label]) or "–",
        ])
    how = "given with `--cost-budget`" if spent.chosen else "the largest cost every completed run reached"
    return [
        "", "## Equal training cost", "",
        f"**The comparisons below are at equal training cost**: a budget of {spent.cost:,.0f} s, {how}. A run's cost "
        "after s steps is s × its configuration's cost per step (from `--step-costs`, else its logged training "
        "time per step); its score is its best val mAP@0.5 among its validations at or below the budget. Failures "
        "and convergence above are those of the whole runs.", "",
        table(["configuration", "cost per step (s, source)", "steps in the budget", "steps of the validation used",
               "best val mAP@0.5 within the budget", "left out"], rows),
    ]


def contrast_weights(first: Sequence[Run], second: Sequence[Run]) -> dict[Path, float]:
    """Runs -> weights of mean(second) - mean(first), the difference the seed statistics estimate."""
    weights = {run.path: -1 / len(first) for run in first}
    weights.update({run.path: 1 / len(second) for run in second})
    return weights


@dataclass(frozen=True)
class Row:
    cells: list[str]                  # what is compared
    first: dict[Any, float]           # seed -> score
    second: dict[Any, float]
    estimate: Estimate
    weights: dict[Path, float] | None  # runs -> weights of the contrast, for the interval over images


def robust_section(differences: list[Difference], analysis: Factorial, configurations: Mapping[str, Mapping],
                   scores: Mapping[str, Mapping[Any, float]], run_of: Mapping[str, Mapping[Any, Run]],
                   images: OverImages | None, rope: float, why_no_images: str) -> list[str]:
    """P(X > Y), sign-flip p, ROPE verdict and the interval over validation images of each one-key pair and
    two-level main effect."""
    rows = []
    for effect in sorted(analysis.main_effects, key=lambda e: e.key):
        # a spread of more levels is chosen after seeing them, so it has no fixed contrast to test; a one-key
        # design's main effect is its one-key pair, below
        if len(effect.design.levels[effect.key]) != 2 or len(effect.design.keys) == 1:
            continue
        cells = {level: [label for levels, label in effect.design.cells.items()
                         if levels[effect.design.keys.index(effect.key)] == level] for level in (effect.first,
                                                                                                 effect.second)}
        seeds = effect.design.seeds
        weights = {run_of[label][s].path: sign / (len(seeds) * len(cells[level]))
                   for level, sign in ((effect.first, -1), (effect.second, 1)) for label in cells[level] for s in seeds}
        rows.append(Row([f"`{effect.key}` (main effect)", f"{effect.first} → {effect.second}",
                         f"`{design_text(effect.design.fixed)}`"],
                        effect.design.score(scores, **{effect.key: effect.first}),
                        effect.design.score(scores, **{effect.key: effect.second}), effect.estimate, weights))
    for d in sorted(differences, key=lambda d: (d.key, context(d, configurations))):
        rows.append(Row([f"`{d.key}`", f"{d.first_value} → {d.second_value}", f"`{context(d, configurations)}`"],
                        dict(scores[d.first]), dict(scores[d.second]), d.estimate,
                        contrast_weights(list(run_of[d.first].values()), list(run_of[d.second].values()))))
    if not rows:
        return []
    tests = []
    for row in rows:
        paired = set(row.first) == set(row.second) and len(row.first) >= 2
        seeds = sorted(row.first) if paired else None
        first = [row.first[s] for s in seeds] if paired else list(row.first.values())
        second = [row.second[s] for s in seeds] if paired else list(row.second.values())
        tests.append((paired, first, second, sign_flip(first, second, paired)))
    raw = [p for *_, p in tests if p is not None]
    holm = iter(multipletests(raw, method="holm")[1] if raw else [])
    table_rows = []
    for row, (paired, first, second, p) in zip(rows, tests, strict=True):
        improvement, low, high = probability_of_improvement(first, second)
        floor = smallest_p(paired, (len(first), len(second)))
        adjusted_low, adjusted_high = row.estimate.adjusted_interval
        found = None if images is None or row.weights is None else images.contrast(row.weights, LEVEL)
        table_rows.append([
            *row.cells,
            f"{improvement:.2f}" + ("" if low is None else f" [{low:.2f}, {high:.2f}]"),
            "–" if p is None else f"{p:.3f} ({next(holm):.3f}; ≥ {floor:.3g})",
            rope_verdict(adjusted_low, adjusted_high, rope),
            format_interval(row.estimate),
            why_no_images if found is None else f"{found[0]:+.3f} [{found[1]:+.3f}, {found[2]:+.3f}]",
        ])
    return [
        "", "### Without a normal model", "",
        "The comparisons above, read without assuming normal differences. **P(X > Y)**: the probability that a run "
        "of the second configuration beats one of the first, over all pairs of their runs (ties count one half; "
        f"Agarwal et al., 2021), with a {LEVEL * 100:.0f} % percentile bootstrap interval ({BOOTSTRAP:,} resamples of "
        "each side's runs; with three runs a side it is too narrow). Main effects: per-seed marginal means. "
        "**Sign-flip p**: the per-seed differences' signs flipped in every combination (permuted between the sides "
        "when the seeds differ), two-sided; in brackets Holm-adjusted over this table, and the smallest p the test "
        "can give at this many seeds, 2/2^n for n paired seeds: below it no result can go, however large the "
        f"effect. **ROPE** ±{rope:g} mAP@0.5 (`--rope`): the adjusted interval of the difference wholly above it: "
        "*better*; wholly below: *worse*; wholly inside: *equivalent*; else *undecided*. **Over images**: the same "
        f"difference on the runs' saved detections (`evaluate`), with a {LEVEL * 100:.0f} % bootstrap interval over "
        "the validation images (every run under the same resamples), the uncertainty of the validation set that the "
        "seed interval leaves out.", "",
        table(["key", "from → to", "with", "P(X > Y) [95 %]", "sign-flip p (Holm; smallest possible)",
               f"vs ROPE ±{rope:g}", "Δ over seeds [adjusted CI]", "Δ over images [95 %]"], table_rows),
    ]


def learned_section(configurations: Mapping[str, Mapping[str, Any]], scores: Mapping[str, Mapping[Any, float]],
                    failed: Mapping[str, set], unsettled: Callable[[list[str]], bool], target: float) -> list[str]:
    """The one-key pairs again on the runs that learned, for pairs with a failed run on either side."""
    learned = {label: {s: v for s, v in seeds.items() if s not in failed.get(label, set())}
               for label, seeds in scores.items()}
    if learned == {label: dict(seeds) for label, seeds in scores.items()}:
        return []
    on_learned = one_key_differences(configurations, learned)
    touched = [d for d in on_learned if failed.get(d.first) or failed.get(d.second)]
    lost = [f"`{label}`" for label in scores if scores[label] and not learned[label]]

    def split(d: Difference) -> str:
        return (f"{len(learned[d.first])}/{len(scores[d.first])} → {len(learned[d.second])}/"
                f"{len(scores[d.second])} learned")

    lines = [
        "", "### On the runs that learned", "",
        "The one-key pairs above with a failed run on either side, compared again without the failed runs "
        "(paired by seed when both sides keep the same seeds, Welch's otherwise; Holm and Bonferroni over the pairs "
        "on learned runs). The pairs "
        "above, on all runs, mix two outcomes, whether the run learned and how well; these rows give the second, "
        "and the failure rates the first.",
    ]
    if touched:
        lines += ["", differences_table(touched, configurations, unsettled, target, ("learned", split))]
    if lost:
        lines += ["", f"No run of {', '.join(lost)} learned: nothing to compare on learned runs there."]
    return lines
