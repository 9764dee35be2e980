"""The report's statistics against known truth: simulated studies (pure numpy, seeded) with planted effects.

Each study is a 2 x 2 x 2 grid of three keys crossed in full, three seeds, every score the cell's true
mean plus a seed offset shared by all cells of a seed (sd 0.05) plus noise (sd 0.01):
``a`` has a large main effect, ``c`` a medium one, ``b`` none, and ``a`` and ``c`` interact.
"""

from __future__ import annotations

import gc

import numpy as np
import pytest

from frcnn_lab.report.convergence import AT_FLOOR, PAST_PEAK, PLATEAUED, STILL_LEARNING, TOO_SHORT, judge
from frcnn_lab.report.statistics import factorial_analysis, rank

STUDIES = 500
SEEDS = 3
A, C, AC = 0.10, 0.04, 0.04       # planted: a's effect at c's first level, c's at a's first, the interaction
SEED_SD, NOISE_SD = 0.05, 0.01
TRUTH = {"a": A + AC / 2, "b": 0.0, "c": C + AC / 2}  # main effects: averages over the other keys' levels
CALIBRATION = pytest.mark.slow  # 600 simulated studies, about 45 s on two cores: run by .ci/run, not the fast suite


def simulate(rng: np.random.Generator, effects: dict[str, float], interaction: float) -> tuple[dict, dict]:
    """One study: (configurations, scores) of a 2 x 2 x 2 grid of keys a, b, c with levels 0 and 1."""
    seed_offsets = rng.normal(0, SEED_SD, SEEDS)
    configurations, scores = {}, {}
    for a in (0, 1):
        for b in (0, 1):
            for c in (0, 1):
                label = f"a={a} b={b} c={c}"
                mean = 0.3 + effects["a"] * a + effects["b"] * b + effects["c"] * c + interaction * a * c
                configurations[label] = {"a": a, "b": b, "c": c}
                scores[label] = dict(enumerate(mean + seed_offsets + rng.normal(0, NOISE_SD, SEEDS)))
    return configurations, scores


@pytest.fixture(scope="module", autouse=True)
def frozen_heap():
    """statsmodels' Holm adjustment calls gc.collect(): with the objects the test process already holds frozen, a
    collection takes microseconds instead of a second."""
    gc.freeze()
    yield
    gc.unfreeze()


@pytest.fixture(scope="module")
def planted():
    rng = np.random.default_rng(2024)
    return [factorial_analysis(*simulate(rng, {"a": A, "b": 0.0, "c": C}, AC)) for _ in range(STUDIES)]


@CALIBRATION
def test_95_percent_intervals_cover_the_true_main_effects(planted):
    covered = []
    for analysis in planted:
        for effect in analysis.main_effects:
            low, high = effect.estimate.raw_interval
            covered.append(low <= TRUTH[effect.key] <= high)
    assert len(covered) == 3 * STUDIES
    assert 0.93 <= np.mean(covered) <= 0.97


@CALIBRATION
def test_a_null_key_is_reported_as_mattering_in_at_most_5_percent_of_studies(planted):
    false_alarms = 0
    for analysis in planted:
        null_terms = [e.estimate for e in analysis.main_effects if e.key == "b"]
        null_terms += [i.estimate for i in analysis.interactions if "b" in (i.key, i.by)]
        assert len(null_terms) == 3
        false_alarms += any(term.matters for term in null_terms)
    assert false_alarms / STUDIES <= 0.05


@CALIBRATION
def test_a_large_effect_is_ranked_first(planted):
    rankings = [rank(analysis.main_effects) for analysis in planted]
    first = [r.verdict == "ranked" and r.order[0].key == "a" for r in rankings]
    assert np.mean(first) >= 0.95


@CALIBRATION
def test_a_planted_interaction_is_reported(planted):
    reported = [next(i for i in analysis.interactions if {i.key, i.by} == {"a", "c"}).estimate.matters
                for analysis in planted]
    assert np.mean(reported) >= 0.9


@CALIBRATION
def test_two_equal_effects_are_not_ordered():
    rng = np.random.default_rng(7)
    verdicts = [rank(factorial_analysis(*simulate(rng, {"a": 0.08, "b": 0.0, "c": 0.08}, 0.0)).main_effects)
                .verdict for _ in range(100)]
    assert verdicts.count("tied") >= 90


