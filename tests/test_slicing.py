"""Sliced inference (inference.slicing): tile layout, shifting back, merging, and the entry points that use it.

Exact comparisons between sliced and whole-image detections use ``RectangleFinder``, a detector that is exactly
translation-invariant (a CNN is not: padding and the stride grid make an object's detection depend a little on
where it lies); the entry points are checked with the tiny trained checkpoints of ``conftest``.
"""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from scipy import ndimage
from torch import nn

from frcnn_lab.config import ConfigError, validate
from frcnn_lab.engine.checkpoints import load_module
from frcnn_lab.engine.photos import PhotoDetector, configured_photo_detector
from frcnn_lab.evaluate import evaluate
from frcnn_lab.inference.slicing import Slicing, detect_images, detect_sliced, merge_detections
from frcnn_lab.metrics import DetectionEvaluation
from frcnn_lab.metrics.coco_json import GROUND_TRUTH_FILE, PREDICTIONS_FILE, write_coco_files
from frcnn_lab.model.detector import DetectorOutput
from frcnn_lab.predict import predict
from frcnn_lab.serve import create_app
from frcnn_lab.train import build_module
from support import compose_config


class RectangleFinder(nn.Module):
    """images [(3, H, W)] -> one detection per 4-connected patch of channel c > 0.5 (label c + 1): its bounding
    box, score 0.5 + area / 10^4 (a fragment of an object scores below the whole object). Same interface as
    ``FasterRCNN`` at inference; it has no proposals, so their budget changes nothing."""

    rpn = SimpleNamespace(post_nms_top_n={"test": 100})

    def forward(self, images, targets=None, original_sizes=None, proposals_per_image=None) -> DetectorOutput:
        detections = []
        for image in images:
            boxes, scores, labels = [], [], []
            for channel in range(image.shape[0]):
                patches, _ = ndimage.label(image[channel].numpy() > 0.5)
                for rows, cols in ndimage.find_objects(patches):
                    boxes.append([cols.start, rows.start, cols.stop, rows.stop])
                    scores.append(0.5 + (cols.stop - cols.start) * (rows.stop - rows.start) / 1e4)
                    labels.append(channel + 1)
            detections.append({"boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
                               "scores": torch.tensor(scores, dtype=torch.float32),
                               "labels": torch.tensor(labels, dtype=torch.long)})
        return DetectorOutput(detections=detections)


def canvas(height: int, width: int, objects: list[tuple[int, int, int, int, int]]) -> torch.Tensor:
    """(3, height, width) zeros with each (x1, y1, x2, y2, label) filled with 1 in channel label - 1."""
    image = torch.zeros(3, height, width)
    for x1, y1, x2, y2, label in objects:
        image[label - 1, y1:y2, x1:x2] = 1.0
    return image


def whole(images, original_sizes=None, proposals_per_image=None):
    return RectangleFinder()(images, original_sizes=original_sizes).detections


def as_rows(detection) -> list[tuple]:
    return sorted((*map(float, box), round(float(score), 6), int(label)) for box, score, label in
                  zip(detection["boxes"], detection["scores"], detection["labels"], strict=True))


def test_tiles_cover_the_image_overlap_and_end_at_its_border():
    """Each tile reports one box covering itself: the shifted boxes are the tiles' windows in the image."""

    def tile_itself(images, original_sizes=None, proposals_per_image=None):
        return [{"boxes": torch.tensor([[0.0, 0.0, image.shape[-1], image.shape[-2]]]), "scores": torch.ones(1),
                 "labels": torch.ones(1).long()} for image in images]

    image = torch.zeros(3, 500, 730)
    found = detect_sliced(tile_itself, image, Slicing(size=256, overlap=0.25, merge="nms", match_metric="iou",
                                                      match_threshold=1.0))
    windows = sorted(tuple(int(v) for v in box) for box in found["boxes"])
    xs, ys = sorted({w[0] for w in windows}), sorted({w[1] for w in windows})
    assert xs == [0, 192, 384, 474] and ys == [0, 192, 244]  # step 256 - 64; the last ones end at the border
    assert all(x2 - x1 == 256 and y2 - y1 == 256 for x1, y1, x2, y2 in windows)
    assert max(w[2] for w in windows) == 730 and max(w[3] for w in windows) == 500
    covered = torch.zeros(500, 730, dtype=torch.bool)
    for x1, y1, x2, y2 in windows:
        covered[y1:y2, x1:x2] = True
    assert covered.all()
    small = detect_sliced(tile_itself, torch.zeros(3, 100, 120), Slicing(size=256))
    assert small["boxes"].tolist() == [[0.0, 0.0, 120.0, 100.0]]  # smaller than a tile: one tile, the image


