"""The detections of one trained checkpoint on one shipped photo, by every inference path: ``predict`` (the photo
detector), ``serve`` (its JSON endpoint), ``evaluate`` (the data module and ``trainer.test``), the exported ONNX file,
and sliced inference. ``tests/fixtures/inference/detections.json`` holds what each path gave when it was recorded
(``python tests/inference_paths.py --record``); ``tests/test_inference_paths.py`` checks that they still agree.

``model.ckpt`` is the quickstart's detector with the small head, ``python -m frcnn_lab.train
backbone.box_head=classifier`` (3 epochs, val mAP@0.5 0.879), kept with its hyperparameters and its weights in
float16 (4.8 MB).

Boxes are in the photo's pixels: [x1, y1, x2, y2, score, label] per detection, highest score first.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

FIXTURE = Path(__file__).parent / "fixtures" / "inference"
PHOTO = Path(__file__).parents[1] / "src" / "frcnn_lab" / "examples" / "scene_1.jpg"


def rows(boxes, scores, labels) -> list[list[float]]:
    found = [[*map(float, box), float(score), int(label)] for box, score, label in zip(boxes, scores, labels,
                                                                                        strict=True)]
    return sorted(found, key=lambda row: -row[4])


def detections_by_path(ckpt: Path, photo: Path, workdir: Path) -> dict[str, list[list[float]]]:
    from fastapi.testclient import TestClient
    from omegaconf import OmegaConf

    from frcnn_lab.data.images import load
    from frcnn_lab.engine.checkpoints import load_module
    from frcnn_lab.engine.photos import load_photo_detector
    from frcnn_lab.evaluate import evaluate
    from frcnn_lab.export import export_metadata, export_onnx
    from frcnn_lab.inference.slicing import Slicing
    from frcnn_lab.serve import create_app

    torch.set_num_threads(1)
    pixels = load(photo)
    paths = {}
    detector = load_photo_detector(ckpt, device="cpu")
    found = detector(pixels)
    paths["predict"] = rows(found["boxes"], found["scores"], found["labels"])
    response = TestClient(create_app(detector, {})).post("/predict", files={"file": (photo.name, photo.read_bytes())})
    served = response.json()["detections"]
    paths["serve"] = rows([d["box"] for d in served], [d["score"] for d in served], [d["label"] for d in served])
    sliced = load_photo_detector(ckpt, device="cpu", slicing=Slicing(size=128, overlap=0.25))(pixels)
    paths["sliced"] = rows(sliced["boxes"], sliced["scores"], sliced["labels"])

    module = load_module(ckpt)
    onnx_file = export_onnx(module, workdir / "model.onnx", export_metadata(module, module.preprocess))
    exported = load_photo_detector(model=onnx_file)(pixels)
    paths["onnx"] = rows(exported["boxes"], exported["scores"], exported["labels"])

    (workdir / photo.name).write_bytes(photo.read_bytes())
    (workdir / "data.csv").write_text(f"{photo.name},10,10,60,60,camera\n{photo.name},70,70,120,120,phone\n")
    cfg = OmegaConf.create({
        "ckpt_path": str(ckpt), "split": "test", "score_threshold": None, "limit": None, "device": "cpu",
        "image_size": None, "max_size": None, "paths": {"output_dir": str(workdir)},
        "inference": {"slicing": {"size": None}},
        "data": {"name": "csv", "classes": module.classes, "source": {"train": str(workdir / "data.csv"),
                 "val": str(workdir / "data.csv"), "test": str(workdir / "data.csv")}, "split": "official",
                 "num_negatives": 0},
    })
    figures = evaluate(cfg, coco_dir=workdir / "coco")
    results = json.loads((workdir / "coco" / "predictions_coco.json").read_text())
    # evaluate scores the resized image: its boxes back to the photo's pixels
    factor = min(figures["image_size"] / min(pixels.shape[:2]), figures["max_size"] / max(pixels.shape[:2]))
    boxes = np.array([[x, y, x + w, y + h] for x, y, w, h in (r["bbox"] for r in results)]).reshape(-1, 4) / factor
    paths["evaluate"] = rows(boxes, [r["score"] for r in results],
                             [module.category_ids.index(r["category_id"]) + 1 for r in results])
    return paths


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--record", action="store_true", help="write tests/fixtures/inference/detections.json")
    args = parser.parse_args()
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        paths = detections_by_path(FIXTURE / "model.ckpt", PHOTO, Path(folder))
    for name, found in paths.items():
        print(f"{name}: {len(found)} detections, best {found[0] if found else None}")
    if args.record:
        (FIXTURE / "detections.json").write_text(json.dumps(paths, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
