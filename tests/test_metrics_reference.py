"""The project's mAP against pycocotools' COCOeval, and its VOC07 AP against the VOC devkit's algorithm."""

from __future__ import annotations

import contextlib
import io
import json

import numpy as np
import pytest
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from frcnn_lab.metrics import mean_average_precision, metric_target
from frcnn_lab.metrics.coco_json import GROUND_TRUTH_FILE, PREDICTIONS_FILE, write_coco_files
from frcnn_lab.metrics.tide import ERROR_TYPES, tide_errors
from frcnn_lab.metrics.voc import voc07_ap

CLASSES = ["camera", "phone", "laptop"]


def reference_set(seed: int = 0, images: int = 240, width: int = 640, height: int = 480):
    """A seeded, deliberately awkward set -> (preds, dataset targets with "difficult").

    Empty images (with and without false alarms), images whose objects get no prediction, crowd /
    difficult boxes (some detected), duplicates, wrong classes, jittered boxes and boxes whose IoU with
    their object is exactly 0.5 or 0.75 (integer pixel edges make the IoU exact)."""
    rng = np.random.default_rng(seed)
    preds, targets = [], []
    for index in range(images):
        kind = index % 8
        count = 0 if kind == 0 else int(rng.integers(1, 7))
        gt_boxes, gt_labels, difficult = [], [], []
        for _ in range(count):
            w, h = int(rng.integers(8, 200)), int(rng.integers(8, 200))
            x, y = int(rng.integers(0, width - w)), int(rng.integers(0, height - h))
            gt_boxes.append([x, y, x + w, y + h])
            gt_labels.append(int(rng.integers(1, len(CLASSES) + 1)))
            difficult.append(bool(rng.random() < 0.12))
        boxes, scores, labels = [], [], []
        if kind != 1:  # kind 1: objects, but no prediction at all
            for (x1, y1, x2, y2), label in zip(gt_boxes, gt_labels, strict=True):
                w, h = x2 - x1, y2 - y1
                for _ in range(int(rng.integers(0, 4))):  # several predictions per object, or none
                    shape = rng.random()
                    if shape < 0.2:  # IoU exactly 0.5: half the height
                        box = [x1, y1, x2, y1 + h / 2]
                    elif shape < 0.4:  # IoU exactly 0.75: three quarters of the width
                        box = [x1, y1, x1 + 0.75 * w, y2]
                    else:
                        jitter = rng.normal(0, 0.12, 4) * [w, h, w, h]
                        box = [x1 + jitter[0], y1 + jitter[1], x2 + jitter[2], y2 + jitter[3]]
                    box = [min(box[0], box[2] - 1), min(box[1], box[3] - 1), box[2], box[3]]
                    boxes.append(box)
                    scores.append(float(rng.random()))
                    labels.append(label if rng.random() < 0.85 else int(rng.integers(1, len(CLASSES) + 1)))
            for _ in range(int(rng.poisson(1.0))):  # false alarms, on empty images too
                w, h = int(rng.integers(8, 150)), int(rng.integers(8, 150))
                x, y = float(rng.uniform(0, width - w)), float(rng.uniform(0, height - h))
                boxes.append([x, y, x + w, y + h])
                scores.append(float(rng.random()))
                labels.append(int(rng.integers(1, len(CLASSES) + 1)))
        preds.append({"boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
                      "scores": torch.tensor(scores, dtype=torch.float32),
                      "labels": torch.tensor(labels, dtype=torch.long)})
        targets.append({"boxes": torch.tensor(gt_boxes, dtype=torch.float32).reshape(-1, 4),
                        "labels": torch.tensor(gt_labels, dtype=torch.long),
                        "difficult": torch.tensor(difficult, dtype=torch.bool)})
    return preds, targets