@pytest.mark.parametrize("merge,metric", [("greedy_nmm", "ios"), ("greedy_nmm", "iou"), ("nms", "iou")])
def test_objects_inside_one_tile_are_detected_as_on_the_whole_image(merge, metric):
    # tiles of 200 with overlap 0.2 start at 0, 160, 280 (x, width 480) and 0, 160 (y, height 360)
    image = canvas(360, 480, [(60, 50, 90, 80, 1), (300, 200, 330, 240, 2), (420, 30, 460, 55, 1)])
    sliced = detect_sliced(whole, image, Slicing(size=200, overlap=0.2, merge=merge, match_metric=metric))
    (expected,) = whole([image])
    assert as_rows(sliced) == as_rows(expected) and len(expected["boxes"]) == 3


def test_an_object_cut_by_a_tile_edge_is_reported_once_by_merging():
    """Tiles start at x = 0, 160, 280: the object (x 130..190) is whole in the first and cut by the second's left
    edge, which sees a 30 px fragment of it."""
    image = canvas(200, 480, [(130, 60, 190, 100, 1)])
    slicing = Slicing(size=200, overlap=0.2, merge="greedy_nmm", match_metric="ios")
    merged = detect_sliced(whole, image, slicing)
    assert merged["boxes"].tolist() == [[130.0, 60.0, 190.0, 100.0]]
    assert merged["scores"].tolist() == pytest.approx([0.5 + 60 * 40 / 1e4])  # the whole view's score
    # NMS at IoU 0.5 keeps the fragment (IoU 30 / 60 = 0.5 is not above 0.5): the same object twice
    suppressed = detect_sliced(whole, image, Slicing(size=200, overlap=0.2))  # the default: NMS at IoU 0.5
    assert sorted(suppressed["boxes"].tolist()) == [[130.0, 60.0, 190.0, 100.0], [160.0, 60.0, 190.0, 100.0]]


LARGE = [40.0, 30.0, 260.0, 210.0]
"""An object larger than a 128 px tile: no tile holds it whole."""


def finds_the_large_object_on_the_whole_image(images, original_sizes=None, proposals_per_image=None):
    """A detector that recognises the large object only when it sees all of it: on the whole (240, 300) image,
    never on a tile."""
    return [{"boxes": torch.tensor([LARGE]), "scores": torch.tensor([0.9]), "labels": torch.tensor([1])}
            if tuple(image.shape[-2:]) == (240, 300) else
            {"boxes": torch.zeros(0, 4), "scores": torch.zeros(0), "labels": torch.zeros(0, dtype=torch.long)}
            for image in images]


def test_whole_image_finds_an_object_larger_than_a_tile_at_its_whole_image_score():
    image = torch.zeros(3, 240, 300)
    with_whole = detect_sliced(finds_the_large_object_on_the_whole_image, image, Slicing(size=128, whole_image=True))
    assert with_whole["boxes"].tolist() == [LARGE] and with_whole["scores"].tolist() == pytest.approx([0.9])
    tiles_only = detect_sliced(finds_the_large_object_on_the_whole_image, image, Slicing(size=128))
    assert tiles_only["boxes"].shape == (0, 4)  # the contrast: the tiles alone miss it


def test_whole_image_adds_no_second_pass_when_one_tile_is_the_image():
    seen = []

    def record(images, original_sizes=None, proposals_per_image=None):
        seen.append(tuple(images[0].shape[-2:]))
        return finds_the_large_object_on_the_whole_image(images)

    detect_sliced(record, torch.zeros(3, 100, 120), Slicing(size=128, whole_image=True))
    assert seen == [(100, 120)]


def test_greedy_merging_matches_a_hand_computed_case():
    """Class 1: A (score 0.9) takes B (IoS 50 / 100 = 0.5); C does not touch A and keeps its box; D's IoS with C is
    20 / 100 = 0.2. Class 2: E covers A exactly but is another class, and stays as it is."""
    boxes = torch.tensor([[0, 0, 10, 10], [5, 0, 15, 10], [10, 0, 30, 10], [28, 0, 38, 10], [0, 0, 10, 10]],
                         dtype=torch.float32)
    detection = {"boxes": boxes[[1, 0, 2, 3, 4]], "scores": torch.tensor([0.8, 0.9, 0.7, 0.6, 0.5]),
                 "labels": torch.tensor([1, 1, 1, 1, 2])}
    merged = merge_detections(detection, Slicing(size=64, merge="greedy_nmm", match_metric="ios"))
    assert merged["boxes"].tolist() == [[0, 0, 15, 10], [10, 0, 30, 10], [28, 0, 38, 10], [0, 0, 10, 10]]
    assert merged["scores"].tolist() == pytest.approx([0.9, 0.7, 0.6, 0.5])
    assert merged["labels"].tolist() == [1, 1, 1, 2]
    looser = merge_detections(detection, Slicing(size=64, merge="greedy_nmm", match_metric="ios", match_threshold=0.2))
    # at IoS >= 0.2: A takes B (1.0); C (0 with A) starts its own box and takes D (0.2): union (10, 0, 38, 10)
    assert looser["boxes"].tolist() == [[0, 0, 15, 10], [10, 0, 38, 10], [0, 0, 10, 10]]


