"""Detect objects in images:
``python -m frcnn_lab.predict ckpt_path=... input=<image | folder | glob> output=<folder>``, or with an
exported model run by onnxruntime: ``model=<file>.onnx`` instead of ``ckpt_path``.

For each input image, ``<output>/<stem>.png`` shows the detections (boxes, class names, scores) at the
image's own size; ``<output>/detections.json`` holds them in the COCO results format (``image_id``
(index in the sorted input), ``category_id`` (the class's dataset id: 1..K unless the training data had its
own), ``bbox`` [x, y, width, height] in pixels, ``score``, plus ``file_name`` and ``category_name``), which
pycocotools' ``COCO.loadRes`` reads; ``<output>/categories.json`` lists the categories (``id``, ``name``);
``<output>/predict_summary.json`` lists the inputs, the filters and the images that could not be read.
``score_threshold`` and ``classes`` filter what is kept. Images are resized as in training (the
checkpoint's ``image_size`` / ``max_size``) unless ``image_size`` / ``max_size`` are given. Existing files
in ``output`` are never replaced.
"""

from __future__ import annotations

import glob
import json
import logging
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig

from frcnn_lab.cli import hydra_main
from frcnn_lab.data.images import ImageError, load
from frcnn_lab.engine.photos import configured_photo_detector
from frcnn_lab.errors import BadInputError, ConfigError, MissingInputError, OutputExistsError
from frcnn_lab.inference.drawing import draw_detections, save_png
from frcnn_lab.metrics import coco_json

log = logging.getLogger(__name__)
IMAGE_SUFFIXES = (".bmp", ".jpeg", ".jpg", ".png", ".tif", ".tiff", ".webp")


def find_images(spec: str) -> list[Path]:
    """An image file, a folder (its images, not recursive) or a glob pattern -> sorted image paths."""
    path = Path(spec)
    if path.is_file():
        files = [path]
    elif path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    elif glob.has_magic(spec):
        files = sorted(Path(p) for p in glob.glob(spec, recursive=True) if Path(p).suffix.lower() in IMAGE_SUFFIXES)
    else:
        raise MissingInputError(f"input={spec}: no such file or folder")
    if not files:
        raise MissingInputError(f"input={spec}: no image files ({', '.join(IMAGE_SUFFIXES)})")
    stems = [p.stem for p in files]
    if duplicates := sorted({s for s in stems if stems.count(s) > 1}):
        raise BadInputError(f"input={spec}: several images share a name, their pictures would collide: {duplicates}")
    return files


def class_filter(classes: list[str], names: list[str] | None) -> set[int]:
    """Class names to keep -> their labels (all ``classes`` when ``names`` is None)."""
    if names is None:
        return set(range(1, len(classes) + 1))
    unknown = [n for n in names if n not in classes]
    if unknown:
        raise ConfigError(f"classes={list(names)}: {unknown} not among the detector's classes {classes}")
    return {classes.index(n) + 1 for n in names}


def coco_results(image_id: int, path: Path, detection: dict[str, torch.Tensor], classes: list[str],
                 category_ids: list[int]) -> list[dict]:
    """One image's kept detections -> COCO results entries (xywh boxes, the dataset's category ids)."""
    entries = coco_json.results([detection], category_ids, image_ids=[image_id])
    for entry, label in zip(entries, detection["labels"].tolist(), strict=True):
        entry.update(file_name=str(path), category_name=classes[label - 1])
    return entries


@torch.inference_mode()
def predict(cfg: DictConfig) -> dict[str, Any]:
    """Detect, draw and write; returns the summary that is written to ``predict_summary.json``."""
    files = find_images(cfg.input)
    output = Path(cfg.output)
    planned = [output / f"{p.stem}.png" for p in files] + [
        output / name for name in ("detections.json", "categories.json", "predict_summary.json")]
    if existing := [str(p) for p in planned if p.exists()]:
        raise OutputExistsError(f"output={output} already holds {existing[:5]}{' ...' if len(existing) > 5 else ''}; "
                              "choose another output folder")
    detector = configured_photo_detector(cfg)
    keep_labels = class_filter(detector.classes, cfg.classes)
    results, skipped, written = [], [], []  # the output folder is made by the first picture written
    for image_id, path in enumerate(files):
        try:
            pixels = load(path)
        except ImageError as error:
            log.warning("skipped: %s", error)
            skipped.append({"file": str(path), "error": str(error)})
            continue
        detection = detector(pixels)
        kept = (detection["scores"] >= cfg.score_threshold) & torch.isin(
            detection["labels"], torch.tensor(sorted(keep_labels)))
        detection = {k: v[kept] for k, v in detection.items()}
        canvas = draw_detections(torch.from_numpy(pixels).permute(2, 0, 1), detector.classes, detection["boxes"],
                                 detection["labels"], detection["scores"])
        written.append(str(save_png(canvas, output / f"{path.stem}.png")))
        results += coco_results(image_id, path, detection, detector.classes, detector.category_ids)
    if not written:
        more = f" (and {len(skipped) - 1} more)" if len(skipped) > 1 else ""
        raise BadInputError(f"input={cfg.input}: none of the {len(files)} images could be read: "
                            f"{skipped[0]['error']}{more}")
    (output / "detections.json").write_text(json.dumps(results, indent=1))
    categories = coco_json.categories(detector.classes, detector.category_ids)
    (output / "categories.json").write_text(json.dumps(categories, indent=1))
    summary = {
        "checkpoint": str(Path(cfg.model or cfg.ckpt_path).resolve()), "input": cfg.input, "images": len(files),
        "pictures": written, "detections": len(results), "score_threshold": cfg.score_threshold,
        "classes": [detector.classes[i - 1] for i in sorted(keep_labels)], "image_size": detector.preprocess.image_size,
        "max_size": detector.preprocess.max_size, "slicing": asdict(detector.slicing) if detector.slicing else None,
        "skipped": skipped,
    }
    (output / "predict_summary.json").write_text(json.dumps(summary, indent=2))
    return summary


@hydra_main("predict")
def main(cfg: DictConfig) -> None:
    summary = predict(cfg)
    print(f"{summary['detections']} detections in {len(summary['pictures'])} of {summary['images']} images "
          f"(score >= {summary['score_threshold']}; classes {summary['classes']}) -> {cfg.output}")
    for item in summary["skipped"]:
        print(f"skipped: {item['error']}")


if __name__ == "__main__":
    main()
