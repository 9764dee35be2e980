"""Differences between configurations with confidence intervals: hand values, scipy's t-tests, pairing rules."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from frcnn_lab.comparisons import difference, one_key_differences, rank_keys


def test_paired_interval_matches_the_hand_computed_t_interval():
    # Per-seed differences 1, 2, 3: mean 2, sd 1, se 1/sqrt(3), t(0.975, 2) = 4.302653.
    mean, low, high, method = difference({0: 0.0, 1: 0.0, 2: 0.0}, {0: 1.0, 1: 2.0, 2: 3.0})
    half = 4.302652729911275 / math.sqrt(3)
    assert method == "paired"
    assert mean == pytest.approx(2.0)
    assert (low, high) == pytest.approx((2.0 - half, 2.0 + half), abs=1e-9)


def test_pairing_by_seed_uses_the_per_seed_differences_not_the_spread_between_seeds():
    # Seeds differ a lot from each other, the configurations by a steady +0.05: paired is clear of 0, Welch not.
    first = {0: 0.10, 1: 0.40, 2: 0.70}
    second = {0: 0.16, 1: 0.44, 2: 0.75}
    _, low, high, method = difference(first, second)
    assert method == "paired" and low > 0
    welch = stats.ttest_ind(list(second.values()), list(first.values()), equal_var=False).confidence_interval()
    assert welch.low < 0 < welch.high


def test_seeds_that_do_not_match_give_welchs_interval():
    rng = np.random.default_rng(0)
    first = dict(enumerate(rng.normal(0.3, 0.05, 4)))
    second = {seed + 10: v for seed, v in enumerate(rng.normal(0.5, 0.1, 3))}
    mean, low, high, method = difference(first, second)
    reference = stats.ttest_ind(list(second.values()), list(first.values()), equal_var=False).confidence_interval(0.95)
    assert method == "welch"
    assert mean == pytest.approx(np.mean(list(second.values())) - np.mean(list(first.values())))
    assert (low, high) == pytest.approx((reference.low, reference.high))


def test_a_single_result_on_one_side_gives_no_interval():
    mean, low, high, method = difference({0: 0.2}, {0: 0.5, 1: 0.6})
    assert (method, low, high) == ("none", None, None)
    assert mean == pytest.approx(0.35)


def test_only_configurations_that_differ_in_one_key_are_compared_in_ascending_order_of_the_key():
    configurations = {
        "a": {"rpn.num_rois": 64, "data.image_size": 600},
        "b": {"rpn.num_rois": 4, "data.image_size": 600},
        "c": {"rpn.num_rois": 64, "data.image_size": 300},
        "d": {"rpn.num_rois": 4, "data.image_size": 300},
        "e": {"rpn.num_rois": 16, "data.image_size": 600},  # no scores: left out
    }
    scores = {"a": {0: 0.50, 1: 0.52, 2: 0.51}, "b": {0: 0.20, 1: 0.25, 2: 0.21},
              "c": {0: 0.30, 1: 0.31, 2: 0.29}, "d": {0: 0.10, 1: 0.12, 2: 0.09}, "e": {}}
    differences = one_key_differences(configurations, scores)
    pairs = {(d.key, d.first, d.second) for d in differences}
    assert pairs == {("rpn.num_rois", "b", "a"), ("rpn.num_rois", "d", "c"),
                     ("data.image_size", "c", "a"), ("data.image_size", "d", "b")}
    by_pair = {(d.first, d.second): d for d in differences}
    assert by_pair[("b", "a")].mean == pytest.approx(0.29)
    assert by_pair[("b", "a")].first_value == 4 and by_pair[("b", "a")].second_value == 64
    assert all(d.excludes_zero for d in differences)

    ranking = rank_keys(differences)
    assert [effect.key for effect in ranking] == ["rpn.num_rois", "data.image_size"]
    assert ranking[0].largest.mean == pytest.approx(0.29)
    assert (ranking[0].pairs, ranking[0].clear) == (2, 2)


def test_an_interval_that_straddles_zero_is_not_marked():
    differences = one_key_differences({"x": {"k": 0.0}, "y": {"k": 0.1}},
                                      {"x": {0: 0.5, 1: 0.6, 2: 0.4}, "y": {0: 0.55, 1: 0.5, 2: 0.45}})
    (diff,) = differences
    assert diff.low < 0 < diff.high and not diff.excludes_zero


def test_difference_in_seed_standard_deviations():
    (diff,) = one_key_differences({"x": {"k": 1}, "y": {"k": 2}},
                                  {"x": {0: 0.1, 1: 0.2, 2: 0.3}, "y": {0: 0.6, 1: 0.65, 2: 0.7}})
    assert diff.seed_std == pytest.approx(0.1)  # stdev of 0.1, 0.2, 0.3 beats that of 0.6, 0.65, 0.7
    assert diff.in_seed_stds == pytest.approx(4.5)
