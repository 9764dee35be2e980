"""Which choice mattered: differences between configurations with 95 % confidence intervals over seeds.

A sweep's configurations are compared two at a time when they differ in exactly one config key (the
seed aside): for ``rpn.num_rois=4`` against ``rpn.num_rois=64`` at the same image size, the difference
of their mean scores (the second value's minus the first's, values in ascending order) with a
confidence interval from scipy's t-tests:

- **paired by seed** (``scipy.stats.ttest_rel``) when both configurations have a result for the same
  seeds, at least two: the seed fixes the initialisation and the data order, so the per-seed
  differences cancel what the two runs share;
- **Welch** (``scipy.stats.ttest_ind(equal_var=False)``) otherwise, with at least two results on each side.

With fewer results there is a difference but no interval. A key's effect is then its largest absolute
difference over the pairs that vary it; keys are ranked by that effect, largest first.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from scipy import stats

LEVEL = 0.95


@dataclass(frozen=True)
class Difference:
    """``second`` minus ``first``: two configurations that differ only in ``key``."""

    key: str
    first: str                        # configuration label with the lower value of ``key``
    second: str
    first_value: Any
    second_value: Any
    mean: float                       # mean(second) - mean(first), or the mean per-seed difference when paired
    low: float | None                 # the 95 % confidence interval; None with too few results
    high: float | None
    method: str                       # "paired" | "welch" | "none"
    counts: tuple[int, int]           # results on each side (pairs: both the same)
    seed_std: float | None = None     # the larger of the two sides' standard deviations over seeds

    @property
    def excludes_zero(self) -> bool:
        return self.low is not None and (self.low > 0 or self.high < 0)

    @property
    def in_seed_stds(self) -> float | None:
        """|difference| in units of the seed standard deviation (calibration: a choice that matters is > 3)."""
        if self.seed_std is None:
            return None
        return math.inf if self.seed_std == 0 else abs(self.mean) / self.seed_std


@dataclass(frozen=True)
class KeyEffect:
    """How much one key mattered: its largest absolute difference, and how many of its pairs are clear of 0."""

    key: str
    largest: Difference
    pairs: int
    clear: int                        # pairs whose interval excludes 0
    mean_abs: float


def _order(value: Any) -> tuple[int, Any]:
    """Numbers by value before anything else by text, so 4 < 16 < 64 and 0.0 < 0.1."""
    return (0, value) if isinstance(value, (int, float)) and not isinstance(value, bool) else (1, str(value))


def difference(first: Mapping[Any, float], second: Mapping[Any, float], level: float = LEVEL) -> tuple:
    """(mean difference, low, high, method) of ``second`` - ``first``, each a mapping seed -> score."""
    a, b = list(first.values()), list(second.values())
    if not a or not b:
        raise ValueError("each side needs at least one result")
    if set(first) == set(second) and len(first) >= 2:
        seeds = sorted(first, key=_order)
        deltas = [second[s] - first[s] for s in seeds]
        mean = statistics.fmean(deltas)
        if statistics.pstdev(deltas) == 0:  # identical differences: the interval is the point
            return mean, mean, mean, "paired"
        ci = stats.ttest_rel([second[s] for s in seeds], [first[s] for s in seeds]).confidence_interval(level)
        return mean, float(ci.low), float(ci.high), "paired"
    mean = statistics.fmean(b) - statistics.fmean(a)
    if len(a) < 2 or len(b) < 2:
        return mean, None, None, "none"
    if statistics.pstdev(a) == 0 and statistics.pstdev(b) == 0:
        return mean, mean, mean, "welch"
    ci = stats.ttest_ind(b, a, equal_var=False).confidence_interval(level)
    return mean, float(ci.low), float(ci.high), "welch"


def one_key_differences(configurations: Mapping[str, Mapping[str, Any]],
                        scores: Mapping[str, Mapping[Any, float]], level: float = LEVEL) -> list[Difference]:
    """Every pair of configurations that differ in exactly one key and both have scores.

    ``configurations``: label -> {key: value} over the same keys; ``scores``: label -> {seed: score}.
    """
    labels = [label for label in configurations if scores.get(label)]
    differences = []
    for i, one in enumerate(labels):
        for two in labels[i + 1:]:
            keys = sorted(set(configurations[one]) | set(configurations[two]))
            varied = [k for k in keys if configurations[one].get(k) != configurations[two].get(k)]
            if len(varied) != 1:
                continue
            key = varied[0]
            first, second = sorted((one, two), key=lambda label: _order(configurations[label].get(key)))
            mean, low, high, method = difference(scores[first], scores[second], level)
            sides = [list(scores[label].values()) for label in (first, second)]
            seed_std = max(statistics.stdev(v) for v in sides) if min(map(len, sides)) >= 2 else None
            differences.append(Difference(key, first, second, configurations[first].get(key),
                                          configurations[second].get(key), mean, low, high, method,
                                          (len(scores[first]), len(scores[second])), seed_std))
    return differences


def rank_keys(differences: list[Difference]) -> list[KeyEffect]:
    """Keys by their largest absolute difference, largest first."""
    by_key: dict[str, list[Difference]] = {}
    for diff in differences:
        by_key.setdefault(diff.key, []).append(diff)
    effects = [
        KeyEffect(key, max(diffs, key=lambda d: abs(d.mean)), len(diffs), sum(d.excludes_zero for d in diffs),
                  statistics.fmean(abs(d.mean) for d in diffs))
        for key, diffs in by_key.items()
    ]
    return sorted(effects, key=lambda effect: -abs(effect.largest.mean))


def format_interval(diff: Difference) -> str:
    """"+0.123 [+0.045, +0.201]", or the difference alone without an interval."""
    if diff.low is None or math.isnan(diff.low):
        return f"{diff.mean:+.3f} (no interval)"
    return f"{diff.mean:+.3f} [{diff.low:+.3f}, {diff.high:+.3f}]"
