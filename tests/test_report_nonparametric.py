"""Probability of improvement, the sign-flip test and the ROPE verdict: against scipy and brute force, and on
simulated comparisons with known truth (seeded)."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from scipy import stats

from frcnn_lab.report.nonparametric import (
    BETTER,
    EQUIVALENT,
    UNDECIDED,
    WORSE,
    probability_of_improvement,
    rope_verdict,
    sign_flip,
    smallest_p,
)
from frcnn_lab.report.statistics import paired

ALPHA = 0.05


def test_probability_of_improvement_is_mann_whitneys_u_over_all_pairs():
    rng = np.random.default_rng(0)
    first, second = np.round(rng.normal(0.5, 0.05, 7), 2), np.round(rng.normal(0.52, 0.05, 5), 2)  # with ties
    point, low, high = probability_of_improvement(first, second)
    u = stats.mannwhitneyu(second, first).statistic
    assert point == pytest.approx(u / (len(first) * len(second)))
    assert 0 <= low <= point <= high <= 1
    assert probability_of_improvement([0.1, 0.2, 0.3], [0.4, 0.5, 0.6])[0] == 1.0
    assert probability_of_improvement([0.3], [0.4, 0.2]) == (0.5, None, None)


def coverage(runs: int, studies: int, rng: np.random.Generator) -> float:
    """Share of studies whose 95 % interval holds the true P(X > Y) = Phi(1 / sqrt(2)) of X ~ N(1, 1), Y ~ N(0, 1)."""
    truth = stats.norm.cdf(1 / math.sqrt(2))
    covered = 0
    for _ in range(studies):
        _, low, high = probability_of_improvement(rng.normal(0, 1, runs), rng.normal(1, 1, runs), resamples=1000)
        covered += low <= truth <= high
    return covered / studies


def test_the_bootstrap_interval_of_p_x_greater_y_covers_the_truth_with_enough_runs():
    rng = np.random.default_rng(1)
    assert 0.92 <= coverage(20, 300, rng) <= 0.98
    # Three runs a side: the resamples take few values and the interval is far too narrow, as the docs say.
    assert coverage(3, 200, rng) < 0.85


def brute_force_paired(deltas: np.ndarray) -> float:
    observed = abs(deltas.mean())
    flips = [abs((deltas * np.array(signs)).mean()) >= observed - 1e-12
             for signs in itertools.product((1, -1), repeat=len(deltas))]
    return float(np.mean(flips))


def test_the_sign_flip_p_is_the_share_of_sign_patterns_at_least_as_extreme():
    rng = np.random.default_rng(2)
    first, second = rng.normal(0.5, 0.05, 6), rng.normal(0.53, 0.05, 6)
    assert sign_flip(first, second, paired=True) == pytest.approx(brute_force_paired(second - first))
    pooled = np.concatenate([second[:3], first[:4]])
    observed = abs(second[:3].mean() - first[:4].mean())
    splits = [abs(pooled[list(i)].mean() - np.delete(pooled, list(i)).mean()) >= observed - 1e-12
              for i in itertools.combinations(range(7), 3)]
    assert sign_flip(first[:4], second[:3], paired=False) == pytest.approx(np.mean(splits))
    # However large the effect, three paired seeds give no p below 2 / 2^3; three against three runs 2 / C(6, 3).
    assert sign_flip([0.1, 0.2, 0.3], [0.9, 0.95, 0.99], paired=True) == smallest_p(True, (3, 3)) == 0.25
    assert sign_flip([0.1, 0.2, 0.3], [0.9, 0.95, 0.99], paired=False) == pytest.approx(smallest_p(False, (3, 3)))
    assert smallest_p(False, (3, 3)) == pytest.approx(0.1) and smallest_p(True, (1, 1)) == 1.0
    assert sign_flip([0.1], [0.2], paired=True) is None


def test_the_sign_flip_test_raises_false_alarms_at_most_at_alpha():
    rng = np.random.default_rng(3)
    # Exactly: with no effect every sign pattern of the same magnitudes is equally likely, and at most a share
    # alpha of them gives p <= alpha.
    magnitudes = np.abs(rng.normal(0, 1, 8))
    p_values = [sign_flip(np.zeros(8), magnitudes * np.array(signs), paired=True)
                for signs in itertools.product((1, -1), repeat=8)]
    assert np.mean(np.array(p_values) <= ALPHA) <= ALPHA
    # Simulated: normal and heavy-tailed (t, 2 df) differences without an effect, eight seeds; at most alpha up to
    # the sampling error of 300 draws (two standard errors).
    for draw in (lambda: rng.normal(0, 1, 8), lambda: rng.standard_t(2, 8)):
        alarms = np.mean([sign_flip(np.zeros(8), draw(), paired=True) <= ALPHA for _ in range(300)])
        assert alarms <= ALPHA + 2 * math.sqrt(ALPHA * (1 - ALPHA) / 300)
    # and it finds an effect of two standard deviations
    assert np.mean([sign_flip(np.zeros(8), rng.normal(2, 1, 8), paired=True) <= ALPHA for _ in range(100)]) >= 0.9


def test_rope_verdicts_on_planted_intervals_and_differences():
    assert rope_verdict(0.02, 0.05) == BETTER and rope_verdict(-0.05, -0.02) == WORSE
    assert rope_verdict(-0.005, 0.008) == EQUIVALENT and rope_verdict(-0.02, 0.03) == UNDECIDED
    assert rope_verdict(0.005, 0.03) == UNDECIDED and rope_verdict(None, None) == UNDECIDED
    assert rope_verdict(0.02, 0.05, rope=0.03) == UNDECIDED
    rng = np.random.default_rng(4)
    for truth, expected in ((0.0, EQUIVALENT), (0.05, BETTER), (-0.05, WORSE), (0.01, UNDECIDED)):
        verdicts = [rope_verdict(*paired(list(truth + rng.normal(0, 0.003, 10))).raw_interval) for _ in range(200)]
        assert verdicts.count(expected) >= 180, (truth, verdicts.count(expected))
