"""mAP@0.5 over a bootstrap of the validation images: AP@0.5 against pycocotools' COCOeval (hand-made and random
cases, resamples as duplicated images), coverage of the intervals on simulated validation sets drawn from a
population with known mAP, and the report's columns on run folders with saved detections."""

from __future__ import annotations

import contextlib
import copy
import io
import json

import numpy as np
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from frcnn_lab.metrics.coco_json import GROUND_TRUTH_FILE, PREDICTIONS_FILE
from frcnn_lab.report import write_report
from frcnn_lab.report.validation_set import (
    Matches,
    bootstrap_maps,
    match,
    mean_ap,
    percentile_interval,
    resample_weights,
)
from test_report import make_run, table_rows


def coco_ap50(predictions: list[dict], ground_truth: dict) -> float:
    """COCOeval's AP@0.5 (``stats[1]``: all areas, 100 detections)."""
    with contextlib.redirect_stdout(io.StringIO()):
        truth = COCO()
        truth.dataset = copy.deepcopy(ground_truth)
        truth.createIndex()
        evaluation = COCOeval(truth, truth.loadRes(copy.deepcopy(predictions)), "bbox")
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    return float(evaluation.stats[1])


def full_set(predictions: list[dict], ground_truth: dict) -> float:
    matches = match(predictions, ground_truth)
    return float(mean_ap(matches, np.ones((1, matches.images)))[0])


def box(x: float, y: float, w: float, h: float, image: int, category: int, crowd: int = 0) -> dict:
    return {"image_id": image, "category_id": category, "bbox": [x, y, w, h], "area": w * h, "iscrowd": crowd}


def test_ap50_equals_cocoeval_on_a_hand_made_case():
    annotations = [
        box(10, 10, 20, 20, 1, 1), box(50, 50, 30, 30, 1, 1), box(0, 0, 100, 100, 1, 2, crowd=1),
        box(5, 5, 10, 10, 2, 2), box(40, 40, 20, 20, 2, 1), box(60, 60, 10, 10, 3, 1),
        *(box(12 * i, 0, 10, 10, 7, 2) for i in range(3)),
    ]
    for i, annotation in enumerate(annotations, start=1):
        annotation["id"] = i
    ground_truth = {"images": [{"id": i} for i in (1, 2, 3, 5, 7)], "annotations": annotations,
                    "categories": [{"id": 1}, {"id": 2}, {"id": 3}]}
    predictions = [
        {"image_id": 1, "category_id": 1, "bbox": [11, 11, 20, 20], "score": 0.9},     # TP
        {"image_id": 1, "category_id": 1, "bbox": [10, 12, 20, 20], "score": 0.8},     # same box again: FP
        {"image_id": 1, "category_id": 2, "bbox": [20, 20, 10, 10], "score": 0.95},    # on the crowd box: ignored
        {"image_id": 1, "category_id": 3, "bbox": [1, 1, 5, 5], "score": 0.99},        # class without GT
        {"image_id": 1, "category_id": 9, "bbox": [1, 1, 5, 5], "score": 0.99},        # class not in the GT file
        {"image_id": 2, "category_id": 2, "bbox": [5, 5, 10, 11], "score": 0.8},       # TP, tied score
        {"image_id": 2, "category_id": 1, "bbox": [41, 41, 20, 20], "score": 0.3},     # TP
        {"image_id": 2, "category_id": 1, "bbox": [0, 0, 5, 5], "score": 0.8},         # FP, tied score
        {"image_id": 5, "category_id": 1, "bbox": [1, 1, 30, 30], "score": 0.7},       # FP on an image without GT
        {"image_id": 3, "category_id": 1, "bbox": [60, 60, 14, 10], "score": 0.6},     # IoU 0.71: TP
        # 100 boxes of one class by score are kept per image: the TP at the lowest score is cut
        *({"image_id": 7, "category_id": 2, "bbox": [200 + i, 200, 5, 5], "score": 0.5 + i / 1000}
          for i in range(100)),
        {"image_id": 7, "category_id": 2, "bbox": [0, 0, 10, 10], "score": 0.4},
    ]
    assert full_set(predictions, ground_truth) == pytest.approx(coco_ap50(predictions, ground_truth), abs=1e-12)
    matches = match(predictions, ground_truth)
    assert len(matches.score) == 9 + 100  # class 9 dropped, the 101st detection of image 7 cut
    assert matches.ignored.sum() == 1 and matches.gt.sum() == 8  # the crowd box counts for nothing
    with pytest.raises(ValueError, match="does not list"):
        match([{**predictions[0], "image_id": 99}], ground_truth)