def cocoeval(folder):
    """pycocotools on the written files -> (stats, per-class AP@[.5:.95] by category id)."""
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(folder / GROUND_TRUTH_FILE))
        dt = gt.loadRes(str(folder / PREDICTIONS_FILE))
        evaluation = COCOeval(gt, dt, iouType="bbox")
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    precision = evaluation.eval["precision"][:, :, :, 0, -1]  # IoU x recall x class, area "all", 100 detections
    per_class = {}
    for k, category in enumerate(evaluation.params.catIds):
        valid = precision[:, :, k][precision[:, :, k] > -1]
        per_class[category] = float(valid.mean()) if valid.size else None
    return evaluation.stats, per_class


def test_reference_set_has_every_awkward_case():
    preds, targets = reference_set()
    assert len(preds) >= 200 and len({int(v) for t in targets for v in t["labels"]}) == len(CLASSES)
    assert any(len(t["labels"]) == 0 and len(p["labels"]) > 0 for p, t in zip(preds, targets, strict=True))
    assert any(len(t["labels"]) > 0 and len(p["labels"]) == 0 for p, t in zip(preds, targets, strict=True))
    assert sum(int(t["difficult"].sum()) for t in targets) >= 20


def test_map_equals_pycocotools_on_the_written_json(tmp_path):
    preds, targets = reference_set()
    gts = [metric_target(t) for t in targets]
    metric = mean_average_precision()
    metric.update(preds, gts)
    ours = metric.compute()
    write_coco_files(tmp_path, preds, targets, CLASSES)
    stats, per_class = cocoeval(tmp_path)

    assert json.loads((tmp_path / GROUND_TRUTH_FILE).read_text())["annotations"][0]["id"] == 1
    assert float(ours["map"]) == pytest.approx(stats[0], abs=1e-4)
    assert float(ours["map_50"]) == pytest.approx(stats[1], abs=1e-4)
    assert float(ours["map_75"]) == pytest.approx(stats[2], abs=1e-4)
    ours_per_class = dict(zip(ours["classes"].tolist(), ours["map_per_class"].tolist(), strict=True))
    assert set(ours_per_class) == set(per_class) == {1, 2, 3}
    for category, ap in per_class.items():
        assert ours_per_class[category] == pytest.approx(ap, abs=1e-4), CLASSES[category - 1]
    # The set is not trivial: neither perfect nor empty, and the crowd boxes change the score.
    assert 0.1 < stats[0] < 0.9
    plain = mean_average_precision()
    plain.update(preds, [{"boxes": t["boxes"], "labels": t["labels"]} for t in targets])
    assert abs(float(plain.compute()["map"]) - stats[0]) > 1e-3


def test_map_equals_pycocotools_at_threshold_edges(tmp_path):
    """IoUs exactly on COCO's thresholds (0.55, 0.6, ..., 0.95) and recalls exactly on hundredths (3/10):
    COCOeval counts both at the threshold; float32 thresholds (torchmetrics' defaults) would not."""
    square = [0.0, 0.0, 100.0, 100.0]
    preds, targets = [], []
    for i, height in enumerate([100, 95, 90, 40, 85, 80, 75, 70, 65, 60, 55, 100]):  # IoU = height / 100
        boxes = [[0.0, 0.0, 100.0, float(height)]] + ([[150.0, 150.0, 200.0, 200.0]] if i % 4 == 3 else [])
        preds.append({"boxes": torch.tensor(boxes), "scores": torch.tensor([1.0 - 0.05 * i, 0.97][: len(boxes)]),
                      "labels": torch.ones(len(boxes), dtype=torch.long)})
        targets.append({"boxes": torch.tensor([square] if i < 10 else [[0.0, 0.0, 50.0, 50.0]]),
                         "labels": torch.ones(1, dtype=torch.long), "difficult": torch.zeros(1, dtype=torch.bool)})
    metric = mean_average_precision()
    metric.update(preds, [metric_target(t) for t in targets])
    ours = metric.compute()
    write_coco_files(tmp_path, preds, targets, CLASSES[:1])
    stats, per_class = cocoeval(tmp_path)
    assert 0.2 < stats[0] < 0.9
    for key, reference in zip(("map", "map_50", "map_75"), stats[:3], strict=True):
        assert float(ours[key]) == pytest.approx(reference, abs=1e-6), key
    assert float(ours["map_per_class"]) == pytest.approx(per_class[1], abs=1e-6)


