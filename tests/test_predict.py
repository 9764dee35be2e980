"""frcnn_lab.predict: pictures with boxes and COCO-format detections, with threshold and class filters."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from frcnn_lab.data.synthetic import SyntheticScenes
from frcnn_lab.predict import find_images, predict
from support import compose_config


@pytest.fixture
def photos(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    scenes = SyntheticScenes(2, seed=5)
    for i in range(2):
        Image.fromarray(scenes[i]["image"]).save(folder / f"scene{i}.png")
    (folder / "broken.jpg").write_bytes(b"not a jpeg")
    (folder / "notes.txt").write_text("not an image")
    return folder


def test_predict_draws_and_writes_coco_results(trained_run, photos, tmp_path):
    out = tmp_path / "out"
    cfg = compose_config("predict", [f"ckpt_path={trained_run / 'checkpoints' / 'best.ckpt'}", f"input={photos}",
                                     f"output={out}", "score_threshold=0.0", "classes=[camera]"], tmp_path)
    summary = predict(cfg)

    assert summary["images"] == 3 and summary["classes"] == ["camera"]
    assert [s["file"] for s in summary["skipped"]] == [str(photos / "broken.jpg")]
    for i in range(2):
        drawn = Image.open(out / f"scene{i}.png")
        assert drawn.size == Image.open(photos / f"scene{i}.png").size  # drawn at the image's own size
    detections = json.loads((out / "detections.json").read_text())
    assert len(detections) == summary["detections"]
    image_ids = {d["image_id"] for d in detections}
    assert image_ids <= {1, 2}  # sorted input: broken.jpg, scene0.png, scene1.png
    for d in detections:
        assert d["category_id"] == 1 and d["category_name"] == "camera" and d["score"] >= 0.0
        x, y, w, h = d["bbox"]
        width, height = Image.open(d["file_name"]).size
        assert w >= 0 and h >= 0 and x >= -0.01 and y >= -0.01 and x + w <= width + 0.01 and y + h <= height + 0.01
    assert json.loads((out / "predict_summary.json").read_text())["detections"] == len(detections)

    with pytest.raises(FileExistsError, match="already holds"):
        predict(cfg)


def test_predict_threshold_filters(trained_run, photos, tmp_path):
    ckpt = trained_run / "checkpoints" / "best.ckpt"
    counts = {}
    for threshold in (0.0, 1.0):
        out = tmp_path / f"out{threshold}"
        cfg = compose_config("predict", [f"ckpt_path={ckpt}", f"input={photos}/scene*.png", f"output={out}",
                                         f"score_threshold={threshold}"], tmp_path)
        counts[threshold] = predict(cfg)["detections"]
        scores = [d["score"] for d in json.loads((out / "detections.json").read_text())]
        assert all(s >= threshold for s in scores)
    assert counts[1.0] == 0 and counts[0.0] >= counts[1.0]


def test_predict_names_bad_input(trained_run, photos, tmp_path):
    ckpt = trained_run / "checkpoints" / "best.ckpt"
    with pytest.raises(ValueError, match=r"\['dog'\] not among"):
        predict(compose_config("predict", [f"ckpt_path={ckpt}", f"input={photos}", f"output={tmp_path / 'a'}",
                                           "classes=[dog]"], tmp_path))
    with pytest.raises(FileNotFoundError, match="missing_folder"):
        find_images(str(tmp_path / "missing_folder"))
    with pytest.raises(FileNotFoundError, match="no image files"):
        find_images(str(tmp_path / "*.gif"))
    single = find_images(str(photos / "scene0.png"))
    assert single == [photos / "scene0.png"]
    assert np.array_equal(np.asarray(Image.open(single[0])), SyntheticScenes(2, seed=5)[0]["image"])
