"""AP by object size (COCO areas and bins of the train boxes) and the confusion matrix: hand-built cases, and
pycocotools' COCOeval per-area AP where they overlap."""

from __future__ import annotations

import contextlib
import copy
import io

import numpy as np
import pytest
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from frcnn_lab.metrics import DetectionEvaluation
from frcnn_lab.metrics.coco_json import ground_truth, results
from frcnn_lab.metrics.confusion import confusion_figures, format_confusion, image_confusion
from frcnn_lab.metrics.sizes import COCO_AREA_EDGES, format_sizes, size_bin_ap


def square(x: float, y: float, side: float) -> list[float]:
    return [x, y, x + side, y + side]


def image(boxes, labels, scores=None, difficult=None) -> dict[str, torch.Tensor]:
    found = {"boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
             "labels": torch.tensor(labels, dtype=torch.int64)}
    if scores is not None:
        found["scores"] = torch.tensor(scores, dtype=torch.float32)
    if difficult is not None:
        found["difficult"] = torch.tensor(difficult, dtype=torch.bool)
    return found


def test_size_bins_on_a_hand_computed_case():
    # Bins by side: < 20, 20-40, >= 40 px. Small: one box found. Middle: its box missed and a false alarm of
    # its size. Large: two boxes, detections TP 0.9, FP 0.8, TP 0.7 (the small false alarm and the middle-sized
    # one fall outside this bin and are ignored): precision 1 up to recall 0.5, then 2/3, so COCO's 101-point
    # AP is (51 * 1 + 50 * 2/3) / 101 at every IoU (the boxes are exact).
    targets = [image([square(0, 0, 10), square(100, 0, 30), square(0, 100, 50), square(100, 100, 60)], [1] * 4)]
    preds = [image([square(0, 0, 10), square(200, 200, 30), square(0, 100, 50), square(250, 0, 50),
                    square(100, 100, 60)], [1] * 5, [0.5, 0.95, 0.9, 0.8, 0.7])]
    found = size_bin_ap(preds, targets, num_classes=1, edges=[20, 40])

    assert found["edges_px"] == [20.0, 40.0]
    assert [b["side_px"] for b in found["bins"]] == [[0.0, 20.0], [20.0, 40.0], [40.0, None]]
    assert [b["boxes"] for b in found["bins"]] == [1, 1, 2]
    small, middle, large = found["bins"]
    assert small["map"] == small["map_50"] == small["mar"] == pytest.approx(1.0)
    assert middle["map"] == middle["map_50"] == middle["mar"] == pytest.approx(0.0)
    expected = (51 + 50 * 2 / 3) / 101
    assert large["map"] == pytest.approx(expected) and large["map_50"] == pytest.approx(expected)
    assert large["mar"] == pytest.approx(1.0)
    # A bin without ground truth has no figure rather than a 0.
    empty = size_bin_ap(preds, targets, num_classes=1, edges=[1, 5])["bins"][0]
    assert empty["boxes"] == 0 and empty["map"] is None


def random_scene(seed: int, images: int = 40, num_classes: int = 2, difficult_share: float = 0.1):
    """Boxes of sides 4-200 px in 320 px images; detections near most of them (some with the wrong class), and
    false alarms of every size, with difficult boxes among the ground truth."""
    rng = np.random.default_rng(seed)
    preds, targets = [], []
    for _ in range(images):
        gt, labels, difficult, det, det_labels = [], [], [], [], []
        for _ in range(rng.integers(0, 6)):
            side = float(np.exp(rng.uniform(np.log(4), np.log(200))))
            x, y = rng.uniform(0, 320 - side, 2)
            box = [x, y, x + side, y + side * rng.uniform(0.6, 1.0)]
            gt.append(box)
            labels.append(int(rng.integers(1, num_classes + 1)))
            difficult.append(rng.random() < difficult_share)
            if rng.random() < 0.8:
                jitter = rng.normal(0, 0.08 * side, 4)
                det.append([c + j for c, j in zip(box, jitter, strict=True)])
                det_labels.append(labels[-1] if rng.random() < 0.8 else int(rng.integers(1, num_classes + 1)))
        for _ in range(rng.integers(0, 4)):
            side = float(np.exp(rng.uniform(np.log(4), np.log(200))))
            x, y = rng.uniform(0, 320 - side, 2)
            det.append([x, y, x + side, y + side]), det_labels.append(int(rng.integers(1, num_classes + 1)))
        targets.append(image(gt, labels, difficult=difficult))
        preds.append(image(det, det_labels, rng.random(len(det)).tolist()))
    return preds, targets


def pycocotools_stats(preds, targets, num_classes: int) -> np.ndarray:
    dataset = ground_truth(targets, [str(c) for c in range(1, num_classes + 1)])
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = copy.deepcopy(dataset)
        gt.createIndex()
        evaluation = COCOeval(gt, gt.loadRes(results(preds, range(1, num_classes + 1))), "bbox")
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    return evaluation.stats


