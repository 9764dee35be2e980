"""TIDE error breakdown on hand-built cases, one per error type: only that type's dAP is above 0.

COCO's AP@0.5 reads the precision envelope at the 101 recalls 0, 0.01, ..., 1: precision 1 up to recall
1/2 and nothing after is 51 / 101.
"""

from __future__ import annotations

import pytest
import torch

from frcnn_lab.metrics.tide import ERROR_TYPES, TideErrors, format_tide, tide_errors

A, B, FAR = [10, 10, 50, 50], [100, 100, 140, 140], [150, 10, 190, 50]
TALL_A = [10, 10, 50, 110]  # IoU 1600 / 4000 = 0.4 with A: between t_b = 0.1 and t_f = 0.5


def image(gt_boxes, gt_labels, det_boxes=(), scores=(), det_labels=(), difficult=None):
    return (
        {"boxes": torch.tensor(det_boxes, dtype=torch.float32).reshape(-1, 4),
         "scores": torch.tensor(scores, dtype=torch.float32), "labels": torch.tensor(det_labels, dtype=torch.long)},
        {"boxes": torch.tensor(gt_boxes, dtype=torch.float32).reshape(-1, 4),
         "labels": torch.tensor(gt_labels, dtype=torch.long),
         "difficult": torch.tensor(difficult or [False] * len(gt_labels), dtype=torch.bool)},
    )


def run(*images, num_classes=2):
    preds, targets = zip(*images, strict=True)
    return tide_errors(list(preds), list(targets), num_classes)


def only(breakdown, error_type):
    """The dAPs of the six error types other than ``error_type`` (all must be 0)."""
    return {k: breakdown["delta_ap"][k] for k in ERROR_TYPES if k != error_type}


CASES = {
    # A labelled class 2 on a class-1 object; class 2's own object found after it. Base (0 + 1/2) / 2;
    # fixed, the detection becomes class 1's true positive: (1 + 1) / 2.
    "cls": ((image([A], [1], [A], [0.9], [2]), image([B], [2], [B], [0.8], [2])), 0.25, 1.0),
    # A box of the right class at IoU 0.4 ranked above the one true positive of two objects.
    "loc": ((image([A, B], [1, 1], [TALL_A, B], [0.9, 0.8], [1, 1]),), 25.5 / 101, 1.0),
    # Wrong class and IoU 0.4: class 1 perfect, class 2 has the false positive above its true positive.
    "both": ((image([A], [1], [A, TALL_A], [0.7, 0.9], [1, 2]), image([B], [2], [B], [0.8], [2])), 0.75, 1.0),
    # A second box on A between the two true positives: precision 2/3 at recall 1.
    "dupe": ((image([A, B], [1, 1], [A, A, B], [0.9, 0.8, 0.7], [1, 1, 1]),), (51 + 50 * 2 / 3) / 101, 1.0),
    # The same with a box far from everything.
    "bkg": ((image([A, B], [1, 1], [A, FAR, B], [0.9, 0.8, 0.7], [1, 1, 1]),), (51 + 50 * 2 / 3) / 101, 1.0),
    # B never detected: recall stops at 1/2.
    "miss": ((image([A, B], [1, 1], [A], [0.9], [1]),), 51 / 101, 1.0),
}


@pytest.mark.parametrize("error_type", list(CASES))
def test_each_error_type_alone(error_type):
    images, base, fixed = CASES[error_type]
    breakdown = run(*images)
    assert breakdown["map_50"] == pytest.approx(base, abs=1e-9)
    assert breakdown["delta_ap"][error_type] == pytest.approx(fixed - base, abs=1e-9)
    assert breakdown["delta_ap"][error_type] > 0
    assert only(breakdown, error_type) == dict.fromkeys(only(breakdown, error_type), 0.0)
    assert breakdown["counts"][error_type] == 1
    assert sum(breakdown["counts"].values()) == 1
    if error_type == "miss":  # a missed box is a false negative and nothing else
        assert breakdown["delta_ap"]["fn"] == pytest.approx(fixed - base) and breakdown["delta_ap"]["fp"] == 0
    else:  # every other type is a false positive
        assert breakdown["delta_ap"]["fp"] > 0


def test_only_the_best_scoring_error_on_a_box_is_fixed():
    # Two boxes at IoU 0.4 on A: the fix turns the higher one into a true positive and drops the other;
    # the recall then stops at 2/3 (the third object is missed), so mAP rises to 67 / 101, not to 1.
    found = run(image([A, B, FAR], [1, 1, 1], [TALL_A, B, [10, 10, 110, 50]], [0.9, 0.85, 0.8], [1, 1, 1]),
                num_classes=1)
    assert found["counts"]["loc"] == 2 and found["counts"]["miss"] == 1
    assert found["map_50"] + found["delta_ap"]["loc"] == pytest.approx(67 / 101)


def test_difficult_boxes_are_ignored_regions():
    found = run(image([A, B], [1, 1], [A, B], [0.9, 0.8], [1, 1], difficult=[True, False]), num_classes=1)
    assert found["map_50"] == pytest.approx(1.0)
    assert sum(found["counts"].values()) == 0 and max(found["delta_ap"].values()) == 0


def test_without_ground_truth_the_figures_are_none():
    found = run(image([], [], [A], [0.9], [1]), num_classes=1)
    assert found["map_50"] is None and set(found["delta_ap"].values()) == {None}
    assert found["counts"]["bkg"] == 1


def test_metric_over_batches_equals_the_function():
    images = CASES["cls"][0] + CASES["dupe"][0]
    metric = TideErrors(num_classes=2)
    for pred, target in images:
        metric.update([pred], [target])
    preds, targets = zip(*images, strict=True)
    assert metric.compute() == tide_errors(list(preds), list(targets), 2)


def test_table_names_every_type():
    table = format_tide(run(*CASES["loc"][0]))
    for key in [*ERROR_TYPES, "fp", "fn"]:
        assert f"| {key} |" in table
    assert "| loc | localisation | 0.748 | 1 |" in table
