"""Every inference path gives the boxes it gave when ``tests/fixtures/inference/detections.json`` was recorded
(``tests/inference_paths.py``): the same detections scoring at least ``CONFIDENT`` on the same photo, boxes within
``BOX_PX`` pixels of the photo and scores within ``SCORE``. Lower-scoring detections are left out: near the model's
score threshold a rounding difference may add or drop one."""

from __future__ import annotations

import json

import pytest

from inference_paths import FIXTURE, PHOTO, detections_by_path

CONFIDENT = 0.3
BOX_PX = 0.5
SCORE = 0.01


@pytest.fixture(scope="module")
def now(tmp_path_factory):
    return detections_by_path(FIXTURE / "model.ckpt", PHOTO, tmp_path_factory.mktemp("paths"))


@pytest.mark.parametrize("path", ["predict", "serve", "evaluate", "onnx", "sliced"])
def test_the_path_gives_the_recorded_detections(now, path):
    recorded = json.loads((FIXTURE / "detections.json").read_text())[path]
    confident = [[row for row in found if row[4] >= CONFIDENT] for found in (recorded, now[path])]
    assert confident[0], "the recorded model finds something on the photo"
    assert len(confident[0]) == len(confident[1])
    for old, new in zip(*confident, strict=True):
        assert new[5] == old[5]
        assert new[:4] == pytest.approx(old[:4], abs=BOX_PX) and new[4] == pytest.approx(old[4], abs=SCORE)