@pytest.mark.parametrize("seed", [0, 1])
def test_coco_areas_and_bins_at_coco_edges_equal_pycocotools(seed):
    preds, targets = random_scene(seed)
    stats = pycocotools_stats(preds, targets, 2)  # [3:6] AP small/medium/large, [9:12] AR@100 small/medium/large
    evaluation = DetectionEvaluation(["a", "b"], score_threshold=0.5, size_edges=COCO_AREA_EDGES)
    evaluation.update(preds[:20], targets[:20], 1.0)
    evaluation.update(preds[20:], targets[20:], 1.0)
    figures = evaluation.compute()

    by_area, by_bin = figures["ap_by_area"], figures["ap_by_size"]["bins"]
    for index, area in enumerate(("small", "medium", "large")):
        assert by_area[area]["map"] == pytest.approx(stats[3 + index], abs=1e-6), area
        assert by_area[area]["mar"] == pytest.approx(stats[9 + index], abs=1e-6), area
        # The lab's own bins, cut at COCO's edges, are COCO's areas.
        assert by_bin[index]["map"] == pytest.approx(stats[3 + index], abs=1e-6), area
        assert by_bin[index]["mar"] == pytest.approx(stats[9 + index], abs=1e-6), area
    assert stats[3] != pytest.approx(stats[5], abs=1e-3)  # the areas differ, so a mix-up would show
    table = format_sizes(by_area, figures["ap_by_size"])
    assert "| train tertile 3 | >= 96.0 px |" in table and "| COCO small | < 32.0 px |" in table


def test_confusion_matrix_on_a_hand_built_case():
    camera, phone = 1, 2
    a, b, c, d = square(0, 0, 10), square(20, 20, 10), square(50, 50, 10), square(70, 70, 10)
    e, f = [100, 100, 110, 110], [100, 104, 110, 114]
    # det on e and f: IoU 0.83 with e (camera), 0.57 with f (phone): it takes e, the higher IoU, whatever the class.
    both = [100, 100, 110, 112]
    target = image([a, b, c, d, e, f], [camera, phone, camera, camera, camera, phone],
                   difficult=[False, False, False, True, False, False])
    pred = image([a, b, a, c, d, both], [camera, camera, phone, phone, camera, phone],
                 [0.9, 0.8, 0.7, 0.3, 0.6, 0.95])
    empty = image([], [])
    alarm = image([square(0, 0, 20)], [camera], [0.99])

    counts = image_confusion(pred, target, 2, score_threshold=0.5) + image_confusion(alarm, empty, 2, 0.5)
    # rows: GT camera, phone, background; columns: predicted camera, phone, background
    assert counts.tolist() == [[1, 1, 1],   # a found; e taken by a phone; c missed (its detection scores 0.3)
                               [1, 0, 1],   # b called a camera; f missed
                               [1, 1, 0]]   # the alarm on the empty image; the second detection on a
    figures = confusion_figures(counts, ["camera", "phone"], 0.5, 0.5)
    assert figures["labels"] == ["camera", "phone", "background"]
    assert figures["row_normalised"][0] == pytest.approx([1 / 3] * 3)
    assert figures["row_normalised"][1] == pytest.approx([0.5, 0.0, 0.5])
    # With no ground truth and no detection a row has no shares.
    assert confusion_figures(torch.zeros(3, 3, dtype=torch.int64), ["x", "y"], 0.5, 0.5)["row_normalised"][0] == \
        [None, None, None]
    assert "| phone | 1 (0.50) | 0 (0.00) | 1 (0.50) |" in format_confusion(figures)


def test_confusion_matrix_rows_and_columns_count_boxes_and_detections():
    """Every box is in its class row once and every kept detection in its class column once, over images in
    several batches."""
    preds, targets = random_scene(2, images=30, num_classes=3, difficult_share=0.0)
    threshold = 0.4
    evaluation = DetectionEvaluation(["a", "b", "c"], score_threshold=threshold)
    for start in range(0, 30, 7):
        evaluation.update(preds[start:start + 7], targets[start:start + 7], 1.0)
    counts = np.array(evaluation.compute()["confusion"]["counts"])
    labels = torch.cat([t["labels"] for t in targets])
    assert counts[:3].sum(axis=1).tolist() == [int((labels == k).sum()) for k in (1, 2, 3)]
    kept = torch.cat([p["labels"][p["scores"] >= threshold] for p in preds])
    assert counts[:, :3].sum(axis=0).tolist() == [int((kept == k).sum()) for k in (1, 2, 3)]
    assert counts[3, 3] == 0 and np.trace(counts[:3, :3]) > 0 and counts[:3, :3].sum() > np.trace(counts[:3, :3])
