"""Comparisons of two configurations that need no normal model: probability of improvement, a sign-flip
(permutation) test, and a practical-equivalence verdict.

- **Probability of improvement** P(X > Y) (Agarwal et al., 2021, as ``rliable`` reports it): the chance that a
  run of the second configuration scores above a run of the first, estimated over all pairs of their runs
  (a tie counts one half: the Mann-Whitney U over n m), with a percentile bootstrap interval that resamples
  each configuration's runs on its own (``scipy.stats.bootstrap``). With three runs a side the resamples take
  few distinct values and the interval is too narrow; it says more with ten or more.
- **Sign-flip test** (``scipy.stats.permutation_test``): with seeds paired, the per-seed differences' signs are
  flipped in every combination, exact below 2^13 combinations; without pairing, the runs are permuted between
  the two sides. Two-sided. It assumes only that, without an effect, a difference is as likely positive as
  negative, but n paired seeds cannot give a p below 2 / 2^n (0.25 with three seeds), so the report states that
  floor beside it.
- **Practical equivalence** against a region of practical equivalence (ROPE) of +/- ``rope`` mAP@0.5: the
  comparison's interval wholly above it -> *better*, wholly below -> *worse*, wholly inside -> *equivalent*,
  else *undecided* (Kruschke, 2018).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy import stats

from frcnn_lab.report.statistics import LEVEL

ROPE = 0.01            # mAP@0.5: half the noise of one validation of a few hundred boxes
BOOTSTRAP = 2000       # resamples of every bootstrap interval in the report
BOOTSTRAP_SEED = 0     # fixed, so a report regenerates to the same figures
BETTER, WORSE, EQUIVALENT, UNDECIDED = "better", "worse", "equivalent", "undecided"


def improvement(first: np.ndarray, second: np.ndarray, axis: int = -1) -> np.ndarray:
    """P(second > first) over all pairs of their values along ``axis``, ties counted one half."""
    x, y = np.moveaxis(second, axis, -1)[..., :, None], np.moveaxis(first, axis, -1)[..., None, :]
    return (x > y).mean(axis=(-2, -1)) + 0.5 * (x == y).mean(axis=(-2, -1))


def probability_of_improvement(first: Sequence[float], second: Sequence[float], level: float = LEVEL,
                               resamples: int = BOOTSTRAP,
                               seed: int = BOOTSTRAP_SEED) -> tuple[float, float | None, float | None]:
    """(P(second > first), its percentile bootstrap interval); no interval with a single run on a side."""
    first, second = np.asarray(first, float), np.asarray(second, float)
    point = float(improvement(first, second))
    if min(len(first), len(second)) < 2:
        return point, None, None
    with np.errstate(invalid="ignore"):  # scipy's standard error of a constant bootstrap distribution
        result = stats.bootstrap((first, second), improvement, n_resamples=resamples, confidence_level=level,
                                 method="percentile", vectorized=True, paired=False, random_state=seed)
    return point, float(result.confidence_interval.low), float(result.confidence_interval.high)


def smallest_p(paired: bool, counts: tuple[int, int]) -> float:
    """The smallest two-sided p a sign-flip (paired: 2 / 2^n) or permutation test (2 / C(n + m, n)) can give."""
    arrangements = 2 ** counts[0] if paired else math.comb(sum(counts), counts[0])
    return min(1.0, 2 / arrangements)


def sign_flip(first: Sequence[float], second: Sequence[float], paired: bool) -> float | None:
    """Two-sided p of mean(second) - mean(first): signs of the per-seed differences flipped (``paired``), else the
    runs permuted between the sides; None with fewer than two results on a side."""
    if min(len(first), len(second)) < 2:
        return None
    if paired:
        deltas = np.asarray(second, float) - np.asarray(first, float)
        result = stats.permutation_test((deltas,), np.mean, permutation_type="samples", alternative="two-sided",
                                        random_state=BOOTSTRAP_SEED)
    else:
        result = stats.permutation_test((np.asarray(second, float), np.asarray(first, float)),
                                        lambda a, b, axis: a.mean(axis) - b.mean(axis),
                                        permutation_type="independent", alternative="two-sided", vectorized=True,
                                        random_state=BOOTSTRAP_SEED)
    return float(result.pvalue)


def rope_verdict(low: float | None, high: float | None, rope: float = ROPE) -> str:
    """An interval of second - first against [-rope, +rope]."""
    if low is None:
        return UNDECIDED
    if low > rope:
        return BETTER
    if high < -rope:
        return WORSE
    if -rope <= low and high <= rope:
        return EQUIVALENT
    return UNDECIDED