def test_greedy_merging_checks_each_candidate_against_the_union_so_far():
    """As sahi: B and C both match A (IoU 100 / 140 = 0.71 >= 0.6); B joins, and C, checked against A + B
    (IoU 100 / 180 = 0.56 < 0.6), is dropped without joining."""
    detection = {"boxes": torch.tensor([[0.0, 0, 10, 10], [0, 0, 10, 14], [0, -4, 10, 10]]),
                 "scores": torch.tensor([0.9, 0.8, 0.7]), "labels": torch.tensor([1, 1, 1])}
    merged = merge_detections(detection, Slicing(size=64, merge="greedy_nmm", match_metric="iou", match_threshold=0.6))
    assert merged["boxes"].tolist() == [[0, 0, 10, 14]] and merged["scores"].tolist() == pytest.approx([0.9])


def test_sliced_evaluation_scores_whole_image_coordinates(tmp_path):
    """Validation's and evaluate's step (DetectionModule.evaluation_step) with slicing: every object found from
    the tiles, in the image's coordinates: mAP@0.5 = 1 (project and pycocotools); unshifted tile boxes would
    miss those outside the first tile."""
    module = build_module(compose_config("config", ["backbone.weights=none", "inference.slicing.size=128",
                                                    "inference.slicing.overlap=0.25",
                                                    "inference.slicing.merge=greedy_nmm",
                                                    "inference.slicing.match_metric=ios"]))
    module.detector = RectangleFinder()
    objects = [[(10, 10, 40, 30, 1), (150, 200, 180, 240, 2), (280, 90, 300, 115, 1)],
               [(100, 100, 140, 120, 2), (250, 10, 290, 50, 2), (120, 210, 150, 250, 1)]]
    images = [canvas(256, 320, boxes) for boxes in objects]
    targets = [{"boxes": torch.tensor([b[:4] for b in boxes], dtype=torch.float32),
                "labels": torch.tensor([b[4] for b in boxes]), "difficult": torch.zeros(3, dtype=torch.bool),
                "image_id": f"canvas{i}"} for i, boxes in enumerate(objects)]
    metrics = DetectionEvaluation(module.classes, score_threshold=0.5)
    preds = module.evaluation_step((images, targets), metrics)
    assert module.slicing == Slicing(size=128, overlap=0.25, merge="greedy_nmm", match_metric="ios")
    assert metrics.compute()["map_50"] == pytest.approx(1.0)
    for pred, target in zip(preds, targets, strict=True):
        assert sorted(pred["boxes"].tolist()) == sorted(target["boxes"].tolist())
    write_coco_files(tmp_path, preds, targets, module.classes)
    truth = COCO(str(tmp_path / GROUND_TRUTH_FILE))
    scored = COCOeval(truth, truth.loadRes(str(tmp_path / PREDICTIONS_FILE)), "bbox")
    scored.evaluate(), scored.accumulate(), scored.summarize()
    assert scored.stats[1] == pytest.approx(1.0)


def test_one_tile_over_the_whole_photo_gives_the_unsliced_detections(initialised_checkpoint):
    module = load_module(initialised_checkpoint, torch.device("cpu"))
    pixels = np.asarray(Image.new("RGB", (240, 180), (90, 140, 60)))
    pixels = (pixels + np.random.default_rng(0).integers(0, 60, pixels.shape)).astype(np.uint8)
    plain = PhotoDetector(module)(pixels)
    # nms at the head's own IoU changes nothing in the head's output: the same detections, from one tile
    one_tile = PhotoDetector(module, slicing=Slicing(size=4096, merge="nms", match_metric="iou"))(pixels)
    assert len(plain["boxes"]) > 0 and np.allclose(as_rows(one_tile), as_rows(plain), atol=1e-4)


