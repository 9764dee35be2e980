"""COCO JSON writers: the source's category ids, crowd marks, and what they refuse."""

from __future__ import annotations

import contextlib
import io
import json

import pytest
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from frcnn_lab.metrics import mean_average_precision, metric_target
from frcnn_lab.metrics.coco_json import (
    GROUND_TRUTH_FILE,
    PREDICTIONS_FILE,
    categories,
    ground_truth,
    results,
    write_coco_files,
)

CLASSES, IDS = ["cat", "dog", "bird"], [3, 7, 42]
PREDS = [
    {"boxes": torch.tensor([[10.0, 20, 50, 60], [0, 0, 5, 5]]), "scores": torch.tensor([0.9, 0.3]),
     "labels": torch.tensor([3, 1])},
    {"boxes": torch.zeros(0, 4), "scores": torch.zeros(0), "labels": torch.zeros(0, dtype=torch.long)},
    {"boxes": torch.tensor([[30.0, 30, 70, 90]]), "scores": torch.tensor([0.6]), "labels": torch.tensor([2])},
]
TARGETS = [
    {"boxes": torch.tensor([[10.0, 20, 50, 60]]), "labels": torch.tensor([3]), "difficult": torch.tensor([False])},
    {"boxes": torch.tensor([[1.0, 1, 9, 9], [20, 20, 40, 40]]), "labels": torch.tensor([1, 2]),
     "difficult": torch.tensor([False, True])},
    {"boxes": torch.tensor([[30.0, 30, 70, 80]]), "labels": torch.tensor([2]), "difficult": torch.tensor([False])},
]


def test_entries_carry_the_source_ids_xywh_boxes_and_crowd_marks():
    entries = results(PREDS, IDS)
    assert [e["category_id"] for e in entries] == [42, 3, 7]
    assert entries[0] == {"image_id": 0, "category_id": 42, "bbox": [10.0, 20.0, 40.0, 40.0],
                          "score": pytest.approx(0.9)}
    gt = ground_truth(TARGETS, CLASSES, IDS, image_sizes=[(100, 120)] * 3, file_names=["a.jpg", "b.jpg", "c.jpg"])
    assert gt["categories"] == [{"id": 3, "name": "cat"}, {"id": 7, "name": "dog"}, {"id": 42, "name": "bird"}]
    assert [a["id"] for a in gt["annotations"]] == [1, 2, 3, 4]
    assert [(a["category_id"], a["iscrowd"]) for a in gt["annotations"]] == [(42, 0), (3, 0), (7, 1), (7, 0)]
    assert gt["images"][1] == {"id": 1, "height": 100, "width": 120, "file_name": "b.jpg"}
    assert gt["annotations"][3]["area"] == 40 * 50


def test_pycocotools_scores_the_written_files_like_the_project(tmp_path):
    write_coco_files(tmp_path, PREDS, TARGETS, CLASSES, IDS)
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(tmp_path / GROUND_TRUTH_FILE))
        evaluation = COCOeval(gt, gt.loadRes(str(tmp_path / PREDICTIONS_FILE)), iouType="bbox")
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    assert sorted(gt.getCatIds()) == IDS
    metric = mean_average_precision()
    metric.update(PREDS, [metric_target(t) for t in TARGETS])
    ours = metric.compute()
    assert float(ours["map"]) == pytest.approx(evaluation.stats[0], abs=1e-4)
    assert float(ours["map_50"]) == pytest.approx(evaluation.stats[1], abs=1e-4)
    assert 0 < evaluation.stats[1] < 1


def test_bad_ids_labels_and_existing_files_are_refused(tmp_path):
    with pytest.raises(ValueError, match="distinct positive"):
        categories(CLASSES, [3, 3, 4])
    with pytest.raises(ValueError, match="2 entries for 3 classes"):
        categories(CLASSES, [3, 7])
    with pytest.raises(ValueError, match=r"labels \[4\] are outside 1..3"):
        results([{"boxes": torch.zeros(1, 4), "scores": torch.ones(1), "labels": torch.tensor([4])}], IDS)
    write_coco_files(tmp_path, PREDS, TARGETS, CLASSES)
    before = json.loads((tmp_path / GROUND_TRUTH_FILE).read_text())
    assert [c["id"] for c in before["categories"]] == [1, 2, 3]  # no ids given: 1..K
    with pytest.raises(FileExistsError, match="exist already"):
        write_coco_files(tmp_path, PREDS[:1], TARGETS[:1], CLASSES)
    assert json.loads((tmp_path / GROUND_TRUTH_FILE).read_text()) == before
