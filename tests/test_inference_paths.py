"""Every inference path gives the boxes it gave when ``tests/fixtures/inference/detections.json`` was recorded
(``tests/inference_paths.py``): the same detections scoring at least ``CONFIDENT`` on the same photo, boxes within
``BOX_PX`` pixels of the photo and scores within ``SCORE``. Lower-scoring detections are left out: near the model's
score threshold a rounding difference may add or drop one."""

from __future__ import annotations

import json

import pytest
import torch

from frcnn_lab.data.images import load
from frcnn_lab.engine.photos import load_photo_detector
from inference_paths import FIXTURE, PHOTO, detections_by_path, rows

CONFIDENT = 0.3
BOX_PX = 0.5
SCORE = 0.01


@pytest.fixture(scope="module")
def now(tmp_path_factory):
    return detections_by_path(FIXTURE / "model.ckpt", PHOTO, tmp_path_factory.mktemp("paths"))


def confident(found: list[list[float]]) -> list[list[float]]:
    return [row for row in found if row[4] >= CONFIDENT]


def assert_same(expected: list[list[float]], actual: list[list[float]]) -> None:
    assert len(actual) == len(expected)
    for old, new in zip(expected, actual, strict=True):
        assert new[5] == old[5]
        assert new[:4] == pytest.approx(old[:4], abs=BOX_PX) and new[4] == pytest.approx(old[4], abs=SCORE)


@pytest.mark.parametrize("path", ["predict", "serve", "evaluate", "onnx", "sliced"])
def test_the_path_gives_the_recorded_detections(now, path):
    recorded = json.loads((FIXTURE / "detections.json").read_text())[path]
    assert confident(recorded), "the recorded model finds something on the photo"
    assert_same(confident(recorded), confident(now[path]))


def test_every_path_feeds_the_detector_the_size_its_checkpoint_records(tmp_path):
    """The input size is read from the checkpoint's ``preprocess`` alone: with it changed to 256 px, every path gives
    what the photo detector gives when asked for 256 px on the original checkpoint, and not the recorded 320 px (at
    a factor above 1/2: below it, reading files for evaluation decodes JPEGs at a reduced scale first)."""
    checkpoint = torch.load(FIXTURE / "model.ckpt", map_location="cpu", weights_only=True)
    checkpoint["hyper_parameters"]["preprocess"].update(image_size=256, max_size=400)
    smaller = tmp_path / "smaller.ckpt"
    torch.save(checkpoint, smaller)
    at_256 = load_photo_detector(FIXTURE / "model.ckpt", image_size=256, max_size=400, device="cpu")(load(PHOTO))
    expected = rows(at_256["boxes"], at_256["scores"], at_256["labels"])
    recorded = json.loads((FIXTURE / "detections.json").read_text())["predict"]
    assert confident(expected) and len(confident(expected)) != len(confident(recorded))  # the size changes the boxes
    for path, found in detections_by_path(smaller, PHOTO, tmp_path).items():
        if path != "sliced":
            assert_same(confident(expected), confident(found))
