"""COCO category ids end to end: a model trained on COCO data with ids {3, 7, 42} writes those ids, and
pycocotools scores predict's and evaluate's COCO files exactly as the project's own evaluation does."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from frcnn_lab.data.synthetic import SyntheticScenes
from frcnn_lab.metrics.coco_json import GROUND_TRUTH_FILE, PREDICTIONS_FILE
from support import TINY_RUN, compose_config

CATEGORIES = [{"id": 3, "name": "camera"}, {"id": 7, "name": "phone"}, {"id": 42, "name": "tripod"}]
IDS = [c["id"] for c in CATEGORIES]


def write_images(folder: Path, seed: int, count: int) -> list[tuple[str, dict]]:
    """Square synthetic scenes as PNG files (320 px: the input size, so no resizing) -> (file name, scene)."""
    folder.mkdir(parents=True)
    scenes = SyntheticScenes(count, seed=seed, image_sizes=((320, 320),), empty_fraction=0.0)
    files = []
    for i in range(count):
        name = f"img{i:02d}.png"
        Image.fromarray(scenes[i]["image"]).save(folder / name)
        files.append((name, scenes[i]))
    return files


def coco_file(path: Path, images: list[str], boxes: list[list[tuple[list[float], int, int]]]) -> None:
    """A COCO annotation file; image ids are the positions in ``images`` (predict's sorted input order);
    ``boxes`` per image: ([x1, y1, x2, y2], category id, iscrowd)."""
    annotations = []
    for i, image_boxes in enumerate(boxes):
        for (x1, y1, x2, y2), category, crowd in image_boxes:
            annotations.append({"id": len(annotations) + 1, "image_id": i, "category_id": category, "iscrowd": crowd,
                                "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1)})
    path.write_text(json.dumps({"images": [{"id": i, "file_name": f, "height": 320, "width": 320}
                                           for i, f in enumerate(images)],
                                "annotations": annotations, "categories": CATEGORIES}))


def cocoeval(gt_path: Path, detections: list[dict] | Path):
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(gt_path))
        evaluation = COCOeval(gt, gt.loadRes(str(detections) if isinstance(detections, Path) else detections), "bbox")
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    at_50 = evaluation.eval["precision"][0, :, :, 0, -1]  # IoU 0.5 x recall x category
    per_class = {cat: float(at_50[:, k][at_50[:, k] > -1].mean()) if (at_50[:, k] > -1).any() else None
                 for k, cat in enumerate(evaluation.params.catIds)}
    return evaluation.stats, per_class


@pytest.fixture(scope="module")
def coco_run(tmp_path_factory):
    """A tiny run trained on a COCO file with ids {3, 7, 42}, and a val file whose boxes are the model's own
    confident detections (some relabelled, moved or marked crowd), so its AP is neither 0 nor 1."""
    from frcnn_lab.train import train

    root = tmp_path_factory.mktemp("coco_ids")
    train_files = write_images(root / "train", seed=1, count=8)
    labels = {1: 3, 2: 7}
    coco_file(root / "train.json", [f for f, _ in train_files], [
        [(box.tolist(), 42 if (i + j) % 3 == 0 else labels[int(label)], 0)
         for j, (box, label) in enumerate(zip(scene["boxes"], scene["labels"], strict=True))]
        for i, (_, scene) in enumerate(train_files)])
    run = root / "run"
    cfg = compose_config("config", [
        *[o for o in TINY_RUN if not o.startswith("data.")], "data=coco", "data.classes=[camera,phone,tripod]",
        f"data.source.train.annotations={root / 'train.json'}", f"data.source.train.images={root / 'train'}",
        "data.split_fractions=[0.75,0.25,0.0]",
        "data.image_size=320", "data.max_size=320", "data.num_workers=0", "data.batch_size=4",
        "data.num_negatives=0"], run)
    (run / ".hydra").mkdir(parents=True)
    OmegaConf.save(cfg, run / ".hydra" / "config.yaml")
    train(cfg)
    write_images(root / "val", seed=2, count=6)
    return root, run / "checkpoints" / "best.ckpt"


def test_predict_and_evaluate_write_the_source_ids_and_pycocotools_agrees(coco_run, tmp_path):
    from frcnn_lab.evaluate import evaluate
    from frcnn_lab.predict import predict

    root, ckpt = coco_run
    assert torch.load(ckpt, weights_only=True)["hyper_parameters"]["category_ids"] == IDS  # from the COCO file
    val_files = sorted(p.name for p in (root / "val").iterdir())
    first = predict(compose_config("predict", [f"ckpt_path={ckpt}", f"input={root / 'val'}",
                                               f"output={tmp_path / 'first'}", "score_threshold=0.0"], tmp_path))
    assert first["detections"] > 0
    detections = json.loads((tmp_path / "first" / "detections.json").read_text())
    assert {d["category_id"] for d in detections} <= set(IDS)
    assert json.loads((tmp_path / "first" / "categories.json").read_text()) == CATEGORIES
    # Ground truth from the detections: the best three per image, one relabelled, one shifted, a crowd box.
    rng = np.random.default_rng(0)
    boxes = []
    for image_id in range(len(val_files)):
        mine = sorted((d for d in detections if d["image_id"] == image_id), key=lambda d: -d["score"])[:3]
        image_boxes = []
        for k, d in enumerate(mine):
            x, y, w, h = d["bbox"]
            category = d["category_id"] if k != 1 else IDS[(IDS.index(d["category_id"]) + 1) % 3]
            dx = float(rng.uniform(0.1, 0.3)) * w if k == 2 else 0.0
            if x + w + dx > 320:  # shift left instead: the loader clips a box past the edge, pycocotools does not
                dx = -dx
            image_boxes.append(([x + dx, y, x + w + dx, y + h], category, int(k == 0 and image_id % 3 == 0)))
        boxes.append(image_boxes)
    coco_file(root / "val.json", val_files, boxes)

    # predict's detections.json, scored by pycocotools against the source's own annotation file ...
    out = tmp_path / "predicted"
    predict(compose_config("predict", [f"ckpt_path={ckpt}", f"input={root / 'val'}", f"output={out}",
                                       "score_threshold=0.0"], tmp_path))
    stats, per_class = cocoeval(root / "val.json", out / "detections.json")
    # ... equals the project's evaluation of the same images.
    evaluated = tmp_path / "evaluated"
    results = evaluate(compose_config("evaluate", [
        f"ckpt_path={ckpt}", "split=val", "score_threshold=0.0", "data=coco", "data.classes=[camera,phone,tripod]",
        "data.split=official", f"data.source.train.annotations={root / 'train.json'}",
        f"data.source.train.images={root / 'train'}", f"+data.source.val.annotations={root / 'val.json'}",
        f"+data.source.val.images={root / 'val'}", "data.image_size=320", "data.max_size=320",
        "data.num_workers=0", "data.num_negatives=0"], evaluated), coco_dir=evaluated)
    assert 0.05 < results["map_50"] < 0.95
    assert results["map"] == pytest.approx(stats[0], abs=1e-4)
    assert results["map_50"] == pytest.approx(stats[1], abs=1e-4)
    for name, category in zip(results["classes"], IDS, strict=True):
        assert results["ap_50_per_class"][name] == pytest.approx(per_class[category], abs=1e-4), name
    # evaluate's own COCO files carry the same ids and score the same.
    written = json.loads((evaluated / GROUND_TRUTH_FILE).read_text())
    assert written["categories"] == CATEGORIES
    assert {d["category_id"] for d in json.loads((evaluated / PREDICTIONS_FILE).read_text())} <= set(IDS)
    own_stats, _ = cocoeval(evaluated / GROUND_TRUTH_FILE, evaluated / PREDICTIONS_FILE)
    assert own_stats[:3] == pytest.approx(stats[:3], abs=1e-4)