def test_tide_starts_from_the_same_map_50():
    preds, targets = reference_set()
    metric = mean_average_precision()
    metric.update(preds, [metric_target(t) for t in targets])
    breakdown = tide_errors(preds, targets, len(CLASSES))
    assert breakdown["map_50"] == pytest.approx(float(metric.compute()["map_50"]), abs=1e-4)
    assert all(breakdown["counts"][key] > 0 for key in ERROR_TYPES)  # the set holds every kind of error


# The VOC devkit's voc_eval.py / voc_ap(use_07_metric=True), ported as written (1-based inclusive pixel boxes).
def devkit_voc_ap(rec, prec):
    ap = 0.0
    for t in np.arange(0.0, 1.1, 0.1):
        p = 0 if np.sum(rec >= t) == 0 else np.max(prec[rec >= t])
        ap = ap + p / 11.0
    return ap


def devkit_voc_eval(detections, annotations, ovthresh=0.5):
    """detections: [(image, score, [x1, y1, x2, y2])]; annotations: {image: (boxes (G, 4), difficult (G,))}."""
    class_recs, npos = {}, 0
    for image, (bbox, difficult) in annotations.items():
        npos = npos + sum(~difficult)
        class_recs[image] = {"bbox": bbox, "difficult": difficult, "det": [False] * len(bbox)}
    image_ids = [d[0] for d in detections]
    confidence = np.array([d[1] for d in detections])
    BB = np.array([d[2] for d in detections], dtype=float).reshape(-1, 4)
    sorted_ind = np.argsort(-confidence, kind="stable")
    BB = BB[sorted_ind, :]
    image_ids = [image_ids[x] for x in sorted_ind]
    nd = len(image_ids)
    tp, fp = np.zeros(nd), np.zeros(nd)
    for d in range(nd):
        R = class_recs[image_ids[d]]
        bb = BB[d, :].astype(float)
        ovmax = -np.inf
        BBGT = R["bbox"].astype(float)
        if BBGT.size > 0:
            ixmin = np.maximum(BBGT[:, 0], bb[0])
            iymin = np.maximum(BBGT[:, 1], bb[1])
            ixmax = np.minimum(BBGT[:, 2], bb[2])
            iymax = np.minimum(BBGT[:, 3], bb[3])
            iw = np.maximum(ixmax - ixmin + 1.0, 0.0)
            ih = np.maximum(iymax - iymin + 1.0, 0.0)
            inters = iw * ih
            uni = ((bb[2] - bb[0] + 1.0) * (bb[3] - bb[1] + 1.0)
                   + (BBGT[:, 2] - BBGT[:, 0] + 1.0) * (BBGT[:, 3] - BBGT[:, 1] + 1.0) - inters)
            overlaps = inters / uni
            ovmax = np.max(overlaps)
            jmax = np.argmax(overlaps)
        if ovmax > ovthresh:
            if not R["difficult"][jmax]:
                if not R["det"][jmax]:
                    tp[d] = 1.0
                    R["det"][jmax] = 1
                else:
                    fp[d] = 1.0
        else:
            fp[d] = 1.0
    fp, tp = np.cumsum(fp), np.cumsum(tp)
    rec = tp / float(npos)
    prec = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
    return devkit_voc_ap(rec, prec)


def devkit_map(preds, targets, num_classes):
    """Per class the devkit's AP (NaN without positives): our 0-based exclusive boxes are its 1-based inclusive ones."""
    aps = []
    for label in range(1, num_classes + 1):
        annotations = {}
        for image, target in enumerate(targets):
            mine = target["labels"] == label
            boxes = target["boxes"][mine].numpy().astype(float) + [1, 1, 0, 0]
            annotations[image] = (boxes.reshape(-1, 4), target["difficult"][mine].numpy())
        if sum(int((~d).sum()) for _, d in annotations.values()) == 0:
            aps.append(float("nan"))
            continue
        detections = [(image, float(s), (b.numpy().astype(float) + [1, 1, 0, 0]).tolist())
                      for image, pred in enumerate(preds)
                      for b, s, lab in zip(pred["boxes"], pred["scores"], pred["labels"], strict=True) if lab == label]
        aps.append(devkit_voc_eval(detections, annotations))
    return aps


