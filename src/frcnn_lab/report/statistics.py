"""Which choice mattered: effects of config keys on best val mAP@0.5, with intervals that hold over a study.

Inputs: ``configurations`` (label -> {key: value}, the keys that tell the configurations apart) and
``scores`` (label -> {seed: best val mAP@0.5}). Every difference is "second minus first".

- **One-key pairs.** Two configurations that differ in exactly one key: the difference of their
  scores, paired by seed when both ran the same seeds (at least two; the seed fixes the initialisation
  and the data order, so the per-seed differences cancel what the two runs share), Welch's otherwise.
- **Factorial designs.** The largest sets of configurations that cross some keys in full, every cell
  with the same seeds, the other keys fixed (a 4 x 2 grid of RoIs and image sizes; three RoI ops at the
  default). Per design, ``statsmodels`` fits ``score ~ (C(k1) + C(k2) + ...)**2 + C(seed)`` (main
  effects, two-way interactions, the seed as a block) and ``anova_lm(typ=2)`` tests each term.
- **Main effect** of a key: per seed, the mean score at each of its levels over the other keys'
  levels (marginal means); the contrast is second level minus first for a two-level key, highest
  marginal mean minus lowest for more levels (a spread: above zero even without an effect; the F test
  is what says whether the key matters). **Interaction** of keys a and b: a's contrast at each level of
  b; the contrast is its value at b's second level minus its first (two levels), else largest minus
  smallest. Intervals of contrasts are paired t-intervals over the seeds.
- **Multiplicity.** The factorial terms form one family, the one-key pairs another. p-values are
  Holm-adjusted within their family (``multipletests(method="holm")``); intervals are Bonferroni
  intervals at level 1 - 0.05 / m (m tests in the family), so an adjusted interval that excludes zero
  belongs to a test Holm rejects as well. A term *matters* when its Holm-adjusted p is below 0.05.
- **Standardised effect**: Cohen's d_z = mean / sd of the paired differences (Welch pairs: the mean over
  sqrt((s1² + s2²) / 2)); no small-sample correction, so with three seeds it runs large.
- **Power**: the smallest |difference| detectable with 80 % power at the family's Bonferroni level, given
  the seeds and the observed sd (``TTestPower`` / ``TTestIndPower``), and the seeds a target difference
  would need at that level and power.
- **Ranking**: keys by |main effect|; #1 is named only if its main effect matters and the paired
  per-seed difference of #1's and #2's |contrasts| has a 95 % interval that excludes zero.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import statistics
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import statsmodels.formula.api as smf
from scipy import stats
from statsmodels.stats.anova import anova_lm
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.power import TTestIndPower, TTestPower

LEVEL = 0.95
POWER = 0.8


def _order(value: Any) -> tuple[int, Any]:
    """Numbers by value before anything else by text, so 4 < 16 < 64 and 0.0 < 0.1."""
    return (0, value) if isinstance(value, (int, float)) and not isinstance(value, bool) else (1, str(value))


@dataclass(frozen=True)
class Estimate:
    """A difference with its interval and test, before (``raw_``) and after the multiplicity adjustment."""

    mean: float
    method: str                       # "paired" | "welch" | "none" (too few results for an interval)
    counts: tuple[int, int]           # results on each side (paired: the seeds, twice)
    se: float | None                  # standard error of ``mean``
    df: float | None                  # degrees of freedom of its t distribution
    spread: float | None              # sd of the paired differences; Welch: sqrt((s1² + s2²) / 2)
    raw_p: float | None
    p: float | None = None            # Holm-adjusted within the family
    tests: int = 1                    # m, the family's number of tests

    def interval(self, level: float) -> tuple[float, float] | tuple[None, None]:
        if self.se is None:
            return None, None
        if self.se == 0:
            return self.mean, self.mean
        half = stats.t.ppf(0.5 + level / 2, self.df) * self.se
        return self.mean - half, self.mean + half

    @property
    def raw_interval(self) -> tuple[float, float] | tuple[None, None]:
        return self.interval(LEVEL)

    @property
    def adjusted_interval(self) -> tuple[float, float] | tuple[None, None]:
        """Bonferroni: level 1 - (1 - LEVEL) / m."""
        return self.interval(1 - (1 - LEVEL) / self.tests)

    @property
    def effect_size(self) -> float | None:
        """Cohen's d_z (paired) or d_av (Welch); None without a spread, inf for a spread of 0."""
        if self.spread is None:
            return None
        return math.copysign(math.inf, self.mean) if self.spread == 0 else self.mean / self.spread

    @property
    def matters(self) -> bool:
        return self.p is not None and self.p < 1 - LEVEL


