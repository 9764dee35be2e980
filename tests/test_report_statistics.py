"""The report's statistics on hand-made studies: t-intervals and tests against scipy, the Holm adjustment and
power against statsmodels, factorial designs, marginal means, interactions, the ranking and the Pareto front."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.power import TTestPower

from frcnn_lab.report.statistics import (
    POWER,
    compare,
    dominated_main_effects,
    factorial_analysis,
    find_designs,
    one_key_differences,
    paired,
    pareto_front,
    power,
    rank,
)
from test_report_simulation import frozen_heap  # noqa: F401  (statsmodels' Holm adjustment collects garbage)


def test_paired_interval_matches_the_hand_computed_t_interval():
    # Per-seed differences 1, 2, 3: mean 2, sd 1, se 1/sqrt(3), t(0.975, 2) = 4.302653.
    estimate = compare({0: 0.0, 1: 0.0, 2: 0.0}, {0: 1.0, 1: 2.0, 2: 3.0})
    half = 4.302652729911275 / math.sqrt(3)
    assert estimate.method == "paired"
    assert estimate.mean == pytest.approx(2.0)
    assert estimate.raw_interval == pytest.approx((2.0 - half, 2.0 + half), abs=1e-9)
    assert estimate.effect_size == pytest.approx(2.0)  # d_z: mean 2 over the sd 1 of the paired differences


def test_pairing_by_seed_uses_the_per_seed_differences_not_the_spread_between_seeds():
    # Seeds differ a lot from each other, the configurations by a steady +0.05: paired is clear of 0, Welch not.
    first = {0: 0.10, 1: 0.40, 2: 0.70}
    second = {0: 0.16, 1: 0.44, 2: 0.75}
    estimate = compare(first, second)
    assert estimate.method == "paired" and estimate.raw_interval[0] > 0
    reference = stats.ttest_rel(list(second.values()), list(first.values()))
    assert estimate.raw_p == pytest.approx(reference.pvalue)
    assert estimate.raw_interval == pytest.approx(tuple(reference.confidence_interval()))
    welch = stats.ttest_ind(list(second.values()), list(first.values()), equal_var=False).confidence_interval()
    assert welch.low < 0 < welch.high
    assert estimate.effect_size == pytest.approx(np.mean([0.06, 0.04, 0.05]) / np.std([0.06, 0.04, 0.05], ddof=1))


def test_seeds_that_do_not_match_give_welchs_interval():
    rng = np.random.default_rng(0)
    first = dict(enumerate(rng.normal(0.3, 0.05, 4)))
    second = {seed + 10: v for seed, v in enumerate(rng.normal(0.5, 0.1, 3))}
    estimate = compare(first, second)
    reference = stats.ttest_ind(list(second.values()), list(first.values()), equal_var=False)
    assert estimate.method == "welch"
    assert estimate.mean == pytest.approx(np.mean(list(second.values())) - np.mean(list(first.values())))
    assert estimate.raw_interval == pytest.approx(tuple(reference.confidence_interval(0.95)))
    assert estimate.raw_p == pytest.approx(reference.pvalue)


def test_a_single_result_on_one_side_gives_no_interval():
    estimate = compare({0: 0.2}, {0: 0.5, 1: 0.6})
    assert (estimate.method, estimate.raw_interval, estimate.raw_p) == ("none", (None, None), None)
    assert estimate.mean == pytest.approx(0.35)


GRID = {  # a 2 x 2 grid of RoIs and image sizes, plus a pooler that differs at one corner only
    "a": {"rpn.num_rois": 64, "data.image_size": 600, "roi_head.pooler": "roi_align"},
    "b": {"rpn.num_rois": 4, "data.image_size": 600, "roi_head.pooler": "roi_align"},
    "c": {"rpn.num_rois": 64, "data.image_size": 300, "roi_head.pooler": "roi_align"},
    "d": {"rpn.num_rois": 4, "data.image_size": 300, "roi_head.pooler": "roi_align"},
    "e": {"rpn.num_rois": 64, "data.image_size": 600, "roi_head.pooler": "roi_pool"},
    "f": {"rpn.num_rois": 16, "data.image_size": 600, "roi_head.pooler": "roi_align"},  # no scores: left out
}
GRID_SCORES = {"a": {0: 0.50, 1: 0.52, 2: 0.51, 3: 0.55}, "b": {0: 0.20, 1: 0.25, 2: 0.21, 3: 0.22},
               "c": {0: 0.30, 1: 0.31, 2: 0.29, 3: 0.33}, "d": {0: 0.10, 1: 0.12, 2: 0.09, 3: 0.11},
               "e": {0: 0.45, 1: 0.49, 2: 0.47, 3: 0.48}, "f": {}}


def test_one_key_pairs_are_holm_adjusted_with_matching_bonferroni_intervals_and_power():
    differences = one_key_differences(GRID, GRID_SCORES)
    pairs = {(d.key, d.first, d.second) for d in differences}
    assert pairs == {("rpn.num_rois", "b", "a"), ("rpn.num_rois", "d", "c"), ("data.image_size", "c", "a"),
                     ("data.image_size", "d", "b"), ("roi_head.pooler", "a", "e")}
    by_pair = {(d.first, d.second): d for d in differences}
    assert by_pair[("b", "a")].estimate.mean == pytest.approx(np.mean([0.30, 0.27, 0.30, 0.33]))
    assert by_pair[("b", "a")].first_value == 4 and by_pair[("b", "a")].second_value == 64

    raw = [d.estimate.raw_p for d in differences]
    holm = multipletests(raw, alpha=0.05, method="holm")[1]
    assert [d.estimate.p for d in differences] == pytest.approx(list(holm))
    for diff in differences:
        deltas = [GRID_SCORES[diff.second][s] - GRID_SCORES[diff.first][s] for s in range(4)]
        bonferroni = stats.ttest_1samp(deltas, 0.0).confidence_interval(1 - 0.05 / 5)
        assert diff.estimate.adjusted_interval == pytest.approx((bonferroni.low, bonferroni.high))
        # 80 % power at the detectable difference, and the fewest seeds that reach it for 0.02.
        sd, alpha = np.std(deltas, ddof=1), 0.05 / 5
        detectable, needed = power(diff.estimate, 0.02)
        assert TTestPower().power(detectable / sd, 4, alpha) == pytest.approx(POWER, abs=1e-6)
        assert TTestPower().power(0.02 / sd, needed, alpha) >= POWER
        assert needed == 2 or TTestPower().power(0.02 / sd, needed - 1, alpha) < POWER


def test_factorial_designs_marginal_means_and_the_anova_of_a_one_key_design():
    designs = find_designs(GRID, GRID_SCORES)
    assert [(d.keys, d.fixed) for d in designs] == [
        (("data.image_size", "rpn.num_rois"), {"roi_head.pooler": "roi_align"}),
        (("roi_head.pooler",), {"data.image_size": 600, "rpn.num_rois": 64}),
    ]
    analysis = factorial_analysis(GRID, GRID_SCORES)
    effects = {e.key: e for e in analysis.main_effects}
    rois = effects["rpn.num_rois"]
    # Marginal means over both image sizes: 64 RoIs (a, c), 4 RoIs (b, d).
    assert rois.means[64] == pytest.approx(np.mean([0.50, 0.52, 0.51, 0.55, 0.30, 0.31, 0.29, 0.33]))
    assert rois.means[4] == pytest.approx(np.mean([0.20, 0.25, 0.21, 0.22, 0.10, 0.12, 0.09, 0.11]))
    assert (rois.first, rois.second) == (4, 64)
    assert rois.per_seed[1] == pytest.approx((0.52 + 0.31) / 2 - (0.25 + 0.12) / 2)
    # One two-level key with the seed as a block: the ANOVA's F test is the paired t-test.
    pooler = effects["roi_head.pooler"]
    reference = stats.ttest_rel([0.45, 0.49, 0.47, 0.48], [0.50, 0.52, 0.51, 0.55])
    p_values = [e.estimate.raw_p for e in analysis.main_effects] + [i.estimate.raw_p for i in analysis.interactions]
    assert pooler.estimate.raw_p == pytest.approx(reference.pvalue)
    assert pooler.estimate.mean == pytest.approx(np.mean([-0.05, -0.03, -0.04, -0.07]))
    assert [e.estimate.p for e in analysis.main_effects] + [i.estimate.p for i in analysis.interactions] == \
        pytest.approx(list(multipletests(p_values, method="holm")[1]))
    assert pooler.estimate.tests == 4  # three main effects and one interaction


def test_a_crossover_interaction_is_said_to_dominate_the_main_effects():
    # 64 RoIs help at 600 px (+0.2) and hurt at 300 px (-0.2): no main effect, a large interaction.
    configurations = {f"{r}_{s}": {"rpn.num_rois": r, "data.image_size": s} for r in (4, 64) for s in (300, 600)}
    rng = np.random.default_rng(1)
    truth = {"4_300": 0.4, "64_300": 0.2, "4_600": 0.3, "64_600": 0.5}
    scores = {label: dict(enumerate(truth[label] + rng.normal(0, 0.005, 4))) for label in configurations}
    analysis = factorial_analysis(configurations, scores)
    (found,) = analysis.interactions
    assert found.estimate.matters and found.estimate.mean == pytest.approx(0.4, abs=0.02)
    dominated = {effect.key for _, effect in dominated_main_effects(analysis)}
    assert dominated == {"rpn.num_rois", "data.image_size"}


def test_the_ranking_names_a_first_key_only_when_it_beats_the_second():
    configurations = {f"{r}_{s}": {"rpn.num_rois": r, "data.image_size": s} for r in (4, 64) for s in (300, 600)}
    rng = np.random.default_rng(2)
    seeds = rng.normal(0, 0.05, 4)

    def study(rois: float, size: float) -> dict:
        return {f"{r}_{s}": dict(enumerate(0.2 + rois * (r == 64) + size * (s == 600) + seeds
                                           + rng.normal(0, 0.005, 4))) for r in (4, 64) for s in (300, 600)}

    clear = rank(factorial_analysis(configurations, study(0.3, 0.1)).main_effects)
    assert clear.verdict == "ranked" and clear.order[0].key == "rpn.num_rois" and clear.gap.raw_interval[0] > 0
    tied = rank(factorial_analysis(configurations, study(0.1, 0.1)).main_effects)
    assert tied.verdict == "tied"
    low, high = tied.gap.raw_interval
    assert low < 0 < high
    nothing = rank(factorial_analysis(configurations, study(0.0, 0.0)).main_effects)
    assert nothing.verdict == "none"


def test_identical_differences_give_a_point_interval():
    estimate = paired([0.1, 0.1, 0.1])
    assert estimate.raw_interval == pytest.approx((0.1, 0.1)) and estimate.raw_p == 0.0
    assert estimate.effect_size == math.inf


def test_pareto_front():
    points = {"cheap": (0.2, 10.0), "best": (0.6, 50.0), "dominated": (0.3, 60.0), "middle": (0.4, 20.0),
              "tie": (0.4, 20.0), "worse": (0.39, 20.0)}
    assert pareto_front(points) == {"cheap", "best", "middle", "tie"}


def test_the_ranking_compares_the_sizes_of_effects_of_opposite_sign():
    """|#1| - |#2| per seed: +0.097 against -0.092 is a tie of sizes, not a gap of 0.189; -0.3 against +0.1 is a
    clear first whose sign is negative."""
    configurations = {f"{a}_{b}": {"a": a, "b": b} for a in (0, 1) for b in (0, 1)}
    rng = np.random.default_rng(4)
    seeds = rng.normal(0, 0.05, 4)

    def study(effect_a: float, effect_b: float) -> dict:
        return {f"{a}_{b}": dict(enumerate(0.4 + effect_a * a + effect_b * b + seeds + rng.normal(0, 0.005, 4)))
                for a in (0, 1) for b in (0, 1)}

    tied = rank(factorial_analysis(configurations, study(0.097, -0.092)).main_effects)
    assert [e.key for e in tied.order] == ["a", "b"] and all(e.estimate.matters for e in tied.order)
    assert tied.order[1].estimate.mean == pytest.approx(-0.092, abs=0.01)
    assert tied.verdict == "tied" and tied.gap.mean == pytest.approx(0.005, abs=0.01)
    clear = rank(factorial_analysis(configurations, study(-0.3, 0.1)).main_effects)
    assert clear.verdict == "ranked" and clear.order[0].key == "a" and clear.gap.mean == pytest.approx(0.2, abs=0.01)