def test_predict_and_serve_slice_with_the_option(initialised_checkpoint, tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    rng = np.random.default_rng(1)
    pixels = rng.integers(0, 255, (300, 400, 3)).astype(np.uint8)
    Image.fromarray(pixels).save(folder / "noise.png")
    options = ["inference.slicing.size=192", "inference.slicing.merge=nms", "inference.slicing.match_metric=iou"]
    cfg = compose_config("predict", [f"ckpt_path={initialised_checkpoint}", f"input={folder}",
                                     f"output={tmp_path / 'out'}", "score_threshold=0.0", *options], tmp_path)
    summary = predict(cfg)
    slicing = Slicing(size=192, merge="nms", match_metric="iou")
    assert summary["slicing"] == {**slicing.__dict__}
    module = load_module(initialised_checkpoint, torch.device("cpu"))
    expected = PhotoDetector(module, slicing=slicing)(pixels)
    unsliced = PhotoDetector(module)(pixels)
    written = json.loads((tmp_path / "out" / "detections.json").read_text())
    assert len(written) == len(expected["boxes"]) > 0 and as_rows(expected) != as_rows(unsliced)
    assert sorted(round(d["score"], 4) for d in written) == sorted(round(s, 4) for s in expected["scores"].tolist())

    serve_cfg = compose_config("serve", [f"ckpt_path={initialised_checkpoint}", *options], tmp_path)
    detector = configured_photo_detector(serve_cfg)
    assert detector.slicing == slicing
    client = TestClient(create_app(detector, {}))
    answer = client.post("/predict", files={"file": ("noise.png", (folder / "noise.png").read_bytes(), "image/png")})
    assert answer.status_code == 200, answer.text
    scores = sorted(d["score"] for d in answer.json()["detections"])
    assert scores == pytest.approx(sorted(expected["scores"].tolist()), abs=1e-4)


def test_evaluate_records_its_slicing_and_slices(trained_run, tmp_path):
    ckpt = trained_run / "checkpoints" / "best.ckpt"
    base = [f"ckpt_path={ckpt}", "split=val", "limit=2", "score_threshold=0.0"]
    sliced = evaluate(compose_config("evaluate", [*base, "inference.slicing.size=160"], tmp_path))
    assert sliced["slicing"] == Slicing(size=160).__dict__
    plain = evaluate(compose_config("evaluate", base, tmp_path))
    assert plain["slicing"] is None and plain["detections_per_image"] != sliced["detections_per_image"]


@pytest.mark.parametrize("override,expected", [
    ("inference.slicing.size=8", "inference.slicing.size=8 must be an integer >= 32"),
    ("inference.slicing.overlap=1.0", "inference.slicing.overlap=1.0 must be in [0, 1)"),
    ("inference.slicing.merge=wbf", "inference.slicing.merge='wbf' is unknown"),
    ("inference.slicing.match_metric=ios", "inference.slicing.merge=nms compares boxes by IoU"),
])
def test_bad_slicing_is_refused_naming_the_key(make_config, override, expected):
    cfg = make_config(["inference.slicing.size=256", override])
    with pytest.raises(ConfigError, match=expected.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
        validate(cfg)


def test_detect_images_maps_sliced_boxes_to_the_original_size():
    image = canvas(200, 300, [(30, 40, 60, 80, 1), (220, 120, 260, 170, 2)])
    slicing = Slicing(size=128, merge="greedy_nmm", match_metric="ios")  # the cut fragments merged away
    (found,) = detect_images(whole, [image], slicing, original_sizes=[(400, 600)])
    assert sorted(found["boxes"].tolist()) == [[60.0, 80.0, 120.0, 160.0], [440.0, 240.0, 520.0, 340.0]]


def test_tiles_go_in_batches_each_with_its_share_of_the_proposal_budget():
    """800 x 1000 px in 400 px tiles without overlap: 6 tiles (the last column moved back to end at the border), each
    0.2 of the area: ceil(0.2 * 100) proposals each, in passes of at most batch_size tiles; the whole image gets all."""
    calls = []

    def record(images, original_sizes=None, proposals_per_image=None):
        calls.append(([tuple(i.shape[-2:]) for i in images], proposals_per_image))
        return [{"boxes": torch.zeros(0, 4), "scores": torch.zeros(0), "labels": torch.zeros(0, dtype=torch.long)}
                for _ in images]

    slicing = Slicing(size=400, overlap=0.0, whole_image=True, batch_size=4)
    detect_sliced(record, torch.zeros(3, 800, 1000), slicing, budget=100)
    tiles = [shape for shapes, _ in calls[:-1] for shape in shapes]
    assert len(tiles) == 6 and [len(shapes) for shapes, _ in calls] == [4, 2, 1]
    assert [budget for _, budget in calls] == [20, 20, 100] and calls[-1][0] == [(800, 1000)]
    calls.clear()
    detect_sliced(record, torch.zeros(3, 800, 1000), Slicing(size=400, overlap=0.0), budget=None)
    assert [budget for _, budget in calls] == [None]  # an exported graph keeps its own budget