def paired(deltas: Sequence[float]) -> Estimate:
    """Per-seed differences -> their mean with a t-interval (``scipy.stats.ttest_1samp``)."""
    deltas = [float(d) for d in deltas]
    n = len(deltas)
    mean = statistics.fmean(deltas)
    if n < 2:
        return Estimate(mean, "none", (n, n), None, None, None, None)
    sd = statistics.stdev(deltas)
    if sd == 0:  # identical differences: the interval is the point
        return Estimate(mean, "paired", (n, n), 0.0, n - 1, 0.0, 0.0 if mean else 1.0)
    result = stats.ttest_1samp(deltas, 0.0)
    return Estimate(mean, "paired", (n, n), sd / math.sqrt(n), n - 1, sd, float(result.pvalue))


def unpaired(first: Sequence[float], second: Sequence[float]) -> Estimate:
    """Two independent samples -> mean(second) - mean(first) with Welch's interval."""
    mean = statistics.fmean(second) - statistics.fmean(first)
    counts = (len(first), len(second))
    if min(counts) < 2:
        return Estimate(mean, "none", counts, None, None, None, None)
    v1, v2 = statistics.variance(first), statistics.variance(second)
    spread = math.sqrt((v1 + v2) / 2)
    if v1 == v2 == 0:
        return Estimate(mean, "welch", counts, 0.0, sum(counts) - 2, 0.0, 0.0 if mean else 1.0)
    result = stats.ttest_ind(second, first, equal_var=False)
    se = math.sqrt(v1 / counts[0] + v2 / counts[1])
    return Estimate(mean, "welch", counts, se, float(result.df), spread, float(result.pvalue))


def compare(first: Mapping[Any, float], second: Mapping[Any, float]) -> Estimate:
    """``second`` - ``first``, each seed -> score: paired when both have the same seeds (>= 2), else Welch."""
    if not first or not second:
        raise ValueError("each side needs at least one result")
    if set(first) == set(second) and len(first) >= 2:
        return paired([second[s] - first[s] for s in sorted(first, key=_order)])
    return unpaired(list(first.values()), list(second.values()))


def adjust(estimates: Sequence[Estimate]) -> list[Estimate]:
    """One family's estimates with Holm-adjusted p and the family's size (for the Bonferroni intervals)."""
    tested = [i for i, e in enumerate(estimates) if e.raw_p is not None]
    adjusted = list(estimates)
    if not tested:
        return adjusted
    holm = multipletests([estimates[i].raw_p for i in tested], alpha=1 - LEVEL, method="holm")[1]
    for i, p in zip(tested, holm, strict=True):
        adjusted[i] = dataclasses.replace(estimates[i], p=float(p), tests=len(tested))
    return adjusted


def power(estimate: Estimate, target: float) -> tuple[float | None, int | None]:
    """(smallest |difference| detectable with 80 % power, seeds per side a difference of ``target`` needs) for a
    paired or Welch t-test at the family's Bonferroni level 0.05 / m, given the observed spread; at least two
    seeds, as a t-test needs."""
    alpha = (1 - LEVEL) / estimate.tests
    if estimate.spread is None:
        return None, None
    if estimate.spread == 0:
        return 0.0, 2
    n = estimate.counts[0]
    if estimate.method == "paired":
        analysis, size, ratio, same = TTestPower(), "nobs", {}, {}
    else:
        analysis, size, ratio, same = TTestIndPower(), "nobs1", {"ratio": estimate.counts[1] / n}, {"ratio": 1.0}
    effect = target / estimate.spread
    with warnings.catch_warnings():  # the root finder warns when it falls back to its second method
        warnings.simplefilter("ignore")
        detectable = float(analysis.solve_power(effect_size=None, alpha=alpha, power=POWER, **{size: n}, **ratio))
        if analysis.power(effect, 2, alpha, **same) >= POWER:
            return detectable * estimate.spread, 2
        needed = float(analysis.solve_power(effect_size=effect, alpha=alpha, power=POWER, **{size: None}, **same))
    return detectable * estimate.spread, math.ceil(needed) if math.isfinite(needed) else None


