"""Predictions and ground truth as COCO JSON, so pycocotools and other COCO tools can score what we score.

Labels are 1..K indexes into ``classes``; ``category_ids[label - 1]`` is the COCO category id written for
label (the source's own ids for COCO data, 1..K otherwise). Image ids are the images' positions in the
evaluated set (0-based), as in ``predict``'s ``detections.json``. Boxes go from xyxy to COCO's
``[x, y, width, height]`` in float32, as torchmetrics converts them, so both see the same numbers.
A ground-truth box marked ``difficult`` (VOC difficult, COCO crowd) is written with ``iscrowd: 1``:
COCO tools then neither reward nor penalise a detection on it, as the project's own mAP does.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torchvision.ops import box_convert

from frcnn_lab.errors import OutputExistsError

PREDICTIONS_FILE = "predictions_coco.json"
GROUND_TRUTH_FILE = "ground_truth_coco.json"


def default_category_ids(num_classes: int) -> list[int]:
    """The ids written for sources without their own: 1..K, in the order of ``classes``."""
    return list(range(1, num_classes + 1))


def categories(classes: Sequence[str], category_ids: Sequence[int] | None = None) -> list[dict[str, Any]]:
    """COCO's ``categories`` list: [{"id", "name"}] per class; ids must be distinct positive integers."""
    ids = list(category_ids) if category_ids is not None else default_category_ids(len(classes))
    if len(ids) != len(classes):
        raise ValueError(f"category_ids={ids} has {len(ids)} entries for {len(classes)} classes {list(classes)}")
    if len(set(ids)) != len(ids) or any(int(i) != i or i < 1 for i in ids):
        raise ValueError(f"category_ids={ids}: COCO category ids must be distinct positive integers")
    return [{"id": int(i), "name": name} for i, name in zip(ids, classes, strict=True)]


def xywh(boxes: Tensor) -> list[list[float]]:
    """(N, 4) xyxy -> [[x, y, width, height]] computed in float32."""
    return box_convert(boxes.detach().cpu().float().reshape(-1, 4), "xyxy", "xywh").tolist()


def category_of(labels: Tensor, category_ids: Sequence[int]) -> list[int]:
    """Labels 1..K -> their COCO category ids; a label outside 1..K is named."""
    labels = labels.reshape(-1).tolist()
    if bad := sorted({int(v) for v in labels if not 1 <= v <= len(category_ids)}):
        raise ValueError(f"labels {bad} are outside 1..{len(category_ids)} (the classes of category_ids="
                         f"{list(category_ids)})")
    return [int(category_ids[int(v) - 1]) for v in labels]


def results(preds: Sequence[dict[str, Tensor]], category_ids: Sequence[int],
            image_ids: Sequence[int] | None = None) -> list[dict[str, Any]]:
    """Per image "boxes" (D, 4) xyxy, "scores" (D,), "labels" (D,) 1..K -> COCO results entries
    {"image_id", "category_id", "bbox", "score"}."""
    entries = []
    for position, pred in enumerate(preds):
        image_id = int(image_ids[position]) if image_ids is not None else position
        for box, category, score in zip(xywh(pred["boxes"]), category_of(pred["labels"], category_ids),
                                        pred["scores"].tolist(), strict=True):
            entries.append({"image_id": image_id, "category_id": category, "bbox": box, "score": float(score)})
    return entries


def ground_truth(targets: Sequence[dict[str, Tensor]], classes: Sequence[str],
                 category_ids: Sequence[int] | None = None, image_sizes: Sequence[tuple[int, int]] | None = None,
                 file_names: Sequence[str] | None = None) -> dict[str, Any]:
    """Per image "boxes" (G, 4) xyxy, "labels" (G,) 1..K, optional "difficult" (G,) bool -> a COCO dataset
    {"images", "annotations", "categories"}. ``image_sizes`` are (height, width) of the images the boxes
    refer to; every image is listed, with or without boxes, so empty images count as COCO counts them."""
    ids = [c["id"] for c in categories(classes, category_ids)]
    images, annotations = [], []
    for image_id, target in enumerate(targets):
        image: dict[str, Any] = {"id": image_id}
        if image_sizes is not None:
            image["height"], image["width"] = (int(v) for v in image_sizes[image_id])
        if file_names is not None:
            image["file_name"] = str(file_names[image_id])
        images.append(image)
        crowd = target.get("difficult", torch.zeros(len(target["labels"]), dtype=torch.bool)).bool().tolist()
        for box, category, is_crowd in zip(xywh(target["boxes"]), category_of(target["labels"], ids), crowd,
                                           strict=True):
            annotations.append({
                "id": len(annotations) + 1,  # COCOeval reads id 0 as "unmatched"
                "image_id": image_id, "category_id": category, "bbox": box,
                "area": box[2] * box[3], "iscrowd": int(is_crowd),
            })
    return {"images": images, "annotations": annotations, "categories": categories(classes, ids)}


def write_json(data: Any, path: str | Path) -> Path:
    """Write ``data`` to ``path``; an existing file is never replaced."""
    path = Path(path)
    if path.exists():
        raise OutputExistsError(f"{path} exists already; choose another output folder")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))
    return path


def write_coco_files(folder: str | Path, preds: Sequence[dict[str, Tensor]], targets: Sequence[dict[str, Tensor]],
                     classes: Sequence[str], category_ids: Sequence[int] | None = None,
                     image_sizes: Sequence[tuple[int, int]] | None = None,
                     file_names: Sequence[str] | None = None) -> tuple[Path, Path]:
    """``<folder>/predictions_coco.json`` (results format) and ``<folder>/ground_truth_coco.json``
    -> their paths. Nothing already there is replaced."""
    folder = Path(folder)
    ids = [c["id"] for c in categories(classes, category_ids)]
    paths = folder / PREDICTIONS_FILE, folder / GROUND_TRUTH_FILE
    if existing := [str(p) for p in paths if p.exists()]:
        raise OutputExistsError(f"{existing} exist already; choose another output folder")
    gt = ground_truth(targets, classes, ids, image_sizes, file_names)
    return write_json(results(preds, ids), paths[0]), write_json(gt, paths[1])