def random_case(rng: np.random.Generator, images: int, ties: bool) -> tuple[list[dict], dict]:
    """Random GT boxes of three classes (some crowd) and detections near them or anywhere."""
    annotations, predictions = [], []
    for image in range(images):
        for _ in range(rng.poisson(3)):
            x, y, w, h = rng.uniform(0, 200, 2).tolist() + rng.uniform(5, 60, 2).tolist()
            category = int(rng.integers(1, 4))
            annotations.append({**box(x, y, w, h, image, category, int(rng.random() < 0.1)),
                                "id": len(annotations) + 1})
            for _ in range(rng.poisson(1.2)):
                jitter = rng.normal(0, 4, 4)
                predictions.append({"image_id": image, "category_id": category if rng.random() < 0.85 else 1,
                                    "bbox": [x + jitter[0], y + jitter[1], max(1, w + jitter[2]),
                                             max(1, h + jitter[3])], "score": float(rng.random())})
        for _ in range(rng.poisson(2)):
            predictions.append({"image_id": image, "category_id": int(rng.integers(1, 4)),
                                "bbox": rng.uniform(0, 200, 4).tolist(), "score": float(rng.random())})
    if ties:
        for p in predictions:
            p["score"] = round(p["score"], 1)
    return predictions, {"images": [{"id": i} for i in range(images)], "annotations": annotations,
                         "categories": [{"id": c} for c in (1, 2, 3)]}


def test_ap50_equals_cocoeval_on_random_cases():
    rng = np.random.default_rng(0)
    for ties in (False, True):
        predictions, ground_truth = random_case(rng, 40, ties)
        expected = coco_ap50(predictions, ground_truth)
        assert 0.2 < expected < 0.9
        assert full_set(predictions, ground_truth) == pytest.approx(expected, abs=1e-12)


def test_a_resample_scores_as_cocoeval_scores_the_images_drawn():
    """Weights are how often an image is drawn: the same AP as COCOeval on a set where each drawn image appears as
    often as it was drawn (continuous scores, so no ties between copies)."""
    rng = np.random.default_rng(1)
    predictions, ground_truth = random_case(rng, 25, ties=False)
    matches = match(predictions, ground_truth)
    weights = resample_weights(25, 3, seed=2)
    for row in weights:
        copies = [(image, k) for image in range(25) for k in range(row[image])]
        new_id = {copy_: i for i, copy_ in enumerate(copies)}
        drawn = {"images": [{"id": i} for i in range(len(copies))], "categories": ground_truth["categories"],
                 "annotations": [{**a, "image_id": new_id[(a["image_id"], k)], "id": n}
                                 for n, (a, k) in enumerate(((a, k) for a in ground_truth["annotations"]
                                                             for k in range(row[a["image_id"]])), start=1)]}
        drawn_predictions = [{**p, "image_id": new_id[(p["image_id"], k)]} for p in predictions
                             for k in range(row[p["image_id"]])]
        assert mean_ap(matches, row[None])[0] == pytest.approx(coco_ap50(drawn_predictions, drawn), abs=1e-12)


def population(rng: np.random.Generator, images: int, shift: np.ndarray) -> Matches:
    """Per image and class Poisson(1.5) GT boxes, 70 % found with a higher score than the Poisson(1) false
    positives; ``shift`` (per image) moves the scores of what is found, so images can be easy or hard."""
    gt = rng.poisson(1.5, (images, 2))
    parts = []
    for k in range(2):
        found = np.repeat(np.arange(images), gt[:, k])
        found = found[rng.random(len(found)) < 0.7]
        false = np.repeat(np.arange(images), rng.poisson(1.0, images))
        parts += [(found, k, rng.beta(4, 2, len(found)) + shift[found], True),
                  (false, k, rng.beta(2, 4, len(false)), False)]
    image = np.concatenate([p[0] for p in parts])
    category = np.concatenate([np.full(len(p[0]), p[1]) for p in parts])
    score = np.concatenate([p[2] for p in parts])
    tp = np.concatenate([np.full(len(p[0]), p[3]) for p in parts])
    return Matches("population", gt, image, category, score, tp, np.zeros(len(image), bool))