@dataclass(frozen=True)
class Difference:
    """``second`` minus ``first``: two configurations that differ only in ``key``."""

    key: str
    first: str                        # configuration label with the lower value of ``key``
    second: str
    first_value: Any
    second_value: Any
    estimate: Estimate


def varied_keys(one: Mapping[str, Any], two: Mapping[str, Any]) -> list[str]:
    """The keys whose values differ between two configurations, sorted."""
    return [k for k in sorted(set(one) | set(two)) if one.get(k) != two.get(k)]


def one_key_differences(configurations: Mapping[str, Mapping[str, Any]],
                        scores: Mapping[str, Mapping[Any, float]]) -> list[Difference]:
    """Every pair of configurations that differ in exactly one key and both have scores, Holm-adjusted as
    one family."""
    labels = [label for label in configurations if scores.get(label)]
    found = []
    for i, one in enumerate(labels):
        for two in labels[i + 1:]:
            varied = varied_keys(configurations[one], configurations[two])
            if len(varied) != 1:
                continue
            key = varied[0]
            first, second = sorted((one, two), key=lambda label: _order(configurations[label].get(key)))
            found.append(Difference(key, first, second, configurations[first].get(key),
                                    configurations[second].get(key), compare(scores[first], scores[second])))
    adjusted = adjust([d.estimate for d in found])
    return [dataclasses.replace(d, estimate=e) for d, e in zip(found, adjusted, strict=True)]


@dataclass(frozen=True)
class Design:
    """Configurations that cross ``keys`` in full, the other keys fixed, every cell with ``seeds``."""

    keys: tuple[str, ...]
    fixed: dict[str, Any]
    levels: dict[str, tuple]          # key -> its levels, ascending
    cells: dict[tuple, str]           # levels (in ``keys`` order) -> configuration label
    seeds: tuple

    def score(self, scores: Mapping[str, Mapping[Any, float]], **where: Any) -> dict[Any, float]:
        """Per seed, the mean score over the cells with ``key=value`` for each of ``where`` (marginal means)."""
        cells = [label for levels, label in self.cells.items()
                 if all(levels[self.keys.index(k)] == v for k, v in where.items())]
        return {s: statistics.fmean(scores[label][s] for label in cells) for s in self.seeds}


def find_designs(configurations: Mapping[str, Mapping[str, Any]],
                 scores: Mapping[str, Mapping[Any, float]]) -> list[Design]:
    """The largest full factorial designs in the study, biggest first; a design inside a bigger one is left out."""
    labels = [label for label in configurations if scores.get(label)]
    keys = sorted({k for label in labels for k in configurations[label]})
    designs: list[Design] = []
    for size in range(len(keys), 0, -1):
        for varied in itertools.combinations(keys, size):
            others = [k for k in keys if k not in varied]
            blocks: dict[str, list[str]] = {}
            for label in labels:
                fixed = json.dumps([configurations[label].get(k) for k in others], sort_keys=True, default=str)
                blocks.setdefault(fixed, []).append(label)
            for block in blocks.values():
                if any(set(block) <= set(d.cells.values()) for d in designs):
                    continue
                levels = {k: tuple(sorted({configurations[label].get(k) for label in block}, key=_order))
                          for k in varied}
                seeds = set.intersection(*(set(scores[label]) for label in block))
                if min(map(len, levels.values())) < 2 or len(block) != math.prod(map(len, levels.values())) \
                        or len(seeds) < 2:
                    continue
                cells = {tuple(configurations[label].get(k) for k in varied): label for label in block}
                designs.append(Design(varied, {k: configurations[block[0]].get(k) for k in others}, levels, cells,
                                      tuple(sorted(seeds, key=_order))))
    return designs


