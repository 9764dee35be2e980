"""VOC07 11-point AP against cases computed by hand."""

from __future__ import annotations

import math

import pytest
import torch

from frcnn_lab.metrics.voc import VOC07AveragePrecision, voc07_ap


def det(boxes, scores, labels=None):
    boxes = torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)
    return {"boxes": boxes, "scores": torch.tensor(scores, dtype=torch.float32),
            "labels": torch.tensor(labels or [1] * len(boxes), dtype=torch.long)}


def gt(boxes, labels=None, difficult=None):
    boxes = torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)
    return {"boxes": boxes, "labels": torch.tensor(labels or [1] * len(boxes), dtype=torch.long),
            "difficult": torch.tensor(difficult or [False] * len(boxes))}


A, B, FAR = [0, 0, 10, 10], [20, 20, 30, 30], [50, 50, 60, 60]
PREDS = [det([A, A, B], [0.9, 0.8, 0.6]), det([FAR], [0.7])]


def test_duplicates_and_misses_give_the_hand_computed_eleven_point_ap():
    # Ranked: TP (A), FP (duplicate of A), FP (far away), TP (B); 3 positives.
    # recall 1/3, 1/3, 1/3, 2/3; precision 1, 1/2, 1/3, 1/2 -> 4 points at 1, 3 at 0.5, 4 at 0 -> 5.5 / 11.
    result = voc07_ap(PREDS, [gt([A, B]), gt([A])], num_classes=1)
    assert result["ap"][0].item() == pytest.approx(0.5)


def test_a_difficult_box_neither_rewards_nor_penalises_its_detection():
    # B is difficult: its detection is ignored, 2 positives; recall 1/2 at precision 1, 1/2, 1/3 -> 6 points at 1.
    result = voc07_ap(PREDS, [gt([A, B], difficult=[False, True]), gt([A])], num_classes=1)
    assert result["ap"][0].item() == pytest.approx(6 / 11)


def test_iou_must_exceed_one_half():
    target = [gt([[0, 0, 10, 20]])]
    assert voc07_ap([det([[0, 0, 10, 10]], [0.9])], target, 1)["ap"][0].item() == 0.0  # IoU exactly 0.5
    assert voc07_ap([det([[0, 0, 10, 11]], [0.9])], target, 1)["ap"][0].item() == pytest.approx(1.0)  # 0.55


def test_classes_are_scored_apart_and_classes_without_positives_are_nan():
    preds = [det([A, B], [0.9, 0.9], labels=[1, 2])]
    result = voc07_ap(preds, [gt([A, B], labels=[2, 1])], num_classes=3)
    assert result["ap"][:2].tolist() == [0.0, 0.0] and math.isnan(result["ap"][2].item())
    assert result["map"].item() == 0.0


def test_metric_over_batches_equals_the_function_over_all_images():
    targets = [gt([A, B], difficult=[False, True]), gt([A])]
    metric = VOC07AveragePrecision(num_classes=1)
    metric.update(PREDS[:1], targets[:1])
    metric.update(PREDS[1:], targets[1:])
    # torchmetrics squeezes one-element results: with one class "ap" comes back 0-dimensional.
    assert metric.compute()["ap"].reshape(-1)[0].item() == pytest.approx(6 / 11)