def draw(matches: Matches, images: np.ndarray, key: str) -> Matches:
    """The validation set of ``images`` (sorted indices) from a population."""
    keep = np.isin(matches.image, images)
    return Matches(key, matches.gt[images], np.searchsorted(images, matches.image[keep]), matches.category[keep],
                   matches.score[keep], matches.tp[keep], matches.ignored[keep])


def test_intervals_over_images_cover_the_population_map():
    rng = np.random.default_rng(5)
    size = 20_000
    hard = rng.normal(0, 0.15, size)  # image difficulty that both runs share
    one, two = population(rng, size, hard), population(rng, size, hard + 0.05)
    everything = np.ones((1, size))
    truth_one = mean_ap(one, everything)[0]
    truth_difference = mean_ap(two, everything)[0] - truth_one
    covered_one, covered_difference = [], []
    for _ in range(150):
        images = np.sort(rng.choice(size, 100, replace=False))
        maps = bootstrap_maps([draw(one, images, "val"), draw(two, images, "val")], 400, int(rng.integers(1 << 30)))
        low, high = percentile_interval(maps[0], 0.95)
        covered_one.append(low <= truth_one <= high)
        low, high = percentile_interval(maps[1] - maps[0], 0.95)
        covered_difference.append(low <= truth_difference <= high)
    assert 0.90 <= np.mean(covered_one) <= 0.99
    assert 0.90 <= np.mean(covered_difference) <= 0.99
    with pytest.raises(ValueError, match="different images"):
        bootstrap_maps([draw(one, images, "val"), draw(two, images, "test")], 10, 0)


def save_detections(run, predictions: list[dict], ground_truth: dict) -> None:
    folder = run / "evaluate" / "2026-12-01_10-00-00"
    folder.mkdir(parents=True)
    (folder / PREDICTIONS_FILE).write_text(json.dumps(predictions))
    (folder / GROUND_TRUTH_FILE).write_text(json.dumps(ground_truth))


def test_the_report_gives_intervals_over_images_beside_the_seed_intervals(tmp_path):
    rng = np.random.default_rng(6)
    predictions, ground_truth = random_case(rng, 30, ties=False)
    perfect = [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 0.9}
               for a in ground_truth["annotations"] if not a["iscrowd"]]
    root = tmp_path / "runs"
    for seed in range(3):
        for rois, found in ((4, predictions), (64, perfect)):
            make_run(root / f"rois{rois}_s{seed}", rois, seed, [0.2, 0.3 + 0.01 * seed + rois / 200])
            save_detections(root / f"rois{rois}_s{seed}", found, ground_truth)
    make_run(root / "rois16_s0", 16, 0, [0.2, 0.3])
    report = write_report(root, tmp_path / "report").read_text()
    runs = {row[0]: row for row in table_rows(report, "## Runs")}
    low, high = percentile_interval(bootstrap_maps([match(predictions, ground_truth)], 2000, 0)[0], 0.95)
    assert runs["`rois4_s0`"][9] == f"{full_set(predictions, ground_truth):.3f} [{low:.3f}, {high:.3f}] (30 images)"
    assert runs["`rois64_s0`"][9].startswith("1.000 [1.000, 1.000]")
    assert runs["`rois16_s0`"][9] == "n/a (no saved detections)"
    pairs = {(row[0], row[1]): row for row in table_rows(report, "### Without a normal model")}
    # every run under the same resamples: 64 RoIs' 1.0 minus 4 RoIs' interval, mirrored
    assert pairs[("`rpn.num_rois`", "4 → 64")][-1] == (f"{1 - full_set(predictions, ground_truth):+.3f} "
                                                      f"[{1 - high:+.3f}, {1 - low:+.3f}]")
    assert pairs[("`rpn.num_rois`", "4 → 16")][-1] == "n/a (no saved detections)"