def anova_p_values(design: Design, scores: Mapping[str, Mapping[Any, float]]) -> dict[tuple[str, ...], float]:
    """(key,) and (key_a, key_b) -> p of their F test in ``score ~ (C(k1) + ...)**2 + C(seed)``; empty when the
    model leaves no residual degrees of freedom."""
    names = {key: f"k{i}" for i, key in enumerate(design.keys)}
    rows = [{**{names[k]: str(v) for k, v in zip(design.keys, levels, strict=True)}, "seed": str(seed),
             "score": scores[label][seed]}
            for levels, label in design.cells.items() for seed in design.seeds]
    terms = " + ".join(f"C({name})" for name in names.values())
    formula = f"score ~ ({terms})**2 + C(seed)" if len(names) > 1 else f"score ~ {terms} + C(seed)"
    model = smf.ols(formula, data=pd.DataFrame(rows)).fit()
    if model.df_resid < 1:
        return {}
    with warnings.catch_warnings():  # a perfect fit gives 0 / 0 F statistics: left as NaN, read as untested
        warnings.simplefilter("ignore")
        table = anova_lm(model, typ=2)
    found = {}
    for key in design.keys:
        found[(key,)] = table.loc[f"C({names[key]})", "PR(>F)"]
    for a, b in itertools.combinations(design.keys, 2):
        found[(a, b)] = table.loc[f"C({names[a]}):C({names[b]})", "PR(>F)"]
    return {term: float(p) for term, p in found.items() if np.isfinite(p)}


@dataclass(frozen=True)
class MainEffect:
    """``key``'s marginal means in ``design`` and the contrast ``second`` - ``first`` of two of its levels."""

    key: str
    design: Design
    means: dict[Any, float]           # level -> marginal mean over seeds
    first: Any
    second: Any
    per_seed: dict[Any, float]        # seed -> the contrast
    estimate: Estimate


@dataclass(frozen=True)
class Interaction:
    """How ``key``'s main-effect contrast changes with ``by``: its value at each level of ``by``."""

    key: str
    by: str
    design: Design
    simple: dict[Any, float]          # level of ``by`` -> ``key``'s contrast there (mean over seeds)
    first: Any                        # the two levels of ``by`` compared
    second: Any
    estimate: Estimate
    mirror: Interaction | None = None  # the same two keys the other way round: ``by``'s contrast across ``key``


def main_effect(design: Design, key: str, scores: Mapping[str, Mapping[Any, float]]) -> MainEffect:
    marginal = {level: design.score(scores, **{key: level}) for level in design.levels[key]}
    means = {level: statistics.fmean(values.values()) for level, values in marginal.items()}
    levels = design.levels[key]
    first, second = (levels if len(levels) == 2 else (min(means, key=means.get), max(means, key=means.get)))
    per_seed = {s: marginal[second][s] - marginal[first][s] for s in design.seeds}
    return MainEffect(key, design, means, first, second, per_seed, paired(list(per_seed.values())))


def interaction(effect: MainEffect, by: str, scores: Mapping[str, Mapping[Any, float]]) -> Interaction:
    design = effect.design
    per_level = {}
    for level in design.levels[by]:
        high = design.score(scores, **{effect.key: effect.second, by: level})
        low = design.score(scores, **{effect.key: effect.first, by: level})
        per_level[level] = {s: high[s] - low[s] for s in design.seeds}
    simple = {level: statistics.fmean(values.values()) for level, values in per_level.items()}
    levels = design.levels[by]
    first, second = levels if len(levels) == 2 else (min(simple, key=simple.get), max(simple, key=simple.get))
    deltas = [per_level[second][s] - per_level[first][s] for s in design.seeds]
    return Interaction(effect.key, by, design, simple, first, second, paired(deltas))


@dataclass(frozen=True)
class Factorial:
    """The factorial analysis: main effects (one per key, from the largest design that varies it) and the
    two-way interactions, Holm-adjusted as one family."""

    main_effects: list[MainEffect]
    interactions: list[Interaction]