def random_voc_case(rng, num_classes=3, images=12, grid=10):
    """Integer boxes on a grid; detections are exact copies (TP), half-overlaps (IoU 1/3, FP), duplicates,
    strays and hits on difficult boxes, with distinct scores (the devkit's sort is not stable)."""
    preds, targets = [], []
    for _ in range(images):
        cells = rng.permutation(grid * grid)[: int(rng.integers(0, 6))]
        boxes = np.array([[c % grid * 40, c // grid * 40, c % grid * 40 + 30, c // grid * 40 + 30] for c in cells])
        labels = rng.integers(1, num_classes + 1, len(cells))
        difficult = rng.random(len(cells)) < 0.15
        det_boxes, det_labels = [], []
        for box, label in zip(boxes, labels, strict=True):
            for _ in range(int(rng.integers(0, 3))):
                shift = 15 if rng.random() < 0.2 else 0
                det_boxes.append(box + [shift, 0, shift, 0])
                det_labels.append(label)
        for _ in range(int(rng.integers(0, 2))):
            c = int(rng.integers(0, grid * grid))
            det_boxes.append([c % grid * 40 + 5, c // grid * 40 + 5, c % grid * 40 + 35, c // grid * 40 + 35])
            det_labels.append(int(rng.integers(1, num_classes + 1)))
        preds.append({"boxes": torch.tensor(np.array(det_boxes), dtype=torch.float32).reshape(-1, 4),
                      "scores": torch.tensor(rng.permutation(1000)[: len(det_boxes)] / 1000 + 1e-4,
                                             dtype=torch.float32),
                      "labels": torch.tensor(det_labels, dtype=torch.long)})
        targets.append({"boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
                        "labels": torch.tensor(labels, dtype=torch.long), "difficult": torch.tensor(difficult)})
    return preds, targets


@pytest.mark.parametrize("seed", range(40))
def test_voc07_ap_equals_the_devkit_on_random_cases(seed):
    preds, targets = random_voc_case(np.random.default_rng(seed))
    ours = voc07_ap(preds, targets, num_classes=3)["ap"].tolist()
    reference = devkit_map(preds, targets, 3)
    np.testing.assert_allclose(ours, reference, rtol=0, atol=1e-12, equal_nan=True)


@pytest.mark.parametrize("hits", range(1, 11))
def test_voc07_ap_at_recalls_exactly_on_the_tenths(hits):
    """Ten objects, ``hits`` found first, then a false alarm: recall hits/10 lies exactly on a 0.1 step.
    The devkit's thresholds come from np.arange, so 0.3, 0.6 and 0.7 sit a hair above 3/10, 6/10 and 7/10
    and those recalls do not reach them."""
    boxes = torch.tensor([[i * 40, 0, i * 40 + 30, 30] for i in range(10)], dtype=torch.float32)
    target = {"boxes": boxes, "labels": torch.ones(10, dtype=torch.long),
              "difficult": torch.zeros(10, dtype=torch.bool)}
    found = torch.cat([boxes[:hits], torch.tensor([[500.0, 500, 530, 530]])])
    pred = {"boxes": found, "scores": torch.linspace(1, 0.5, hits + 1),
            "labels": torch.ones(hits + 1, dtype=torch.long)}
    ours = voc07_ap([pred], [target], num_classes=1)["ap"][0].item()
    assert ours == pytest.approx(devkit_map([pred], [target], 1)[0], abs=1e-12)
    reached = sum(1 for t in np.arange(0.0, 1.1, 0.1) if hits / 10 >= t)
    assert ours == pytest.approx(reached / 11, abs=1e-12)