def test_a_rising_curve_is_still_learning_and_a_flat_one_has_plateaued():
    rng = np.random.default_rng(3)
    epochs = np.arange(1, 11)
    rising = [judge(list(0.6 * (1 - np.exp(-epochs / 8)) + rng.normal(0, 0.01, 10))) for _ in range(500)]
    flat = [judge(list(np.minimum(0.1 * epochs, 0.5) + rng.normal(0, 0.01, 10))) for _ in range(500)]
    assert np.mean([v.verdict == STILL_LEARNING for v in rising]) >= 0.95
    assert np.mean([v.verdict == PLATEAUED for v in flat]) >= 0.95
    # Two validations: a clear rise is seen, a plateau cannot be.
    assert judge([0.02, 0.14]).verdict == STILL_LEARNING
    # Near zero the noise is small: 0.012 -> 0.021 is a rise (tolerance 0.0057), the same gain at 0.5 is not.
    slow = [0.0, 0.001, 0.005, 0.009, 0.011, 0.012, 0.021, 0.018]
    assert judge(slow).verdict == STILL_LEARNING and judge(slow).tolerance == pytest.approx(0.00573, abs=1e-4)
    assert judge([x + 0.49 for x in slow]).verdict == PLATEAUED
    assert judge([0.140, 0.141]).verdict == TOO_SHORT


def test_a_curve_that_rises_and_falls_is_past_its_peak_and_settled():
    rng = np.random.default_rng(11)
    rise_and_fall = np.array([0.1, 0.3, 0.45, 0.5, 0.45, 0.38, 0.32, 0.27, 0.23, 0.2])
    peaked = [judge(list(rise_and_fall + rng.normal(0, 0.01, 10))) for _ in range(500)]
    flat = [judge(list(np.minimum(0.1 * np.arange(1, 11), 0.5) + rng.normal(0, 0.01, 10))) for _ in range(500)]
    assert np.mean([v.verdict == PAST_PEAK for v in peaked]) >= 0.95 and all(v.settled for v in peaked)
    assert np.mean([v.verdict == PAST_PEAK for v in flat]) <= 0.01
    # Low curves have a small tolerance (0.0116 at 0.092): a fall from 0.092 to at most 0.060 is past the peak.
    assert judge([0.009, 0.092, 0.060, 0.040, 0.018]).verdict == PAST_PEAK
    assert judge([0.009, 0.092, 0.081, 0.075, 0.040, 0.018]).verdict == PLATEAUED  # last three: 0.075, within 0.023
    # The fall must clear twice the tolerance (0.04 at 0.5): 0.5 -> 0.47 is a plateau's scatter.
    assert judge([0.3, 0.5, 0.47, 0.47, 0.47]).verdict == PLATEAUED
    assert judge([0.3, 0.5, 0.45, 0.44, 0.45]).verdict == PAST_PEAK


def test_a_flat_curve_below_the_floor_has_not_learned():
    """Flat near zero (4 RoIs per image on the hard benchmark: 20 epochs at 0.008-0.028) is not a plateau; a rise
    there is still learning, and the same flat curve above the floor has plateaued."""
    rng = np.random.default_rng(5)
    floor = [judge(list(0.01 + np.abs(rng.normal(0, 0.003, 20)))) for _ in range(500)]
    assert np.mean([v.verdict == AT_FLOOR for v in floor]) >= 0.95 and not any(v.settled for v in floor)
    assert judge([0.0, 0.001, 0.005, 0.009, 0.011, 0.012, 0.021, 0.018]).verdict == STILL_LEARNING
    assert judge([0.30, 0.31, 0.30, 0.31, 0.30]).verdict == PLATEAUED
    assert judge([0.03, 0.031, 0.03, 0.031, 0.03]).verdict == AT_FLOOR
    assert judge([0.03, 0.031, 0.03, 0.031, 0.03], floor=0.02).verdict == PLATEAUED
    assert judge([0.03, 0.031]).verdict == TOO_SHORT  # two validations show neither a plateau nor a floor


def test_a_plateau_needs_more_validations_than_the_window():
    """A plateau needs window + 1 validations: with n == window the last window reaches back to the second
    validation, so one point decides; flat at the floor likewise."""
    for window in (3, 5):
        assert judge([0.30] * window, window=window).verdict == TOO_SHORT
        assert judge([0.30] * (window + 1), window=window).verdict == PLATEAUED
        assert judge([0.01] * window, window=window).verdict == TOO_SHORT
        assert judge([0.01] * (window + 1), window=window).verdict == AT_FLOOR