def factorial_analysis(configurations: Mapping[str, Mapping[str, Any]],
                       scores: Mapping[str, Mapping[Any, float]]) -> Factorial:
    effects: dict[str, MainEffect] = {}
    interactions: list[Interaction] = []
    for design in find_designs(configurations, scores):
        tests = anova_p_values(design, scores)
        design_effects = {}
        for key in design.keys:
            effect = main_effect(design, key, scores)
            effect = dataclasses.replace(effect, estimate=dataclasses.replace(
                effect.estimate, raw_p=tests.get((key,), effect.estimate.raw_p)))
            design_effects[key] = effect
            if key not in effects:  # designs come biggest first
                effects[key] = effect
        for a, b in itertools.combinations(design.keys, 2):
            found = interaction(design_effects[a], b, scores)
            interactions.append(dataclasses.replace(found, estimate=dataclasses.replace(
                found.estimate, raw_p=tests.get((a, b), found.estimate.raw_p)),
                mirror=interaction(design_effects[b], a, scores)))
    main = list(effects.values())
    adjusted = adjust([e.estimate for e in main] + [i.estimate for i in interactions])
    main = [dataclasses.replace(e, estimate=a) for e, a in zip(main, adjusted[:len(main)], strict=True)]
    interactions = [dataclasses.replace(i, estimate=a) for i, a in zip(interactions, adjusted[len(main):], strict=True)]
    return Factorial(main, interactions)


def dominated_main_effects(analysis: Factorial) -> list[tuple[Interaction, MainEffect]]:
    """(interaction seen from a key, that key's main effect) where the interaction matters and changes the key's
    contrast across the other key by more than its main effect: the main effect is then an average of effects
    that differ too much for it to describe any of them."""
    by_key = {e.key: e for e in analysis.main_effects}
    found = []
    for tested in analysis.interactions:
        if not tested.estimate.matters:
            continue
        for view in (tested, tested.mirror):
            effect = by_key.get(view.key)
            if effect is not None and effect.design is view.design and abs(view.estimate.mean) > abs(
                    effect.estimate.mean):
                found.append((view, effect))
    return found


@dataclass(frozen=True)
class Ranking:
    """Keys by |main effect|, largest first, and whether the first is told apart from the second."""

    order: list[MainEffect]
    gap: Estimate | None              # |#1| - |#2|, paired per seed (95 %, unadjusted: one planned test)
    verdict: str                      # "ranked" | "tied" (#1 not told from #2) | "none" (#1 does not matter)


def rank(effects: Sequence[MainEffect]) -> Ranking:
    order = sorted(effects, key=lambda e: -abs(e.estimate.mean))
    if not order or not order[0].estimate.matters:
        return Ranking(order, None, "none")
    if len(order) == 1:
        return Ranking(order, None, "ranked")
    one, two = order[0], order[1]
    seeds = sorted(set(one.per_seed) & set(two.per_seed), key=_order)
    sign_one, sign_two = math.copysign(1, one.estimate.mean), math.copysign(1, two.estimate.mean)
    gap = paired([sign_one * one.per_seed[s] - sign_two * two.per_seed[s] for s in seeds]) if seeds else None
    low, _ = (None, None) if gap is None else gap.raw_interval
    return Ranking(order, gap, "ranked" if low is not None and low > 0 else "tied")


def pareto_front(points: Mapping[str, tuple[float, float]]) -> set[str]:
    """Labels whose (accuracy, cost) no other point beats: none has accuracy >= and cost <=, one of them strictly."""
    return {label for label, (accuracy, cost) in points.items()
            if not any(a >= accuracy and c <= cost and (a > accuracy or c < cost)
                       for other, (a, c) in points.items() if other != label)}


def format_interval(estimate: Estimate, adjusted: bool = True) -> str:
    """"+0.123 [+0.045, +0.201]", or the difference alone without an interval."""
    low, high = estimate.adjusted_interval if adjusted else estimate.raw_interval
    if low is None:
        return f"{estimate.mean:+.3f} (no interval)"
    return f"{estimate.mean:+.3f} [{low:+.3f}, {high:+.3f}]"
